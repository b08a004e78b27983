"""The ledger: append/commit, chain verification, cursors, retention keeps the chain verifiable."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import MAX_SAFE_INT, Quality, Sample
from gateway.ledger.store import GENESIS, Ledger, LedgerError

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def samples(n: int, *, start: datetime = T0, device: str = "m1") -> list[Sample]:
    out = []
    for i in range(n):
        ts = start + timedelta(seconds=10 * i)
        out.append(Sample(device, "power_w", 1000.5 + i, "W", ts))
        out.append(Sample(device, "energy_import_wh", 5000 + i, "Wh", ts))
    return out


def test_append_assigns_increasing_seq_and_verifies(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    assert led.head == (0, GENESIS)
    assert led.append(samples(3)) == 6
    assert led.append(samples(2, start=T0 + timedelta(hours=1))) == 10
    entries = led.read_after(0, 100)
    assert [e.seq for e in entries] == list(range(1, 11))
    assert entries[1].value == 5000 and isinstance(entries[1].value, int)
    check = led.verify()
    assert check.ok and check.entries == 10 and check.head_seq == 10


def test_reopen_continues_chain(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    led.append(samples(2))
    head = led.head
    led.close()
    led = Ledger(tmp_path / "l.db")
    assert led.head == head
    led.append(samples(1, start=T0 + timedelta(minutes=5)))
    assert led.verify().ok


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("UPDATE readings SET value = 9999 WHERE seq = 3", "entry 3 does not match"),
        ("DELETE FROM readings WHERE seq = 4", "entry 4 is missing"),
        ("UPDATE readings SET ts_ms = ts_ms + 1 WHERE seq = 2", "entry 2 does not match"),
        ("UPDATE readings SET quality = 'estimated' WHERE seq = 5", "entry 5 does not match"),
    ],
)
def test_tampering_breaks_the_chain(tmp_path: Path, sql: str, problem: str) -> None:
    led = Ledger(tmp_path / "l.db")
    led.append(samples(4))
    led.close()
    db = sqlite3.connect(tmp_path / "l.db")
    db.execute(sql)
    db.commit()
    db.close()
    check = Ledger(tmp_path / "l.db").verify()
    assert not check.ok
    assert check.problem is not None and problem in check.problem


def test_swapping_two_entries_is_caught(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    led.append(samples(3))
    led.close()
    db = sqlite3.connect(tmp_path / "l.db")
    a = db.execute("SELECT value FROM readings WHERE seq = 1").fetchone()[0]
    b = db.execute("SELECT value FROM readings WHERE seq = 3").fetchone()[0]
    db.execute("UPDATE readings SET value = ? WHERE seq = 1", (b,))
    db.execute("UPDATE readings SET value = ? WHERE seq = 3", (a,))
    db.commit()
    db.close()
    assert not Ledger(tmp_path / "l.db").verify().ok


def test_cursors_persist_and_cannot_pass_head(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    led.append(samples(2))
    led.set_cursor("influxdb", 3, now_ms=0)
    led.close()
    led = Ledger(tmp_path / "l.db")
    assert led.cursor("influxdb") == 3 and led.cursor("mqtt") == 0
    with pytest.raises(ValueError, match="beyond head"):
        led.set_cursor("mqtt", 99, now_ms=0)


def test_retention_prunes_instants_first_and_keeps_chain_verifiable(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    led.append(samples(10))  # 20 entries, T0 .. T0+90 s
    cutoff = int((T0 + timedelta(seconds=50)).timestamp() * 1000)
    # Only what sinks have forwarded (seq <= 12) may be pruned; counters are kept longer.
    n = led.prune(instant_before_ms=cutoff, counter_before_ms=0, forwarded_seq=12)
    assert n == 5  # instants at 0,10,20,30,40 s (seq 1,3,5,7,9)
    kept = led.read_after(0, 100)
    assert all(not (e.quantity == "power_w" and e.ts_ms < cutoff) for e in kept)
    assert sum(e.quantity == "energy_import_wh" for e in kept) == 10
    check = led.verify()
    assert check.ok and check.entries == 20
    # Tampering with a kept entry after pruning is still caught.
    led.close()
    db = sqlite3.connect(tmp_path / "l.db")
    db.execute("UPDATE readings SET value = 1 WHERE seq = 2")
    db.commit()
    db.close()
    assert not Ledger(tmp_path / "l.db").verify().ok


def test_not_a_ledger_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "l.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a usable ledger"):
        Ledger(bad)


def test_backup_is_a_verifiable_copy(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    led.append(samples(5))
    led.backup(tmp_path / "copy.db")
    copy = Ledger(tmp_path / "copy.db")
    assert copy.head == led.head and copy.verify().ok


values = st.one_of(
    st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(values, min_size=1, max_size=8), min_size=1, max_size=6))
def test_any_values_round_trip_and_verify(tmp_path_factory: pytest.TempPathFactory, batches: list[list[float]]) -> None:
    led = Ledger(tmp_path_factory.mktemp("h") / "l.db")
    expected = []
    ts = T0
    for batch in batches:
        ss = [Sample("d", "power_w", v, "W", ts, Quality.GOOD) for v in batch]
        expected += batch
        led.append(ss)
        ts += timedelta(seconds=1)
    got = [e.value for e in led.read_after(0, 10_000)]
    assert got == expected
    assert all(type(g) is type(e) or g == e for g, e in zip(got, expected, strict=True))
    assert led.verify().ok
    led.close()


def test_sample_refuses_values_no_consumer_can_represent() -> None:
    with pytest.raises(ValueError, match="exact JSON range"):
        Sample("d", "energy_import_wh", 2**53, "Wh", T0)
    with pytest.raises(ValueError, match="non-finite"):
        Sample("d", "power_w", float("nan"), "W", T0)
    with pytest.raises(ValueError, match="invalid"):
        Sample("d", "power_w", None, "W", T0)
    with pytest.raises(ValueError, match="UTC"):
        Sample("d", "power_w", 1.0, "W", datetime(2026, 1, 1))


texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
json_values = st.one_of(
    st.none(),
    st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-7, 1e-6, 0.0001, 1e16, 1e21, 1e22, 123456789.123, 5e-324, 1.7976931348623157e308]),
)


@settings(max_examples=2000, deadline=None)
@given(
    seq=st.integers(0, MAX_SAFE_INT),
    ts=st.integers(-MAX_SAFE_INT, MAX_SAFE_INT),
    device=texts,
    quantity=texts,
    value=json_values,
    unit=texts,
    quality=texts,
)
def test_fast_canonical_entry_is_rfc8785(
    seq: int, ts: int, device: str, quantity: str, value: float | int | None, unit: str, quality: str
) -> None:
    import rfc8785

    from gateway.ledger.store import canonical_entry

    expected = rfc8785.dumps(
        {"seq": seq, "ts": ts, "device": device, "quantity": quantity, "value": value, "unit": unit, "quality": quality}
    )
    assert canonical_entry(seq, ts, device, quantity, value, unit, quality) == expected


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=4))
def test_batches_of_any_size_keep_their_order_and_chain(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int]
) -> None:
    """A batch is written by one multi-row statement per set bit of its size (256, 128, ... 1 rows):
    every reading lands once, in order, with consecutive seqs, and the chain verifies."""
    led = Ledger(tmp_path_factory.mktemp("m") / "l.db")
    expected: list[float] = []
    for k, n in enumerate(sizes):
        batch = [
            Sample(f"d{i % 7}", "power_w", float(len(expected) + i), "W", T0 + timedelta(seconds=k)) for i in range(n)
        ]
        expected += [s.value for s in batch]  # type: ignore[misc]
        assert led.append(batch) == len(expected)
    entries = led.read_after(0, 10_000)
    assert [e.value for e in entries] == expected
    assert [e.seq for e in entries] == list(range(1, len(expected) + 1))
    assert led.verify().ok
    led.close()


def test_a_batch_is_written_in_few_statements(tmp_path: Path) -> None:
    """sqlite3 releases the GIL around every step; executemany steps once per row, and with the event
    loop's thread busy each re-acquisition waited up to 5 ms: 500 rows took seconds (the attack soak's
    commit interval p99 of 3-5 s). 500 rows are now 6 statements (256+128+64+32+16+4)."""
    led = Ledger(tmp_path / "l.db")
    statements: list[str] = []
    led._db.set_trace_callback(statements.append)
    led.append(samples(250))
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 6, len(inserts)
    led._db.set_trace_callback(None)
    assert led.verify().ok and led.head[0] == 500
