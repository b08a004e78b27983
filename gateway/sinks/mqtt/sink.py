"""MQTT sink: retained per-device state, availability, last will, and retained extras (forecasts...).

State is forwarded from the ledger cursor like every sink: after a broker outage the backlog is
published in order at the configured QoS (a persistent subscriber session receives all of it) and the
retained message ends as the latest state. Each state carries the ledger `seq` of its last entry, so a
consumer can drop the replay of a batch that was sent just before a crash.

Availability and the retained extras (forecasts, flexibility signals, reports) are live values, not
ledger entries: they are (re)published whenever the connection is (re)established, latest value only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode

from drivers.cancel import raise_if_cancelling
from drivers.model import Quality, from_ms, iso_utc
from gateway import __version__
from gateway.credentials import redact_url
from gateway.ledger.store import Entry, Poll
from gateway.runtime.live import LiveState
from gateway.settings import MqttConfig
from gateway.sinks.base import SinkError
from gateway.sinks.mqtt.discovery import (
    DiscoveryContext,
    DiscoveryDevice,
    discovery_messages,
    removal_messages,
    sensor_from_topic,
    subscription_topic,
)
from gateway.sinks.mqtt.topics import Topics
from gateway.sinks.outbox import LatestOutbox

log = logging.getLogger(__name__)

EXIT_BUDGET_S = 3.0  # disconnecting may take this long of the agent's 10-s shutdown
MAX_IN_FLIGHT = 100  # measured: more in flight only adds aiomqtt warnings, not throughput


def state_payload(entries: Sequence[Entry]) -> dict[str, Any]:
    """One device's state at one instant: `ts`, worst `quality`, `seq`, then one field per quantity."""
    qualities = [e.quality for e in entries]
    payload: dict[str, Any] = {
        "ts": iso_utc(from_ms(entries[0].ts_ms)),
        "quality": Quality.worst(qualities).value,
        "seq": entries[-1].seq,
    }
    invalid = []
    for e in entries:
        payload[e.quantity] = e.value
        if e.quality is Quality.INVALID:
            invalid.append(e.quantity)
    if invalid:
        payload["invalid"] = invalid
    return payload


def tls_context(cfg: MqttConfig) -> ssl.SSLContext | None:
    if not cfg.tls_enabled:
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls and cfg.tls.ca_file else None)
    if cfg.tls and cfg.tls.cert_file:
        ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file) if cfg.tls.key_file else None)
    if cfg.tls and cfg.tls.insecure:
        ctx.check_hostname = False
    return ctx


class MqttSink:
    name = "mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        site: str,
        live: LiveState,
        outbox: LatestOutbox[str, bytes],
        discovery: Sequence[DiscoveryDevice] = (),
    ) -> None:
        self.batch_size = 1000  # bounded catch-up memory, as the InfluxDB sink (settings.InfluxConfig)
        self._site = site
        self._discovery = list(discovery)
        self._sent: dict[str, bytes] = {}  # what this connection has published from the outbox
        self._availability: dict[str, bool] = {}  # what this connection has published per device
        self._cfg = cfg
        self._live = live
        self._outbox = outbox
        self.topics = Topics.for_site(cfg.prefix, site)
        parts = urlsplit(cfg.url)
        quiet = logging.getLogger("gateway.sinks.mqtt.sink.paho")
        quiet.setLevel(logging.ERROR)  # paho warns on every publish beyond 10 pending: noise, not news
        self._client = aiomqtt.Client(
            parts.hostname or "127.0.0.1",
            parts.port or (8883 if cfg.tls_enabled else 1883),
            username=cfg.username,
            password=cfg.password_value(),
            identifier=cfg.client_id or f"gia-{site}",
            clean_session=False,
            keepalive=cfg.keepalive_s,
            timeout=cfg.timeout_s,
            will=aiomqtt.Will(self.topics.status, b"offline", qos=1, retain=True),
            tls_context=tls_context(cfg),
            tls_insecure=cfg.tls.insecure if cfg.tls else None,
            logger=quiet,
            max_inflight_messages=MAX_IN_FLIGHT,
        )
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def __aenter__(self) -> Self:
        try:
            await self._client.__aenter__()
            await self._publish(self.topics.status, b"online", qos=1)
            await self._sync_availability()
            for topic, payload in self._outbox.snapshot().items():
                await self._publish(topic, payload, qos=1)
                self._sent[topic] = payload
            if self._cfg.homeassistant_discovery:
                await self._homeassistant()
        except aiomqtt.MqttError as exc:
            raise SinkError(f"MQTT broker {redact_url(self._cfg.url)}: {exc}") from None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            # Bounded: aiomqtt waits up to `timeout_s` for the broker to take the DISCONNECT, which queues
            # behind every publish still in flight; a catch-up backlog or a frozen broker then outlasted
            # the agent's whole 10-s shutdown (found by tests/forecasting/test_demo_forecasts.py).
            async with asyncio.timeout(EXIT_BUDGET_S):
                if exc_type is None or exc_type is asyncio.CancelledError:
                    # Graceful stop: say so ourselves; the broker's last will covers crashes.
                    with contextlib.suppress(aiomqtt.MqttError, SinkError):
                        await self._publish(self.topics.status, b"offline", qos=1)
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._client.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            # Drop the connection instead: the broker publishes our last will ("offline"), and batches
            # it has not acknowledged are sent again from the ledger (same `seq`) on the next connect.
            # paho's own path for a closed connection (as its keepalive check takes), so aiomqtt unregisters
            # the socket from the event loop and completes its disconnect (as one we asked for).
            paho = self._client._client
            try:
                paho._sock_close()
                paho._do_on_disconnect(packet_from_broker=False, v1_rc=MQTTErrorCode.MQTT_ERR_SUCCESS)
            except Exception:  # private API of paho 2.x; the socket must go regardless
                sock = paho.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    async def _homeassistant(self) -> None:
        """Home Assistant discovery: remove sensors of devices no longer configured, announce the rest."""
        ctx = DiscoveryContext(
            self._site, self.topics, discovery_prefix=self._cfg.discovery_prefix, sw_version=__version__
        )
        previous: set[tuple[str, str]] = set()
        await self._client.subscribe(subscription_topic(ctx.discovery_prefix, self._site), qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # retained configs arrive at once after subscribing
                async for msg in self._client.messages:
                    found = sensor_from_topic(str(msg.topic), site=self._site, discovery_prefix=ctx.discovery_prefix)
                    if found is not None and msg.payload:
                        previous.add(found)
        await self._client.unsubscribe(subscription_topic(ctx.discovery_prefix, self._site))
        for m in [*removal_messages(ctx, previous, self._discovery), *discovery_messages(ctx, self._discovery)]:
            await self._publish(m.topic, m.payload, qos=m.qos)

    async def _publish(self, topic: str, payload: bytes, *, qos: int) -> None:
        async with self._slots:
            try:
                await self._client.publish(topic, payload, qos=qos, retain=True, timeout=self._cfg.timeout_s)
            except aiomqtt.MqttError as exc:
                raise SinkError(f"MQTT publish to {topic} failed: {exc}") from None

    async def send(self, polls: Sequence[Poll]) -> None:
        async with asyncio.TaskGroup() as tg:
            pending = []
            for poll in polls:
                body = json.dumps(state_payload(poll.entries), separators=(",", ":")).encode()
                pending.append(tg.create_task(self._publish(self.topics.state(poll.device), body, qos=self._cfg.qos)))
                # Publishes keep order per topic: paho sends in call order and the semaphore only caps
                # how many wait for their acknowledgement at once.
                await asyncio.sleep(0)
            # Wait here, not in the group's exit: in Python 3.11 a task that fails after the body has ended
            # makes the TaskGroup cancel this task without ever uncancelling it (CPython gh-116720, fixed
            # in 3.12). The stale request then stopped the forwarder for good at its next
            # raise_if_cancelling() after a broker outage (tests/core/test_mqtt_forwarding.py).
            await asyncio.wait(pending)

    async def live_publisher(self, _sink: object) -> None:
        """Side task while connected: availability transitions and changed retained extras."""
        sub = self._live.subscribe(maxsize=10_000, kinds=frozenset({"availability"}))
        try:
            # A device that came online between the connect's snapshot and this subscription sent its
            # event to nobody: without this its retained availability stayed missing until the next
            # transition (seen in CI: a polling device with no availability topic at all).
            await self._sync_availability()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._outbox_loop())
                while True:
                    raise_if_cancelling()  # aiomqtt's wait_for may swallow one (drivers/cancel.py)
                    event = await sub.get()
                    if event.kind == "availability" and event.online is not None:
                        await self._publish_availability(event.device, event.online)
        finally:
            self._live.unsubscribe(sub)

    async def _sync_availability(self) -> None:
        """Publish each known device's availability that this connection has not published yet."""
        for device, status in list(self._live.devices.items()):
            if status.online is not None and self._availability.get(device) is not status.online:
                await self._publish_availability(device, status.online)

    async def _publish_availability(self, device: str, online: bool) -> None:
        await self._publish(self.topics.availability(device), b"online" if online else b"offline", qos=1)
        self._availability[device] = online

    async def _outbox_loop(self) -> None:
        """Publish what changed since the connect (which published the whole snapshot)."""
        while True:
            for topic, payload in self._outbox.snapshot().items():
                if self._sent.get(topic) is not payload:
                    await self._publish(topic, payload, qos=1)
                    self._sent[topic] = payload
            # checked before waiting: a cancellation swallowed by a publish would leave this task waiting
            # for a change that a stopping agent never makes (seen: the sink held shutdown for 10 s)
            raise_if_cancelling()
            await self._outbox.wait_changed()
