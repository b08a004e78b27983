"""The first model always comes, and a silent meter is not retrained every round (issue #16, findings 2-3).

The agent's forecasting service with its default settings (`ForecastingConfig(enabled=True)`), and the
agent's own runner for the retrain loop and the live accuracy; history from an in-memory source.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from forecasting.baselines import BASELINES
from forecasting.config import ForecastingConfig, TargetConfig
from forecasting.history import FrameHistory
from forecasting.service import ForecastService
from gateway.forecasts.runner import ForecastRunner
from gateway.runtime.clock import WallClock
from gateway.runtime.live import LiveState
from gateway.settings import Settings

from .conftest import make_load

pytestmark = [pytest.mark.cpu]


def service(cfg: ForecastingConfig, values: pd.Series, tmp_path: Path) -> ForecastService:
    return ForecastService(
        cfg, FrameHistory({"load": values}), artifact_dir=tmp_path / "models", timezone="Europe/Riga"
    )


def end_of(frame: pd.DataFrame | pd.Series) -> datetime:
    end: datetime = (pd.DatetimeIndex(frame.index)[-1] + pd.Timedelta(hours=1)).to_pydatetime()
    return end


def test_a_120_day_history_with_a_missing_hour_trains_with_default_settings(tmp_path: Path) -> None:
    """Before: only the last 28 days counted, against a default minimum of 28 days: one missing hour
    gave "cold start: 28.0 days < 28" forever, although 120 days were there."""
    f = make_load(120)
    values = f["value"].drop(f.index[-100])
    fc = service(ForecastingConfig(enabled=True), values, tmp_path).predict("load", end_of(f))
    assert fc.kind == "model", fc.reason


@pytest.mark.parametrize("min_days", [30, 60])
def test_a_minimum_above_four_weeks_trains_once_history_allows(min_days: int, tmp_path: Path) -> None:
    """Before: `min_history_days` 30 or 60 never trained (a prediction read only 28 days)."""
    cfg = ForecastingConfig(
        enabled=True, min_history_days=min_days, max_iter=20, targets={"load": TargetConfig(horizon_h=24)}
    )
    f = make_load(min_days + 3)
    short = f["value"].iloc[: (min_days - 2) * 24]
    fc = service(cfg, short, tmp_path).predict("load", end_of(short))
    assert fc.kind == "baseline" and fc.reason.startswith(f"cold start: {min_days - 2:.1f} days")
    fc = service(cfg, f["value"], tmp_path).predict("load", end_of(f))
    assert fc.kind == "model", fc.reason


async def test_the_retrain_loop_trains_a_target_still_on_a_baseline(tmp_path: Path) -> None:
    """Before: the loop skipped every target whose current forecast was a baseline, so a target whose
    first training had not happened in `predict` waited for `predict` alone."""
    cfg = ForecastingConfig(enabled=True, max_iter=20, targets={"load": TargetConfig(horizon_h=24)})
    settings = Settings(site={"id": "t", "timezone": "Europe/Riga"}, data_dir=tmp_path, forecasting=cfg)
    runner = ForecastRunner(settings=settings, clock=WallClock(), live=LiveState(), channels=[])
    f = make_load(40)
    now = end_of(f)
    early = service(cfg, f["value"].iloc[: 20 * 24], tmp_path).predict("load", now)
    assert early.kind == "baseline"
    runner.forecasts["load"] = early  # what the agent publishes until a model exists
    svc = service(cfg, f["value"], tmp_path)
    assert svc.needs_training("load", now)
    await runner._retrain_due(svc, ["load"], now)
    assert (tmp_path / "models" / "load.joblib").exists()
    assert not svc.needs_training("load", now)


def test_a_silent_meter_is_trained_once_not_every_round(tmp_path: Path) -> None:
    """Before: the model's age was taken from its last value; with a meter silent for 3 days every
    training left `needs_training` true, and the agent retrained every 15 minutes."""
    f = make_load(32)
    now = end_of(f) + timedelta(days=3)
    svc = service(ForecastingConfig(enabled=True), f["value"], tmp_path)
    res = svc.train("load", now=now)
    assert res.trained, res.reason
    for later in (timedelta(0), timedelta(minutes=15), timedelta(hours=25), timedelta(hours=49)):
        assert not svc.needs_training("load", now + later), later
    meta = json.loads((tmp_path / "models" / "load.json").read_text())
    assert meta["trained_at"] == pd.Timestamp(now).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert meta["training_window"]["end"] < meta["trained_at"]


async def test_live_accuracy_rides_in_the_published_forecast(tmp_path: Path) -> None:
    """Rolling nMAE, coverage and skill against the best naive baseline, per target, in the forecast's
    metadata (so on MQTT and the API); `rolling_accuracy` used to be called from tests only."""
    cfg = ForecastingConfig(enabled=True, max_iter=20, targets={"load": TargetConfig(horizon_h=24)})
    settings = Settings(site={"id": "t", "timezone": "Europe/Riga"}, data_dir=tmp_path, forecasting=cfg)
    runner = ForecastRunner(settings=settings, clock=WallClock(), live=LiveState(), channels=[])
    f = make_load(45)
    svc = service(cfg, f["value"], tmp_path)
    now = end_of(f)
    for hours_back in (72, 48, 30, 24, 6, 0):
        at = now - timedelta(hours=hours_back)
        fc = await runner._with_accuracy(svc, "load", svc.predict("load", at), at)
    acc = fc.to_payload()["metadata"]["accuracy"]
    assert acc["window_days"] == 7 and acc["points"] > 100
    assert 0 < acc["nmae"] < 0.2 and acc["best_naive"]["name"] in BASELINES
    assert acc["skill_vs_best_naive"] is not None and 0 < acc["coverage_p10_p90"] <= 1
    json.dumps(fc.to_payload())
