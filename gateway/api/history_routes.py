"""History for the energy manager: week/month/year balances, per-device trends, the months with reports.

* `GET /api/v1/history/energy?view=week|month|year&date=YYYY-MM-DD` — the balance of each day (week,
  month) or month (year) from the energy registers (`gateway.site.history`), each figure with its
  quality; unknown stays null.
* `GET /api/v1/devices/{device}/trend?quantity=power_w&start=..&end=..&points=N` — mean/min/max per
  bucket of one quantity for the trend chart (zooming asks again for the narrower range). From the
  ledger while it keeps the instant readings (`ledger.retention_days`); older ranges, or ranges too dense
  to aggregate quickly, come from InfluxDB 1.x when configured, else from point samples of the ledger
  (marked `sampled`), so the page always answers fast.
* `GET /api/v1/sites/{site}/reports` — the months the ledger covers (newest first): the page links
  only to reports that can exist.

All ledger work runs on the ledger's reader threads (`Services.reader`), never the writer's: a year
view must not stretch a commit.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request

from drivers.model import QUANTITIES, from_ms, iso_utc, to_ms
from gateway.api.auth import ApiError, Principal, Role
from gateway.site.history import VIEWS

MAX_POINTS: Final = 1500
#: Above this many readings in the range, sample instead of aggregating (a reader thread stays < ~0.3 s).
MAX_AGGREGATE_ROWS: Final = 250_000


class Authenticates(Protocol):
    def authenticate(self, request: Request, role: Role) -> Principal: ...


class TrendLedger(Protocol):
    def trend_buckets(
        self, device: str, quantity: str, start_ms: int, end_ms: int, bucket_ms: int, *, max_rows: int
    ) -> list[tuple[int, int, float, float, float]] | None: ...

    def first_at_or_after(self, device: str, quantity: str, ts_ms: int) -> Any: ...


def ledger_trend(
    led: TrendLedger, device: str, quantity: str, start_ms: int, end_ms: int, points: int
) -> dict[str, Any]:
    """Buckets of one series from the ledger: aggregated when the range is small enough, else sampled."""
    bucket_ms = max(1000, (end_ms - start_ms) // max(1, points))
    rows = led.trend_buckets(device, quantity, start_ms, end_ms, bucket_ms, max_rows=MAX_AGGREGATE_ROWS)
    if rows is not None:
        return {
            "source": "ledger",
            "bucket_s": bucket_ms / 1000,
            "ts": [r[0] for r in rows],
            "mean": [round(r[2], 3) for r in rows],
            "min": [round(r[3], 3) for r in rows],
            "max": [round(r[4], 3) for r in rows],
        }
    ts: list[int] = []
    vals: list[float] = []
    t = start_ms
    while t < end_ms:
        e = led.first_at_or_after(device, quantity, t)
        if e is None or e.ts_ms >= end_ms:
            break
        if e.value is not None and e.quality.value in ("good", "estimated"):
            ts.append(int(e.ts_ms))
            vals.append(float(e.value))
        t = max(t + bucket_ms, int(e.ts_ms) + 1)
    return {"source": "ledger", "sampled": True, "bucket_s": bucket_ms / 1000, "ts": ts, "mean": vals}


@dataclass(frozen=True)
class InfluxQuery:
    """Reads one field back from InfluxDB 1.x with InfluxQL (`/query`), the sink's own schema."""

    url: str
    database: str
    username: str | None
    password: str | None
    site: str
    timeout_s: float

    def trend(
        self, measurement: str, device: str, quantity: str, start_ms: int, end_ms: int, bucket_s: int
    ) -> dict[str, Any]:
        import urllib3

        q = (
            f'SELECT mean("{quantity}"), min("{quantity}"), max("{quantity}") FROM "{measurement}"'
            f" WHERE \"site\" = '{_quote(self.site)}' AND \"device\" = '{_quote(device)}'"
            f" AND time >= {start_ms}ms AND time < {end_ms}ms GROUP BY time({bucket_s}s) fill(none)"
        )
        headers = {}
        if self.username is not None:
            cred = f"{self.username}:{self.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        url = self.url.rstrip("/") + "/query?" + urllib.parse.urlencode({"db": self.database, "q": q, "epoch": "ms"})
        pool = urllib3.PoolManager(num_pools=1, timeout=self.timeout_s, retries=False)
        try:
            resp = pool.request("GET", url, headers=headers)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(502, "influxdb_unavailable", f"InfluxDB {self.url}: {type(exc).__name__}") from None
        finally:
            pool.clear()
        if resp.status != 200:
            raise ApiError(502, "influxdb_unavailable", f"InfluxDB {self.url} answered HTTP {resp.status}")
        body = json.loads(resp.data)
        series = (body.get("results") or [{}])[0].get("series") or []
        values = series[0]["values"] if series else []
        return {
            "source": "influxdb",
            "bucket_s": bucket_s,
            "ts": [int(v[0]) for v in values],
            "mean": [v[1] for v in values],
            "min": [v[2] for v in values],
            "max": [v[3] for v in values],
        }


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")


def _parse_time(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_request", f"{value!r}: write an ISO 8601 time, e.g. 2026-03-01T00:00:00Z") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


Reuse = Callable[[Hashable, Callable[[], Coroutine[Any, Any, dict[str, Any]]]], Awaitable[dict[str, Any]]]


@dataclass
class HistorySources:
    """What the routes need, each doing its ledger work on a reader thread."""

    site: str
    timezone: str
    now: Callable[[], datetime]
    energy: Callable[[str, date], Awaitable[dict[str, Any]]]
    trend: Callable[[str, str, int, int, int], Awaitable[dict[str, Any]]]
    first_counter_ms: Callable[[], Awaitable[int | None]]
    device_classes: dict[str, str]
    instant_retention_days: float
    influx: InfluxQuery | None = None
    #: answers of the InfluxDB trend reused between viewers (the agent: its ViewCache), their times
    #: rounded to `reuse_ms` in the key (the cache's lifetime); by default each request queries
    reuse: Reuse = field(default=lambda _key, compute: compute())
    reuse_ms: int = 1


def add_history_routes(app: FastAPI, *, auth: Authenticates, src: HistorySources) -> None:
    @app.get("/api/v1/history/energy", tags=["live"], summary="Week, month or year of the energy balance")
    async def energy(request: Request, view: str = "month") -> dict[str, Any]:
        auth.authenticate(request, "viewer")
        if view not in VIEWS:
            raise ApiError(400, "bad_request", f"view must be one of {', '.join(VIEWS)}")
        raw = request.query_params.get("date")  # `date` would shadow the type as a parameter name
        local_today = src.now().astimezone(ZoneInfo(src.timezone)).date()
        try:
            anchor = date.fromisoformat(raw) if raw else local_today
        except ValueError:
            raise ApiError(400, "bad_request", f"{raw!r}: write the date as YYYY-MM-DD") from None
        return await src.energy(view, anchor)

    @app.get("/api/v1/devices/{device}/trend", tags=["live"], summary="Trend of one quantity of one device")
    async def trend(
        request: Request,
        device: str,
        quantity: str = "power_w",
        start: str | None = None,
        end: str | None = None,
        points: int = 600,
    ) -> dict[str, Any]:
        auth.authenticate(request, "viewer")
        if device not in src.device_classes:
            raise ApiError(404, "unknown_device", f"no device {device!r} on this site")
        if quantity not in QUANTITIES:
            raise ApiError(400, "bad_request", f"unknown quantity {quantity!r}")
        if not 10 <= points <= MAX_POINTS:
            raise ApiError(400, "bad_request", f"points must be between 10 and {MAX_POINTS}")
        now = src.now()
        t1 = _parse_time(end, now)
        t0 = _parse_time(start, t1 - timedelta(days=1))
        if not t0 < t1 or t1 - t0 > timedelta(days=800):
            raise ApiError(400, "bad_request", "start must be before end, at most 800 days apart")
        start_ms, end_ms = to_ms(t0), to_ms(t1)
        kept_from = now - timedelta(days=src.instant_retention_days)
        counter = QUANTITIES[quantity].kind.value == "counter"
        if src.influx is not None and (t0 < kept_from and not counter):
            import asyncio

            bucket_s = max(1, (end_ms - start_ms) // 1000 // points)
            measurement = src.device_classes[device]
            query = src.influx

            async def from_influx() -> dict[str, Any]:
                return await asyncio.to_thread(query.trend, measurement, device, quantity, start_ms, end_ms, bucket_s)

            # a trend ending now is a new request every time: without reuse each viewer's poll was an
            # InfluxDB query parsed on a thread (19 % of the agent's samples in the attack soak)
            r = max(1, src.reuse_ms)
            out = await src.reuse(("influx-trend", device, quantity, start_ms // r, end_ms // r, bucket_s), from_influx)
        else:
            out = await src.trend(device, quantity, start_ms, end_ms, points)
            if t0 < kept_from and not counter:
                out["note"] = "instant readings older than the ledger's retention are not kept on the gateway"
        unit = QUANTITIES[quantity].unit
        return {"device": device, "quantity": quantity, "unit": unit, "start": iso_utc(t0), "end": iso_utc(t1), **out}

    @app.get("/api/v1/sites/{site}/reports", tags=["certification"], summary="Months with reports")
    async def months(request: Request, site: str) -> dict[str, Any]:
        principal = auth.authenticate(request, "viewer")
        if site != src.site:
            raise ApiError(404, "unknown_site", f"this gateway serves site {src.site!r}")
        if not principal.may_read_site(site):
            raise ApiError(403, "forbidden", f"'{principal.name}' may not read site {site!r}")
        first = await src.first_counter_ms()
        tz = ZoneInfo(src.timezone)
        now = src.now().astimezone(tz)
        out: list[dict[str, str]] = []
        if first is not None:
            f = from_ms(first).astimezone(tz)
            y, m = now.year, now.month
            while (y, m) >= (f.year, f.month) and len(out) < 24:
                out.append({"month": f"{y:04d}-{m:02d}", "state": "open" if not out else "closed"})
                y, m = (y, m - 1) if m > 1 else (y - 1, 12)
        return {"site": site, "months": out}
