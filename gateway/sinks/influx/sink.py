"""The InfluxDB sink: committed ledger entries -> one line-protocol point per (device, timestamp).

Schema (the public contract): measurement = the device's class (`meter`, `inverter`, `wind_turbine`,
`battery`), tags `site` and `device`, one field per quantity named as the quantity, time = the
reading's timestamp in ms. Each point also carries a string field `quality`: the worst quality of the
readings at that instant, counting invalid readings whose value is omitted (so a gap is visible as a
point with `quality="invalid"`, never as an invented number).

Field types are fixed by the quantity, not by the Python type of one value: counters (`energy_*_wh`)
and `status` are integer fields, everything else is a float field. Otherwise a power reading that
happens to arrive as `1500` after `1499.5` would be refused by InfluxDB as a field type conflict
forever after.

Idempotency: a point's identity is (measurement, tags, time); writing the same entries again writes
the same points with the same values, which InfluxDB overwrites in place. The forwarder never splits
one (device, ts) group across batches, so a replay rebuilds identical lines.

Two flavours behind one interface:

* `api: v2` (InfluxDB 2.x, 3.x, Cloud): `/api/v2/write` through the `influxdb-client` package, its
  synchronous WriteApi fed pre-formatted strings. `influxdb_client` is imported only here, inside
  `__aenter__`, so an agent that does not use InfluxDB never pays its memory.
* `api: v1` (InfluxDB 1.x): `POST /write?db=&rp=&precision=ms` with urllib3 (basic auth header, not
  credentials in the URL, so they never reach access logs).

Both are blocking HTTP clients; every request runs in a worker thread (`asyncio.to_thread`), never
on the event loop. Errors are translated at this edge:

    SinkError      connection refused/reset, timeout, TLS failure, 5xx, 429, 401/403/404 (the data is
                   fine: keep it and retry with backoff; the message names the fix)
    SinkRejected   400 (unparsable line, field type conflict), 422, 413 for a single line
    (413 for several lines: the request is split in halves until the server accepts it, no point lost)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self

from drivers.cancel import raise_if_cancelling
from drivers.model import QUANTITIES, Quality, QuantityKind
from gateway.credentials import redact_url
from gateway.ledger.store import Poll
from gateway.settings import InfluxConfig
from gateway.sinks.base import SinkError, SinkRejected
from gateway.sinks.influx.lineprotocol import escape_key, escape_measurement, format_float, format_int, format_string
from gateway.sinks.outbox import LatestOutbox

log = logging.getLogger(__name__)

_INT_KINDS: Final = (QuantityKind.COUNTER, QuantityKind.STATE)
_RANK: Final = {q: q.rank for q in Quality}
_QUALITY_BY_RANK: Final = {q.rank: f"quality={format_string(q.value)}" for q in Quality}
_MAX_MESSAGE: Final = 400


class _Transport(Protocol):
    def write(self, body: bytes) -> None: ...

    def close(self) -> None: ...


class InfluxSink:
    """Forwards ledger entries to InfluxDB (v1 or v2 API). See the module docstring for the schema."""

    name = "influxdb"

    def __init__(
        self,
        config: InfluxConfig,
        *,
        site: str,
        device_classes: Mapping[str, str],
        default_class: str = "meter",
    ) -> None:
        """`device_classes`: device id -> measurement. A device missing from it (e.g. removed from the
        config while its readings still wait in the ledger) is written under `default_class`."""
        self.config = config
        self.batch_size = config.batch_size
        self.site = site
        self._site_tag = escape_key(site, "site id")
        self._device_classes = dict(device_classes)
        self._default_class = default_class
        escape_measurement(default_class)
        for measurement in self._device_classes.values():
            escape_measurement(measurement)  # refuse an unwritable name at start, not at send time
        self._prefixes: dict[str, str] = {}
        self._fields: dict[str, tuple[str, bool | None]] = {}
        self._transport: _Transport | None = None
        #: Most lines per request; lowered when the server answers 413 (request too large).
        self._max_lines = max(1, config.batch_size)
        #: Points and requests acknowledged by the server since start (for health and benchmarks).
        self.points_written = 0
        self.requests = 0

    # -- formatting (pure, synchronous) -----------------------------------------------------------
    def _prefix(self, device: str) -> str:
        """`measurement,device=..,site=.. ` for a device, cached: most of a line is this prefix."""
        p = self._prefixes.get(device)
        if p is None:
            measurement = self._device_classes.get(device, self._default_class)
            p = f"{escape_measurement(measurement)},device={escape_key(device, 'device id')},site={self._site_tag} "
            self._prefixes[device] = p
        return p

    def _field(self, quantity: str) -> tuple[str, bool | None]:
        """(`key=` escaped, integer field?) for a quantity; None = unknown quantity, typed by value."""
        f = self._fields.get(quantity)
        if f is None:
            spec = QUANTITIES.get(quantity)
            f = (escape_key(quantity, "quantity") + "=", None if spec is None else spec.kind in _INT_KINDS)
            self._fields[quantity] = f
        return f

    def lines(self, polls: Sequence[Poll]) -> list[str]:
        """One line per poll, in order. Pure: no I/O.

        Within a poll a later entry of the same quantity wins (a replay is identical anyway).
        """
        # The hot loop of the sink (~0.5 us per entry on a laptop core): locals, no per-value calls on
        # the common path (a float quantity holding a float).
        fields, field, prefix, rank = self._fields, self._field, self._prefix, _RANK
        out: list[str] = []
        for poll in polls:
            worst = 0
            parts: list[str] = []
            group = {e.quantity: e for e in poll.entries}
            for quantity, e in group.items():
                r = rank[e.quality]
                if r > worst:
                    worst = r
                v = e.value
                if v is None:
                    continue
                f = fields.get(quantity) or field(quantity)
                if f[1] is False and type(v) is float:
                    text = repr(v)
                    if text[-1] in "fn":  # 'inf', 'nan': the ledger never holds them, but never write them
                        text = format_float(v)  # raises ValueError
                    parts.append(f[0] + text)
                else:
                    parts.append(f[0] + self._value(v, f[1]))
            parts.append(_QUALITY_BY_RANK[worst])
            out.append(f"{prefix(poll.device)}{','.join(parts)} {poll.ts_ms}")
        return out

    @staticmethod
    def _value(value: float | int, is_int: bool | None) -> str:
        if is_int is None:
            is_int = isinstance(value, int)
        if is_int:
            if isinstance(value, float):
                value = round(value)  # a counter should be an int already; never write a float field
            return format_int(value)
        return format_float(value)

    # -- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        # Building the client may import influxdb_client (~0.3 s): off the loop.
        self._transport = await asyncio.to_thread(self._make_transport)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await asyncio.to_thread(transport.close)

    def _make_transport(self) -> _Transport:
        if self.config.api == "v1":
            return _V1Transport(self.config)
        return _V2Transport(self.config)

    async def send(self, polls: Sequence[Poll]) -> None:
        """Write the polls' points; returns once InfluxDB acknowledged them (HTTP 204)."""
        if self._transport is None:
            raise RuntimeError("InfluxSink.send outside 'async with'")
        lines = self.lines(polls)
        if not lines:
            return
        # The HTTP clients block: run the requests in a worker thread so polling never stalls.
        await asyncio.to_thread(self._write_lines, self._transport, lines)

    def _write_lines(self, transport: _Transport, lines: list[str]) -> None:
        """Write in requests of at most `_max_lines` lines; on 413 halve the request and remember it.

        A proxy or a cloud tier may cap the request body (HTTP 413). The points themselves are fine,
        so skipping them would lose data: split until the server accepts, and keep the smaller size
        for later batches. Only a single line that is still too large is refused as such.
        """
        i = 0
        while i < len(lines):
            chunk = lines[i : i + self._max_lines]
            try:
                transport.write(("\n".join(chunk) + "\n").encode())
            except _TooLarge:
                if len(chunk) == 1:
                    raise
                self._max_lines = max(1, len(chunk) // 2)
                log.warning(
                    "InfluxDB refused %d points as too large (413): sending %d per request", len(chunk), self._max_lines
                )
                continue
            self.points_written += len(chunk)
            self.requests += 1
            i += len(chunk)

    async def write_lines(self, lines: Sequence[str]) -> None:
        """Write pre-formatted points that are not ledger entries (forecasts, flexibility): idempotent."""
        if self._transport is None:
            raise RuntimeError("InfluxSink.write_lines outside 'async with'")
        if lines:
            await asyncio.to_thread(self._transport.write, ("\n".join(lines) + "\n").encode())
            self.requests += 1

    async def extras_publisher(self, outbox: LatestOutbox[str, list[str]]) -> None:
        """Side task while connected: write the outbox's point sets now and whenever they change."""
        written: dict[str, list[str]] = {}
        while True:
            for key, lines in outbox.snapshot().items():
                if written.get(key) is not lines:
                    await self.write_lines(lines)
                    written[key] = lines
            raise_if_cancelling()  # see drivers/cancel.py
            await outbox.wait_changed()


# -- transports -------------------------------------------------------------------------------------
def _server_message(body: bytes | str | None) -> str:
    """The server's own words: `error` (1.x) or `message` (2.x) of a JSON body, else the text."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for k in ("error", "message"):
            if isinstance(doc.get(k), str):
                text = doc[k]
                break
    text = text.strip()
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


_HINTS: Final = {
    401: "check the InfluxDB credentials (token, or username/password for api v1)",
    403: "the token/user may not write to this bucket/database",
    404: "check the url, api (v1/v2), database/bucket and org; create the database or bucket",
}


class _TooLarge(SinkRejected):
    """HTTP 413: the request body is over the server's (or its proxy's) limit; the points are fine."""


def _check_status(status: int, body: bytes | str | None, where: str) -> None:
    if 200 <= status < 300:
        return
    msg = _server_message(body)
    if status == 413:
        raise _TooLarge(f"{where}: HTTP 413: {msg} (request too large)")
    if status in (400, 422):
        raise SinkRejected(f"{where}: HTTP {status}: {msg}")
    hint = _HINTS.get(status)
    raise SinkError(f"{where}: HTTP {status}: {msg}" + (f" ({hint})" if hint else ""))


def _timeout(config: InfluxConfig) -> Any:
    import urllib3

    return urllib3.Timeout(connect=min(5.0, config.timeout_s), read=config.timeout_s)


def _quiet_insecure_warning(config: InfluxConfig) -> None:
    if not config.verify_tls and config.url.startswith("https"):
        import warnings

        import urllib3

        # The operator chose this in the config; say it once here instead of a warning per request.
        log.warning("InfluxDB TLS certificate verification is OFF (influxdb.verify_tls: false)")
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)


class _V1Transport:
    """InfluxDB 1.x `/write` over urllib3."""

    def __init__(self, config: InfluxConfig) -> None:
        import urllib3

        self._urllib3 = urllib3
        _quiet_insecure_warning(config)
        kw: dict[str, Any] = {}
        if config.url.startswith("https"):
            kw["cert_reqs"] = "CERT_REQUIRED" if config.verify_tls else "CERT_NONE"
            if config.ca_file is not None:
                kw["ca_certs"] = str(config.ca_file)
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=2, timeout=_timeout(config), retries=False, **kw)
        params = {"db": config.database or "", "precision": "ms"}
        if config.retention_policy:
            params["rp"] = config.retention_policy
        self._url = config.url.rstrip("/") + "/write?" + urllib.parse.urlencode(params)
        self._where = f"InfluxDB {redact_url(config.url)} (v1, db {config.database})"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = config.password_value()
        if config.username is not None:
            cred = f"{config.username}:{password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()

    def write(self, body: bytes) -> None:
        try:
            resp = self._pool.request("POST", self._url, body=body, headers=self._headers)
        except (self._urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkError(f"{self._where}: {type(exc).__name__}: {exc}") from None
        _check_status(resp.status, resp.data, self._where)

    def close(self) -> None:
        self._pool.clear()


class _V2Transport:
    """InfluxDB 2.x/3.x/Cloud `/api/v2/write` through influxdb-client's synchronous WriteApi."""

    def __init__(self, config: InfluxConfig) -> None:
        import urllib3
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        self._urllib3 = urllib3
        self._api_exception: type[Exception] = ApiException
        self._precision: Any = WritePrecision.MS  # a str constant where the API wants the enum type
        _quiet_insecure_warning(config)
        self._bucket = config.bucket or ""
        self._org = config.org or ""
        self._where = f"InfluxDB {redact_url(config.url)} (v2, bucket {self._bucket})"
        kw: dict[str, Any] = {"verify_ssl": config.verify_tls}
        if config.ca_file is not None:
            kw["ssl_ca_cert"] = str(config.ca_file)
        self._client = InfluxDBClient(
            url=config.url,
            token=config.token_value() or "",
            org=self._org,
            timeout=int(config.timeout_s * 1000),
            retries=False,  # the forwarder owns retry and backoff
            connection_pool_maxsize=2,
            **kw,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        try:
            self._api.write(bucket=self._bucket, org=self._org, record=body, write_precision=self._precision)
        except self._api_exception as exc:
            status = int(getattr(exc, "status", 0) or 0)
            if status == 0:  # influxdb-client's wrapping of TLS and protocol errors
                raise SinkError(f"{self._where}: {getattr(exc, 'reason', exc)}") from None
            _check_status(status, getattr(exc, "body", None), self._where)
            raise SinkError(f"{self._where}: HTTP {status}") from None  # 2xx raised: should not happen
        except (self._urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkError(f"{self._where}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]
