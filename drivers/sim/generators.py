"""Value generators for `gia sim`: a map's example values brought to life.

Power-like quantities follow a daily profile around the map's example value (with a little noise) — for
a PV inverter the sun's clear-sky profile at the pilot area's place, so it delivers nothing at night —
voltages and frequency wobble around theirs, and energy counters integrate the power actually served
(positive power into `energy_import_wh` for meters, into `energy_export_wh` for generators; negative
power into the other one), so a reader sees counters advance consistently with power. Counters roll
over exactly like the device's register would (the simulator's encoder wraps at the register's
modulus or width), which is how rollover handling is exercised end to end.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from drivers.modbus.registermap import RegisterMap
from drivers.model import QUANTITIES, QuantityKind
from drivers.sim.server import SimServer
from drivers.sim.sun import clear_sky_ghi


class _Point(Protocol):
    @property
    def quantity(self) -> str: ...

    @property
    def example(self) -> float | None: ...

    @property
    def range(self) -> tuple[float, float] | None: ...


class ValueMap(Protocol):
    """What the generator needs of a map: a Modbus register map or an OPC UA node map's points."""

    @property
    def device_class(self) -> str: ...

    @property
    def registers(self) -> Sequence[_Point]: ...


_PROFILED = ("power_w", "power_l", "current", "dc_power", "apparent", "reactive")


class ProfileValues:
    """A `values()` callback for `SimServer` following a daily profile; call it for the values now."""

    def __init__(
        self,
        register_map: ValueMap,
        *,
        now: Callable[[], datetime],
        seed: int = 1,
        period_s: float = 86400.0,
        counter_start: dict[str, float] | None = None,
    ) -> None:
        self.map = register_map
        self.now = now
        self.period_s = period_s
        self._rng = random.Random(seed)
        self._last: float | None = None
        self._last_power = 0.0
        self._counters: dict[str, float] = {}
        generator = register_map.device_class in ("inverter", "wind_turbine", "battery")  # + = delivering
        # a PV inverter follows the sun (nothing at night); other devices a smooth day/night profile
        self._solar = register_map.device_class == "inverter" and period_s == 86400.0
        self._positive_counter = "energy_export_wh" if generator else "energy_import_wh"
        self._negative_counter = "energy_import_wh" if generator else "energy_export_wh"
        for reg in register_map.registers:
            if QUANTITIES[reg.quantity].kind is QuantityKind.COUNTER:
                start = (counter_start or {}).get(reg.quantity, reg.example or 0.0)
                self._counters[reg.quantity] = float(start)

    def _profile(self, t: float) -> float:
        """0.2..1.0 over the period (peaks mid-period), never negative; for PV, clear-sky sunlight 0..~0.85."""
        if self._solar:
            return clear_sky_ghi(t) / 1000
        return 0.6 - 0.4 * math.cos(2 * math.pi * (t % self.period_s) / self.period_s)

    def __call__(self) -> dict[str, float | int | None]:
        t = self.now().timestamp()
        shape = self._profile(t)
        out: dict[str, float | int | None] = {}
        for reg in self.map.registers:
            spec = QUANTITIES[reg.quantity]
            example = reg.example if reg.example is not None else 0.0
            if spec.kind is not QuantityKind.INSTANT:
                if spec.kind is QuantityKind.STATE:
                    out[reg.quantity] = int(example)
                continue
            if reg.quantity.startswith(_PROFILED):
                out[reg.quantity] = example * shape * (1 + self._rng.uniform(-0.02, 0.02))
            elif reg.quantity in ("soc_pct",):
                out[reg.quantity] = max(0.0, min(100.0, example + 20 * math.sin(2 * math.pi * t / self.period_s)))
            else:
                out[reg.quantity] = example * (1 + self._rng.uniform(-0.002, 0.002))
            if reg.range is not None:
                # noise must not push a value the map bounds (a power factor of 1.0) out of its range:
                # the reader would flag a simulated device's value invalid
                out[reg.quantity] = min(max(float(out[reg.quantity] or 0.0), reg.range[0]), reg.range[1])
        power = float(out.get("power_w") or 0.0)
        if self._last is not None and t > self._last:
            hours = (t - self._last) / 3600
            mean = (power + self._last_power) / 2
            key = self._positive_counter if mean >= 0 else self._negative_counter
            if key in self._counters:
                self._counters[key] += abs(mean) * hours
        self._last, self._last_power = t, power
        for key, wh in self._counters.items():
            out[key] = math.floor(wh)
        return out


def simulated_device(
    register_map: RegisterMap, *, listen: str, unit_ids: Sequence[int], now: Callable[[], datetime]
) -> SimServer:
    """The server `gia sim MAP` runs: the map's registers, values following the daily profile.

    One function for the command and the tests, so a test that serves every bundled map this way
    checks exactly what an operator gets from `gia sim`.
    """
    return SimServer(register_map, listen=listen, unit_ids=unit_ids, values=ProfileValues(register_map, now=now))
