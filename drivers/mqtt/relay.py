"""On/off loads behind MQTT relays: Shelly Gen2 (RPC `Switch.Set`) and Tasmota (`cmnd/<topic>/POWER`).

`RelayHub` holds one broker connection for every relay (publish and subscribe), keeps the latest
payload of each status topic and matches Shelly RPC responses to their request ids. Both relays use the
device's own timer as the watchdog, so a load switched on by the agent goes off by itself when the
agent stops refreshing it:

* Shelly Gen2: `Switch.Set {"id": N, "on": true, "toggle_after": S}` flips the output back after S
  seconds (Shelly Gen2 API, Switch component). The device answers on `<src>/rpc` and publishes
  `<topic>/status/switch:N` with `output`.
* Tasmota: `cmnd/<topic>/PulseTime <100 + S>` then `cmnd/<topic>/POWER ON`: the relay turns off S
  seconds after it was switched on (Tasmota commands: PulseTime 112..64900 = value - 100 seconds). It
  answers `stat/<topic>/POWER ON|OFF`.

Switching off is the autonomous state of a shiftable load here (`release` switches it off).
aiomqtt is used only through `async with`; its errors become `TransientError` at this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import aiomqtt

from drivers.backoff import Backoff
from drivers.base import TransientError
from drivers.cancel import cancel_and_wait, raise_if_cancelling
from drivers.mqtt.driver import Broker, MqttHub

log = logging.getLogger(__name__)


@dataclass
class RelayHub:
    """One connection for every relay; use as an async context manager."""

    broker: Broker
    timeout_s: float = 3.0
    _client: aiomqtt.Client | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _connected: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _topics: set[str] = field(default_factory=set, init=False)
    latest: dict[str, tuple[bytes, float]] = field(default_factory=dict, init=False)
    _waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict, init=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), init=False)

    @property
    def client_id(self) -> str:
        return self.broker.client_id or "gia-control"

    async def __aenter__(self) -> Self:
        self._topics.add(f"{self.client_id}/rpc")
        self._task = asyncio.create_task(self._run(), name=f"mqtt-relays {self.broker.url}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.broker.timeout_s):
                await self._connected.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        backoff = Backoff(initial_s=0.5, max_s=30.0)
        args = MqttHub(self.broker)._client_args()  # the same connection settings as the device hub
        # but every message kept: RPC replies share one topic, and the hub's latest-per-topic queue
        # would let a second reply replace a first one still waiting to be read
        args["queue_type"] = None
        while True:
            raise_if_cancelling()
            try:
                async with aiomqtt.Client(**args) as client:
                    self._client = client
                    for t in sorted(self._topics):
                        await client.subscribe(t, qos=1)
                    raise_if_cancelling()  # a cancel swallowed by aiomqtt's wait_for would wait for messages
                    backoff.reset()
                    self._connected.set()
                    async for message in client.messages:
                        self._take(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.error("MQTT relays %s: %s", self.broker.url, exc)
            finally:
                self._client = None
                self._connected.clear()
            await asyncio.sleep(backoff.next_delay())

    def _take(self, topic: str, payload: Any) -> None:
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        self.latest[topic] = (raw, time.monotonic())
        if topic == f"{self.client_id}/rpc":
            try:
                msg = json.loads(raw)
                fut = self._waiting.pop(int(msg["id"]), None)
            except (ValueError, KeyError, TypeError):
                return
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def subscribe(self, topic: str) -> None:
        if topic in self._topics:
            return
        self._topics.add(topic)
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.subscribe(topic, qos=1)

    async def publish(self, topic: str, payload: str) -> None:
        client = self._client
        if client is None:
            raise TransientError(f"MQTT relays: not connected to {self.broker.url}")
        try:
            await client.publish(topic, payload, qos=1)
        except aiomqtt.MqttError as exc:
            raise TransientError(f"MQTT relays: publish to {topic} failed ({exc})") from None

    async def rpc(self, topic: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A Shelly Gen2 RPC over MQTT: request on `<topic>/rpc`, response on `<our id>/rpc`."""
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        body = {"id": rid, "src": self.client_id, "method": method, "params": params}
        try:
            await self.publish(f"{topic}/rpc", json.dumps(body))
            async with asyncio.timeout(self.timeout_s):
                return await fut
        except TimeoutError:
            raise TransientError(f"{topic}: no answer to {method} within {self.timeout_s:g} s") from None
        finally:
            self._waiting.pop(rid, None)


@dataclass
class ShellyRelay:
    """A Shelly Gen2/Gen3 switch component driven by RPC over MQTT."""

    hub: RelayHub
    topic: str
    switch_id: int = 0

    @property
    def device_id(self) -> str:
        return self.topic

    @property
    def status_topic(self) -> str:
        return f"{self.topic}/status/switch:{self.switch_id}"

    async def set_on(self, on: bool, *, watchdog_s: float) -> None:
        await self.hub.subscribe(self.status_topic)
        params: dict[str, Any] = {"id": self.switch_id, "on": on}
        if on:
            params["toggle_after"] = max(1, math.ceil(watchdog_s))  # off again unless refreshed
        answer = await self.hub.rpc(self.topic, "Switch.Set", params)
        if "error" in answer:
            from drivers.base import CommandRefused

            err = answer["error"]
            raise CommandRefused(f"{self.topic}: Switch.Set refused: {err.get('message', err)}")

    async def read_back(self) -> bool | None:
        answer = await self.hub.rpc(self.topic, "Switch.GetStatus", {"id": self.switch_id})
        result = answer.get("result")
        return bool(result["output"]) if isinstance(result, dict) and "output" in result else None

    async def release(self) -> None:
        await self.set_on(False, watchdog_s=0)


@dataclass
class TasmotaRelay:
    """A Tasmota relay: POWER commands, PulseTime as its own off-timer."""

    hub: RelayHub
    topic: str

    @property
    def device_id(self) -> str:
        return self.topic

    async def set_on(self, on: bool, *, watchdog_s: float) -> None:
        await self.hub.subscribe(f"stat/{self.topic}/POWER")
        if on:
            pulse = min(64900, 100 + max(12, math.ceil(watchdog_s)))  # 112..64900: value - 100 seconds
            await self.hub.publish(f"cmnd/{self.topic}/PulseTime", str(pulse))
        await self.hub.publish(f"cmnd/{self.topic}/POWER", "ON" if on else "OFF")

    async def read_back(self) -> bool | None:
        topic = f"stat/{self.topic}/POWER"
        sent = time.monotonic()
        async with asyncio.timeout(self.hub.timeout_s):
            while True:  # the answer to the command just sent (a stat newer than it)
                got = self.hub.latest.get(topic)
                if got is not None and got[1] >= sent - self.hub.timeout_s:
                    return got[0].strip().upper() == b"ON"
                await asyncio.sleep(0.05)

    async def release(self) -> None:
        await self.set_on(False, watchdog_s=0)


def relay_for(hub: RelayHub, protocol: Literal["shelly-gen2", "tasmota"], topic: str, switch_id: int) -> Any:
    return ShellyRelay(hub, topic, switch_id) if protocol == "shelly-gen2" else TasmotaRelay(hub, topic)
