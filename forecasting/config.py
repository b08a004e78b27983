"""Forecasting configuration (the `forecasting:` section of gia.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ForecastingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="true to train and publish load/wind/pv forecasts")
