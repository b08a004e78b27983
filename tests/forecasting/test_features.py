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


def test_lags_are_in_local_time_across_dst() -> None:
    """After Riga's spring-forward night, 'the same time yesterday' of 08:00 local is 08:00 local the day
    before: 23 hours back, not 24 (before, the lags were fixed UTC offsets: one hour off for a day)."""
    from forecasting.baselines import baseline_values

    f = make_load(40, start="2024-03-01")
    index = pd.date_range(f.index[0], periods=len(f) + 48, freq="h")
    y = f["value"].to_numpy()
    origin = int(np.searchsorted(index, pd.Timestamp("2024-03-31", tz="Europe/Riga").tz_convert("UTC")))
    o, k = origin_step_grid([origin], 24)
    spec = FeatureSpec(target="load", resolution_s=3600, horizon_steps=24, timezone="Europe/Riga")
    X, names = build_features(y, index, o, k, spec)
    j = o + k - 1
    local = index[j].tz_convert("Europe/Riga")
    expected = []
    for t in local:
        back = (t.tz_localize(None) - pd.Timedelta(days=1)).tz_localize("Europe/Riga").tz_convert("UTC")
        expected.append(y[index.get_loc(back)])
    after = local.hour >= 4  # the hours after the change
    lag = X[:, names.index("lag_day")]
    np.testing.assert_allclose(lag[after], np.asarray(expected)[after])
    assert not np.allclose(lag[after], y[j[after] - 24])  # the UTC lag is a different hour
    persistence = baseline_values("persistence", y, index, o, k, steps_per_day=24, timezone="Europe/Riga")
    np.testing.assert_allclose(persistence[after], np.asarray(expected)[after])


def test_a_prediction_sees_the_same_features_as_training_did_for_the_same_origin() -> None:
    """At prediction the history starts 28 days back and the weather ends with the horizon; in training
    both extend further. Every feature must come out the same (before, `temperature_max_day` was a
    centred window that saw 12 hours beyond the horizon in training only)."""
    f = make_load(40)
    spec = FeatureSpec(
        target="load", resolution_s=3600, horizon_steps=48, timezone="Europe/Riga", weather_columns=("temperature_c",)
    )
    long_index = pd.DatetimeIndex(f.index)
    y = f["value"].to_numpy()
    origin = 35 * 24 + 7
    o, k = origin_step_grid([origin], 48)
    train_X, names = build_features(y, long_index, o, k, spec, weather=f[["temperature_c"]])
    start = origin - 28 * 24
    short_index = long_index[start : origin + 48]
    weather = f[["temperature_c"]].iloc[start : origin + 48]
    pred_X, pred_names = build_features(y[start:origin], short_index, o - start, k, spec, weather=weather)
    assert pred_names == names
    for i, name in enumerate(names):
        np.testing.assert_allclose(pred_X[:, i], train_X[:, i], err_msg=name)
