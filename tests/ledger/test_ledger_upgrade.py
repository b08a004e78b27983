"""A ledger written by an earlier release opens, verifies and grows in this one (issue 8).

`tests/fixtures/ledger-schema1.db` was written by ledger schema 1: 90 entries over the January/February
boundary, some pruned, a cursor and a clock_jump event (unchained: schema 2 chains events). When the
schema changes again, keep this file, add `ledger-schema<N>.db` from the release before the change,
and a migration step in gateway/ledger/store.py's `_MIGRATIONS`.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.model import Sample
from gateway.ledger.store import SCHEMA_VERSION, Ledger, LedgerError

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "ledger-schema1.db"


def test_previous_release_ledger_opens_verifies_and_grows(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    shutil.copy(FIXTURE, db)
    led = Ledger(db)
    check = led.verify()
    assert check.ok and check.entries == 90
    assert led.cursor("influxdb") == 60
    assert [e.kind for e in led.events()] == ["clock_jump"]
    counters = led.series("grid", "energy_import_wh", 0, 2**62)
    assert [e.value for e in counters][:3] == [1_000_000, 1_000_017, 1_000_034]
    led.append([Sample("grid", "energy_import_wh", 2_000_000, "Wh", datetime(2026, 2, 1, tzinfo=UTC))])
    assert led.verify().ok and led.head[0] == 91
    # Migrated to schema 2: the schema-1 event is now the first link of the events' chain.
    assert led._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert led.verify_events().ok and led.verify_events().entries == 1
    led.record_event("meter_replacement", '{"old": "A", "new": "B"}', ts_ms=5, device="grid")
    check = led.verify_events()
    assert check.ok and check.entries == 2
    led.close()


def test_a_newer_schema_is_refused_with_advice(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    shutil.copy(FIXTURE, db)
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="newer than this gateway"):
        Ledger(db)


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("UPDATE events SET detail = '{}' WHERE id = 2", "event 2 does not match"),
        ("DELETE FROM events WHERE id = 2", "event 2 is missing"),
        ("UPDATE events SET kind = 'meter_replacement' WHERE id = 1", "event 1 does not match"),
    ],
)
def test_events_are_chained(tmp_path: Path, sql: str, problem: str) -> None:
    led = Ledger(tmp_path / "l.db")
    for i in range(3):
        led.record_event("clock_jump", f'{{"n": {i}}}', ts_ms=i)
    assert led.verify_events().ok
    led.close()
    con = sqlite3.connect(tmp_path / "l.db")
    con.execute(sql)
    con.commit()
    con.close()
    check = Ledger(tmp_path / "l.db").verify_events()
    assert not check.ok and check.problem is not None and problem in check.problem
