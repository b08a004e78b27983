"""Certification's view of the ledger: readings as the method's `Series`, meter replacements as records.

The SQL lives with the schema in `gateway.ledger.store.Ledger` (one reader of the ledger); this adapter
only turns its rows into the method's types. It opens its own read-only connection (WAL readers never
block the agent's writer, and never run on its thread). Filters are those of the method: kept (not
pruned), quality `good`, integer values, and `seq <= max_seq` so a report is reproducible from the
ledger as it was at build time even after later appends.

Meter replacements are ledger events (`kind="meter_replacement"`) written by `record_meter_replacement`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from drivers.model import to_ms
from gateway.certification.compute import Replacement, Series
from gateway.ledger.store import Ledger

REPLACEMENT: Final = "meter_replacement"


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

    def first_counter_ms(self) -> int | None:
        return self.ledger.first_counter_ms()

    def series(
        self, device: str, quantity: str, start_ms: int, end_ms: int, *, margin_ms: int, max_seq: int
    ) -> tuple[Series, int]:
        """Good readings in [start - margin, end + margin) plus the nearest good one outside on each side,
        and the number of kept but unusable readings (not good, or not an integer) inside [start, end)."""
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
        series = Series([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
        return series, bad

    def replacements(self, *, until_ms: int | None = None) -> list[Replacement]:
        """Every recorded meter replacement register pair, sorted by time."""
        out: list[Replacement] = []
        for event in self.ledger.events(kind=REPLACEMENT):
            if until_ms is not None and event.ts_ms > until_ms:
                continue
            try:
                d = json.loads(event.detail)
                for quantity, pair in sorted(d["registers"].items()):
                    out.append(
                        Replacement(
                            event_id=event.id,
                            ts_ms=event.ts_ms,
                            device=str(event.device),
                            quantity=str(quantity),
                            closing_wh=int(pair["closing_wh"]),
                            opening_wh=int(pair["opening_wh"]),
                            old_serial=d.get("old_serial"),
                            new_serial=d.get("new_serial"),
                        )
                    )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a malformed event is ignored here; the resulting decrease is flagged as a reset
        out.sort(key=lambda r: (r.ts_ms, r.event_id))
        return out

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
) -> int:
    """Record a meter exchange: for each register quantity, the old meter's closing and the new meter's
    opening value (integer Wh, as read from the displays). Returns the event id."""
    if not registers:
        raise ValueError("a meter replacement needs at least one register: quantity=(closing, opening)")
    detail: dict[str, Any] = {
        "registers": {q: {"closing_wh": int(c), "opening_wh": int(o)} for q, (c, o) in registers.items()},
        "old_serial": old_serial,
        "new_serial": new_serial,
        "note": note,
    }
    return ledger.record_event(REPLACEMENT, json.dumps(detail, sort_keys=True), ts_ms=to_ms(at), device=device)
