"""MQTT device drivers: meters that publish JSON (Tasmota, Shelly Gen2, custom) instead of being polled.

`MqttHub` holds one broker connection for every MQTT device (like `BusPool` for Modbus): a named
background task subscribes to the devices' topics, keeps only the *latest* payload per topic (a
dictionary, so nothing can pile up), and reconnects with capped, jittered backoff. A driver's `read`
turns the latest payload into samples; a payload older than `stale_after_intervals` poll intervals
gives `quality=stale` samples, and a device that never published raises `TransientError`.

aiomqtt is used only through `async with`, and its errors are translated at this edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiomqtt

from drivers.backoff import Backoff
from drivers.base import PermanentError, SharedConnection, TransientError
from drivers.cancel import cancel_and_wait, raise_if_cancelling
from drivers.config import MqttDeviceConfig
from drivers.model import MAX_SAFE_INT, QUANTITIES, Quality, QuantityKind, Sample, checked_sample
from drivers.mqtt.payload import PROFILES, FieldSpec, field_value, parse_json, topic_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    """Where MQTT devices publish (usually the site's own broker, the `mqtt:` section's URL)."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate, for brokers that require mutual TLS
    key_file: Path | None = None
    tls: bool = False  # TLS even on an mqtt:// URL (the mqtt: section has a tls: block)
    insecure: bool = False  # skip hostname verification (testing only)
    client_id: str | None = None
    timeout_s: float = 10.0


@dataclass
class _Latest:
    payload: Any
    received: float  # monotonic


class LatestPerTopic(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, keeping one message per topic: the newest, in its topic's place.

    The hub keeps only each topic's latest payload anyway, but aiomqtt's own queue is unbounded: a
    device (or anyone with access to its topic) publishing faster than the agent parses piled up
    every message in between. In the attack soak a publisher of garbage and 200 kB payloads grew the
    agent by ~10 MB a minute this way. Now a message waiting for the consumer is replaced by a newer
    one on its topic (counted as `superseded`), so what waits is bounded by the number of topics, and a
    flood on one topic does not delay the others (a replaced message keeps its topic's place).
    """

    _queue: OrderedDict[str, aiomqtt.Message]

    def _init(self, maxsize: int) -> None:
        self._queue = OrderedDict()
        self.superseded = 0

    def _put(self, item: aiomqtt.Message) -> None:
        topic = str(item.topic)
        if topic in self._queue:
            self.superseded += 1
        self._queue[topic] = item

    def _get(self) -> aiomqtt.Message:
        return self._queue.popitem(last=False)[1]


@dataclass
class HubStats:
    messages: int = 0
    not_json: int = 0
    #: messages replaced by a newer one on their topic before the hub read them (a flooding publisher)
    superseded: int = 0
    connects: int = 0
    errors: int = 0
    last_error: str = ""


@dataclass
class MqttHub:
    """One subscription connection for all MQTT devices; use as an async context manager."""

    broker: Broker
    stats: HubStats = field(default_factory=HubStats)
    _topics: set[str] = field(default_factory=set, init=False)
    _latest: dict[str, _Latest] = field(default_factory=dict, init=False)
    _client: aiomqtt.Client | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _connected: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"mqtt-hub {self.broker.url}")
        with contextlib.suppress(TimeoutError):  # readiness, bounded: devices report their own state
            async with asyncio.timeout(self.broker.timeout_s):
                await self._connected.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def subscribe(self, topic: str) -> None:
        if topic in self._topics:
            return
        self._topics.add(topic)
        if self._client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):  # re-subscribed on the next connect anyway
                await self._client.subscribe(topic, qos=1)

    def latest(self, topic: str) -> _Latest | None:
        return self._latest.get(topic)

    def _client_args(self) -> dict[str, Any]:
        parts = urlsplit(self.broker.url)
        tls = parts.scheme == "mqtts" or self.broker.tls
        args: dict[str, Any] = {
            "hostname": parts.hostname or "127.0.0.1",
            "port": parts.port or (8883 if tls else 1883),
            "username": self.broker.username,
            "password": self.broker.password,
            "timeout": self.broker.timeout_s,
            "identifier": self.broker.client_id,
            "logger": logging.getLogger("drivers.mqtt.aiomqtt"),
            "queue_type": LatestPerTopic,
        }
        if tls:
            ctx = ssl.create_default_context(cafile=str(self.broker.ca_file) if self.broker.ca_file else None)
            if self.broker.cert_file is not None:
                key = str(self.broker.key_file) if self.broker.key_file else None
                ctx.load_cert_chain(str(self.broker.cert_file), key)
            if self.broker.insecure:
                ctx.check_hostname = False
            args["tls_context"] = ctx
        return args

    async def _run(self) -> None:
        backoff = Backoff(initial_s=0.5, max_s=30.0)
        while True:
            raise_if_cancelling()  # aiomqtt's wait_for may swallow the cancellation (drivers/cancel.py)
            try:
                async with aiomqtt.Client(**self._client_args()) as client:
                    self._client = client
                    for topic in sorted(self._topics):
                        await client.subscribe(topic, qos=1)
                    raise_if_cancelling()
                    self.stats.connects += 1
                    backoff.reset()
                    self._connected.set()
                    queue = client._queue  # aiomqtt keeps the queue_type instance private
                    counted = queue.superseded if isinstance(queue, LatestPerTopic) else 0
                    async for message in client.messages:
                        if isinstance(queue, LatestPerTopic):
                            self.stats.superseded += queue.superseded - counted
                            counted = queue.superseded
                        self._store(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                self.stats.errors += 1
                self.stats.last_error = str(exc)
                if self.stats.errors == 1 or self._connected.is_set():
                    log.error("MQTT device broker %s: %s", self.broker.url, exc)  # once per outage
            finally:
                self._client = None
                self._connected.clear()
            await asyncio.sleep(backoff.next_delay())

    def _store(self, topic: str, payload: Any) -> None:
        self.stats.messages += 1
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        obj = parse_json(raw)
        if obj is None:
            self.stats.not_json += 1
            return
        self._latest[topic] = _Latest(obj, time.monotonic())


def device_fields(cfg: MqttDeviceConfig) -> dict[str, FieldSpec]:
    """The profile's fields overridden by the config's `fields:` (validated: known quantities, syntax)."""
    table: dict[str, str] = {}
    if cfg.profile is not None:
        if cfg.profile not in PROFILES:
            raise PermanentError(
                f"{cfg.id}: unknown MQTT profile {cfg.profile!r}; bundled: {', '.join(sorted(PROFILES))}"
            )
        table.update(PROFILES[cfg.profile])
    table.update(cfg.fields)
    out: dict[str, FieldSpec] = {}
    for quantity, text in table.items():
        if quantity not in QUANTITIES:
            raise PermanentError(f"{cfg.id}: fields.{quantity}: unknown quantity; use e.g. power_w")
        try:
            out[quantity] = FieldSpec.parse(text)
        except ValueError as exc:
            raise PermanentError(f"{cfg.id}: fields.{quantity}: {exc}") from None
    return out


class MqttDriver(SharedConnection):
    """An MQTT-publishing device, read from the hub's latest payloads."""

    def __init__(
        self,
        *,
        device_id: str,
        hub: MqttHub,
        topic: str,
        fields: Mapping[str, FieldSpec],
        poll_interval_s: float,
        stale_after_intervals: int = 3,
    ) -> None:
        self.device_id = device_id
        self.hub = hub
        self.topic = topic
        self.fields = dict(fields)
        self.stale_after_s = poll_interval_s * stale_after_intervals
        self.topics = sorted({topic_for(topic, spec) for spec in self.fields.values()})
        #: values refused since the driver was created (not a number, out of the quantity's range)
        self.invalid_values = 0

    async def __aenter__(self) -> Self:
        for t in self.topics:
            await self.hub.subscribe(t)
        return self

    async def read(self, ts: datetime) -> Sequence[Sample]:
        now = time.monotonic()
        samples: list[Sample] = []
        heard = False
        for quantity, spec in self.fields.items():
            latest = self.hub.latest(topic_for(self.topic, spec))
            if latest is None:
                continue
            heard = True
            value, why = field_value(latest.payload, spec)
            if value is None:
                self.invalid_values += 1
                samples.append(checked_sample(self.device_id, quantity, None, ts, reason=why))
                continue
            quality = Quality.GOOD if now - latest.received <= self.stale_after_s else Quality.STALE
            number: float | int = value
            if QUANTITIES[quantity].kind is not QuantityKind.INSTANT and abs(value) <= MAX_SAFE_INT:
                number = round(value)
            # The same validity rules as every other driver (drivers/model.py VALID_RANGES): anyone who
            # can publish on the topic can send a negative energy register or a power factor of 7.
            sample = checked_sample(self.device_id, quantity, number, ts, quality)
            if sample.quality is Quality.INVALID:
                self.invalid_values += 1
            samples.append(sample)
        if not heard:
            state = (
                "connected" if self.hub.connected else f"not connected ({self.hub.stats.last_error or 'connecting'})"
            )
            raise TransientError(f"{self.device_id}: no message yet on {', '.join(self.topics)} (broker {state})")
        return samples
