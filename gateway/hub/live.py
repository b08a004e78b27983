"""The area live view: the sites' live state in (MQTT), the area's flows and site status out (API, SSE, page).

Ingestion (`LiveIngest`, one per hub replica):

* `gia/+/+/state` through an MQTT v5 **shared subscription** (`$share/<group>/gia/+/+/state`): the broker
  hands each message to one replica of the group, so N replicas split the load (Mosquitto 2, EMQX, HiveMQ,
  VerneMQ). A shared subscription gets no retained messages (MQTT 5, 4.8.2), which is fine for state: every
  device publishes again within one interval, so a restarted replica converges within one publish interval.
* `gia/+/status` and `gia/+/+/availability` are subscribed plainly by every replica: they change rarely,
  and only the retained copy tells a replica that started later whether a site is offline.
* Between the socket and the database a bounded latest-wins buffer (`ShedQueue`) keyed by site/device:
  a newer state of a device replaces the one still waiting (counted as `shed`); past `max_pending` keys a
  new key is dropped (counted as `refused`). A burst can therefore never grow memory without bound, and what
  is lost is only a state that a newer one of the same device already superseded.
* Every `flush_s` the buffer goes to the database in one transaction (`live_state`: one row per
  site/device/kind, updated only by a newer reading). The database is what makes the view the same on every
  replica: a replica sees only its share of the messages, but serves the whole area from the table.
* For today's and this month's provisional balance the first register reading of each day and month the
  hub saw is kept (`live_marks`, insert-if-absent); the balance is the register advance since then, through
  `gateway.site.balance.graded_indicators` (the site's own formulas, ROLE signs from `site.channels`).

The read side (`LiveView`) needs only the engine: any replica (or a portal-only process) serves it.
Each site's layout (which device is grid, generation, storage, consumption) comes from the channels of its
latest accepted signed report: the certified description of its meters. A site without one yet is listed
with its devices `unclassified` and no flows, not with guessed ones.

Stale is never zero: a device not heard from within `stale_after_s`, offline, or with an invalid reading
makes the flows that need it `null`; a site whose last state is older than that is `stale` (or `offline`
when its last will says so), its flows `null`, and the area's sums name the sites they leave out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode
from sqlalchemy import Column, Engine, Float, MetaData, String, Table, Text, and_, select, tuple_
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.types import BigInteger

from drivers.backoff import Backoff
from drivers.cancel import raise_if_cancelling
from drivers.model import iso_utc
from gateway.hub import db
from gateway.hub.config import AreaConfig, LiveConfig
from gateway.settings import InfluxConfig, MqttConfig
from gateway.sinks.influx.lineprotocol import FieldValue, format_line
from gateway.sinks.mqtt.sink import tls_context
from gateway.site.balance import QUALITY_ORDER, graded_indicators, period_starts
from gateway.site.channels import ROLE_FLOW, ChannelSpec

if TYPE_CHECKING:
    from paho.mqtt.client import Client as PahoClient
    from paho.mqtt.client import MQTTMessage

log = logging.getLogger(__name__)

#: How many latency samples the metrics keep (a ring: p50/p99 over the most recent ones).
LATENCY_SAMPLES: Final = 20_000
#: How long a site's layout (from its latest accepted report) is cached before it is read again.
LAYOUT_TTL_S: Final = 60.0
#: A period mark this much after the period start means the hub did not see the start: `partial`.
MARK_SLACK_MS: Final = 15 * 60_000

# Tables of the live view. Their own MetaData, created if absent (`ensure_tables`): they hold nothing that
# must survive (the next publish interval rebuilds them), so they are not in db.py's migration chain.
live_meta = MetaData()
live_state = Table(
    "live_state",
    live_meta,
    Column("site", String(64), primary_key=True),
    Column("device", String(64), primary_key=True),  # "" for the site's own status
    Column("kind", String(16), primary_key=True),  # state | availability | status
    Column("payload", Text, nullable=False),
    Column("ts_ms", BigInteger, nullable=True),  # the reading's time (state only)
    Column("received_ms", BigInteger, nullable=False),  # when a replica took it off the broker
    Column("replica", String(64), nullable=False),
)
live_marks = Table(
    "live_marks",
    live_meta,
    Column("site", String(64), primary_key=True),
    Column("device", String(64), primary_key=True),
    Column("quantity", String(64), primary_key=True),
    Column("period", String(16), primary_key=True),  # d2026-12-03 | m2026-12 (the area's civil time)
    Column("ts_ms", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
)


#: (site, device, kind, payload, ts_ms, received_ms, replica) and (site, device, quantity, period, ts_ms, value)
Row = tuple[str, str, str, str, int | None, int, str]
Mark = tuple[str, str, str, str, int, float]
_STATE_UPSERT: Final = (
    "INSERT INTO live_state (site, device, kind, payload, ts_ms, received_ms, replica) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (site, device, kind) DO UPDATE SET payload = excluded.payload, ts_ms = excluded.ts_ms,"
    " received_ms = excluded.received_ms, replica = excluded.replica"
    # a state replaces only an older reading: two replicas may write one device's states out of order
    " WHERE live_state.ts_ms IS NULL OR excluded.ts_ms IS NULL OR excluded.ts_ms >= live_state.ts_ms"
)
_MARK_INSERT: Final = (
    "INSERT INTO live_marks (site, device, quantity, period, ts_ms, value) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (site, device, quantity, period) DO NOTHING"
)


def ensure_tables(engine: Engine) -> None:
    """Create the live tables if absent; two replicas starting together may race, the loser re-checks."""
    for attempt in range(3):
        try:
            live_meta.create_all(engine, checkfirst=True)
            return
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == 2:
                raise
            time.sleep(0.2)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso_ms(ms: int | None) -> str | None:
    return iso_utc(datetime.fromtimestamp(ms / 1000, UTC)) if ms is not None else None


def _parse_ts(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


# -- the bounded buffer ---------------------------------------------------------------------------------
Key = tuple[str, str, str]  # site, device ("" for status), kind


@dataclass(slots=True)
class Pending:
    payload: bytes
    received_ms: int


class ShedQueue:
    """Latest-wins per key, at most `max_keys` keys. `put` never blocks and never grows past the bound.

    `shed`: states replaced before they were written (a newer one of the same device arrived);
    `refused`: new keys dropped because `max_keys` were waiting. Status and availability are never
    refused (a site's last will must get through): they may exceed the bound by the number of sites.
    """

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._items: dict[Key, Pending] = {}
        self.accepted = 0
        self.shed = 0
        self.refused = 0
        self.ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: Key, item: Pending) -> None:
        if key in self._items:
            self.shed += 1
        elif len(self._items) >= self.max_keys and key[2] == "state":
            self.refused += 1
            return
        self._items[key] = item
        self.accepted += 1
        self.ready.set()

    def put_back(self, batch: Mapping[Key, Pending]) -> None:
        """Return a batch that could not be written; a newer state already waiting for a key wins."""
        for key, item in batch.items():
            if key not in self._items:
                self._items[key] = item
        if self._items:
            self.ready.set()

    def take(self) -> dict[Key, Pending]:
        items, self._items = self._items, {}
        self.ready.clear()
        return items


# -- topics ---------------------------------------------------------------------------------------------
class LiveTopics:
    """Subscriptions and parsing for the sites' prefix template (default `gia/{site}`)."""

    def __init__(self, template: str, share_group: str | None) -> None:
        self.levels = template.split("/")
        self.site_level = self.levels.index("{site}") if "{site}" in self.levels else -1
        wild = "/".join("+" if lv == "{site}" else lv for lv in self.levels)
        state = f"{wild}/+/state"
        self.state = f"$share/{share_group}/{state}" if share_group else state
        self.availability = f"{wild}/+/availability"
        self.status = f"{wild}/status"

    def parse(self, topic: str) -> Key | None:
        parts = topic.split("/")
        n = len(self.levels)
        if self.site_level < 0 or len(parts) < n + 1:
            return None
        if any(lv != p for lv, p in zip(self.levels, parts[:n], strict=True) if lv != "{site}"):
            return None
        site, rest = parts[self.site_level], parts[n:]
        if rest == ["status"]:
            return site, "", "status"
        if len(rest) == 2 and rest[1] in ("state", "availability") and rest[0] not in ("hub", "report", "keys"):
            return site, rest[0], rest[1]
        return None


# -- metrics --------------------------------------------------------------------------------------------
@dataclass
class LiveHealth:
    connected: bool = False
    connects: int = 0
    received: int = 0  # messages taken off the broker (all kinds)
    states: int = 0  # of which states
    written: int = 0  # rows written to the database
    flushes: int = 0
    db_errors: int = 0
    malformed: int = 0
    last_error: str | None = None
    #: reading time -> written to the database (what a page can show); and -> taken off the broker
    latency_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    transit_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    rate: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=64))  # (t, states, written)
    #: site -> (reading ts_ms, received_ms) of the newest state this replica wrote
    site_lag: dict[str, tuple[int, int]] = field(default_factory=dict)

    def rates(self) -> tuple[float, float]:
        """(states received, rows written) per second over the last ~10 s of flushes."""
        if len(self.rate) < 2:
            return 0.0, 0.0
        t1, s1, w1 = self.rate[-1]
        t0, s0, w0 = next(((t, s, w) for t, s, w in self.rate if t1 - t <= 10.0), self.rate[0])
        if t1 <= t0:
            return 0.0, 0.0
        return (s1 - s0) / (t1 - t0), (w1 - w0) / (t1 - t0)


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))])


# -- ingestion ------------------------------------------------------------------------------------------
#: packets taken off the socket per readable event at most (the kernel's buffer keeps the rest readable)
PACKETS_PER_WAKEUP: Final = 256


def _read_many_packets(paho: PahoClient) -> None:
    """Make paho's `loop_read` take every packet the socket holds (up to `PACKETS_PER_WAKEUP`), not one.

    aiomqtt calls `loop_read()` once per readable event, and paho reads one packet per call for QoS 0
    (its count is the in-flight QoS 1/2 messages): a burst of N live states cost N turns of the event
    loop, each a selector poll and a dispatch, more than the message itself. Bounded, so the loop still
    turns under a flood; what is left stays in the kernel's buffer, which keeps the socket readable."""
    read_packet = paho._packet_read
    handle_rc = paho._loop_rc_handle

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        for _ in range(PACKETS_PER_WAKEUP):
            if paho._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = read_packet()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc > 0:
                return handle_rc(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    paho.loop_read = loop_read  # type: ignore[method-assign]


class LiveIngest:
    """One replica's live-state consumer: broker -> ShedQueue -> `live_state` (see the module doc)."""

    def __init__(
        self,
        mqtt: MqttConfig,
        cfg: LiveConfig,
        engine: Engine,
        *,
        client_id: str,
        timezones: Callable[[], Mapping[str, str]] = dict,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.mqtt = mqtt
        self.cfg = cfg
        self.engine = engine
        self.client_id = client_id
        self.topics = LiveTopics(mqtt.prefix, cfg.share_group)
        self.queue = ShedQueue(cfg.max_pending)
        self.health = LiveHealth()
        self._timezones = timezones  # site -> its area's timezone (the civil day/month of the marks)
        self._zones: dict[str, str] = {}
        self._zones_at = -math.inf
        self._now_ms = now_ms
        self._marked: set[tuple[str, str, str, str]] = set()
        self._marked_day = ""
        ensure_tables(engine)

    def _take(self, _client: object, _userdata: object, message: MQTTMessage) -> None:
        """paho's `on_message` (called on the event loop, where aiomqtt drives paho's socket): straight into
        the ShedQueue. It replaces aiomqtt's own callback, which builds an `aiomqtt.Message` (a validated
        `Topic`) and queues it for `async for`: per message that cost more than the rest of the hub's
        ingestion, and an unbounded FIFO of Message objects built up in front of the bounded latest-wins
        buffer under a burst (measured: a replica grew from 65 to 170 MB at 2000 msg/s on a busy machine).
        """
        h = self.health
        h.received += 1
        key = self.topics.parse(message.topic)
        if key is None:
            return
        if key[2] == "state":
            h.states += 1
        self.queue.put(key, Pending(bytes(message.payload), self._now_ms()))

    def _client(self) -> aiomqtt.Client:
        parts = urlsplit(self.mqtt.url)
        quiet = logging.getLogger("gateway.hub.live.paho")
        quiet.setLevel(logging.ERROR)
        client = aiomqtt.Client(
            parts.hostname or "127.0.0.1",
            parts.port or (8883 if self.mqtt.tls_enabled else 1883),
            username=self.mqtt.username,
            password=self.mqtt.password_value(),
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,  # shared subscriptions are MQTT 5
            clean_start=True,  # live state: nothing to resume; the next interval brings it again
            keepalive=self.mqtt.keepalive_s,
            timeout=self.mqtt.timeout_s,
            tls_context=tls_context(self.mqtt),
            tls_insecure=self.mqtt.tls.insecure if self.mqtt.tls else None,
            logger=quiet,
        )
        # The paho client aiomqtt drives (its `_client`; both versions pinned by the lock file): messages bypass
        # aiomqtt's queue, see `_take`. `client.messages` then never yields; `_receive` only waits on it
        # for the disconnect it raises.
        client._client.on_message = self._take
        _read_many_packets(client._client)
        return client

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flusher(), name="hub-live-flush")
            await self._connection()

    async def _connection(self) -> None:
        backoff = Backoff(initial_s=0.5, max_s=10.0)
        while True:
            raise_if_cancelling()
            try:
                async with self._client() as client:
                    # QoS 0 for state: a lost state is superseded by the next one within the interval
                    await client.subscribe(self.topics.state, qos=0)
                    await client.subscribe(self.topics.availability, qos=1)
                    await client.subscribe(self.topics.status, qos=1)
                    self.health.connected = True
                    self.health.connects += 1
                    backoff.reset()
                    log.info("hub live view subscribed on %s (%s)", self.mqtt.url, self.topics.state)
                    await self._receive(client)
            except aiomqtt.MqttError as exc:
                if self.health.connected or self.health.last_error is None:
                    log.error("hub live view: broker %s: %s", self.mqtt.url, exc)
                self.health.last_error = str(exc)
            finally:
                self.health.connected = False
            await asyncio.sleep(backoff.next_delay())

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Messages go to the ShedQueue from paho's callback (`_take`); this only waits for
        the connection to end (the iterator raises MqttError on a disconnect and never yields)."""
        async for _message in client.messages:
            pass

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.flush_s):
                    await self.queue.ready.wait()
            await asyncio.sleep(self.cfg.flush_s)  # let a batch gather: one transaction per interval
            batch = self.queue.take()
            if batch:
                await self.flush(batch)

    def _flush_sync(self, batch: Mapping[Key, Pending]) -> list[Row]:
        """On a worker thread: parse, mark and write one batch (the event loop keeps receiving)."""
        now = time.monotonic()
        if now - self._zones_at > LAYOUT_TTL_S:
            with contextlib.suppress(OperationalError, DBAPIError):
                self._zones = dict(self._timezones())
                self._zones_at = now
        rows, marks = self._rows(batch)
        self._write(rows, marks)
        return rows

    async def flush(self, batch: Mapping[Key, Pending]) -> None:
        """Write one batch; on a database error the batch goes back to the queue (newer states win)."""
        try:
            rows = await asyncio.to_thread(self._flush_sync, batch)
        except (OperationalError, DBAPIError) as exc:
            # The database is down: put what we hold back (newer states already waiting win), retry later.
            self.health.db_errors += 1
            self.health.last_error = f"database: {type(exc).__name__}"
            log.warning("hub live view: database unavailable (%s); keeping %d states", type(exc).__name__, len(batch))
            self.queue.put_back(batch)
            await asyncio.sleep(self.cfg.flush_s)
            return
        done = self._now_ms()
        h = self.health
        h.written += len(rows)
        h.flushes += 1
        h.rate.append((time.monotonic(), h.states, h.written))
        for r in rows:
            site, _device, kind, _payload, ts_ms, received_ms, _replica = r
            if kind == "state" and ts_ms is not None:
                h.latency_ms.append(done - ts_ms)
                h.transit_ms.append(received_ms - ts_ms)
                h.site_lag[site] = (ts_ms, received_ms)

    def _rows(self, batch: Mapping[Key, Pending]) -> tuple[list[Row], list[Mark]]:
        rows: list[Row] = []
        marks: list[Mark] = []
        zones = self._zones
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        if today != self._marked_day:
            self._marked.clear()  # the marks of past days are in the database; this only saves queries
            self._marked_day = today
        periods: dict[str, tuple[str, str]] = {}
        for (site, device, kind), item in batch.items():
            ts_ms: int | None = None
            text = item.payload.decode("utf-8", errors="replace")
            if kind == "state":
                try:
                    doc = json.loads(text)
                except ValueError:
                    doc = None
                if not isinstance(doc, dict):
                    self.health.malformed += 1
                    continue
                ts_ms = _parse_ts(doc.get("ts"))
                if ts_ms is None:
                    self.health.malformed += 1
                    continue
                tz = zones.get(site)
                if tz is not None:
                    if tz not in periods:
                        s = period_starts(datetime.now(UTC), tz)
                        periods[tz] = ("d" + s["today"].strftime("%Y-%m-%d"), "m" + s["month"].strftime("%Y-%m"))
                    for q, v in doc.items():
                        if not q.endswith("_wh") or not isinstance(v, int | float) or isinstance(v, bool):
                            continue
                        if doc.get("quality") == "invalid" or q in (doc.get("invalid") or ()):
                            continue
                        for period in periods[tz]:
                            mk = (site, device, q, period)
                            if mk not in self._marked:
                                self._marked.add(mk)
                                marks.append((site, device, q, period, ts_ms, float(v)))
            rows.append((site, device, kind, text, ts_ms, item.received_ms, self.client_id))
        return rows, marks

    def _write(self, rows: list[Row], marks: list[Mark]) -> None:
        """One transaction: the states (a newer reading only) and the period marks (first one wins).

        Plain SQL through the driver's executemany: the statement is the same on SQLite and PostgreSQL
        (ON CONFLICT ... DO UPDATE ... WHERE, `excluded`), and SQLAlchemy's per-row parameter processing
        cost more than the database itself (profiled: ~40 % of a 5000-row flush)."""
        with self.engine.begin() as conn:
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            if rows:
                conn.exec_driver_sql(_STATE_UPSERT.replace("?", mark), rows)
            if marks:
                conn.exec_driver_sql(_MARK_INSERT.replace("?", mark), marks)

    def metrics(self) -> dict[str, Any]:
        h = self.health
        now = self._now_ms()
        lat, transit = list(h.latency_ms), list(h.transit_ms)
        lag = {s: {"reading_age_s": round((now - ts) / 1000, 1), "transit_s": round((rcv - ts) / 1000, 3)}
               for s, (ts, rcv) in sorted(h.site_lag.items())}  # fmt: skip
        return {
            "replica": self.client_id,
            "subscription": self.topics.state,
            "connected": h.connected,
            "connects": h.connects,
            "received": h.received,
            "states": h.states,
            "written": h.written,
            "ingest_rate_per_s": round(h.rates()[0], 1),
            "write_rate_per_s": round(h.rates()[1], 1),
            "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "samples": len(lat)},
            "transit_ms": {"p50": percentile(transit, 50), "p99": percentile(transit, 99)},
            "queue_depth": len(self.queue),
            "queue_max": self.queue.max_keys,
            "shed": self.queue.shed,
            "refused": self.queue.refused,
            "malformed": h.malformed,
            "database_errors": h.db_errors,
            "last_error": h.last_error,
            "lag_per_site": lag,
        }


# -- the read side ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """A site's devices in its balance, from the channels of its latest accepted report."""

    month: str
    channels: tuple[ChannelSpec, ...]

    def device_flows(self) -> dict[str, tuple[str, str | None, bool | None]]:
        """device -> (flow, source, renewable); as `balance.site_layout`: the first role's flow wins."""
        out: dict[str, tuple[str, str | None, bool | None]] = {}
        for ch in self.channels:
            flow, _sign = ROLE_FLOW[ch.role]
            prev = out.get(ch.device)
            if prev is None or (prev[0] == "auxiliary" and flow != "auxiliary"):
                out[ch.device] = (flow, ch.source, ch.renewable)
        return out


def site_flows(
    layout: Layout | None, devices: Mapping[str, dict[str, Any]]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The site's flows now (W) from each device's live `power_w` and its flow in the layout.

    Signs as drivers/model.py: grid + import, storage + discharge, generation + producing. Unknown stays
    unknown (as the gateway's page, gateway/api/static/app.js `liveFlows`): a flow with a device that is
    stale, offline or invalid is None, and so is every sum that needs it.
    Returns (flows, devices whose power is unknown, devices with no flow in the layout).
    """
    flows: dict[str, Any] = {
        "grid_w": None, "grid_import_w": None, "grid_export_w": None, "generation_w": None,
        "generation_by_source_w": {}, "storage_w": None, "consumption_w": None,
    }  # fmt: skip
    if layout is None:
        return flows, [], sorted(devices)
    dflows = layout.device_flows()
    unclassified = sorted(d for d in devices if d not in dflows)
    unknown: list[str] = []
    sums: dict[str, float | None] = {}
    gen: dict[str, float | None] = {}
    metered: float | None = 0.0
    has_grid = has_storage = False

    def add(acc: float | None, p: float | None, first: bool) -> float | None:
        if p is None:
            return None
        return p if first else (None if acc is None else acc + p)

    for device, (flow, source, _ren) in sorted(dflows.items()):
        d = devices.get(device)
        p = d.get("power_w") if d is not None and d.get("usable") else None
        if p is None:
            unknown.append(device)
        if flow == "grid":
            sums["grid"] = add(sums.get("grid"), p, not has_grid)
            has_grid = True
        elif flow == "storage":
            sums["storage"] = add(sums.get("storage"), p, not has_storage)
            has_storage = True
        elif flow == "generation":
            key = source or "other"
            gen[key] = add(gen.get(key), p, key not in gen)
        elif flow == "consumption":
            metered = add(metered, p, False) if metered is not None else None
    grid = sums.get("grid") if has_grid else None
    storage = sums.get("storage") if has_storage else None
    gen_total = None if any(v is None for v in gen.values()) else float(sum(v for v in gen.values() if v is not None))
    if has_grid:
        parts = [grid, gen_total, storage if has_storage else 0.0]
        consumption = None if any(v is None for v in parts) else sum(v for v in parts if v is not None)
    else:
        consumption = metered if any(f == "consumption" for f, _s, _r in dflows.values()) else None
    flows.update(
        grid_w=grid,
        grid_import_w=None if grid is None else max(0.0, grid),
        grid_export_w=None if grid is None else max(0.0, -grid),
        generation_w=gen_total if gen else None,
        generation_by_source_w=dict(sorted(gen.items())),
        storage_w=storage,
        consumption_w=consumption,
    )
    return flows, unknown, unclassified


BALANCE_KEYS: Final = (
    "consumption_wh", "generation_wh", "renewable_generation_wh", "grid_import_wh", "grid_export_wh",
    "storage_charge_wh", "storage_discharge_wh", "self_consumption_wh",
)  # fmt: skip


def site_balance(
    layout: Layout | None,
    registers: Mapping[tuple[str, str], float],
    marks: Mapping[tuple[str, str], tuple[int, float]],
    *,
    period_start_ms: int,
) -> dict[str, Any] | None:
    """Provisional balance of one period: each channel's register now minus the first reading the hub saw
    in the period (`marks`), through the site's own formulas (`graded_indicators`). A channel the hub saw
    only after the period began is `partial`; one without readings makes its figures None."""
    if layout is None:
        return None
    energy: dict[str, int] = {}
    status: dict[str, str] = {}
    since: int | None = None
    for ch in layout.channels:
        key = (ch.device, ch.quantity)
        now_v, mark = registers.get(key), marks.get(key)
        if now_v is None or mark is None:
            status[ch.id] = "no_data"
            continue
        diff = now_v - mark[1]
        if ch.register_modulus_wh is not None:
            diff %= ch.register_modulus_wh
        if diff < 0:
            status[ch.id] = "register_decreased"
            continue
        energy[ch.id] = round(diff * ch.multiplier)
        status[ch.id] = "partial" if mark[0] > period_start_ms + MARK_SLACK_MS else "ok"
        since = mark[0] if since is None else min(since, mark[0])
    figures, quality = graded_indicators(energy, list(layout.channels), status)
    worst = max((QUALITY_ORDER.index(q) for q in quality.values()), default=0)
    return {
        **{k: figures.get(k) for k in BALANCE_KEYS},
        "generation_by_source_wh": figures.get("generation_by_source_wh", {}),
        "quality": QUALITY_ORDER[worst],
        "since": _iso_ms(since),
        "provisional": True,
    }


class LiveView:
    """The area's live view from the database (the same on every replica)."""

    def __init__(
        self,
        engine: Engine,
        areas: Sequence[AreaConfig],
        cfg: LiveConfig,
        *,
        now_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.engine = engine
        self.areas = {a.id: a for a in areas}
        self.cfg = cfg
        self._now_ms = now_ms
        self._layouts: dict[str, tuple[float, Layout | None]] = {}
        ensure_tables(engine)

    def timezones(self) -> dict[str, str]:
        """site -> its area's timezone (enrolled sites of configured areas)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.sites.c.id, db.sites.c.area)).all()
        return {r.id: self.areas[r.area].timezone for r in rows if r.area in self.areas}

    def _layouts_for(self, sites: Iterable[str]) -> dict[str, Layout | None]:
        now = time.monotonic()
        due = [s for s in sites if s not in self._layouts or now - self._layouts[s][0] > LAYOUT_TTL_S]
        if due:
            with self.engine.connect() as conn:
                latest = conn.execute(
                    select(db.reports.c.site, db.reports.c.month, db.reports.c.log_index)
                    .where(db.reports.c.site.in_(due), db.reports.c.status == "accepted")
                    .order_by(db.reports.c.site, db.reports.c.month, db.reports.c.log_index)
                ).all()
                pick = {r.site: (r.month, r.log_index) for r in latest}  # the last one wins
                raws = {}
                if pick:
                    raws = {
                        r.site: (r.month, bytes(r.raw))
                        for r in conn.execute(
                            select(db.reports.c.site, db.reports.c.month, db.reports.c.raw).where(
                                tuple_(db.reports.c.site, db.reports.c.month, db.reports.c.log_index).in_(
                                    [(s, m, i) for s, (m, i) in pick.items()]
                                )
                            )
                        )
                    }
            for s in due:
                layout = None
                if s in raws:
                    month, raw = raws[s]
                    try:
                        doc = json.loads(raw)
                        layout = Layout(month, tuple(ChannelSpec.from_report(c) for c in doc.get("channels", [])))
                    except (ValueError, KeyError, TypeError):
                        log.warning("live view: the channels of %s's report %s cannot be read", s, month)
                self._layouts[s] = (now, layout)
        return {s: self._layouts[s][1] for s in sites}

    def area(self, area: str) -> dict[str, Any]:
        cfg = self.areas.get(area)
        tz = cfg.timezone if cfg is not None else "UTC"
        now = self._now_ms()
        stale_ms = int(self.cfg.stale_after_s * 1000)
        starts = period_starts(datetime.fromtimestamp(now / 1000, UTC), tz)
        period_keys = {
            "today": "d" + starts["today"].strftime("%Y-%m-%d"),
            "month": "m" + starts["month"].strftime("%Y-%m"),
        }
        with self.engine.connect() as conn:
            sites = [
                str(r[0])
                for r in conn.execute(
                    select(db.sites.c.id)
                    .where(db.sites.c.area == area, db.sites.c.status != "revoked")
                    .order_by(db.sites.c.id)
                )
            ]
            rows = conn.execute(select(live_state).where(live_state.c.site.in_(sites))).all() if sites else []
            mark_rows = (
                conn.execute(
                    select(live_marks).where(
                        and_(live_marks.c.site.in_(sites), live_marks.c.period.in_(list(period_keys.values())))
                    )
                ).all()
                if sites
                else []
            )
            last_reports = {
                r.site: r
                for r in conn.execute(
                    select(db.reports.c.site, db.reports.c.month, db.reports.c.status, db.reports.c.received_ms)
                    .where(db.reports.c.site.in_(sites))
                    .order_by(db.reports.c.site, db.reports.c.received_ms)
                )
            } if sites else {}  # fmt: skip
        layouts = self._layouts_for(sites)
        by_site: dict[str, list[Any]] = {s: [] for s in sites}
        for r in rows:
            by_site[r.site].append(r)
        marks: dict[str, dict[str, dict[tuple[str, str], tuple[int, float]]]] = {}
        for m in mark_rows:
            which = "today" if m.period == period_keys["today"] else "month"
            marks.setdefault(m.site, {}).setdefault(which, {})[(m.device, m.quantity)] = (int(m.ts_ms), float(m.value))
        out_sites = []
        for s in sites:
            out_sites.append(
                self._site(s, by_site[s], layouts[s], marks.get(s, {}), last_reports.get(s), now, stale_ms, starts)
            )
        return {
            "area": area,
            "generated_at": _iso_ms(now),
            "stale_after_s": self.cfg.stale_after_s,
            "timezone": tz,
            "flows": _area_flows(out_sites),
            "today": _area_balance(out_sites, "today", starts["today"].strftime("%Y-%m-%d")),
            "month": _area_balance(out_sites, "month", starts["month"].strftime("%Y-%m")),
            "counts": {k: sum(1 for x in out_sites if x["status"] == k) for k in SITE_STATUSES},
            "sites": out_sites,
        }

    def _site(
        self,
        site: str,
        rows: list[Any],
        layout: Layout | None,
        marks: Mapping[str, Mapping[tuple[str, str], tuple[int, float]]],
        last_report: Any,
        now: int,
        stale_ms: int,
        starts: Mapping[str, datetime],
    ) -> dict[str, Any]:
        broker_status: str | None = None
        avail: dict[str, str] = {}
        states: dict[str, Any] = {}
        for r in rows:
            if r.kind == "status":
                broker_status = r.payload.strip() or None
            elif r.kind == "availability":
                avail[r.device] = r.payload.strip()
            else:
                states[r.device] = r
        devices: dict[str, dict[str, Any]] = {}
        registers: dict[tuple[str, str], float] = {}
        last_ts = last_rcv = None
        for device, r in sorted(states.items()):
            try:
                doc = json.loads(r.payload)
            except ValueError:
                continue
            age = now - int(r.received_ms)
            fresh = age <= stale_ms
            online = avail.get(device, "online") == "online"
            quality = doc.get("quality")
            p = doc.get("power_w")
            invalid = doc.get("invalid") or ()
            power_ok = isinstance(p, int | float) and not isinstance(p, bool) and "power_w" not in invalid
            state = "online" if fresh and online else ("offline" if not online else "stale")
            devices[device] = {
                "state": state,
                "ts": doc.get("ts"),
                "quality": quality,
                "power_w": p if power_ok else None,
                "usable": state == "online" and power_ok and quality != "invalid",
            }
            for q, v in doc.items():
                if q.endswith("_wh") and isinstance(v, int | float) and not isinstance(v, bool):
                    registers[(device, q)] = float(v)
            last_ts = r.ts_ms if last_ts is None else max(last_ts, r.ts_ms)
            last_rcv = int(r.received_ms) if last_rcv is None else max(last_rcv, int(r.received_ms))
        for device, a in avail.items():
            devices.setdefault(device, {"state": "offline" if a != "online" else "unknown", "ts": None,
                                        "quality": None, "power_w": None, "usable": False})  # fmt: skip
        if broker_status == "offline":
            status = "offline"
        elif last_rcv is None:
            status = "unknown"
        elif now - last_rcv > stale_ms:
            status = "stale"
        else:
            status = "online"
        flows, unknown, unclassified = site_flows(layout, devices)
        if status != "online":
            # never the last numbers as if current, never zero: a site not heard from has no flows now
            flows = {k: ({} if isinstance(v, dict) else None) for k, v in flows.items()}
        balance = {
            which: site_balance(
                layout, registers, marks.get(which, {}), period_start_ms=int(starts[which].timestamp() * 1000)
            )
            for which in ("today", "month")
        }
        for d in devices.values():
            d.pop("usable", None)
        return {
            "site": site,
            "status": status,
            "broker_status": broker_status,
            "last_reading": _iso_ms(last_ts),
            "last_reading_age_s": round((now - last_ts) / 1000, 1) if last_ts is not None else None,
            "lag_s": round((last_rcv - last_ts) / 1000, 3) if last_ts is not None and last_rcv is not None else None,
            "last_report": None
            if last_report is None
            else {
                "month": last_report.month,
                "status": last_report.status,
                "received_at": _iso_ms(last_report.received_ms),
            },
            "layout": {"from_report": layout.month} if layout is not None else None,
            "flows": flows,
            "unknown_devices": unknown,
            "unclassified_devices": unclassified,
            "today": balance["today"],
            "month": balance["month"],
            "devices": devices,
        }


SITE_STATUSES: Final = ("online", "stale", "offline", "unknown")
FLOW_KEYS: Final = ("grid_w", "grid_import_w", "grid_export_w", "generation_w", "storage_w", "consumption_w")


def _area_flows(sites: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum of the online sites' flows; each figure names the sites it leaves out (stale, offline, unknown)."""
    out: dict[str, Any] = {}
    left_out: dict[str, list[str]] = {}
    by_source: dict[str, float] = {}
    for key in FLOW_KEYS:
        total = 0.0
        counted = 0
        for s in sites:
            v = s["flows"].get(key)
            if v is None:
                left_out.setdefault(key, []).append(s["site"])
            else:
                total += v
                counted += 1
        out[key] = total if counted else None
    for s in sites:
        for src, v in (s["flows"].get("generation_by_source_w") or {}).items():
            if v is not None:
                by_source[src] = by_source.get(src, 0.0) + v
    out["generation_by_source_w"] = dict(sorted(by_source.items()))
    out["left_out"] = left_out
    out["complete"] = not left_out
    return out


def _area_balance(sites: Sequence[Mapping[str, Any]], which: str, label: str) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label, "provisional": True}
    left_out: dict[str, list[str]] = {}
    worst = 0
    for key in BALANCE_KEYS:
        total, counted = 0, 0
        for s in sites:
            b = s.get(which)
            v = b.get(key) if b else None
            if v is None:
                left_out.setdefault(key, []).append(s["site"])
            else:
                total += v
                counted += 1
        out[key] = total if counted else None
    for s in sites:
        b = s.get(which)
        if b:
            worst = max(worst, QUALITY_ORDER.index(b["quality"]))
    out["quality"] = QUALITY_ORDER[worst] if not left_out else "partial"
    out["left_out"] = left_out
    return out


# -- InfluxDB: measurement `area` -------------------------------------------------------------------------
def area_lines(doc: Mapping[str, Any], ts_ms: int) -> list[str]:
    """Line protocol of one live view: a point per area (tag `area`) and per site (tags `area`, `site`).

    Flow fields are written only when known: a stale or offline site's point carries its `status` and
    `reading_age_s`, never a 0 for a flow it did not report. Timestamps in ms (the gateway's precision).
    """
    area = str(doc["area"])

    def flow_fields(flows: Mapping[str, Any]) -> list[tuple[str, FieldValue]]:
        out: list[tuple[str, FieldValue]] = [(k, float(flows[k])) for k in FLOW_KEYS if flows.get(k) is not None]
        for src, v in sorted((flows.get("generation_by_source_w") or {}).items()):
            if v is not None:
                out.append((f"generation_{src}_w", float(v)))
        return out

    counts: list[tuple[str, FieldValue]] = [(f"sites_{k}", int(v)) for k, v in sorted(doc["counts"].items())]
    lines = [format_line("area", {"area": area}, [*flow_fields(doc["flows"]), *counts,
                         ("complete", bool(doc["flows"]["complete"]))], ts_ms)]  # fmt: skip
    for s in doc["sites"]:
        fields: list[tuple[str, FieldValue]] = [*flow_fields(s["flows"]), ("status", str(s["status"]))]
        if s["last_reading_age_s"] is not None:
            fields.append(("reading_age_s", float(s["last_reading_age_s"])))
        lines.append(format_line("area", {"area": area, "site": str(s["site"])}, fields, ts_ms))
    return lines


class AreaInflux:
    """Writes every configured area's live view to InfluxDB every `interval_s`, at timestamps aligned to
    the interval: replicas that all write compute the same view from the same database and write the same
    points (same series and time), which InfluxDB stores once."""

    def __init__(self, view: LiveView, cfg: InfluxConfig, interval_s: float) -> None:
        self.view = view
        self.cfg = cfg
        self.interval_s = interval_s
        self.points = 0

    async def run(self) -> None:
        from gateway.sinks.influx.sink import InfluxSink

        step_ms = int(self.interval_s * 1000)
        async with InfluxSink(self.cfg, site="hub", device_classes={}) as sink:
            while True:
                now = _now_ms()
                await asyncio.sleep((step_ms - now % step_ms) / 1000)
                ts = _now_ms() // step_ms * step_ms
                for area in list(self.view.areas):
                    doc = await asyncio.to_thread(self.view.area, area)
                    lines = area_lines(doc, ts)
                    await sink.write_lines(lines)
                    self.points += len(lines)
