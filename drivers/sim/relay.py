"""Simulated MQTT relays for the tests and the demo: a Shelly Gen2 switch (RPC over MQTT) and a Tasmota
relay, each with its own off-timer (Shelly `toggle_after`, Tasmota `PulseTime`), as the makers document
them (Shelly Gen2 API: Switch.Set / Switch.GetStatus, status on <id>/status/switch:N; Tasmota commands:
cmnd/<topic>/POWER, PulseTime, answers on stat/<topic>/POWER). `speed` shortens the timers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiomqtt

from drivers.cancel import cancel_and_wait, raise_if_cancelling


@dataclass
class _SimRelay:
    hostname: str
    port: int
    topic: str
    speed: float = 1.0
    on: bool = False
    switched: int = 0
    timer_expired: int = 0
    refuse: bool = False
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False)
    _client: aiomqtt.Client | None = field(default=None, init=False)
    _ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"sim relay {self.topic}")
        async with asyncio.timeout(10):
            await self._ready.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            await cancel_and_wait(self._task)

    def subscriptions(self) -> list[str]:
        raise NotImplementedError

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        async with aiomqtt.Client(self.hostname, self.port, identifier=f"sim-{self.topic}") as client:
            self._client = client
            for t in self.subscriptions():
                await client.subscribe(t, qos=1)
            self._ready.set()
            async for message in client.messages:
                raw = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                await self.handle(client, str(message.topic), raw)
                # `handle` publishes; aiomqtt's wait_for (Python 3.11) can swallow a cancellation that
                # arrives as the publish completes, and the loop would wait for the next message forever:
                # the relay test hung to its 60-s bound twice in loaded CI runs (drivers/cancel.py).
                raise_if_cancelling()

    def _switch(self, on: bool, after_s: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if on != self.on:
            self.switched += 1
        self.on = on
        if after_s is not None and after_s > 0:
            self._timer = asyncio.get_running_loop().call_later(after_s / self.speed, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self.timer_expired += 1
        self.on = not self.on
        if self._client is not None:
            asyncio.get_running_loop().create_task(self.publish_state(self._client))

    async def publish_state(self, client: aiomqtt.Client) -> None:
        raise NotImplementedError


@dataclass
class SimShelly(_SimRelay):
    """A Shelly Gen2 with one switch (id 0) answering RPC over MQTT."""

    def subscriptions(self) -> list[str]:
        return [f"{self.topic}/rpc"]

    async def publish_state(self, client: aiomqtt.Client) -> None:
        status = {"id": 0, "output": self.on, "source": "timer" if self.timer_expired else "MQTT"}
        await client.publish(f"{self.topic}/status/switch:0", json.dumps(status), qos=1)

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        try:
            req: dict[str, Any] = json.loads(payload)
        except ValueError:
            return
        reply: dict[str, Any] = {"id": req.get("id"), "src": self.topic, "dst": req.get("src")}
        params = req.get("params") or {}
        if req.get("method") == "Switch.Set":
            if self.refuse:
                reply["error"] = {"code": -103, "message": "switch locked in local mode"}
            else:
                was = self.on
                self._switch(bool(params.get("on")), params.get("toggle_after"))
                reply["result"] = {"was_on": was}
        elif req.get("method") == "Switch.GetStatus":
            reply["result"] = {"id": 0, "output": self.on}
        else:
            reply["error"] = {"code": -114, "message": f"method {req.get('method')} not found"}
        await client.publish(f"{req.get('src')}/rpc", json.dumps(reply), qos=1)
        await self.publish_state(client)


@dataclass
class SimTasmota(_SimRelay):
    """A Tasmota relay: POWER and PulseTime commands."""

    pulse_time: int = 0

    def subscriptions(self) -> list[str]:
        return [f"cmnd/{self.topic}/#"]

    async def publish_state(self, client: aiomqtt.Client) -> None:
        await client.publish(f"stat/{self.topic}/POWER", "ON" if self.on else "OFF", qos=1)

    def _pulse_s(self) -> float | None:
        p = self.pulse_time
        if p <= 0:
            return None
        return p / 10 if p <= 111 else float(p - 100)

    async def handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        command = topic.rsplit("/", 1)[-1].lower()
        text = payload.decode(errors="replace").strip().upper()
        if command == "pulsetime":
            self.pulse_time = int(text or 0)
            await client.publish(f"stat/{self.topic}/RESULT", json.dumps({"PulseTime1": self.pulse_time}))
        elif command == "power":
            on = {"ON": True, "1": True, "OFF": False, "0": False}.get(text, self.on)
            self._switch(on, self._pulse_s() if on else None)
            await self.publish_state(client)
