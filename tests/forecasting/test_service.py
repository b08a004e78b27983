"""ForecastService: cold start, gaps, artefact versions, weather failures, monotone quantiles, payload."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from forecasting import artifacts
from forecasting.config import ForecastingConfig, TargetConfig
from forecasting.history import FrameHistory, FrameWeather
from forecasting.pipelines import postprocess
from forecasting.service import ForecastService
from forecasting.types import Forecast
from forecasting.weather import OpenMeteoProvider, WeatherProvider

from .conftest import make_load

pytestmark = [pytest.mark.cpu]


def service(
    cfg: ForecastingConfig, frame: pd.DataFrame, tmp_path: Path, *, weather: WeatherProvider | None = None
) -> ForecastService:
    return ForecastService(
        cfg,
        FrameHistory({"load": frame["value"]}),
        artifact_dir=tmp_path / "models",
        weather=weather,
        timezone="Europe/Riga",
    )


def end_of(frame: pd.DataFrame) -> datetime:
    last: pd.Timestamp = pd.DatetimeIndex(frame.index)[-1]
    end: datetime = (last + pd.Timedelta(hours=1)).to_pydatetime()
    return end


def check_points(fc: Forecast, steps: int) -> None:
    assert len(fc.points) == steps
    for p in fc.points:
        assert p.p10 <= p.p50 <= p.p90
        assert all(np.isfinite([p.p10, p.p50, p.p90]))


def test_no_history_gives_an_empty_labelled_forecast(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    svc = ForecastService(fast_config, FrameHistory({}), artifact_dir=tmp_path)
    fc = svc.predict("load", datetime(2024, 5, 1, tzinfo=UTC))
    assert fc.kind == "empty" and fc.points == () and "no history" in fc.reason


def test_cold_start_baseline_then_model_once_history_suffices(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    full = make_load(40)
    short = full.iloc[: 5 * 24]
    fc = service(fast_config, short, tmp_path).predict("load", end_of(short))
    assert fc.kind == "baseline" and "cold start" in fc.reason
    check_points(fc, 24)
    assert fc.points[0].ts == short.index[-1] + pd.Timedelta(hours=1)
    # same service code, more history: the model takes over by itself (trains on first use)
    fc2 = service(fast_config, full, tmp_path).predict("load", end_of(full))
    assert fc2.kind == "model", fc2.reason
    check_points(fc2, 24)
    assert (tmp_path / "models" / "load.joblib").exists()


def test_tiny_and_gappy_history_never_crashes(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    f = make_load(30)
    for frame in (f.iloc[:1], f.iloc[:3], f.iloc[::17], f.drop(f.index[200:500])):
        fc = service(fast_config, frame, tmp_path).predict("load", end_of(frame))
        assert fc.kind in ("baseline", "model")
        check_points(fc, 24)


def test_gaps_in_history_still_train_a_model(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    f = make_load(40)
    gappy = f.drop(f.index[300:420]).drop(f.index[-30:-20])
    svc = service(fast_config, gappy, tmp_path)
    res = svc.train("load", now=end_of(f))
    assert res.trained, res.reason
    fc = svc.predict("load", end_of(f))
    assert fc.kind == "model"
    check_points(fc, 24)


def test_version_mismatch_retrains_instead_of_crashing(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    f = make_load(40)
    svc = service(fast_config, f, tmp_path)
    assert svc.train("load", now=end_of(f)).trained
    meta_path = tmp_path / "models" / "load.json"
    meta = json.loads(meta_path.read_text())
    meta["versions"]["scikit-learn"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "models" / "load.joblib").write_bytes(b"not a pickle")  # must not even be unpickled
    res = artifacts.load(tmp_path / "models", "load")
    assert res.model is None and "version mismatch" in res.reason and "scikit-learn 0.0.1" in res.reason
    fresh = service(fast_config, f, tmp_path)
    fc = fresh.predict("load", end_of(f))
    assert fc.kind == "model"
    assert json.loads(meta_path.read_text())["versions"] == artifacts.library_versions()


def test_corrupt_model_file_is_retrained(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    f = make_load(40)
    assert service(fast_config, f, tmp_path).train("load", now=end_of(f)).trained
    (tmp_path / "models" / "load.joblib").write_bytes(b"\x80\x04garbage")
    assert "unreadable" in artifacts.load(tmp_path / "models", "load").reason
    assert service(fast_config, f, tmp_path).predict("load", end_of(f)).kind == "model"


def test_artefact_metadata_is_complete(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    f = make_load(40)
    service(fast_config, f, tmp_path).train("load", now=end_of(f))
    meta = json.loads((tmp_path / "models" / "load.json").read_text())
    assert set(meta) >= {"features", "training_window", "metrics", "versions"}
    assert {"scikit-learn", "numpy", "python", "format"} <= set(meta["versions"])
    assert "lag_day" in meta["features"]


class _Garbage(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"hourly": {"time": "yesterday"}}')


@pytest.fixture
def garbage_server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1/forecast"
    srv.shutdown()
    srv.server_close()
    t.join(timeout=5)


def test_weather_garbage_falls_back_to_baseline_and_logs(
    fast_config: ForecastingConfig, tmp_path: Path, garbage_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    f = make_load(40)
    now = end_of(f)
    # a model trained with temperature (the weather history came from a good provider)
    good = FrameWeather(pd.concat([f[["temperature_c"]], make_load(3, start=str(now.date()))[["temperature_c"]]]))
    svc = service(fast_config, f, tmp_path, weather=good)
    res = svc.train("load", now=now)
    assert res.trained and res.weather_columns == ("temperature_c",)
    assert svc.predict("load", now).kind == "model"
    # later the weather server answers garbage: baseline, reason in metadata, error logged, no exception
    bad = OpenMeteoProvider(url=garbage_server, latitude=56.9, longitude=24.1, timeout_s=2)
    svc2 = service(fast_config, f, tmp_path, weather=bad)
    with caplog.at_level(logging.ERROR, logger="forecasting.service"):
        fc = svc2.predict("load", now)
    assert fc.kind == "baseline" and "weather unavailable" in fc.reason
    check_points(fc, 24)
    assert any("weather unavailable" in r.getMessage() for r in caplog.records)
    payload = fc.to_payload()
    assert payload["metadata"]["kind"] == "baseline" and payload["metadata"]["reason"]


def test_wind_without_weather_is_a_labelled_baseline(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    f = make_load(40)
    svc = ForecastService(fast_config, FrameHistory({"wind": f["value"] / 100}), artifact_dir=tmp_path)
    fc = svc.predict("wind", end_of(f))
    assert fc.kind == "baseline" and "weather" in fc.reason
    assert all(0 <= p.p10 <= p.p50 <= p.p90 <= 2e6 for p in fc.points)


def test_payload_matches_the_contract(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    f = make_load(40)
    fc = service(fast_config, f, tmp_path).predict("load", end_of(f))
    p = fc.to_payload()
    assert {"generated_at", "resolution_s", "unit", "points"} <= set(p)
    assert p["resolution_s"] == 3600 and p["unit"] == "W"
    assert p["generated_at"].endswith("Z") and p["points"][0]["ts"].endswith("Z")
    assert set(p["points"][0]) == {"ts", "p10", "p50", "p90"}
    json.dumps(p)


def test_forecast_across_dst_keeps_a_regular_utc_grid(tmp_path: Path) -> None:
    cfg = ForecastingConfig(
        enabled=True,
        targets={"load": TargetConfig(horizon_h=48, resolution_s=900)},
        min_history_days=14,
        max_iter=15,
        timezone="Europe/Riga",
    )
    f = make_load(20, start="2024-03-12", res="15min")
    now = datetime(2024, 3, 30, 12, tzinfo=UTC)  # spring-forward night inside the horizon
    fc = service(cfg, f[f.index < now], tmp_path).predict("load", now)
    check_points(fc, 192)
    gaps = {b.ts - a.ts for a, b in zip(fc.points, fc.points[1:], strict=False)}
    assert gaps == {timedelta(minutes=15)}


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (20, 3), elements=st.floats(-1e6, 1e6)), st.one_of(st.none(), st.floats(0, 1e6)))
def test_quantiles_are_monotone_and_bounded(q: np.ndarray, cap: float | None) -> None:
    out = postprocess(q.copy(), lower=0.0, upper=cap)
    assert (np.diff(out, axis=1) >= 0).all()
    assert (out >= 0).all()
    if cap is not None:
        assert (out <= cap).all()


def test_cut_out_is_applied_per_quantile_not_by_zeroing_p50() -> None:
    """Forecast wind near cut-out is uncertain: the farm may stop or run at rated power. Before, P50 went
    to 0 at 25.1 m/s while P90 stayed at rated even in a certain storm; now each quantile goes to 0 only
    when the storm's probability (forecast error sigma 1.5 m/s) is at least its level."""
    q = np.tile([1.5e6, 1.8e6, 2.0e6], (5, 1))
    ws = np.array([10.0, 23.5, 25.1, 27.0, 35.0])
    out = postprocess(q.copy(), lower=0.0, upper=2.0e6, wind_speed=ws, cut_out_ms=25.0)
    assert out[0].tolist() == q[0].tolist()  # far below cut-out: untouched
    assert out[1, 0] == 0.0 and 0 < out[1, 1] < 1.8e6 and out[1, 2] > 1.8e6  # P(storm) 0.16: P10 only
    assert out[2, 0] == 0.0 and out[2, 1] == 0.0 and out[2, 2] > 1.5e6  # just above: P90 still near rated
    assert out[3].tolist() == [0.0, 0.0, 0.0] and out[4].tolist() == [0.0, 0.0, 0.0]  # a sure storm: all 0
    assert (np.diff(out, axis=1) >= 0).all()


def test_first_model_is_quick_and_the_full_one_is_asked_for(tmp_path: Path) -> None:
    """`predict` trains a cheap first model (the user waits for it); `needs_training` then asks for the
    full one, after which it is satisfied until the retraining interval."""
    cfg = ForecastingConfig(
        enabled=True, targets={"load": TargetConfig(horizon_h=24)}, min_history_days=14, max_iter=150
    )
    f = make_load(42)  # two more days of data arrive after `now`
    now = f.index[40 * 24].to_pydatetime()
    svc = service(cfg, f, tmp_path)
    fc = svc.predict("load", now)
    assert fc.kind == "model"
    assert fc.to_payload()["metadata"]["quick"] is True  # a consumer sees it is the cheap first model
    saved = json.loads((tmp_path / "models" / "load.json").read_text())
    assert saved["quick"] is True and saved["metrics"]["quick"] == 1.0 and saved["metrics"]["rows"] <= 20_000
    assert svc.needs_training("load", now)
    res = svc.train("load", now=now)
    assert res.trained and "quick" not in res.metrics
    assert svc.predict("load", now).to_payload()["metadata"]["quick"] is False
    assert not svc.needs_training("load", now)
    assert svc.needs_training("load", now + timedelta(hours=25))  # nightly, as before (new data came)


def test_cancelled_training_stops_at_the_next_estimator(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    from forecasting.pipelines import TrainingCancelled, fit_model

    f = make_load(40)
    svc = service(fast_config, f, tmp_path)
    svc.cancel_training()
    res = svc.train("load", now=end_of(f))
    assert not res.trained and "cancelled" in res.reason
    assert not (tmp_path / "models" / "load.joblib").exists()
    calls: list[int] = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    from forecasting.features import FeatureSpec

    spec = FeatureSpec(target="load", resolution_s=3600, horizon_steps=24, timezone="Europe/Riga")
    y = f["value"].to_numpy(dtype=np.float64)
    with pytest.raises(TrainingCancelled):
        fit_model(y, pd.DatetimeIndex(f.index), spec, max_iter=10, should_stop=stop_after_two)
    assert len(calls) == 3  # asked before each estimator; the third question stopped it


def test_band_recalibrated_on_the_models_own_past_errors(fast_config: ForecastingConfig, tmp_path: Path) -> None:
    """#16: the agent scales a model's band by the errors of its past forecasts whose hours have passed
    (forecasting/recalibrate.py). Past forecasts with bands far wider than their errors narrow the next
    band; under a week of past errors the band is left as trained."""
    from dataclasses import replace

    from forecasting.types import ForecastPoint

    full = make_load(40)
    svc = service(fast_config, full, tmp_path)
    now = end_of(full)
    fc = svc.predict("load", now)
    assert fc.kind == "model", fc.reason
    # 10 days of "past forecasts": P50 = the actual value + 1, band +-500 (the actual is 1 from P50)
    past = []
    for day in range(10, 0, -1):
        issued = now - timedelta(days=day)
        pts = tuple(
            ForecastPoint(
                (pd.Timestamp(issued) + pd.Timedelta(hours=h)).to_pydatetime(),
                float(full["value"].get(pd.Timestamp(issued) + pd.Timedelta(hours=h), 0.0)) + 1 - 500,
                float(full["value"].get(pd.Timestamp(issued) + pd.Timedelta(hours=h), 0.0)) + 1,
                float(full["value"].get(pd.Timestamp(issued) + pd.Timedelta(hours=h), 0.0)) + 1 + 500,
            )
            for h in range(24)
        )
        past.append(replace(fc, generated_at=issued, points=pts))
    scaled = svc.recalibrated("load", fc, past, now)
    scale = scaled.metadata["band_scale"]
    assert scale["days"] >= 7 and scale["scale"] == 0.25, scale  # needed 1/500 -> the floor of the bounds
    for a, b in zip(fc.points, scaled.points, strict=True):
        assert b.p50 == a.p50
        assert (b.p90 - b.p10) < (a.p90 - a.p10) or a.p90 == a.p10
    check_points(scaled, 24)
    few = svc.recalibrated("load", fc, past[-3:], now)  # three days of errors: not enough
    assert few.metadata["band_scale"]["scale"] == 1.0
    assert [(p.p10, p.p90) for p in few.points] == [(p.p10, p.p90) for p in fc.points]
    # Six and a quarter days of past hours, each forecast reaching 48 h ahead (the agent's horizon): the
    # hours still to come are not days of errors. Counting them (8 days in all) scaled the band early.
    ahead = []
    for day in range(6, -1, -1):  # issued daily from 6 days 6 hours ago to 6 hours ago
        issued = now - timedelta(days=day, hours=6)
        hours = [pd.Timestamp(issued) + pd.Timedelta(hours=h) for h in range(1, 49)]
        actual = [float(full["value"].get(t, 0.0)) for t in hours]
        pairs = zip(hours, actual, strict=True)
        pts = tuple(ForecastPoint(t.to_pydatetime(), a + 1 - 500, a + 1, a + 1 + 500) for t, a in pairs)
        ahead.append(replace(fc, generated_at=issued, points=pts))
    early = svc.recalibrated("load", fc, ahead, now)
    assert early.metadata["band_scale"]["days"] < 7 and early.metadata["band_scale"]["scale"] == 1.0, early.metadata
