"""Feature builders: no look-ahead, DST in Europe/Riga, gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.features import FeatureSpec, build_features, calendar_frame, origin_step_grid, to_grid

from .conftest import make_load

SPEC = FeatureSpec(
    target="load",
    resolution_s=3600,
    horizon_steps=48,
    timezone="Europe/Riga",
    holidays_country="LV",
    weather_columns=("temperature_c",),
)


def _features(y: np.ndarray, index: pd.DatetimeIndex, origin: int, weather: pd.DataFrame) -> np.ndarray:
    o, k = origin_step_grid([origin], SPEC.horizon_steps)
    X, _ = build_features(y, index, o, k, SPEC, weather=weather)
    return X


@pytest.mark.parametrize("origin_offset", [0, 7, 13])
def test_no_look_ahead_history_after_origin_changes_nothing(origin_offset: int) -> None:
    """Scramble every value at or after the origin: if any feature moved, it used the future."""
    f = make_load(40)
    index = pd.date_range(f.index[0], periods=len(f) + 48, freq="h")
    w = f[["temperature_c"]].reindex(index)
    y = f["value"].to_numpy()
    origin = 30 * 24 + origin_offset
    before = _features(y, index, origin, w)
    scrambled = y.copy()
    scrambled[origin:] = np.random.default_rng(1).normal(1e9, 1e8, len(y) - origin)
    after = _features(scrambled, index, origin, w)
    np.testing.assert_array_equal(np.isnan(before), np.isnan(after))
    np.testing.assert_allclose(np.nan_to_num(before), np.nan_to_num(after))
    # and the check can fail: a value *before* the origin does change the features
    changed = y.copy()
    changed[origin - 1] += 1e6
    assert not np.allclose(np.nan_to_num(_features(changed, index, origin, w)), np.nan_to_num(before))


def test_dst_days_in_riga_have_correct_local_hours() -> None:
    # spring forward 2024-03-31 03:00 -> 04:00 EEST; fall back 2024-10-27 04:00 -> 03:00 EET
    for day, hours in (("2024-03-31", 23), ("2024-10-27", 25)):
        local_start = pd.Timestamp(day, tz="Europe/Riga")
        local_end = pd.Timestamp(pd.Timestamp(day) + pd.Timedelta(days=1), tz="Europe/Riga")
        index = pd.date_range(local_start.tz_convert("UTC"), local_end.tz_convert("UTC"), freq="h", inclusive="left")
        assert len(index) == hours
        cal = calendar_frame(index, SPEC)
        got = cal["hour"].astype(int).tolist()
        if hours == 23:
            assert 3 not in got and got[:4] == [0, 1, 2, 4]
        else:
            assert got.count(3) == 2
        assert set(cal["doy"]) == {local_start.day_of_year}


def test_holidays_are_latvian() -> None:
    index = pd.date_range("2024-06-22T21:00Z", periods=3, freq="D")  # local midnights of 23, 24, 25 June
    cal = calendar_frame(index, SPEC)
    assert cal["holiday"].tolist() == [1.0, 1.0, 0.0]  # Līgo and Jāņi (Midsummer), then a working day


def test_gaps_become_nan_not_invented_values() -> None:
    f = make_load(20)
    s = f["value"].drop(f.index[170:200])
    grid = to_grid(s, 3600)
    assert len(grid) == len(f)
    assert grid.iloc[170:200].isna().all()
    origin = 200
    index = pd.date_range(grid.index[0], periods=len(grid) + 48, freq="h")
    X = _features(grid.to_numpy(), index, origin, f[["temperature_c"]].reindex(index))
    names = build_features(
        grid.to_numpy(), index, *origin_step_grid([origin], 48), SPEC, weather=f[["temperature_c"]].reindex(index)
    )[1]
    assert np.isnan(X[:, names.index("last")]).all()
    assert np.isfinite(X[:, names.index("lag_week")]).all()


def test_fifteen_minute_grid_aggregates_finer_data() -> None:
    idx = pd.date_range("2024-01-01", periods=12, freq="5min", tz="UTC")
    s = pd.Series(np.arange(12.0), index=idx)
    g = to_grid(s, 900)
    assert g.tolist() == [1.0, 4.0, 7.0, 10.0]
