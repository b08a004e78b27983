"""A ledger written by an earlier release opens, verifies and grows in this one (issue 8).

`tests/fixtures/ledger-schema1.db` was written by release 0.1.0 (ledger schema 1): 90 entries over
the January/February boundary, some pruned, a cursor and a clock_jump event. When the schema changes,
keep this file, add `ledger-schema<N>.db` from the release before the change, and a migration.
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
