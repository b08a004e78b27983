"""Certification's view of the ledger: readings as the method's `Series`, meter replacements as records.

The SQL lives with the schema in `gateway.ledger.store.Ledger` (one reader of the ledger); this adapter
only turns its rows into the method's types. It opens its own read-only connection (WAL readers never
block the agent's writer, and never run on its thread). Filters are those of the method: kept (not
pruned), quality `good`, integer values, and `seq <= max_seq` so a report is reproducible from the
ledger as it was at build time even after later appends.

Meter replacements are ledger events (`kind="meter_replacement"`) written by `record_meter_replacement`
and parsed by `events.py` (which `gia verify` shares).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from drivers.model import to_ms
from gateway.certification.compute import Replacement, Series
from gateway.certification.events import REPLACEMENT
from gateway.certification.events import replacements as parse_replacements
from gateway.certification.exact import iso_ms
from gateway.ledger.store import Ledger
from gateway.runtime.clockguard import guarded_now


class LedgerSource:
    def __init__(self, path: Path) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"ledger {path} does not exist (has the agent run yet?)")
        self.ledger = Ledger(path, readonly=True)

    def close(self) -> None:
        self.ledger.close()

    def head(self) -> tuple[int, bytes]:
        return self.ledger.head

    def events_head(self) -> tuple[int, bytes] | None:
        return self.ledger.events_head()

    def events_rows(self, max_id: int) -> Iterator[tuple[int, int, str, str | None, str, bytes]]:
        return self.ledger.events_rows(max_id)

    def hash_at(self, seq: int) -> bytes:
        return self.ledger.hash_at(seq)

    def event_hash_at(self, event_id: int) -> bytes:
        return self.ledger.event_hash_at(event_id)

    def first_counter_ms(self) -> int | None:
        return self.ledger.first_counter_ms()

    def series(
        self,
        device: str,
        quantity: str,
        start_ms: int,
        end_ms: int,
        *,
        margin_ms: int,
        max_seq: int,
        frozen: tuple[int, int] | None = None,
    ) -> tuple[Series, int]:
        """Good readings in [start - margin, end + margin) plus the nearest good one outside on each side,
        and the number of kept but unusable readings (not good, or not an integer) inside [start, end).

        `frozen = (ts, seq)`: the readings up to `ts` are taken as the previous month's closed report saw
        them (seq <= its chain head), so a reading stored late cannot move a boundary that month M's
        report and month M+1's must share."""
        lo, hi = start_ms - margin_ms, end_ms + margin_ms
        # one pass over the range: the usable flag comes with each row, so the same scan also counts the
        # unusable readings for the meter-status rule (a second COUNT query costs a full scan)
        rows: list[Any] = self.ledger.register_rows(device, quantity, lo, hi, max_seq=max_seq)
        bad = 0
        if any(not r[4] for r in rows):
            bad = sum(1 for r in rows if not r[4] and start_ms <= r[0] < end_ms)
            rows = [r for r in rows if r[4]]
        before = self.ledger.usable_register_row(device, quantity, lo, before=True, max_seq=max_seq)
        after = self.ledger.usable_register_row(device, quantity, hi, before=False, max_seq=max_seq)
        if before is not None:
            rows.insert(0, before)
        if after is not None:
            rows.append(after)
        if frozen is not None:
            f_ts, f_seq = frozen
            rows = [r for r in rows if not (r[0] <= f_ts and r[2] > f_seq)]
        series = Series([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
        return series, bad

    def replacements(self, *, max_event_id: int | None = None) -> list[Replacement]:
        """Every recorded meter replacement register pair up to the events head, sorted by time."""
        events = self.ledger.events(kind=REPLACEMENT)
        return parse_replacements(
            ({"id": e.id, "ts": e.ts_ms, "kind": e.kind, "device": e.device, "detail": e.detail} for e in events),
            max_id=max_event_id,
        )

    def events_json(self, max_id: int) -> list[dict[str, Any]]:
        """Events up to `max_id` as `{id, ts, kind, device, detail}` (what `events.py` and `keys.py` read)."""
        return [
            {"id": eid, "ts": ts, "kind": kind, "device": device, "detail": detail}
            for eid, ts, kind, device, detail, _h in self.events_rows(max_id)
        ]

    def serial_rows(
        self, device: str, start_ms: int, end_ms: int, *, max_seq: int
    ) -> list[tuple[int, int, int, str, str, bytes, bytes]]:
        """The device's good `serial_number` readings in [start, end) (seq <= max_seq), in (ts, seq) order,
        as `evidence_rows` gives them: what the report records as the serial the meter reported."""
        return list(
            self.ledger.usable_rows_with_prev_hash(device, "serial_number", start_ms, end_ms - 1, max_seq=max_seq)
        )

    def evidence_rows(
        self, device: str, quantity: str, bounds: tuple[int, int, int, int] | None, *, max_seq: int
    ) -> Iterator[tuple[int, int, int, str, str, bytes, bytes]]:
        """(seq, ts_ms, value, unit, quality, hash, prev_hash) of the readings a channel used, in (ts, seq)
        order: the same filter as `series`, between the first and last used (ts, seq)."""
        if bounds is None:
            return
        t0, s0, t1, s1 = bounds
        for row in self.ledger.usable_rows_with_prev_hash(device, quantity, t0, t1, max_seq=max_seq):
            if (row[1], row[0]) < (t0, s0) or (row[1], row[0]) > (t1, s1):
                continue
            yield row


def record_meter_replacement(
    ledger: Ledger,
    *,
    device: str,
    at: datetime,
    registers: dict[str, tuple[int, int]],
    old_serial: str | None = None,
    new_serial: str | None = None,
    note: str = "",
    recorded_ms: int | None = None,
) -> int:
    """Record a meter exchange: for each register quantity, the old meter's closing and the new meter's
    opening value (register values, as read from the displays). Returns the event id.

    The record carries when it was made (`recorded_at`, from the guarded clock unless given): the report
    flags a record made long after the swap, and one made after the month's report exists never
    changes that report (only a reissue can). A record without the new meter's serial is refused by the
    method, as is one whose values disagree with the readings around the swap."""
    if not registers:
        raise ValueError("a meter replacement needs at least one register: quantity=(closing, opening)")
    if recorded_ms is None:
        recorded_ms = int(guarded_now(ledger.clock_floor_ms()).timestamp() * 1000)
    detail: dict[str, Any] = {
        "registers": {q: {"closing_wh": int(c), "opening_wh": int(o)} for q, (c, o) in registers.items()},
        "old_serial": old_serial,
        "new_serial": new_serial,
        "recorded_at": iso_ms(recorded_ms),
        "note": note,
    }
    return ledger.record_event(REPLACEMENT, json.dumps(detail, sort_keys=True), ts_ms=to_ms(at), device=device)
