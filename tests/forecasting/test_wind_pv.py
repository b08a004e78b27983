"""Wind and PV pipelines end to end through ForecastService, with weather from a provider."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from forecasting.config import ForecastingConfig, Location, TargetConfig
from forecasting.history import FrameHistory, FrameWeather
from forecasting.physics import PowerCurve, clear_sky_ghi, plane_of_array
from forecasting.service import ForecastService, outage_mask

CAP = 2_000_000.0


def wind_frame(days: int, seed: int = 3) -> pd.DataFrame:
    idx = pd.date_range("2024-01-01", periods=days * 24, freq="h", tz="UTC")
    rng = np.random.default_rng(seed)
    ws = np.clip(7 + 3 * np.sin(np.arange(len(idx)) / 30) + rng.normal(0, 1.5, len(idx)), 0, 30)
    ws[100:106] = 27.0  # a storm above cut-out
    curve = np.clip((ws - 3) / 9, 0, 1) ** 2 * CAP
    power = np.where(ws >= 25, 0.0, curve) * rng.uniform(0.9, 1.0, len(idx))
    power[300:340] = 0.0  # an unflagged outage in strong wind
    return pd.DataFrame({"value": power, "wind_speed_ms": ws, "wind_direction_deg": 200.0}, index=idx)


def test_wind_model_respects_capacity_and_cut_out(tmp_path: Path) -> None:
    f = wind_frame(40)
    future = wind_frame(42).iloc[len(f) :].copy()
    future["wind_speed_ms"] = np.r_[np.full(6, 30.0), np.full(len(future) - 6, 13.0)]
    weather = FrameWeather(pd.concat([f, future])[["wind_speed_ms", "wind_direction_deg"]])
    cfg = ForecastingConfig(
        enabled=True,
        min_history_days=14,
        max_iter=30,
        targets={
            "wind": TargetConfig(
                horizon_h=24, capacity_w=CAP, cut_out_ms=25, power_curve=[(3, 0), (8, 0.3 * CAP), (12, CAP), (25, CAP)]
            )
        },
    )
    svc = ForecastService(cfg, FrameHistory({"wind": f["value"]}), artifact_dir=tmp_path, weather=weather)
    now: datetime = future.index[0].to_pydatetime()
    fc = svc.predict("wind", now)
    assert fc.kind == "model", fc.reason
    assert all(0 <= p.p10 <= p.p50 <= p.p90 <= CAP for p in fc.points)
    assert all(p.p50 == 0 for p in fc.points[:6])  # forecast wind above cut-out
    assert np.mean([p.p50 for p in fc.points[6:]]) > 0.6 * CAP  # strong wind below cut-out: near rated


def test_wind_intervals_reach_the_plants_idle_consumption_not_a_glitch(tmp_path: Path) -> None:
    """A plant's net output is negative when idle (auxiliaries): P10 must be able to go there, or every
    calm hour is a miss of the interval (La Haute Borne: 10 % of hours, 9 points of coverage)."""
    f = wind_frame(40)
    calm = f["wind_speed_ms"] < 3.5
    f.loc[calm, "value"] = -15_000.0 * np.random.default_rng(1).uniform(0.5, 1.0, int(calm.sum()))
    f.iloc[500, f.columns.get_loc("value")] = -1e6  # one glitched reading
    future = wind_frame(42).iloc[len(f) :].copy()
    future["wind_speed_ms"] = 1.0  # a calm day ahead
    weather = FrameWeather(pd.concat([f, future])[["wind_speed_ms", "wind_direction_deg"]])
    cfg = ForecastingConfig(
        enabled=True, min_history_days=14, max_iter=30, targets={"wind": TargetConfig(horizon_h=24, capacity_w=CAP)}
    )
    svc = ForecastService(cfg, FrameHistory({"wind": f["value"]}), artifact_dir=tmp_path, weather=weather)
    fc = svc.predict("wind", future.index[0].to_pydatetime())
    assert fc.kind == "model", fc.reason
    assert min(p.p10 for p in fc.points) < 0  # the idle consumption is inside the interval
    assert all(p.p10 >= -15_000.0 for p in fc.points)  # but the glitch did not open the floor
    assert all(p.p10 <= p.p50 <= p.p90 <= CAP for p in fc.points)


def test_outage_mask_flags_zero_output_in_strong_wind() -> None:
    y = np.array([0.0, 0.0, 1e6, 5.0])
    expected = np.array([1.5e6, 1e4, 1.5e6, 1.9e6])
    assert outage_mask(y, expected, CAP).tolist() == [True, False, False, True]


def test_pv_model_is_zero_at_night_and_follows_irradiance(tmp_path: Path) -> None:
    lat, lon = 56.95, 24.1
    idx = pd.date_range("2024-05-01", periods=42 * 24, freq="h", tz="UTC")
    rng = np.random.default_rng(5)
    cs = clear_sky_ghi(idx, lat, lon, offset_s=1800)
    cloud = np.clip(rng.normal(0.3, 0.3, len(idx)), 0, 1)
    ghi = cs * (1 - 0.75 * cloud)
    power = np.clip(ghi / 1000 * 400_000 * rng.uniform(0.95, 1.0, len(idx)), 0, 400_000)
    f = pd.DataFrame({"value": power, "ghi_wm2": ghi, "cloud_cover_pct": cloud * 100, "temperature_c": 15.0}, index=idx)
    hist = f.iloc[: 40 * 24]
    cfg = ForecastingConfig(
        enabled=True,
        min_history_days=14,
        max_iter=40,
        location=Location(latitude=lat, longitude=lon),
        targets={"pv": TargetConfig(horizon_h=48, capacity_w=400_000)},
    )
    svc = ForecastService(
        cfg,
        FrameHistory({"pv": hist["value"]}),
        artifact_dir=tmp_path,
        weather=FrameWeather(f[["ghi_wm2", "cloud_cover_pct", "temperature_c"]]),
    )
    fc = svc.predict("pv", f.index[40 * 24].to_pydatetime())
    assert fc.kind == "model", fc.reason
    p50 = np.array([p.p50 for p in fc.points])
    night = clear_sky_ghi(pd.DatetimeIndex([p.ts for p in fc.points]), lat, lon, offset_s=1800) == 0
    assert night.any() and (p50[night] < 0.02 * 400_000).all()
    actual = f["value"].iloc[40 * 24 :].to_numpy()
    assert np.mean(np.abs(p50 - actual)) < 0.5 * np.mean(np.abs(actual - actual.mean()))
    assert all(0 <= p.p10 <= p.p50 <= p.p90 <= 400_000 for p in fc.points)
    model = svc._model("pv")
    assert model is not None and model.spec.tilt_deg == 30.0  # the configured tilt is used, not ignored
    assert "poa_forecast" in model.feature_names  # forecast irradiance on the modules' plane


def test_tilt_and_azimuth_give_plane_of_array_irradiance() -> None:
    """pvlib (Erbs split, isotropic sky): a horizontal plane sees GHI; at an equinox noon at 57° N a
    40° south-facing plane sees much more, a north-facing one less."""
    idx = pd.date_range("2024-03-20", periods=24, freq="h", tz="UTC")
    ghi = clear_sky_ghi(idx, 56.95, 24.1, offset_s=1800)
    flat, _ = plane_of_array(idx, 56.95, 24.1, tilt_deg=0, offset_s=1800)
    np.testing.assert_allclose(flat, ghi, rtol=1e-6, atol=1e-6)
    south, (poa,) = plane_of_array(idx, 56.95, 24.1, tilt_deg=40, azimuth_deg=180, ghi=[ghi], offset_s=1800)
    noon = int(np.argmax(ghi))
    assert south[noon] > 1.3 * ghi[noon] and poa[noon] == pytest.approx(south[noon])
    north, _ = plane_of_array(idx, 56.95, 24.1, tilt_deg=40, azimuth_deg=0, offset_s=1800)
    assert north[noon] < 0.5 * ghi[noon]
    assert (south[ghi == 0] == 0).all()


def test_windpowerlib_curve_comes_from_the_bundled_library_scaled_to_capacity() -> None:
    # read from the copy inside the package: no network on this path (the test machine has none either)
    pc = PowerCurve.from_windpowerlib("E-82/2300", capacity=CAP, cut_out_ms=25)
    p = pc.power(np.array([2.0, 8.0, 14.0, 26.0]))
    assert p[0] < 0.01 * CAP and 0.2 * CAP < p[1] < 0.8 * CAP and p[2] == pytest.approx(CAP, rel=0.02)
    assert p[3] == 0.0  # above cut-out
    assert max(pc.powers) == pytest.approx(CAP)


def test_unknown_turbine_type_is_a_config_error_with_suggestions() -> None:
    with pytest.raises(
        ValidationError, match=r"unknown windpowerlib turbine type 'E-82/230'; did you mean .*'E-82/2300'"
    ):
        TargetConfig(horizon_h=24, capacity_w=CAP, turbine_type="E-82/230")


def test_wind_model_trains_on_a_windpowerlib_curve(tmp_path: Path) -> None:
    f = wind_frame(40)
    future = wind_frame(42).iloc[len(f) :]
    weather = FrameWeather(pd.concat([f, future])[["wind_speed_ms", "wind_direction_deg"]])
    cfg = ForecastingConfig(
        enabled=True,
        min_history_days=14,
        max_iter=30,
        targets={"wind": TargetConfig(horizon_h=24, capacity_w=CAP, turbine_type="E-82/2300")},
    )
    svc = ForecastService(cfg, FrameHistory({"wind": f["value"]}), artifact_dir=tmp_path, weather=weather)
    fc = svc.predict("wind", future.index[0].to_pydatetime())
    assert fc.kind == "model", fc.reason
    assert svc._model("wind").spec.power_curve == PowerCurve.from_windpowerlib("E-82/2300", capacity=CAP)
