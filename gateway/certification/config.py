"""Certification configuration (the `certification:` section of gia.yaml).

Every number that decides a grade or an indicator lives here and is copied into the signed report
(`method` block), so a certifier sees the thresholds and factors a report was computed with and `gia
verify` recomputes with exactly those. The thresholds are the site's; the certifier grades under their
own (`gia verify --policy`, defaulting to the scheme's published defaults, which are the defaults here):
a site may set stricter values; more lenient ones are listed in the report (`quality.lenient_vs_scheme`)
and do not change the grade a certifier gives. Ratios and factors are decimal strings, never floats: they end up
in signed data, and RFC 8785 canonicalisation would re-write a float.

Example::

    certification:
      interval_minutes: 15
      renewable_share_threshold: "0.5"
      threshold_basis: market
      emission_factors:
        location: {value: "0.0491", year: 2022}
      guarantees_of_origin:
        - {id: LV-GO-2025-000123, month: 2025-03, energy_wh: 40000000, source: wind, registry: AST}
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


def _decimal_string(v: str, *, lo: str | None = None, hi: str | None = None) -> str:
    try:
        d = Decimal(v)
    except (InvalidOperation, TypeError):
        raise ValueError(f"{v!r} is not a decimal number; write it as a quoted string such as '0.5'") from None
    if not d.is_finite():
        raise ValueError(f"{v!r} must be a finite decimal")
    if lo is not None and d < Decimal(lo):
        raise ValueError(f"{v!r} must be >= {lo}")
    if hi is not None and d > Decimal(hi):
        raise ValueError(f"{v!r} must be <= {hi}")
    return v


class EmissionFactor(BaseModel):
    """A grid emission factor with the metadata GHG Protocol Scope 2 reporting asks for."""

    model_config = ConfigDict(extra="forbid")

    value: str = Field(default="0.0491", description="t CO2/MWh as a decimal string, e.g. '0.0491'")
    unit: Literal["t CO2/MWh"] = Field(default="t CO2/MWh", description="only 't CO2/MWh' is accepted")
    basis: str = Field(
        default="location-based: electricity produced in Latvia",
        description="what the factor describes (location-based grid average, residual mix, supplier...)",
    )
    year: int = Field(default=2022, ge=1990, le=2100, description="the year the factor applies to")
    source: str = Field(
        default="Cabinet Regulation No. 42 (2018), Latvia, emission factor tables",
        description="publication the factor comes from",
    )
    status: Literal["provisional", "final"] = Field(default="final", description="provisional or final")

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        return _decimal_string(v, lo="0")


class EmissionFactors(BaseModel):
    model_config = ConfigDict(extra="forbid")

    location: EmissionFactor = Field(default_factory=EmissionFactor, description="location-based factor (grid average)")
    market: EmissionFactor | None = Field(
        default=None,
        description="market-based factor for grid energy not covered by Guarantees of Origin (residual"
        " mix or supplier factor); omit to use the location factor, flagged provisional",
    )


class GuaranteeOfOrigin(BaseModel):
    """A cancelled Guarantee of Origin (EN 16325) backing grid imports of one month."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="certificate or cancellation statement id")
    month: str = Field(pattern=_MONTH_PATTERN, description="consumption month it was cancelled for, YYYY-MM")
    energy_wh: int = Field(gt=0, description="energy covered in Wh (integer; 1 GO = 1000000 Wh)")
    source: str = Field(default="other", description="production source: wind, pv, hydro, biomass, other")
    registry: str = Field(default="", description="issuing body / registry, e.g. AST (Latvia)")
    site: str | None = Field(default=None, description="site id it was cancelled for; default this site")


class CertificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    renewable_share_threshold: str = Field(default="0.5", description="decimal string, e.g. '0.5' for 50 %")
    threshold_basis: Literal["physical", "market", "hourly"] = Field(
        default="market", description="which renewable share the threshold is judged on"
    )
    interval_minutes: Literal[5, 10, 15, 20, 30, 60] = Field(
        default=15, description="interval length in minutes; divides an hour (5, 10, 15, 20, 30 or 60)"
    )
    boundary_tolerance_s: int = Field(
        default=60, ge=0, le=600, description="a reading this close to a period edge counts as measured"
    )
    max_interpolation_s: int = Field(
        default=3600, ge=60, le=86400, description="interpolate a boundary only between reads this close"
    )
    gap_min_s: int = Field(default=900, ge=60, description="a pause between readings longer than this is a gap")
    min_energy_coverage: str = Field(default="0.99", description="verified needs measured/total >= this")
    max_estimated_share: str = Field(default="0.01", description="verified needs estimated/total <= this")
    capacity_factor: str = Field(
        default="1.2", description="interval energy limit = factor x rated power x interval (Dutch code: 1.2)"
    )
    frozen_after_h: int = Field(
        default=24, ge=1, description="a register that does not move for this many hours is flagged"
    )
    pv_night_elevation_deg: str = Field(
        default="-6", description="sun elevation below which a PV channel must not produce (degrees)"
    )
    pv_night_tolerance_wh: int = Field(
        default=10, ge=0, description="Wh a PV channel may show per night interval (standby noise)"
    )
    emission_factors: EmissionFactors = Field(default_factory=EmissionFactors)
    guarantees_of_origin: list[GuaranteeOfOrigin] = Field(
        default_factory=list, description="cancelled Guarantees of Origin backing grid imports"
    )
    min_time_coverage: str = Field(
        default="0.99", description="interval grade verified needs measured intervals / intervals >= this"
    )
    min_interval_energy_share: str = Field(
        default="0.99", description="interval grade verified needs energy in measured intervals / total >= this"
    )
    balance_tolerance: str = Field(
        default="0.02",
        description="grid-derived consumption and the consumption (+ auxiliary) meters must agree within this share",
    )
    settlement_delay_h: int = Field(
        default=48,
        ge=1,
        le=24 * 31,
        description="a month is closed (stored, published) this many hours after its end, once every channel"
        " has a reading after the end; before that it is provisional",
    )
    settlement_max_wait_h: int = Field(
        default=720,
        ge=1,
        le=24 * 366,
        description="close the month after this many hours even if a channel has no reading after its end"
        " (that channel is then unverified)",
    )
    replacement_late_after_h: int = Field(
        default=48, ge=0, description="a meter replacement recorded more than this after the swap is flagged late"
    )
    reports_dir: str | None = Field(
        default=None, description="where closed-month reports are copied; default <data_dir>/reports"
    )
    hourly_profiles: bool = Field(
        default=False,
        description="put each channel's energy per hour into the report (channels[].hourly_wh): an area hub"
        " needs it to split a shared generator hourly and to match renewable supply hour by hour",
    )

    @field_validator(
        "renewable_share_threshold",
        "min_energy_coverage",
        "max_estimated_share",
        "min_time_coverage",
        "min_interval_energy_share",
        "balance_tolerance",
    )
    @classmethod
    def _share(cls, v: str) -> str:
        return _decimal_string(v, lo="0", hi="1")

    @field_validator("capacity_factor")
    @classmethod
    def _factor(cls, v: str) -> str:
        return _decimal_string(v, lo="1")

    @field_validator("pv_night_elevation_deg")
    @classmethod
    def _elevation(cls, v: str) -> str:
        return _decimal_string(v, lo="-18", hi="0")
