"""Synthetic but realistic series for fast forecasting tests (no network, no data files)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from forecasting.config import ForecastingConfig, TargetConfig


def make_load(days: int, *, start: str = "2024-01-01", seed: int = 0, res: str = "1h") -> pd.DataFrame:
    """Daily and weekly shape, temperature dependence and noise: hourly W, UTC index."""
    idx = pd.date_range(start, periods=int(days * 86400 / pd.Timedelta(res).total_seconds()), freq=res, tz="UTC")
    rng = np.random.default_rng(seed)
    local = idx.tz_convert("Europe/Riga")
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60
    doy = local.day_of_year.to_numpy()
    temp = 5 + 10 * np.sin(2 * np.pi * (doy - 110) / 365) + 4 * np.sin(2 * np.pi * (hour - 9) / 24)
    temp = temp + rng.normal(0, 1.0, len(idx))
    work = (local.day_of_week.to_numpy() < 5).astype(float)
    daily = np.where((hour >= 7) & (hour < 18), 1.0, 0.35)
    load = 50_000 + 80_000 * daily * (0.5 + 0.5 * work) + 1500 * np.abs(temp - 15) + rng.normal(0, 3000, len(idx))
    return pd.DataFrame({"value": load, "temperature_c": temp}, index=idx)


@pytest.fixture
def load_frame() -> Callable[..., pd.DataFrame]:
    return make_load


@pytest.fixture
def fast_config() -> ForecastingConfig:
    """Small models so every training in the tests takes well under a second."""
    return ForecastingConfig(
        enabled=True,
        targets={"load": TargetConfig(horizon_h=24), "wind": TargetConfig(horizon_h=24, capacity_w=2e6)},
        min_history_days=14,
        max_iter=20,
        timezone="Europe/Riga",
    )
