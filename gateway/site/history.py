"""Week, month and year views of the energy balance, from the energy registers (the report's rule).

A view is a row of civil periods in the site's time zone (days of a week or a month, months of a
year); each period's figures are register advances between its boundaries, graded like the page's
balance (`balance.graded_indicators`): a channel without a usable advance makes every figure that
needs it unknown, never a zero.

Why boundaries once per channel and not `register_balance` per period: neighbouring periods share a
boundary reading, so a month view of 31 days costs 32 indexed look-ups per channel instead of 62 (plus
the wrap walk of channels with a register modulus) — a 50-device site's month renders in well under a
second on a Pi-class core (bench/web_page.py measures it beside ingestion). Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from itertools import pairwise
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from drivers.model import to_ms
from gateway.site.balance import (
    QUALITY_ORDER,
    RegisterLookup,
    _advance,
    _first_reading,
    _reading_at,
    graded_indicators,
)
from gateway.site.channels import ChannelSpec

View = Literal["week", "month", "year"]
VIEWS: Final = ("week", "month", "year")
#: A closing reading older than this at the end of a period that has ended makes the period `stale`.
STALE_MS: Final = 3_600_000


def view_periods(view: View, anchor: date, timezone: str) -> list[tuple[str, datetime, datetime]]:
    """(label, start, end) of each period of the view containing `anchor`, local midnights as aware times.

    week: the 7 days Monday..Sunday; month: every day of the civil month; year: the 12 months."""
    tz = ZoneInfo(timezone)

    def midnight(d: date) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=tz)

    if view == "week":
        first = anchor - timedelta(days=anchor.weekday())
        days = [first + timedelta(days=k) for k in range(8)]
        return [(d.isoformat(), midnight(d), midnight(n)) for d, n in pairwise(days)]
    if view == "month":
        first = anchor.replace(day=1)
        nxt = (first + timedelta(days=32)).replace(day=1)
        days = [first + timedelta(days=k) for k in range((nxt - first).days + 1)]
        return [(d.isoformat(), midnight(d), midnight(n)) for d, n in pairwise(days)]
    months = [date(anchor.year + (m // 12), m % 12 + 1, 1) for m in range(13)]
    return [(d.strftime("%Y-%m"), midnight(d), midnight(n)) for d, n in pairwise(months)]


def period_balances(
    channels: Sequence[ChannelSpec],
    lookup: RegisterLookup,
    *,
    view: View,
    anchor: date,
    timezone: str,
    now: datetime,
) -> dict[str, Any]:
    """The view's periods with their indicators and qualities; periods after `now` are `future`."""
    periods = view_periods(view, anchor, timezone)
    now_ms = to_ms(now)
    edges = [to_ms(periods[0][1])] + [to_ms(end) for _, _, end in periods]
    edges_clamped = [min(e, now_ms) for e in edges]
    # per channel: the last valid reading at or before each (clamped) boundary, and the first ever
    at: dict[str, list[tuple[int, int] | None]] = {}
    first: dict[str, tuple[int, int] | None] = {}
    for ch in channels:
        at[ch.id] = [_reading_at(lookup, ch.device, ch.quantity, e) for e in edges_clamped]
        first[ch.id] = _first_reading(lookup, ch.device, ch.quantity, 0)
    rows: list[dict[str, Any]] = []
    for k, (label, start, _end) in enumerate(periods):
        s_ms, e_ms = edges[k], edges[k + 1]
        if s_ms >= now_ms:
            rows.append({"label": label, "start": start.isoformat(), "state": "future"})
            continue
        energy: dict[str, int] = {}
        status: dict[str, str] = {}
        for ch in channels:
            opening, closing = at[ch.id][k], at[ch.id][k + 1]
            partial = False
            f = first[ch.id]
            if opening is None and f is not None and f[0] < min(e_ms, now_ms):
                opening, partial = f, True
            if opening is None or closing is None or closing[0] < opening[0]:
                status[ch.id] = "no_data"
                continue
            adv = _advance(lookup, ch, opening, closing)
            if adv is None:
                status[ch.id] = "register_decreased"
                continue
            energy[ch.id] = adv * ch.multiplier
            stale = min(e_ms, now_ms) - closing[0] > STALE_MS
            status[ch.id] = "partial" if partial else ("stale" if stale else "ok")
        graded, quality = graded_indicators(energy, channels, status)
        worst = max((QUALITY_ORDER.index(q) for q in quality.values()), default=0)
        rows.append(
            {
                "label": label,
                "start": start.isoformat(),
                "state": "open" if e_ms > now_ms else "closed",
                "indicators": graded,
                "quality": quality,
                "worst_quality": QUALITY_ORDER[worst],
                "channels": {cid: st for cid, st in status.items() if st != "ok"},
            }
        )
    return {"view": view, "anchor": anchor.isoformat(), "timezone": timezone, "periods": rows}
