"""Control configuration (the `control:` section of gia.yaml). Off by default, and `dry_run` first.

Example::

    control:
      enabled: true
      dry_run: true              # decide and record, write nothing; set false once the records look right
      interval_s: 10             # how often setpoints are recomputed and re-sent (refreshes device watchdogs)
      watchdog_s: 120            # what devices with a timeout register get: they revert on their own after it
      actuators:
        - {kind: battery, id: battery, device: battery, max_charge_w: 50000, max_discharge_w: 50000,
           min_soc_pct: 15, max_soc_pct: 95, ramp_w_per_s: 5000, min_dwell_s: 60,
           grid: {device: grid, quantity: power_w}}
        - {kind: relay, id: press, protocol: shelly-gen2, topic: shellypro1pm-press, min_dwell_s: 600}
      s2: {listen: "127.0.0.1:8765"}   # the agent as S2 CEM for resource managers on the site network

A battery actuator follows the plan of the flexibility asset with its id (gateway/flexibility); a relay
follows a shiftable asset's plan. Limits here narrow the device map's: the tighter of the two holds.

Only pydantic: gateway/settings.py imports this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.flexibility.assets import AssetId


class Reading(BaseModel):
    """A live reading the control loop uses: a device's quantity."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(description="id of the device (under devices:) that reports it")
    quantity: str = Field(default="power_w", description="the quantity, e.g. power_w or soc_pct")


class BatteryActuatorConfig(BaseModel):
    """A battery commanded through its device map's `control.battery` rule (Modbus)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["battery"] = "battery"
    id: AssetId = Field(description="the flexibility asset whose plan it follows (flexibility.assets[].id)")
    device: str = Field(description="the device (under devices:) whose map says how to command it")
    max_charge_w: float = Field(gt=0, description="largest charging power the agent may command, W")
    max_discharge_w: float = Field(gt=0, description="largest discharging power the agent may command, W")
    min_soc_pct: float = Field(default=10.0, ge=0, le=100, description="never discharge below this SoC, %")
    max_soc_pct: float = Field(default=95.0, ge=0, le=100, description="never charge above this SoC, %")
    soc: Reading | None = Field(default=None, description="where the SoC is read (default: the device's soc_pct)")
    grid: Reading | None = Field(
        default=None,
        description="the grid meter's power (+ import): with it the battery charges only from the measured"
        " surplus and discharges at most what the plan schedules (follow: envelope)",
    )
    follow: Literal["envelope", "setpoint", "self_consumption"] = Field(
        default="envelope",
        description="envelope: self-consumption inside the plan's discharge cap (needs grid); self_consumption:"
        " charge from the measured surplus, discharge into the measured deficit (needs grid; best for the hourly"
        " matching, docs/control.md); setpoint: the plan's power as it is",
    )
    ramp_w_per_s: float | None = Field(default=None, gt=0, description="largest change of setpoint per second, W/s")
    min_dwell_s: float = Field(default=60.0, ge=0, description="least time a setpoint is held before it changes, s")
    deadband_w: float = Field(default=500.0, ge=0, description="changes smaller than this are not made, W")
    readback_tolerance_w: float = Field(default=200.0, ge=0, description="a read-back further off fails, W")

    @model_validator(mode="after")
    def _window(self) -> BatteryActuatorConfig:
        if self.min_soc_pct >= self.max_soc_pct:
            raise ValueError(f"min_soc_pct ({self.min_soc_pct:g}) must be below max_soc_pct ({self.max_soc_pct:g})")
        return self


class RelayActuatorConfig(BaseModel):
    """An on/off load behind an MQTT relay (Shelly Gen2 RPC or Tasmota), following a shiftable plan."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["relay"]
    id: AssetId = Field(description="the shiftable asset whose plan it follows (flexibility.assets[].id)")
    protocol: Literal["shelly-gen2", "tasmota"] = Field(description="shelly-gen2 (RPC Switch.Set) or tasmota")
    topic: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$",
        description="Shelly: the device's MQTT topic prefix (its id); Tasmota: its %topic%",
    )
    switch_id: int = Field(default=0, ge=0, le=15, description="Shelly switch component id (switch:N)")
    on_fraction: float = Field(
        default=0.5, gt=0, le=1, description="switch on when the plan gives at least this share of its power"
    )
    min_dwell_s: float = Field(default=300.0, ge=0, description="least time between two switchings, s")


Actuator = Annotated[BatteryActuatorConfig | RelayActuatorConfig, Field(discriminator="kind")]


class S2Config(BaseModel):
    """The agent as S2 CEM (EN 50491-12-2) over WebSocket: resource managers connect to it."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(default="127.0.0.1:8765", pattern=r"^[^\s:]+:\d{1,5}$", description="HOST:PORT to listen on")
    control_type: Literal["PEBC", "FRBC"] = Field(
        default="PEBC", description="the control type the CEM selects when the RM offers it"
    )
    battery: str | None = Field(default=None, description="the battery asset whose plan is sent (default: first)")


class ControlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="true to run the control loop")
    dry_run: bool = Field(default=True, description="decide and record every command, but write nothing")
    interval_s: float = Field(default=10.0, ge=0.05, le=3600, description="seconds between control rounds")
    watchdog_s: float = Field(
        default=120.0,
        gt=0,
        le=86400,
        description="devices with a timeout register revert to their own mode this long after the last command",
    )
    max_plan_age_s: float = Field(default=7200.0, gt=0, description="an older plan is not followed")
    stop_timeout_s: float = Field(default=5.0, gt=0, le=60, description="time given to hand devices back on stop")
    lost_after_failures: int = Field(default=3, ge=1, description="failed rounds before a device counts as lost")
    actuators: list[Actuator] = Field(default_factory=list, description="batteries and relays the agent commands")
    s2: S2Config | None = Field(default=None, description="serve S2 resource managers as their CEM")

    @model_validator(mode="after")
    def _unique(self) -> ControlConfig:
        ids = [a.id for a in self.actuators]
        if len(set(ids)) != len(ids):
            raise ValueError("two actuators share an id; give each its own")
        if self.interval_s * 2 >= self.watchdog_s:
            raise ValueError(
                f"interval_s ({self.interval_s:g}) must be under half of watchdog_s ({self.watchdog_s:g}):"
                " commands must refresh the devices' watchdog in time"
            )
        return self
