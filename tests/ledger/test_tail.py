"""The writer's in-memory tail answers exactly what the ledger would (gateway/ledger/tail.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import Quality, Sample
from gateway.ledger.store import Ledger
from gateway.ledger.tail import CommittedTail

T0 = datetime(2026, 3, 1, tzinfo=UTC)

values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
    st.integers(min_value=0, max_value=2**53 - 1),
)


def poll(device: str, k: int, vals: list[float | int]) -> list[Sample]:
    ts = T0 + timedelta(seconds=k)
    out = [Sample(device, "power_w", float(v), "W", ts) for v in vals[:1]]
    out += [Sample(device, "energy_import_wh", abs(int(v)), "Wh", ts) for v in vals[1:2]]
    out += [Sample(device, "voltage_l1_v", None, "V", ts, Quality.INVALID)] if len(vals) > 2 else []
    return out


@settings(max_examples=40, deadline=None)
@given(
    polls=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.lists(values, min_size=1, max_size=3)), min_size=1, max_size=60
    ),
    commit_sizes=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=20),
    limit=st.integers(min_value=1, max_value=12),
    window=st.integers(min_value=2, max_value=40),
)
def test_the_tail_reads_as_the_ledger(
    tmp_path_factory: pytest.TempPathFactory,
    polls: list[tuple[str, list[float | int]]],
    commit_sizes: list[int],
    limit: int,
    window: int,
) -> None:
    led = Ledger(tmp_path_factory.mktemp("t") / "l.db")
    tail = CommittedTail(max_entries=window)
    batches = [poll(d, k, v) for k, (d, v) in enumerate(polls)]
    i, c = 0, 0
    while i < len(batches):
        n = commit_sizes[c % len(commit_sizes)]
        tail.extend(led.append_entries([s for b in batches[i : i + n] for s in b]))
        i, c = i + n, c + 1
    head = led.head[0]
    assert tail.last_seq == head
    served = 0
    for seq in range(head + 1):
        got = tail.polls_after(seq, limit)
        if got is None:
            assert (tail.first_seq is not None and seq + 1 < tail.first_seq) or seq >= head
            continue
        served += 1
        assert got == led.read_polls_after(seq, limit)
    assert served >= min(window, head)
    led.close()


def test_a_gap_starts_a_new_window(tmp_path_factory: pytest.TempPathFactory) -> None:
    led = Ledger(tmp_path_factory.mktemp("g") / "l.db")
    tail = CommittedTail()
    tail.extend(led.append_entries(poll("a", 0, [1.0, 2])))
    led.append(poll("a", 1, [3.0, 4]))  # committed without the tail seeing it
    tail.extend(led.append_entries(poll("a", 2, [5.0, 6])))
    assert tail.first_seq == 5 and tail.polls_after(2, 10) is None  # the ledger answers entries 3-4
    assert tail.polls_after(4, 10) == led.read_polls_after(4, 10)
    led.close()
