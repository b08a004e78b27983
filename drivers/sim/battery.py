"""A battery that obeys setpoints physically, for the simulator, the demo and the replays.

`BatteryModel.achieved` is the one place the physics lives: what power a battery really delivers for
a while when asked for some (+ discharge), within its power limits and its state-of-charge window, with
a one-way efficiency on each side (the stored energy falls by P/eta when discharging and rises by
|P| x eta when charging). DemoSite's battery, the simulated Modbus battery below and bench/replay.py all
step through it, so the demo and the replays close the loop on the same battery.

`SimBattery` is a battery device behind a `SimServer`: the writes its map's `control.battery` rule
describes (a signed setpoint, or a forcible mode with charge/discharge powers) command it; without a
command — before the first one, after `release`, or once its own watchdog ran out — it runs its
autonomous self-consumption controller against `site_surplus_w`. Its time is the `now` it is given,
so an accelerated clock runs a one-minute device timeout in a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drivers.modbus.registermap import BatteryControl, RegisterMap


@dataclass(frozen=True)
class BatteryModel:
    """Capacity (Wh), power limits (W), one-way efficiency and the usable state-of-charge window (%)."""

    capacity_wh: float
    max_charge_w: float
    max_discharge_w: float
    efficiency: float = 0.95
    min_soc_pct: float = 10.0
    max_soc_pct: float = 100.0

    @property
    def min_wh(self) -> float:
        return self.capacity_wh * self.min_soc_pct / 100.0

    @property
    def max_wh(self) -> float:
        return self.capacity_wh * self.max_soc_pct / 100.0

    def achieved(self, want_w: float, soc_wh: float, dt_h: float) -> float:
        """The power (W, + discharge) delivered over `dt_h` hours when `want_w` is asked for."""
        eff = self.efficiency
        if want_w > 0:
            return min(want_w, self.max_discharge_w, max(0.0, soc_wh - self.min_wh) * eff / dt_h)
        if want_w < 0:
            return -min(-want_w, self.max_charge_w, max(0.0, self.max_wh - soc_wh) / (eff * dt_h))
        return 0.0

    def soc_after(self, power_w: float, soc_wh: float, dt_h: float) -> float:
        """Stored energy after running at `power_w` (already achievable) for `dt_h` hours."""
        return soc_wh - (power_w / self.efficiency if power_w > 0 else power_w * self.efficiency) * dt_h


@dataclass
class SimBattery:
    """A simulated battery device obeying its map's control rule (see the module docstring)."""

    register_map: RegisterMap
    model: BatteryModel
    now: Callable[[], datetime]
    soc_pct: float = 50.0
    #: the site's renewable surplus at an instant (W): what the autonomous controller follows
    site_surplus_w: Callable[[datetime], float] = lambda _t: 0.0
    #: the writable registers' current values (shared with the SimServer, so reads show them)
    held: dict[str, float] = field(default_factory=dict)
    energy_import_wh: float = 1_000_000.0
    energy_export_wh: float = 1_000_000.0
    power_w: float = 0.0
    reverts: int = 0
    _t: datetime | None = None
    _deadline: datetime | None = None
    _soc_wh: float = math.nan

    def __post_init__(self) -> None:
        control = self.register_map.control
        if control is None or control.battery is None:
            raise ValueError(f"map {self.register_map.name!r} has no control.battery rule")
        self.rule: BatteryControl = control.battery
        self._soc_wh = self.model.capacity_wh * self.soc_pct / 100.0
        for w in self.register_map.writable:
            if w.sim_value is not None:
                self.held.setdefault(w.name, w.sim_value)

    # -- what the device was told ---------------------------------------------------------------------
    def command_w(self) -> float | None:
        """The commanded power (W, + discharge), or None when the battery runs on its own."""
        return None if self._deadline is None else commanded_power(self.rule, self.held)

    @property
    def timeout_s(self) -> float:
        return device_timeout_s(self.rule, self.held)

    def on_write(self, name: str, value: float) -> None:
        """A write the device accepted: a command (re)starts its watchdog; a release ends it."""
        now = self.now()
        self._advance(now)
        kind = classify_write(self.rule, name, value)
        if kind == "release":
            self._deadline = None
        elif kind == "command":
            self._deadline = now + timedelta(seconds=self.timeout_s)

    @property
    def autonomous(self) -> bool:
        self._advance(self.now())
        return self._deadline is None

    # -- physics -----------------------------------------------------------------------------------
    def _advance(self, now: datetime) -> None:
        if self._t is None:
            self._t = now
            return
        while self._t < now:
            end = now
            if self._deadline is not None and self._deadline <= now:
                end = max(self._t, self._deadline)
            dt_h = (end - self._t).total_seconds() / 3600.0
            if dt_h > 0:
                command = self.command_w()
                want = command if command is not None else -self.site_surplus_w(self._t)
                p = self.model.achieved(want, self._soc_wh, dt_h)
                self._soc_wh = self.model.soc_after(p, self._soc_wh, dt_h)
                self.power_w = p
                if p > 0:
                    self.energy_export_wh += p * dt_h
                else:
                    self.energy_import_wh += -p * dt_h
            self._t = end
            if self._deadline is not None and self._deadline <= end:
                self._revert()
            if dt_h <= 0 and end >= now:
                break

    def _revert(self) -> None:
        """The device's own watchdog ran out: back to its autonomous mode, visible in its registers."""
        self._deadline = None
        self.reverts += 1
        for name, value in self.rule.release.items():
            self.held[name] = value

    def values(self) -> Mapping[str, float | int | None]:
        """What the device's registers hold now (for SimServer)."""
        self._advance(self.now())
        soc = 100.0 * self._soc_wh / self.model.capacity_wh
        return {
            "soc_pct": round(soc, 1),
            "power_w": self.power_w,
            "status": 2,
            "voltage_l1_v": 720 + soc,
            "current_l1_a": round(-self.power_w / 770.0, 1),
            "energy_import_wh": math.floor(self.energy_import_wh),
            "energy_export_wh": math.floor(self.energy_export_wh),
            "frequency_hz": 50.0,
        }


def commanded_power(rule: BatteryControl, held: Mapping[str, float]) -> float | None:
    """The power (W, + discharge) the registers `held` command under `rule`; None: not commanded."""
    if rule.strategy == "signed":
        assert rule.power is not None
        return held.get(rule.power, 0.0)
    assert rule.mode is not None and rule.modes is not None
    assert rule.charge is not None and rule.discharge is not None
    mode = round(held.get(rule.mode, -1))
    dis, ch = held.get(rule.discharge, 0.0), held.get(rule.charge, 0.0)
    if rule.modes["charge"] == rule.modes["discharge"] == mode:
        return dis if dis > 0 else -ch
    if mode == rule.modes["discharge"]:
        return dis
    if mode == rule.modes["charge"]:
        return -ch
    return None


def device_timeout_s(rule: BatteryControl, held: Mapping[str, float]) -> float:
    """The device's watchdog: the firmware's fixed one, or what its timeout register holds."""
    if rule.fixed_timeout_s is not None:
        return rule.fixed_timeout_s
    assert rule.timeout is not None
    return held.get(rule.timeout, 0.0) * rule.timeout_unit_s


def classify_write(rule: BatteryControl, name: str, value: float) -> str:
    """'release' (hands the device back), 'command' (a setpoint: restarts the watchdog) or 'other'."""
    powers = (rule.power, rule.charge, rule.discharge)
    if name in rule.release and value == rule.release[name] and name not in powers:
        return "release"
    if name in (*powers, rule.mode):
        return "command"
    return "other"


@dataclass
class DemoBatteryLink:
    """Connects the demo's simulated battery registers to DemoSite: a write commands the site model's
    battery (from its next step), and the device's watchdog hands it back when no command refreshes it."""

    site: Any
    rule: BatteryControl
    now: Callable[[], datetime]
    held: dict[str, float]
    _deadline: datetime | None = None

    def on_write(self, name: str, value: float) -> None:
        now = self.now()
        kind = classify_write(self.rule, name, value)
        if kind == "release":
            self._deadline = None
            self.site.command(now, None, timeout_s=0.0)
        elif kind == "command":
            timeout = device_timeout_s(self.rule, self.held)
            self._deadline = now + timedelta(seconds=timeout)
            self.site.command(now, commanded_power(self.rule, self.held), timeout_s=timeout)

    def tick(self) -> None:
        """Called on every read: a watchdog that ran out shows in the registers (mode back to release)."""
        if self._deadline is not None and self.now() >= self._deadline:
            self._deadline = None
            self.held.update(self.rule.release)
