"""Bands rescaled by the forecasts' own recent errors (forecasting/recalibrate.py): no look-ahead, the
band keeps its P50 and shape, and the scale is the level's quantile of what was needed."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forecasting.recalibrate import LEVEL, MIN_DAYS, needed_scales, rescale, rolling_scales, scale_from

HOUR_MS = 3_600_000


def _bands(rng: np.random.Generator, n: int) -> np.ndarray:
    p50 = rng.uniform(100, 200, n)
    return np.column_stack([p50 - rng.uniform(1, 20, n), p50, p50 + rng.uniform(1, 20, n)])


@given(st.integers(min_value=0, max_value=2**32 - 1), st.floats(min_value=0.25, max_value=4.0))
def test_rescale_keeps_p50_and_order_and_scales_half_widths(seed: int, scale: float) -> None:
    q = _bands(np.random.default_rng(seed), 50)
    out = rescale(q, scale, None, None)
    assert np.allclose(out[:, 1], q[:, 1])
    assert (np.diff(out, axis=1) >= 0).all()
    assert np.allclose(out[:, 2] - out[:, 1], scale * (q[:, 2] - q[:, 1]))


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_needed_scale_puts_the_actual_on_the_band_edge(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = _bands(rng, 50)
    actual = q[:, 1] + rng.normal(0, 15, 50)
    s = needed_scales(q, actual)
    edge = rescale(q, s, None, None)
    on_edge = np.isclose(edge[:, 0], actual) | np.isclose(edge[:, 2], actual)
    assert on_edge.all()


def test_scale_is_the_levels_quantile_and_needs_a_week_of_points() -> None:
    scales = np.linspace(0.1, 2.0, 24 * MIN_DAYS)
    assert scale_from(scales, 24) == np.quantile(scales, LEVEL)
    assert scale_from(scales[:-1], 24) == 1.0  # a point short of a week: the trained band as it is


@settings(max_examples=30)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=8, max_value=40))
def test_rolling_scales_never_look_ahead(seed: int, cut_day: int) -> None:
    """Changing the actuals from some day on changes no scale of a forecast issued up to that day."""
    rng = np.random.default_rng(seed)
    days = 45
    issue = np.repeat(np.arange(days) * 24 * HOUR_MS, 24).astype(np.int64)  # one issue a day at 00:00
    target = issue + np.tile(np.arange(24) * HOUR_MS, days)  # steps 1-24: that day's hours
    q = _bands(rng, len(issue))
    actual = q[:, 1] + rng.normal(0, 10, len(issue))
    before = rolling_scales(issue, target, needed_scales(q, actual), points_per_day=24)
    changed = actual.copy()
    later = target >= cut_day * 24 * HOUR_MS
    changed[later] = q[later, 1] + rng.normal(0, 100, int(later.sum()))
    after = rolling_scales(issue, target, needed_scales(q, changed), points_per_day=24)
    known = issue <= cut_day * 24 * HOUR_MS
    assert np.array_equal(before[known], after[known])
    assert (before[issue < MIN_DAYS * 24 * HOUR_MS] == 1.0).all()  # no week of past errors yet


def test_a_calm_season_narrows_the_band_toward_the_level() -> None:
    """Bands twice as wide as the errors: recalibrated, they cover close to 80 % after the first week."""
    rng = np.random.default_rng(7)
    days = 60
    issue = np.repeat(np.arange(days) * 24 * HOUR_MS, 24).astype(np.int64)
    target = issue + np.tile(np.arange(24) * HOUR_MS, days)
    p50 = np.full(len(issue), 100.0)
    q = np.column_stack([p50 - 2 * 12.8, p50, p50 + 2 * 12.8])  # P10/P90 of N(0, 20), errors are N(0, 10)
    actual = p50 + rng.normal(0, 10, len(issue))
    raw = np.mean((actual >= q[:, 0]) & (actual <= q[:, 2]))
    out = rescale(q, rolling_scales(issue, target, needed_scales(q, actual), points_per_day=24), None, None)
    later = issue >= MIN_DAYS * 24 * HOUR_MS
    cov = np.mean((actual[later] >= out[later, 0]) & (actual[later] <= out[later, 2]))
    assert raw > 0.97 and 0.75 <= cov <= 0.85, (raw, cov)
