"""What certification reads from the ledger's events chain. Pure (standard library only).

The gateway (from SQLite) and `gia verify` (from the bundle's `events.jsonl`) parse the very same
events with these functions, so both apply the same meter replacements and see the same report
closings. An event is `{id, ts (ms), kind, device, detail (JSON text)}`.

Kinds used here:

* `meter_replacement` — `{registers: {quantity: {closing_wh, opening_wh}}, old_serial, new_serial,
  recorded_at, note}`: the swap instant is the event's `ts`; `recorded_at` is when it was recorded,
  from the guarded clock;
* `report_closed` — `{month, report_sha256, chain_head_seq, events_head_id, generated_at,
  previous_report_sha256, reissue_of, reissue_reason}`: a month's report was stored as authoritative;
  a later one for the same month must be a reissue naming it;
* `key_transition` — see `keys.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from gateway.certification.compute import Replacement
from gateway.certification.exact import parse_iso_ms

REPLACEMENT: Final = "meter_replacement"
REPORT_CLOSED: Final = "report_closed"


def _detail(e: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        d = json.loads(e["detail"])
    except (ValueError, TypeError, KeyError):
        return None
    return d if isinstance(d, dict) else None


def replacements(events: Iterable[Mapping[str, Any]], *, max_id: int | None = None) -> list[Replacement]:
    """Every recorded meter-replacement register pair with event id <= max_id, sorted by (time, id).

    A malformed event is skipped: the decrease it was meant to explain is then flagged as a reset.
    """
    out: list[Replacement] = []
    for e in events:
        if e.get("kind") != REPLACEMENT or (max_id is not None and int(e["id"]) > max_id):
            continue
        d = _detail(e)
        if d is None:
            continue
        try:
            recorded = d.get("recorded_at")
            recorded_ms = parse_iso_ms(recorded) if isinstance(recorded, str) else None
            for quantity, pair in sorted(d["registers"].items()):
                out.append(
                    Replacement(
                        event_id=int(e["id"]),
                        ts_ms=int(e["ts"]),
                        device=str(e["device"]),
                        quantity=str(quantity),
                        closing_wh=int(pair["closing_wh"]),
                        opening_wh=int(pair["opening_wh"]),
                        old_serial=d.get("old_serial"),
                        new_serial=d.get("new_serial"),
                        recorded_ms=recorded_ms,
                    )
                )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    out.sort(key=lambda r: (r.ts_ms, r.event_id))
    return out


def report_closings(events: Iterable[Mapping[str, Any]], month: str | None = None) -> list[dict[str, Any]]:
    """The `report_closed` events (for `month` when given), in chain order, each with its event id."""
    out = []
    for e in events:
        if e.get("kind") != REPORT_CLOSED:
            continue
        d = _detail(e)
        if d is None or (month is not None and d.get("month") != month):
            continue
        out.append({**d, "event_id": int(e["id"])})
    return out


def reissue_problem(month: str, reissue_of: str | None, closings: list[dict[str, Any]]) -> str | None:
    """Why a report for `month` breaks "one authoritative report per closed month", given the month's
    closings recorded in the events chain before it (None when it does not).

    No closing yet: the report must not claim to replace anything. Closings recorded: the report must
    be a reissue of the last one (an undeclared second report, or a reissue of a superseded version,
    fails).
    """
    if not closings:
        if reissue_of:
            return f"reissue_of names {reissue_of}, but the events chain records no closed report for {month}"
        return None
    last = closings[-1]
    if not reissue_of:
        return (
            f"the events chain records {month} closed as report {last.get('report_sha256')} (event"
            f" {last.get('event_id')}); this report does not name it as the report it replaces (reissue_of)"
        )
    if last.get("report_sha256") != reissue_of:
        return (
            f"reissue_of names {reissue_of}, but the last closed report of {month} in the events chain is"
            f" {last.get('report_sha256')}"
        )
    return None
