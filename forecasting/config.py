"""Forecasting configuration (the `forecasting:` section of gia.yaml).

Everything here is plain data validated at start, so a typo in a power curve is a `check-config` problem,
not a crash at 03:00 when the nightly training runs. Nothing in this module imports scikit-learn.

Example::

    forecasting:
      enabled: true
      holidays_country: LV
      weather: {provider: open-meteo, timeout_s: 10}
      targets:
        load: {series: site_consumption}
        wind: {series: wind_generation, capacity_w: 8200000, cut_out_ms: 25,
               power_curve: [[3, 0], [5, 420000], [8, 3300000], [12, 8000000], [14, 8200000]]}
        pv: {series: pv_generation, capacity_w: 500000}
"""

from __future__ import annotations

import difflib
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TargetName = Literal["load", "wind", "pv"]
TARGET_NAMES: tuple[TargetName, ...] = ("load", "wind", "pv")


class WeatherConfig(BaseModel):
    """Where weather forecasts come from. `none` means baselines for wind/PV (said in each forecast)."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["none", "open-meteo", "file"] = Field(
        default="none", description="none, open-meteo (HTTP, Open-Meteo JSON format) or file (CSV)"
    )
    url: str = Field(
        default="https://api.open-meteo.com/v1/forecast",
        description="Open-Meteo-format endpoint (forecast API, or a self-hosted/compatible server)",
    )
    path: Path | None = Field(default=None, description="CSV with `ts` (UTC) and weather columns (file)")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="deadline for one HTTP request, s")
    max_past_days: float = Field(
        default=92,
        gt=0,
        le=3660,
        description="how far back the provider serves (Open-Meteo's forecast API: 92 days); older hours"
        " come from the gateway's weather archive",
    )
    backfill: bool = Field(
        default=True,
        description="open-meteo: fill the training window's past forecasts (24 and 48 h ahead) from the"
        " Previous Runs API, so models train on forecasts, not on weather known after the fact",
    )
    backfill_url: str = Field(
        default="https://previous-runs-api.open-meteo.com/v1/forecast",
        description="Previous-Runs-format endpoint (`<variable>_previous_dayN`) for the back-fill",
    )

    @model_validator(mode="after")
    def _needs_path(self) -> WeatherConfig:
        if self.provider == "file" and self.path is None:
            raise ValueError("weather.provider 'file' needs weather.path (a CSV with a `ts` column)")
        return self


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)


class TargetConfig(BaseModel):
    """One forecast target. Power is in W (`unit`), positive when consuming (load) or producing (wind/pv)."""

    model_config = ConfigDict(extra="forbid")

    series: str | None = Field(
        default=None, description="history series name passed to the HistorySource (default: target name)"
    )
    resolution_s: Literal[900, 3600] = Field(default=3600, description="900 (15 min) or 3600 (hourly)")
    horizon_h: int = Field(default=48, ge=1, le=48, description="hours ahead, at most 48")
    unit: str = Field(default="W", description="unit of the history values and of the forecast")
    capacity_w: float | None = Field(
        default=None, gt=0, description="installed capacity (wind/pv): forecasts are clipped to it"
    )
    # wind
    power_curve: list[tuple[float, float]] | None = Field(
        default=None, description="wind: [[wind speed m/s, farm power W], ...] ascending in wind speed"
    )
    turbine_type: str | None = Field(
        default=None, description="wind: windpowerlib turbine type (e.g. 'E-82/2300'), scaled to capacity"
    )
    cut_out_ms: float = Field(default=25.0, gt=0, le=60, description="wind: cut-out wind speed, m/s")
    # pv
    tilt_deg: float = Field(
        default=30.0, ge=0, le=90, description="pv: module tilt from horizontal, for plane-of-array irradiance"
    )
    azimuth_deg: float | None = Field(
        default=None,
        ge=0,
        lt=360,
        description="pv: direction the modules face, degrees from north (180 = south); default: the equator",
    )

    @field_validator("turbine_type")
    @classmethod
    def _known_turbine(cls, v: str | None) -> str | None:
        """Checked at start, not at the first training a day later, so a typo is a config error."""
        if v is None:
            return v
        from forecasting.physics import windpowerlib_turbine_types

        try:
            known = windpowerlib_turbine_types()
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None
        if v not in known:
            close = difflib.get_close_matches(v, sorted(known), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "e.g. 'E-82/2300'"
            raise ValueError(f"unknown windpowerlib turbine type {v!r}; {hint} (or give power_curve points)")
        return v

    @field_validator("power_curve")
    @classmethod
    def _ascending(cls, v: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("power_curve needs at least two [wind speed, power] points")
        speeds = [p[0] for p in v]
        if any(b <= a for a, b in pairwise(speeds)):
            raise ValueError("power_curve wind speeds must be strictly ascending")
        if any(p[1] < 0 or p[0] < 0 for p in v):
            raise ValueError("power_curve speeds and powers must be >= 0")
        return v


class ForecastingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="true to train and publish load/wind/pv forecasts")
    targets: dict[TargetName, TargetConfig] = Field(
        default_factory=dict, description="targets to forecast: load, wind, pv"
    )
    weather: WeatherConfig = Field(default_factory=WeatherConfig)
    artifact_dir: Path | None = Field(default=None, description="where models live; default <data_dir>/models")
    timezone: str | None = Field(default=None, description="calendar time zone; default: the site's")
    location: Location | None = Field(default=None, description="for weather and PV; default: the site's")
    holidays_country: str = Field(default="LV", description="ISO country code for public holidays")
    holidays_subdiv: str | None = Field(default=None, description="holiday subdivision, if any")
    min_history_days: float = Field(
        default=28, ge=3, description="below this much history a labelled baseline is published"
    )
    train_window_days: float = Field(default=365, ge=7, description="most recent days used for training")
    retrain_interval_h: float = Field(default=24, gt=0, description="hours between scheduled retrainings")
    interval_coverage: float = Field(
        default=0.8,
        gt=0.5,
        lt=0.99,
        description="P10-P90 coverage aimed at (the holdout calibration aims 3 points higher: see pipelines)",
    )
    max_iter: int = Field(default=300, ge=10, le=2000, description="boosting iterations per quantile model")
