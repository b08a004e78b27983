"""Shared builders for the flexibility tests: configs and forecasts from plain numbers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from forecasting.types import Forecast, ForecastPoint
from gateway.flexibility.config import FlexibilityConfig

NOW = datetime(2026, 3, 10, 7, 20, tzinfo=UTC)
START = NOW.replace(minute=0)


def config(**over: Any) -> FlexibilityConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "limits": {"grid_connection_w": 600_000},
        "assets": [
            {
                "kind": "battery",
                "id": "battery",
                "capacity_wh": 200_000,
                "max_charge_w": 100_000,
                "max_discharge_w": 100_000,
                "soc": {"device": "battery"},
            },
            {
                "kind": "shiftable",
                "id": "press",
                "power_w": 50_000,
                "energy_wh_per_day": 200_000,
                "windows": ["06:00-22:00"],
            },
        ],
    }
    base.update(over)
    return FlexibilityConfig.model_validate(base)


def forecast(
    target: str,
    p50: Sequence[float],
    *,
    spread: float = 0.1,
    generated_at: datetime = NOW,
    start: datetime = START,
    resolution_s: int = 3600,
    kind: str = "model",
) -> Forecast:
    pts = tuple(
        ForecastPoint(start + timedelta(seconds=resolution_s * i), v - abs(v) * spread, v, v + abs(v) * spread)
        for i, v in enumerate(p50)
    )
    return Forecast(target, generated_at, resolution_s, "W", pts, kind, "test")  # type: ignore[arg-type]


def forecasts(load: Sequence[float], wind: Sequence[float], pv: Sequence[float], **kw: Any) -> dict[str, Forecast]:
    return {"load": forecast("load", load, **kw), "wind": forecast("wind", wind, **kw), "pv": forecast("pv", pv, **kw)}
