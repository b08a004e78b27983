"""Flexibility configuration (the `flexibility:` section of gia.yaml).

Example::

    flexibility:
      enabled: true
      resolution_s: 3600          # signal/plan intervals; hourly = the hourly-matching granularity
      horizon_h: 24
      max_forecast_age_s: 7200    # older forecasts make the signal neutral (with a reason)
      generation: [wind, pv]      # forecasts that make up renewable generation (load is always needed)
      quantile_combination: comonotonic
      thresholds: {absorb_above_w: 0, reduce_below_w: 0, hysteresis_w: 20000}
      limits: {grid_connection_w: 1500000, contracted_peak_w: 400000}
      assets:
        - {kind: battery, id: battery, capacity_wh: 200000, max_charge_w: 100000, max_discharge_w: 100000,
           min_soc_pct: 10, max_soc_pct: 95, soc: {device: battery, quantity: soc_pct}}
        - {kind: shiftable, id: press, power_w: 50000, energy_wh_per_day: 400000, windows: ["06:00-22:00"]}
        - {kind: curtailable, id: wind-turndown, source: wind, max_curtail_w: 2000000, device: wind}

Only pydantic: gateway/settings.py imports this module, so it must stay cheap (no numpy, no scipy).
Checks that need the rest of the configuration (device ids) are in `gateway.flexibility.checks`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.flexibility.assets import Asset, BatteryAsset, CurtailableGeneration, ShiftableLoad, ThermalBuffer

QuantileCombination = Literal["comonotonic", "independent"]
GenSource = Literal["wind", "pv"]


def _both_sources() -> list[GenSource]:
    return ["wind", "pv"]


class Thresholds(BaseModel):
    """When an interval is `absorb`, `neutral` or `reduce` (see gateway/flexibility/signal.py).

    absorb: the *pessimistic* surplus (P10) is above `absorb_above_w`; reduce: even the *optimistic*
    surplus (P90) is below `reduce_below_w`; neutral otherwise. `hysteresis_w` is the width of the
    dead band around each threshold: a level is entered `hysteresis_w/2` past its threshold and left
    only `hysteresis_w/2` back on the other side, so a surplus wobbling around a threshold cannot flap.
    """

    model_config = ConfigDict(extra="forbid")

    absorb_above_w: float = Field(default=0.0, description="P10 surplus above this (W) -> absorb")
    reduce_below_w: float = Field(default=0.0, description="P90 surplus below this (W) -> reduce")
    hysteresis_w: float = Field(default=20_000.0, ge=0, description="dead band around each threshold, W")

    @model_validator(mode="after")
    def _order(self) -> Thresholds:
        if self.reduce_below_w > self.absorb_above_w:
            raise ValueError(
                f"reduce_below_w ({self.reduce_below_w:g}) must not exceed absorb_above_w ({self.absorb_above_w:g})"
            )
        return self


class Limits(BaseModel):
    """Site limits the plan must respect (W, at the point of connection)."""

    model_config = ConfigDict(extra="forbid")

    grid_connection_w: float | None = Field(
        default=None, gt=0, description="connection capacity in W: the plan never imports above it"
    )
    export_limit_w: float | None = Field(
        default=None, ge=0, description="largest export in W (default: the connection capacity)"
    )
    contracted_peak_w: float | None = Field(
        default=None, gt=0, description="contracted import peak in W: the plan avoids exceeding it"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Limits:
        if (
            self.grid_connection_w is not None
            and self.contracted_peak_w is not None
            and self.contracted_peak_w > self.grid_connection_w
        ):
            raise ValueError(
                f"contracted_peak_w ({self.contracted_peak_w:g}) exceeds grid_connection_w"
                f" ({self.grid_connection_w:g}); the contract cannot exceed the connection"
            )
        return self

    @property
    def import_limit_w(self) -> float | None:
        return self.grid_connection_w

    @property
    def export_w(self) -> float | None:
        return self.export_limit_w if self.export_limit_w is not None else self.grid_connection_w


class PlanWeights(BaseModel):
    """Tie-breakers of the battery/load plan, in Wh of matched renewable energy per unit."""

    model_config = ConfigDict(extra="forbid")

    peak_h: float = Field(
        default=0.25, ge=0, description="value of 1 W less peak import, in Wh of matched energy (hours)"
    )
    import_per_wh: float = Field(default=0.02, ge=0, description="value of 1 Wh less grid import")
    cycling_per_wh: float = Field(default=0.005, ge=0, description="cost of 1 Wh through the battery (wear)")
    terminal_value: float = Field(
        default=0.9, ge=0, le=1, description="value of stored energy left at the horizon end, per Wh it can deliver"
    )


class FlexibilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="true to compute and publish flexibility signals")
    resolution_s: Literal[900, 3600] = Field(default=3600, description="interval length: 900 or 3600 s")
    horizon_h: int = Field(default=24, ge=1, le=48, description="hours ahead the signal and plan cover")
    max_forecast_age_s: float = Field(
        default=7200, gt=0, description="a forecast generated longer ago than this is stale -> neutral"
    )
    generation: list[GenSource] = Field(
        default_factory=_both_sources,
        min_length=1,
        description="generation forecasts summed into renewable generation (the load forecast is always used)",
    )
    quantile_combination: QuantileCombination = Field(
        default="comonotonic",
        description="comonotonic (P10s add up: conservative) or independent (half-widths add in quadrature)",
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    limits: Limits = Field(default_factory=Limits)
    weights: PlanWeights = Field(default_factory=PlanWeights)
    assets: list[Asset] = Field(
        default_factory=list, description="batteries, shiftable loads, curtailable generation, thermal stores"
    )

    @model_validator(mode="after")
    def _unique_ids(self) -> FlexibilityConfig:
        seen: set[str] = set()
        for a in self.assets:
            if a.id in seen:
                raise ValueError(f"duplicate asset id {a.id!r}; give every asset its own id")
            seen.add(a.id)
        for c in self.curtailable:
            if c.source not in self.generation:
                raise ValueError(
                    f"curtailable asset {c.id!r} follows the {c.source} forecast, but generation lists only"
                    f" {self.generation}; add {c.source!r} to flexibility.generation"
                )
        return self

    @property
    def batteries(self) -> list[BatteryAsset]:
        return [a for a in self.assets if isinstance(a, BatteryAsset)]

    @property
    def shiftable(self) -> list[ShiftableLoad]:
        return [a for a in self.assets if isinstance(a, ShiftableLoad)]

    @property
    def curtailable(self) -> list[CurtailableGeneration]:
        return [a for a in self.assets if isinstance(a, CurtailableGeneration)]

    @property
    def thermal(self) -> list[ThermalBuffer]:
        return [a for a in self.assets if isinstance(a, ThermalBuffer)]
