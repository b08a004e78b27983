"""Certification configuration (the `certification:` section of gia.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CertificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    renewable_share_threshold: str = Field(default="0.5", description="decimal string, e.g. '0.5' for 50 %")
