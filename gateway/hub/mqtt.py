"""The hub on the central broker: reports and key transitions in, receipts out (one aiomqtt connection).

Subscriptions (the sites' prefix template with `+` for the site): `gia/+/report/+` and
`gia/+/keys/transition`. Reports are retained on the broker, so every (re)connect delivers each
site-month's latest report again: a report that arrived while the hub was down, or whose processing a
crash cut short, is decided then; one already decided is a replay (a no-op). Nothing is acknowledged
to a site until its receipt is stored.

A message whose processing fails for a transient reason (the database restarting) is kept in hand and
retried with backoff until it is decided: the loop never moves past a report it has not stored.

Receipts are an outbox in the database (`receipts.published_ms`): after each decision, on every
(re)connect and every few seconds, unpublished receipts are published retained at QoS 1 on
`gia/{site}/hub/receipt/{yyyy-mm}` and then marked. Receipts of HTTP pushes go the same way.

aiomqtt is used only through `async with`; its errors end the connection and the loop reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import aiomqtt
from sqlalchemy.exc import DBAPIError, OperationalError

from drivers.backoff import Backoff
from drivers.cancel import raise_if_cancelling
from gateway.credentials import redact_url
from gateway.hub.ingest import Ingestor, Outcome
from gateway.settings import MqttConfig
from gateway.sinks.mqtt.sink import tls_context
from gateway.sinks.mqtt.topics import Topics

log = logging.getLogger(__name__)

T = TypeVar("T")
RECEIPT_POLL_S: Final = 5.0
DRAIN_S: Final = 30.0
MAX_QUEUED: Final = 1000


@dataclass
class MqttHealth:
    connected: bool = False
    connects: int = 0
    messages: int = 0
    decided: int = 0
    too_large: int = 0
    retries: int = 0
    receipts_published: int = 0
    last_error: str | None = None


class TopicMap:
    """Builds and parses the hub's topics from the sites' prefix template (default `gia/{site}`)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.levels = template.split("/")
        self.site_level = self.levels.index("{site}") if "{site}" in self.levels else -1
        wild = "/".join("+" if lv == "{site}" else lv for lv in self.levels)
        self.reports = f"{wild}/report/+"
        self.transitions = f"{wild}/keys/transition"

    def parse(self, topic: str) -> tuple[str, str] | None:
        """(site, 'report' | 'transition') of a topic we subscribe to; None for anything else."""
        parts = topic.split("/")
        n = len(self.levels)
        if self.site_level < 0 or len(parts) < n + 2:
            return None
        if any(lv != p for lv, p in zip(self.levels, parts[:n], strict=True) if lv != "{site}"):
            return None
        site, rest = parts[self.site_level], parts[n:]
        if len(rest) == 2 and rest[0] == "report":
            return site, "report"
        if rest == ["keys", "transition"]:
            return site, "transition"
        return None

    def receipt(self, site: str, month: str) -> str:
        return f"{Topics.for_site(self.template, site).prefix}/hub/receipt/{month}"


def _transient(exc: BaseException) -> bool:
    """A database error worth retrying (connection lost, server restarting, lock timeout)."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


class Inflight:
    """Database work running on worker threads. A thread cannot be cancelled: when the hub stops, `drain`
    waits for what is still running, so no connection is left open behind a closed store."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kw: Any) -> T:
        fut: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kw))
        self._running.add(fut)
        fut.add_done_callback(self._running.discard)
        return await asyncio.shield(fut)

    async def drain(self) -> None:
        """Wait (at most DRAIN_S) for the database work still running."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=DRAIN_S)


class HubMqtt:
    def __init__(
        self,
        cfg: MqttConfig,
        ingestor: Ingestor,
        *,
        client_id: str,
        on_decided: Callable[[Outcome], None] | None = None,
        inflight: Inflight | None = None,
    ) -> None:
        self.cfg = cfg
        self.ingestor = ingestor
        self.topics = TopicMap(cfg.prefix)
        self.client_id = client_id
        self.health = MqttHealth()
        self.receipts_due = asyncio.Event()
        self._on_decided = on_decided
        self.inflight = inflight or Inflight()

    def _client(self) -> aiomqtt.Client:
        parts = urlsplit(self.cfg.url)
        quiet = logging.getLogger("gateway.hub.mqtt.paho")
        quiet.setLevel(logging.ERROR)
        return aiomqtt.Client(
            parts.hostname or "127.0.0.1",
            parts.port or (8883 if self.cfg.tls_enabled else 1883),
            username=self.cfg.username,
            password=self.cfg.password_value(),
            identifier=self.client_id,
            clean_session=True,  # reports are retained: each connect re-reads them, nothing to keep
            keepalive=self.cfg.keepalive_s,
            timeout=self.cfg.timeout_s,
            tls_context=tls_context(self.cfg),
            tls_insecure=self.cfg.tls.insecure if self.cfg.tls else None,
            logger=quiet,
            max_queued_incoming_messages=MAX_QUEUED,
        )

    async def run(self) -> None:
        """Connect, subscribe, decide every message, publish receipts; reconnect on broker errors."""
        backoff = Backoff(initial_s=0.5, max_s=10.0)
        while True:
            raise_if_cancelling()
            try:
                async with self._client() as client:
                    await client.subscribe(self.topics.reports, qos=1)
                    await client.subscribe(self.topics.transitions, qos=1)
                    raise_if_cancelling()
                    self.health.connected = True
                    self.health.connects += 1
                    backoff.reset()
                    log.info("hub subscribed on %s", redact_url(self.cfg.url))
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._receipts(client), name="hub-mqtt-receipts")
                        await self._messages(client)
            except* aiomqtt.MqttError as group:
                exc = group.exceptions[0]
                if self.health.connected or self.health.last_error is None:
                    log.error("hub broker %s: %s", redact_url(self.cfg.url), exc)  # once per outage
                self.health.last_error = str(exc)
            finally:
                self.health.connected = False
            await asyncio.sleep(backoff.next_delay())

    async def _messages(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.health.messages += 1
            payload = message.payload
            if not isinstance(payload, bytes | bytearray) or not payload:
                continue  # an empty retained message clears a topic: nothing to decide
            found = self.topics.parse(str(message.topic))
            if found is None:
                continue
            site, kind = found
            data = bytes(payload)
            if len(data) > self.ingestor.max_bytes:
                self.health.too_large += 1
                log.warning(
                    "refused a %d-byte message on %s (limit %d)", len(data), message.topic, self.ingestor.max_bytes
                )
                with contextlib.suppress(Exception):  # only a count: a database outage must not stop the loop
                    await self.inflight.run(self.ingestor.note_too_large, site, len(data), via="mqtt")
                continue
            outcome = await self._decide(site, kind, data)
            self.health.decided += 1
            if self._on_decided is not None:
                self._on_decided(outcome)
            if outcome.receipt is not None and not outcome.replay:
                self.receipts_due.set()

    async def _decide(self, site: str, kind: str, data: bytes) -> Outcome:
        fn = self.ingestor.submit_report if kind == "report" else self.ingestor.submit_key_transition
        backoff = Backoff(initial_s=0.2, max_s=5.0)
        while True:
            try:
                return await self.inflight.run(fn, site, data, via="mqtt")
            except Exception as exc:
                if not _transient(exc):
                    # A bug, not an outage: retrying would loop on this message at every reconnect.
                    log.exception("could not decide a %s of %s", kind, site)
                    self.health.last_error = f"{type(exc).__name__}: {exc}"
                    return Outcome("refused", site, None, "", [f"internal error: {type(exc).__name__}"])
                self.health.retries += 1
                self.health.last_error = f"database: {type(exc).__name__}"
                log.warning("database unavailable while deciding a report of %s; retrying", site)
                await asyncio.sleep(backoff.next_delay())

    async def _receipts(self, client: aiomqtt.Client) -> None:
        store = self.ingestor.store
        while True:
            self.receipts_due.clear()  # before reading: a receipt stored from now on sets it again
            try:
                due = await self.inflight.run(store.unpublished_receipts, 100)
            except Exception as exc:
                if not _transient(exc):
                    raise
                due = []
            for _id, site, month, body, retain in due:
                await client.publish(self.topics.receipt(site, month), body, qos=1, retain=retain)
            if due:
                try:
                    await self.inflight.run(store.mark_published, [d[0] for d in due])
                    self.health.receipts_published += len(due)
                except Exception as exc:
                    if not _transient(exc):
                        raise
                if len(due) == 100:
                    continue
            try:
                async with asyncio.timeout(RECEIPT_POLL_S):
                    await self.receipts_due.wait()
            except TimeoutError:
                pass
