"""The authoritative store of closed months' reports: inside the ledger file, committed to by its events chain.

Why in the ledger and not only under `reports/`: a closed month has one authoritative report. When the
report files were the only record, deleting `reports/` and asking again produced a second, different,
validly signed report for the same month. Now closing a month is one SQLite transaction that

* stores the signed bytes in the `report_archive` table (site, month, version), and
* chains a `report_closed` event `{month, report_sha256, chain_head_seq, events_head_id, generated_at,
  previous_report_sha256, reissue_of, reissue_reason}` onto the events chain,

so every later report commits to the fact that this month was closed with these bytes, the evidence
bundle of a later report carries it, and `gia verify` can tell an undeclared second report (no
`reissue_of`) from a reissue. `reports/<site>/<month>.json` stays as a readable copy of the newest
version; if it is deleted it is written again from here, byte for byte. A row deleted by hand with the
event left in place is rebuilt from the event's cut-off (chain head, events head, generated_at) and must
come out identical, or the service refuses.

The agent writes readings through its own connection meanwhile: a closing is one short BEGIN IMMEDIATE
transaction, and a second builder that loses the race gets the winner's report.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.certification.events import REPORT_CLOSED
from gateway.ledger.store import SCHEMA, append_event


@dataclass(frozen=True, slots=True)
class Archived:
    site: str
    month: str
    version: int
    sha256: str
    data: bytes
    event_id: int


def _row(r: tuple[Any, ...]) -> Archived:
    return Archived(str(r[0]), str(r[1]), int(r[2]), str(r[3]), bytes(r[4]), int(r[5]))


class ReportArchive:
    """Closed months' reports in the ledger file. Opened per use (short-lived connections)."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = Path(ledger_path)

    def _connect(self, *, write: bool) -> sqlite3.Connection | None:
        if not self.path.exists():
            return None
        if write:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
            db.executescript(SCHEMA)  # the ledger's own schema (idempotent): an older file gets the table
        else:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
        return db

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        db = self._connect(write=False)
        if db is None:
            return []
        try:
            return list(db.execute(sql, args).fetchall())
        except sqlite3.OperationalError:  # no archive table yet: nothing closed
            return []
        finally:
            db.close()

    def latest(self, site: str, month: str) -> Archived | None:
        rows = self._query(
            "SELECT site, month, version, sha256, data, event_id FROM report_archive WHERE site = ? AND month = ?"
            " ORDER BY version DESC LIMIT 1",
            (site, month),
        )
        return _row(rows[0]) if rows else None

    def by_sha(self, sha256: str) -> bytes | None:
        rows = self._query("SELECT data FROM report_archive WHERE sha256 = ? LIMIT 1", (sha256,))
        return bytes(rows[0][0]) if rows else None

    def versions(self, site: str, month: str) -> list[Archived]:
        rows = self._query(
            "SELECT site, month, version, sha256, data, event_id FROM report_archive WHERE site = ? AND month = ?"
            " ORDER BY version",
            (site, month),
        )
        return [_row(r) for r in rows]

    def closings(self, month: str) -> list[dict[str, Any]]:
        """The `report_closed` events of `month` in chain order (each with its `event_id`)."""
        from gateway.certification.events import report_closings

        rows = self._query(
            "SELECT id, ts_ms, kind, device, detail FROM events WHERE kind = ? ORDER BY id", (REPORT_CLOSED,)
        )
        return report_closings(
            ({"id": r[0], "ts": r[1], "kind": r[2], "device": r[3], "detail": r[4]} for r in rows), month
        )

    def close(self, site: str, month: str, data: bytes, *, expect_version: int, ts_ms: int) -> Archived:
        """Store `data` as version `expect_version + 1` of `month` and chain its `report_closed` event.

        If another builder closed that version first, nothing is written and theirs is returned.
        """
        rep = json.loads(data)
        sha = hashlib.sha256(data).hexdigest()
        ev = rep["evidence"]
        detail = {
            "site": site,
            "month": month,
            "report_sha256": sha,
            "chain_head_seq": ev["chain_head_seq"],
            "events_head_id": ev.get("events_head_id"),
            "generated_at": rep["generated_at"],
            "previous_report_sha256": rep.get("previous_report_sha256"),
            "reissue_of": rep.get("reissue_of"),
            "reissue_reason": rep.get("reissue_reason"),
            "key_id": rep.get("signature", {}).get("key_id"),
        }
        db = self._connect(write=True)
        if db is None:
            raise FileNotFoundError(f"ledger {self.path} does not exist")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT max(version) FROM report_archive WHERE site = ? AND month = ?", (site, month)
                ).fetchone()
                current = int(row[0]) if row and row[0] is not None else 0
                if current != expect_version:
                    db.execute("ROLLBACK")
                    found = self.latest(site, month)
                    assert found is not None
                    return found
                event_id = append_event(db, REPORT_CLOSED, json.dumps(detail, sort_keys=True), ts_ms=ts_ms)
                db.execute(
                    "INSERT INTO report_archive (site, month, version, sha256, data, event_id)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (site, month, current + 1, sha, data, event_id),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.close()
        return Archived(site, month, current + 1, sha, data, event_id)
