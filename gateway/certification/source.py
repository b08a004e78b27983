"""Read-only access to the ledger file for certification (raw SQL, no writes, no Entry objects).

Why raw SQL instead of `Ledger.series`: a month of 10-second readings is ~260 k rows per channel, and
building a dataclass per row costs more than the whole computation. This module opens its own read-only
connection (WAL readers never block the agent's writer) and returns parallel integer lists. Filters are
those of the method: kept (not pruned), quality `good`, integer values, and `seq <= max_seq` so a report
is reproducible from the ledger as it was at build time even after later appends.

Meter replacements are ledger events (`kind="meter_replacement"`) written by `record_meter_replacement`.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from drivers.model import to_ms
from gateway.certification.compute import Replacement, Series
from gateway.ledger.store import GENESIS, Ledger

REPLACEMENT: Final = "meter_replacement"
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

    def series(self, device: str, quantity: str, start_ms: int, end_ms: int, *, margin_ms: int, max_seq: int) -> Series:
        """Good readings in [start - margin, end + margin) plus the nearest one outside on each side."""
        lo, hi = start_ms - margin_ms, end_ms + margin_ms
        rows = self._db.execute(
            f"SELECT ts_ms, value, seq, hash FROM readings WHERE device = ? AND quantity = ? AND ts_ms >= ?"
            f" AND ts_ms < ? AND {_GOOD} ORDER BY ts_ms, seq",
            (device, quantity, lo, hi, max_seq),
        ).fetchall()
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
        if not rows:
            return Series()
        ts, val, seq, hashes = (list(c) for c in zip(*rows, strict=True))
        return Series(ts, val, seq, hashes)

    def bad_count(self, device: str, quantity: str, start_ms: int, end_ms: int, *, max_seq: int) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM readings WHERE device = ? AND quantity = ? AND ts_ms >= ? AND ts_ms < ?"
            " AND pruned = 0 AND seq <= ? AND (quality != 'good' OR typeof(value) != 'integer')",
            (device, quantity, start_ms, end_ms, max_seq),
        ).fetchone()
        return int(row[0])

    def replacements(self, *, until_ms: int | None = None) -> list[Replacement]:
        """Every recorded meter replacement register pair, sorted by time."""
        out: list[Replacement] = []
        for eid, ts_ms, device, detail in self._db.execute(
            "SELECT id, ts_ms, device, detail FROM events WHERE kind = ? ORDER BY ts_ms, id", (REPLACEMENT,)
        ):
            if until_ms is not None and ts_ms > until_ms:
                continue
            try:
                d = json.loads(detail)
                for quantity, pair in sorted(d["registers"].items()):
                    out.append(
                        Replacement(
                            event_id=int(eid),
                            ts_ms=int(ts_ms),
                            device=str(device),
                            quantity=str(quantity),
                            closing_wh=int(pair["closing_wh"]),
                            opening_wh=int(pair["opening_wh"]),
                            old_serial=d.get("old_serial"),
                            new_serial=d.get("new_serial"),
                        )
                    )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a malformed event is ignored here; the resulting decrease is flagged as a reset
        return out

    def evidence_rows(
        self, device: str, quantity: str, seqs: list[int]
    ) -> list[tuple[int, int, int, str, str, bytes, bytes]]:
        """(seq, ts_ms, value, unit, quality, hash, prev_hash) for the given seqs, in the given order."""
        out: list[tuple[int, int, int, str, str, bytes, bytes]] = []
        for k in range(0, len(seqs), 500):
            chunk = seqs[k : k + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT r.seq, r.ts_ms, r.value, r.unit, r.quality, r.hash, p.hash FROM readings r"
                f" LEFT JOIN readings p ON p.seq = r.seq - 1 WHERE r.seq IN ({marks})",
                chunk,
            ).fetchall()
            by_seq = {int(r[0]): r for r in rows}
            for s in chunk:
                r = by_seq[s]
                prev = bytes(r[6]) if r[6] is not None else GENESIS
                out.append((int(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4]), bytes(r[5]), prev))
        del device, quantity
        return out


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
