"""Commit delays in health: the cumulative histogram's p99 bound agrees with the exact percentile."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from gateway.ledger.writer import DELAY_BUCKETS_S, CommitStats


@given(st.lists(st.floats(min_value=0.0, max_value=60.0, allow_nan=False), min_size=1, max_size=400))
def test_p99_bound_is_the_first_bucket_bound_at_or_above_the_exact_p99(delays: list[float]) -> None:
    stats = CommitStats()
    for d in delays:
        stats.add(d)
    exact = sorted(delays)[math.ceil(0.99 * len(delays)) - 1]  # the smallest value >= 99 % of delays
    expected = next((b for b in DELAY_BUCKETS_S if exact <= b), None)
    assert stats.p99_bound_s() == expected
    body = stats.as_json()
    assert body["commits"] == len(delays) == sum(body["delay_buckets_s"].values())
    assert body["delay_max_s"] == round(max(delays), 3)


def test_intervals_are_between_the_ends_of_successive_commits() -> None:
    stats = CommitStats()
    for end in (10.0, 11.2, 12.2, 15.2):
        stats.add(1.0, end=end)
    body = stats.as_json()
    assert stats.interval.count == 3 and body["interval_max_s"] == 3.0
    assert body["interval_buckets_s"]["1.0"] == 1 and body["interval_buckets_s"]["1.5"] == 1
    assert body["interval_p99_bound_s_since_start"] == 3.0


def test_empty_stats_say_nothing_rather_than_zero() -> None:
    body = CommitStats().as_json()
    assert body["commits"] == 0 and body["delay_p99_s"] is None and body["delay_p99_bound_s_since_start"] is None
