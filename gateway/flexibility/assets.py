"""Flexible assets as an operator declares them under `flexibility.assets` in gia.yaml.

Four kinds, told apart by `kind` (a discriminated union, so a typo in one field is reported on that
asset's own path by `gia check-config`):

* `battery` — electrical storage: capacity, charge/discharge power limits, one-way efficiencies,
  usable state-of-charge window, and where its SoC is read (`soc: {device, quantity}`).
* `shiftable` — a process whose daily energy is fixed but whose timing is not (a batch press, a
  compressor filling a receiver, an EV fleet): power when running, energy per local day, the local
  time windows it may run in.
* `curtailable` — generation the site may turn down (wind or PV, by source) when it cannot use or
  export the output.
* `thermal` — a heat pump or electric boiler feeding a thermal store: a flexible load with an energy
  buffer. Everything is in *electrical-equivalent* Wh (the thermal capacity divided by the COP), so the
  planner treats it like a battery that can only be discharged by the heat demand.

Signs used in the whole package: a battery's power is positive when *discharging* (as `power_w` of a
battery device in drivers/model.py), a load's power is positive when consuming.

Only pydantic here: settings import this module, and the agent must start without scipy or numpy.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AssetId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="lowercase letters, digits, '-' or '_' (it becomes an MQTT topic level and an InfluxDB tag)",
    ),
]

_WINDOW = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class LevelSource(BaseModel):
    """Where a storage level is read: a device's quantity, mapped linearly to 0..100 %.

    A battery reports `soc_pct` directly (the defaults); a hot-water tank may only report a
    temperature, so `empty_at`/`full_at` say which readings mean 0 % and 100 %.
    """

    model_config = ConfigDict(extra="forbid")

    device: str = Field(description="id of the device (under devices:) that reports the level")
    quantity: str = Field(default="soc_pct", description="the quantity read, e.g. soc_pct or temperature_c")
    empty_at: float = Field(default=0.0, description="reading that means 0 % (empty)")
    full_at: float = Field(default=100.0, description="reading that means 100 % (full)")

    @model_validator(mode="after")
    def _span(self) -> LevelSource:
        if self.full_at == self.empty_at:
            raise ValueError("empty_at and full_at must differ (they map readings to 0..100 %)")
        return self

    def to_pct(self, reading: float) -> float:
        """The reading as a fill level in percent, clipped to 0..100."""
        pct = (reading - self.empty_at) / (self.full_at - self.empty_at) * 100.0
        return min(100.0, max(0.0, pct))


class BatteryAsset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["battery"] = "battery"
    id: AssetId
    capacity_wh: float = Field(gt=0, description="usable nameplate energy in Wh, e.g. 200000 for 200 kWh")
    max_charge_w: float = Field(gt=0, description="largest charging power in W")
    max_discharge_w: float = Field(gt=0, description="largest discharging power in W")
    charge_efficiency: float = Field(default=0.95, gt=0, le=1, description="one-way AC->stored efficiency, 0..1")
    discharge_efficiency: float = Field(default=0.95, gt=0, le=1, description="one-way stored->AC efficiency, 0..1")
    min_soc_pct: float = Field(default=10.0, ge=0, le=100, description="lowest state of charge the plan uses, %")
    max_soc_pct: float = Field(default=95.0, ge=0, le=100, description="highest state of charge the plan uses, %")
    soc: LevelSource | None = Field(
        default=None, description="where the state of charge is read: {device: ID, quantity: soc_pct}"
    )

    @model_validator(mode="after")
    def _soc_window(self) -> BatteryAsset:
        if self.min_soc_pct >= self.max_soc_pct:
            raise ValueError(f"min_soc_pct ({self.min_soc_pct:g}) must be below max_soc_pct ({self.max_soc_pct:g})")
        return self

    @property
    def min_wh(self) -> float:
        return self.capacity_wh * self.min_soc_pct / 100.0

    @property
    def max_wh(self) -> float:
        return self.capacity_wh * self.max_soc_pct / 100.0


class Window(BaseModel):
    """A daily local-time window [start, end); `end` before `start` wraps past midnight."""

    model_config = ConfigDict(frozen=True)

    start_min: int
    end_min: int

    def minutes(self) -> list[tuple[int, int]]:
        """The window as non-wrapping [start, end) minute ranges within one day."""
        if self.start_min < self.end_min:
            return [(self.start_min, self.end_min)]
        return [(self.start_min, 1440), (0, self.end_min)]

    @property
    def length_min(self) -> int:
        return sum(b - a for a, b in self.minutes())


def parse_window(text: str) -> Window:
    """'HH:MM-HH:MM' (local time; 24:00 allowed as an end) -> Window."""
    m = _WINDOW.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r}: write a window as 'HH:MM-HH:MM' in local time, e.g. '06:00-22:00'")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start >= 1440 or end > 1440:
        raise ValueError(f"{text!r}: hours run 00..23 (24:00 only as an end)")
    if start == end:
        raise ValueError(f"{text!r}: an empty window; for all day write '00:00-24:00'")
    return Window(start_min=start, end_min=end)


class ShiftableLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["shiftable"]
    id: AssetId
    power_w: float = Field(gt=0, description="power when running, W (the planner may also run it part-time)")
    energy_wh_per_day: float = Field(gt=0, description="energy it must get each local day, Wh")
    windows: list[str] = Field(
        min_length=1, description="local-time windows it may run in, e.g. ['06:00-12:00', '13:00-22:00']"
    )
    device: str | None = Field(default=None, description="the meter (device id) that measures it, if any")

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for w in v:
            parse_window(w)
        return v

    @model_validator(mode="after")
    def _fits(self) -> ShiftableLoad:
        minutes = self.window_minutes()
        if len(minutes) != sum(w.length_min for w in self.parsed_windows()):
            raise ValueError("windows overlap; merge them into one")
        available_wh = self.power_w * len(minutes) / 60.0
        if self.energy_wh_per_day > available_wh + 1e-9:
            raise ValueError(
                f"energy_wh_per_day {self.energy_wh_per_day:g} Wh does not fit: {self.power_w:g} W over"
                f" {len(minutes) / 60:g} h of windows gives at most {available_wh:g} Wh; widen the windows"
                " or lower the energy"
            )
        return self

    def parsed_windows(self) -> list[Window]:
        return [parse_window(w) for w in self.windows]

    def window_minutes(self) -> set[int]:
        out: set[int] = set()
        for w in self.parsed_windows():
            for a, b in w.minutes():
                out.update(range(a, b))
        return out


class CurtailableGeneration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["curtailable"]
    id: AssetId
    source: Literal["wind", "pv"] = Field(description="which forecast it follows: wind or pv")
    max_curtail_w: float = Field(gt=0, description="most power it can be turned down by, W")
    device: str | None = Field(default=None, description="the generator's device id, if it is metered")


class ThermalBuffer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["thermal"]
    id: AssetId
    max_power_w: float = Field(gt=0, description="largest electrical input, W")
    capacity_wh: float = Field(
        gt=0, description="store size in electrical-equivalent Wh (thermal Wh divided by the heat pump's COP)"
    )
    demand_w: float = Field(ge=0, description="average heat demand plus losses, electrical-equivalent W")
    min_fill_pct: float = Field(default=10.0, ge=0, le=100, description="lowest fill the plan allows, %")
    max_fill_pct: float = Field(default=90.0, ge=0, le=100, description="highest fill the plan allows, %")
    fill: LevelSource | None = Field(
        default=None,
        description="where the fill is read, e.g. {device: tank, quantity: temperature_c, empty_at: 40, full_at: 70}",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ThermalBuffer:
        if self.min_fill_pct >= self.max_fill_pct:
            raise ValueError(f"min_fill_pct ({self.min_fill_pct:g}) must be below max_fill_pct ({self.max_fill_pct:g})")
        if self.demand_w > self.max_power_w:
            raise ValueError(
                f"demand_w {self.demand_w:g} W exceeds max_power_w {self.max_power_w:g} W: the store would run empty"
            )
        return self

    @property
    def min_wh(self) -> float:
        return self.capacity_wh * self.min_fill_pct / 100.0

    @property
    def max_wh(self) -> float:
        return self.capacity_wh * self.max_fill_pct / 100.0


Asset = Annotated[BatteryAsset | ShiftableLoad | CurtailableGeneration | ThermalBuffer, Field(discriminator="kind")]


def window_fraction(asset: ShiftableLoad, local_start_min: float, length_min: float) -> float:
    """Fraction (0..1) of the local-time interval [start, start+length) that lies inside the windows.

    `local_start_min` is minutes after local midnight; intervals never exceed one day here.
    """
    if length_min <= 0:
        return 0.0
    inside = 0.0
    a0 = local_start_min % 1440
    b0 = a0 + length_min
    for w in asset.parsed_windows():
        for a, b in w.minutes():
            for shift in (0.0, 1440.0):  # an interval may run past local midnight
                lo, hi = max(a0, a + shift), min(b0, b + shift)
                if hi > lo:
                    inside += hi - lo
    return min(1.0, inside / length_min)
