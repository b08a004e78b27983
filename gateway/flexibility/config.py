"""Flexibility configuration (the `flexibility:` section of gia.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FlexibilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="true to compute and publish flexibility signals")
