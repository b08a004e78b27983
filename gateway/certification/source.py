"""Read-only access to the ledger file for certification (raw SQL, no writes, no Entry objects).

Why raw SQL instead of `Ledger.series`: a month of 10-second readings is ~260 k rows per channel, and
building a dataclass per row costs more than the whole computation. This module opens its own read-only
connection (WAL readers never block the agent's writer) and returns parallel integer lists. Filters are
those of the method: kept (not pruned), quality `good`, integer values, and `seq <= max_seq` so a report
is reproducible from the ledger as it was at build time even after later appends.

Meter replacements are ledger events (`kind="meter_replacement"`) written by `record_meter_replacement`
and parsed by `events.py` (which `gia verify` shares).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from drivers.model import to_ms
from gateway.certification.compute import Replacement, Series
from gateway.certification.events import REPLACEMENT
from gateway.certification.events import replacements as parse_replacements
from gateway.certification.exact import iso_ms
from gateway.clockguard import guarded_now
from gateway.ledger.store import GENESIS, Ledger

_GOOD: Final = "pruned = 0 AND quality = 'good' AND typeof(value) = 'integer' AND seq <= ?"


class LedgerSource:
    def __init__(self, path: Path) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"ledger {path} does not exist (has the agent run yet?)")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")

    def close(self) -> None:
        self._db.close()

    def head(self) -> tuple[int, bytes]:
        row = self._db.execute("SELECT seq, hash FROM readings ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), bytes(row[1])) if row else (0, GENESIS)

    def events_head(self) -> tuple[int, bytes] | None:
        """(id, chain hash) of the last ledger event; None for a schema-1 ledger the agent has not yet
        migrated (its events carry no chain, so a report cannot commit to one)."""
        try:
            row = self._db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            return None
        if row is None:
            return (0, GENESIS)
        return (int(row[0]), bytes(row[1])) if row[1] is not None else None

    def events_rows(self, max_id: int) -> Iterator[tuple[int, int, str, str | None, str, bytes]]:
        """Every event up to `max_id` with its chain hash, in chain order (for the evidence bundle)."""
        for eid, ts_ms, kind, device, detail, h in self._db.execute(
            "SELECT id, ts_ms, kind, device, detail, hash FROM events WHERE id <= ? ORDER BY id", (max_id,)
        ):
            yield int(eid), int(ts_ms), str(kind), device, str(detail), bytes(h)

    def hash_at(self, seq: int) -> bytes:
        if seq <= 0:
            return GENESIS
        row = self._db.execute("SELECT hash FROM readings WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise KeyError(seq)
        return bytes(row[0])

    def first_counter_ms(self) -> int | None:
        row = self._db.execute("SELECT min(ts_ms) FROM readings WHERE counter = 1 AND pruned = 0").fetchone()
        return int(row[0]) if row and row[0] is not None else None

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
        # one pass over the range: the quality filter is applied here, not in SQL, so the same scan also
        # counts the unusable readings for the meter-status rule (a second COUNT query costs a full scan)
        rows = self._db.execute(
            "SELECT ts_ms, value, seq, hash, quality = 'good' AND typeof(value) = 'integer' FROM readings"
            " WHERE device = ? AND quantity = ? AND ts_ms >= ? AND ts_ms < ? AND pruned = 0 AND seq <= ?"
            " ORDER BY ts_ms, seq",
            (device, quantity, lo, hi, max_seq),
        ).fetchall()
        ok = [r[4] for r in rows]
        bad = 0
        if 0 in ok:
            bad = sum(1 for r in rows if not r[4] and start_ms <= r[0] < end_ms)
            rows = [r for r in rows if r[4]]
        before = self._db.execute(
            f"SELECT ts_ms, value, seq, hash FROM readings WHERE device = ? AND quantity = ? AND ts_ms < ?"
            f" AND {_GOOD} ORDER BY ts_ms DESC, seq DESC LIMIT 1",
            (device, quantity, lo, max_seq),
        ).fetchone()
        after = self._db.execute(
            f"SELECT ts_ms, value, seq, hash FROM readings WHERE device = ? AND quantity = ? AND ts_ms >= ?"
            f" AND {_GOOD} ORDER BY ts_ms, seq LIMIT 1",
            (device, quantity, hi, max_seq),
        ).fetchone()
        if before is not None:
            rows.insert(0, before)
        if after is not None:
            rows.append(after)
        if frozen is not None:
            f_ts, f_seq = frozen
            rows = [r for r in rows if not (r[0] <= f_ts and r[2] > f_seq)]
        series = Series([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
        return series, bad

    def bad_count(self, device: str, quantity: str, start_ms: int, end_ms: int, *, max_seq: int) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM readings WHERE device = ? AND quantity = ? AND ts_ms >= ? AND ts_ms < ?"
            " AND pruned = 0 AND seq <= ? AND (quality != 'good' OR typeof(value) != 'integer')",
            (device, quantity, start_ms, end_ms, max_seq),
        ).fetchone()
        return int(row[0])

    def replacements(self, *, max_event_id: int | None = None) -> list[Replacement]:
        """Every recorded meter replacement register pair up to the events head, sorted by time."""
        rows = self._db.execute(
            "SELECT id, ts_ms, kind, device, detail FROM events WHERE kind = ? ORDER BY id", (REPLACEMENT,)
        )
        return parse_replacements(
            ({"id": r[0], "ts": r[1], "kind": r[2], "device": r[3], "detail": r[4]} for r in rows), max_id=max_event_id
        )

    def events_json(self, max_id: int) -> list[dict[str, Any]]:
        """Events up to `max_id` as `{id, ts, kind, device, detail}` (what `events.py` and `keys.py` read)."""
        return [
            {"id": eid, "ts": ts, "kind": kind, "device": device, "detail": detail}
            for eid, ts, kind, device, detail, _h in self.events_rows(max_id)
        ]

    def event_hash_at(self, event_id: int) -> bytes:
        if event_id <= 0:
            return GENESIS
        row = self._db.execute("SELECT hash FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None or row[0] is None:
            raise KeyError(event_id)
        return bytes(row[0])

    def serial_rows(
        self, device: str, start_ms: int, end_ms: int, *, max_seq: int
    ) -> list[tuple[int, int, int, str, str, bytes, bytes]]:
        """The device's good `serial_number` readings in [start, end) (seq <= max_seq), in (ts, seq) order,
        as `evidence_rows` gives them: what the report records as the serial the meter reported."""
        rows = self._db.execute(
            "SELECT r.seq, r.ts_ms, r.value, r.unit, r.quality, r.hash, p.hash FROM readings r"
            " LEFT JOIN readings p ON p.seq = r.seq - 1"
            " WHERE r.device = ? AND r.quantity = 'serial_number' AND r.ts_ms >= ? AND r.ts_ms < ?"
            " AND r.pruned = 0 AND r.quality = 'good' AND typeof(r.value) = 'integer' AND r.seq <= ?"
            " ORDER BY r.ts_ms, r.seq",
            (device, start_ms, end_ms, max_seq),
        ).fetchall()
        return [
            (int(q), int(t), int(v), str(u), str(qu), bytes(h), bytes(p) if p is not None else GENESIS)
            for q, t, v, u, qu, h, p in rows
        ]

    def evidence_rows(
        self, device: str, quantity: str, bounds: tuple[int, int, int, int] | None, *, max_seq: int
    ) -> Iterator[tuple[int, int, int, str, str, bytes, bytes]]:
        """(seq, ts_ms, value, unit, quality, hash, prev_hash) of the readings a channel used, in (ts, seq)
        order: the same filter as `series`, between the first and last used (ts, seq)."""
        if bounds is None:
            return
        t0, s0, t1, s1 = bounds
        cur = self._db.execute(
            "SELECT r.seq, r.ts_ms, r.value, r.unit, r.quality, r.hash, p.hash FROM readings r"
            " LEFT JOIN readings p ON p.seq = r.seq - 1"
            " WHERE r.device = ? AND r.quantity = ? AND r.ts_ms >= ? AND r.ts_ms <= ?"
            " AND r.pruned = 0 AND r.quality = 'good' AND typeof(r.value) = 'integer' AND r.seq <= ?"
            " ORDER BY r.ts_ms, r.seq",
            (device, quantity, t0, t1, max_seq),
        )
        for seq, ts_ms, value, unit, quality, h, prev in cur:
            if (ts_ms, seq) < (t0, s0) or (ts_ms, seq) > (t1, s1):
                continue
            yield (
                int(seq),
                int(ts_ms),
                int(value),
                str(unit),
                str(quality),
                bytes(h),
                bytes(prev) if prev is not None else GENESIS,
            )


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
        recorded_ms = int(guarded_now(ledger.newest_ts_ms()).timestamp() * 1000)
    detail: dict[str, Any] = {
        "registers": {q: {"closing_wh": int(c), "opening_wh": int(o)} for q, (c, o) in registers.items()},
        "old_serial": old_serial,
        "new_serial": new_serial,
        "recorded_at": iso_ms(recorded_ms),
        "note": note,
    }
    return ledger.record_event(REPLACEMENT, json.dumps(detail, sort_keys=True), ts_ms=to_ms(at), device=device)
