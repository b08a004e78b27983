"""A deterministic physical model of a small industrial site, for `gia demo` and the tests.

The site (latitude 56.9 N, Riga): a ~100 kWp PV plant, one ~2 MW wind turbine, two production halls
with shift-work load profiles, a 200 kWh / 100 kW battery doing self-consumption, and the grid meter at
the point of connection (positive = import):

    grid = load_a + load_b - pv - wind - battery        (battery power: + discharge)

Everything is a pure function of (seed, t), so a demo restarted tomorrow serves the same history, and a
60-day backfill can ask for any instant in any order.

Why energy counters are exact: power is piecewise linear between knots every `step_s` seconds (the
battery is constant per step), so the energy of every segment is integrated analytically, including
the positive and negative parts of the grid power for the import and export registers. A counter is
the integral from a fixed epoch, accumulated day by day (each day computed once and cached), floored
to integer Wh: register advance between two readings == integral of the power served between them,
to within the 1 Wh flooring.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from drivers.maps import load_map
from drivers.modbus.driver import compile_register
from drivers.modbus.registermap import Register
from drivers.sim.battery import BatteryModel, DemoBatteryLink
from drivers.sim.server import SimServer, encode_register, free_tcp_port
from drivers.sim.sun import LATITUDE as LATITUDE  # the demo site stands at the pilot area
from drivers.sim.sun import LONGITUDE as LONGITUDE
from drivers.sim.sun import clear_sky_ghi

TIMEZONE: Final = "Europe/Riga"
DEFAULT_EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)
_DAY: Final = 86400

PV_PEAK_W: Final = 100_000.0
WIND_RATED_W: Final = 2_000_000.0
WIND_CUT_IN: Final = 3.0
WIND_RATED_MS: Final = 12.0
WIND_CUT_OUT: Final = 25.0
WIND_AUX_W: Final = 4_000.0  # controller, heating, yaw when the rotor stands still
BATTERY_WH: Final = 200_000.0
BATTERY_W: Final = 100_000.0
BATTERY_EFF: Final = 0.95  # one-way
#: The connection's capacity (the demo's flexibility limits): what the grid meter's channels are rated at.
GRID_IMPORT_W: Final = 1_500_000.0
GRID_EXPORT_W: Final = 2_500_000.0
BATTERY: Final = BatteryModel(BATTERY_WH, BATTERY_W, BATTERY_W, BATTERY_EFF, min_soc_pct=10.0, max_soc_pct=100.0)


@dataclass(frozen=True)
class DemoDevice:
    """One simulated device of the demo site and how the agent should read it."""

    id: str
    map: str
    device_class: str
    unit_id: int
    channels: tuple[dict[str, Any], ...] = ()
    description: str = ""


def demo_devices() -> list[DemoDevice]:
    """The demo's devices: ids, bundled map names, classes, unit ids and suggested channel roles."""
    return [
        DemoDevice(
            "grid",
            "eastron-sdm630",
            "meter",
            1,
            (
                {"role": "grid_import", "quantity": "energy_import_wh", "rated_power_w": GRID_IMPORT_W},
                {"role": "grid_export", "quantity": "energy_export_wh", "rated_power_w": GRID_EXPORT_W},
            ),
            "grid connection meter (positive power = import)",
        ),
        DemoDevice(
            "pv",
            "huawei-sun2000",
            "inverter",
            1,
            (
                {
                    "role": "generation",
                    "quantity": "energy_export_wh",
                    "source": "pv",
                    "renewable": True,
                    "rated_power_w": PV_PEAK_W,
                },
            ),
            "100 kWp rooftop PV inverter",
        ),
        DemoDevice(
            "wind",
            "generic-wind-turbine",
            "wind_turbine",
            1,
            (
                {
                    "role": "generation",
                    "quantity": "energy_export_wh",
                    "source": "wind",
                    "renewable": True,
                    "rated_power_w": WIND_RATED_W,
                },
                {"role": "auxiliary", "quantity": "energy_import_wh", "rated_power_w": 2.5 * WIND_AUX_W},
            ),
            "2 MW wind turbine",
        ),
        DemoDevice(
            "hall-a",
            "eastron-sdm630",
            "meter",
            1,
            ({"role": "consumption", "quantity": "energy_import_wh", "rated_power_w": 300_000},),
            "production hall A (two shifts)",
        ),
        DemoDevice(
            "hall-b",
            "carlo-gavazzi-em24",
            "meter",
            1,
            ({"role": "consumption", "quantity": "energy_import_wh", "rated_power_w": 150_000},),
            "workshop hall B (day shift)",
        ),
        DemoDevice(
            "battery",
            "huawei-luna2000",
            "battery",
            1,
            (
                {"role": "storage_charge", "quantity": "energy_import_wh", "rated_power_w": BATTERY_W},
                {"role": "storage_discharge", "quantity": "energy_export_wh", "rated_power_w": BATTERY_W},
            ),
            "200 kWh / 100 kW battery (self-consumption)",
        ),
    ]


# -- deterministic noise ------------------------------------------------------------------------------
_MASK64: Final = (1 << 64) - 1


def _hash01(seed: int, stream: int, index: int) -> float:
    """splitmix64 of (seed, stream, index) -> [0, 1): random access, no state."""
    z = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


def _noise(seed: int, stream: int, t: float, period: float) -> float:
    """Smooth value noise in [0, 1) with knots every `period` seconds (smoothstep interpolation)."""
    x = t / period
    i = math.floor(x)
    f = x - i
    f = f * f * (3 - 2 * f)
    a = _hash01(seed, stream, i)
    return a + (_hash01(seed, stream, i + 1) - a) * f


def _pos_integral(a: float, b: float, f: float) -> float:
    """∫_0^f max(0, a + (b - a) s) ds for a linear segment from a (s=0) to b (s=1)."""
    if f <= 0:
        return 0.0
    end = a + (b - a) * f
    if a >= 0 and end >= 0:
        return (a + end) / 2 * f
    if a <= 0 and end <= 0:
        return 0.0
    z = a / (a - end) * f  # where the segment crosses zero
    return a / 2 * z if a > 0 else end / 2 * (f - z)


@dataclass
class _Day:
    """Knot values and cumulative energy (Wh, from the epoch) at every knot of one UTC day."""

    powers: dict[str, list[float]]  # channel -> power at knots 0..n (battery: per-segment, n values)
    cum: dict[str, list[float]]  # counter key -> cumulative Wh at knots 0..n
    soc: list[float]  # battery state of charge (Wh) at knots 0..n


@dataclass
class _DayStart:
    cum: dict[str, float]
    soc_wh: float


@dataclass
class DemoSite:
    """The site model. `state_at(t)` is deterministic in (seed, t); `t` must not be before `epoch`."""

    seed: int = 1
    epoch: datetime = DEFAULT_EPOCH
    step_s: int = 300
    cache_days: int = 90
    _starts: dict[int, _DayStart] = field(default_factory=dict, init=False, repr=False)
    _days: OrderedDict[int, _Day] = field(default_factory=OrderedDict, init=False, repr=False)
    _tz: ZoneInfo = field(default_factory=lambda: ZoneInfo(TIMEZONE), init=False, repr=False)
    #: battery commands (from, until, power W + discharge; None: hand back), seconds since the Unix epoch
    _commands: list[tuple[float, float, float | None]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        # Counters as the devices' registers hold them (float32 kWh on an Eastron, 10 Wh steps on a
        # Huawei, wrap at the register's modulus), so history generated from state_at and live reads
        # of the simulated devices are the same series.
        self._registered: dict[str, list[tuple[str, Callable[[float | int], int]]]] = {}
        for dev in demo_devices():
            m = load_map(dev.map)
            self._registered[dev.id] = [
                (r.quantity, _register_round_trip(r)) for r in m.registers if r.quantity.startswith("energy_")
            ]
        if self.epoch.tzinfo is None:
            raise ValueError("epoch must be timezone-aware UTC")
        if _DAY % self.step_s:
            raise ValueError("step_s must divide a day")
        self._epoch_s = self.epoch.timestamp()
        self._n = _DAY // self.step_s

    # -- the physics, at one instant (seconds since the Unix epoch) -------------------------------------
    def _cloud(self, t: float) -> float:
        """Cloud cover 0..1: overcast days and clear days, with half-hour fluctuations."""
        day_cloud = _hash01(self.seed, 11, int(t // _DAY))
        return max(0.0, min(1.0, (0.6 * day_cloud + 0.4 * _noise(self.seed, 12, t, 1800)) * 1.2 - 0.1))

    def ghi_wm2(self, t: float) -> float:
        """Global horizontal irradiance (W/m²): Meinel clear sky on a NOAA-style sun, dimmed by cloud."""
        clear = clear_sky_ghi(t, latitude=LATITUDE, longitude=LONGITUDE)
        return float(clear * (1 - 0.8 * self._cloud(t)))

    def pv_w(self, t: float) -> float:
        return float(PV_PEAK_W * 0.86 * self.ghi_wm2(t) / 1000)

    def weather_forecast(self, hour_start: float) -> dict[str, float]:
        """The site's weather for one hour as a day-ahead forecast would give it: the hour's mean of the
        true wind and irradiance with a persistent error (a few hours long, ~0.6 m/s and ~10 % rms), so a
        model trained on it in the demo meets the kind of input it would meet on a real site."""
        pts = [hour_start + k * 900 + 450 for k in range(4)]
        wind = sum(self.wind_ms(x) for x in pts) / 4
        ghi = sum(self.ghi_wm2(x) for x in pts) / 4
        cloud = sum(self._cloud(x) for x in pts) / 4
        wind_err = (_noise(self.seed, 41, hour_start, 6 * 3600) - 0.5) * 2.0
        ghi_err = 1 + (_noise(self.seed, 42, hour_start, 4 * 3600) - 0.5) * 0.35
        return {
            "wind_speed_ms": round(max(0.0, wind + wind_err), 2),
            "wind_direction_deg": round(200 + 80 * (_noise(self.seed, 43, hour_start, _DAY) - 0.5), 1),
            "ghi_wm2": round(max(0.0, ghi * ghi_err), 1),
            "cloud_cover_pct": round(100 * cloud, 1),
        }

    def wind_ms(self, t: float) -> float:
        """Hub-height wind: a daily regime plus hourly and 20-minute fluctuations (m/s)."""
        regime: float = 3 + 10 * _noise(self.seed, 21, t, 2 * _DAY) ** 1.3
        gust = (_noise(self.seed, 22, t, 3600) - 0.5) * 4 + (_noise(self.seed, 23, t, 1200) - 0.5) * 2
        return max(0.0, regime + gust)

    def wind_w(self, t: float) -> float:
        """Net turbine power (W): the power curve minus auxiliary consumption when idle."""
        v = self.wind_ms(t)
        if v < WIND_CUT_IN or v >= WIND_CUT_OUT:
            return -WIND_AUX_W
        if v >= WIND_RATED_MS:
            return WIND_RATED_W
        frac = (v**3 - WIND_CUT_IN**3) / (WIND_RATED_MS**3 - WIND_CUT_IN**3)
        return WIND_RATED_W * frac

    def _local_hour_weekday(self, t: float) -> tuple[float, int]:
        local = datetime.fromtimestamp(t, self._tz)
        return local.hour + local.minute / 60 + local.second / 3600, local.weekday()

    def load_a_w(self, t: float) -> float:
        """Hall A: two shifts 06-22 on weekdays, reduced Saturday morning, night base load."""
        hour, wd = self._local_hour_weekday(t)
        base = 60_000.0
        if wd < 5:
            level = _ramp(hour, 6, 22, 0.5) * 190_000
            level -= _ramp(hour, 11.5, 12.25, 0.25) * 40_000  # lunch break
        elif wd == 5:
            level = _ramp(hour, 7, 13, 0.5) * 90_000
        else:
            level, base = 0.0, 45_000.0
        return base + level + (_noise(self.seed, 31, t, 900) - 0.5) * 20_000

    def load_b_w(self, t: float) -> float:
        """Hall B: one day shift 07-16 on weekdays, small base load."""
        hour, wd = self._local_hour_weekday(t)
        level = _ramp(hour, 7, 16, 0.5) * 95_000 if wd < 5 else 0.0
        return 25_000 + level + (_noise(self.seed, 41, t, 600) - 0.5) * 10_000

    # -- day integration -------------------------------------------------------------------------------
    def _day_index(self, t: float) -> int:
        return math.floor((t - self._epoch_s) / _DAY)

    def _initial(self) -> _DayStart:
        def start(stream: int, low: float, high: float) -> float:
            return float(math.floor(low + (high - low) * _hash01(self.seed, stream, 0)))

        return _DayStart(
            cum={
                "grid.energy_import_wh": start(51, 2e8, 4e8),
                "grid.energy_export_wh": start(52, 1e8, 3e8),
                "pv.energy_export_wh": start(53, 5e7, 1.5e8),
                "wind.energy_export_wh": start(54, 3e9, 6e9),
                "wind.energy_import_wh": start(55, 1e7, 3e7),
                "hall-a.energy_import_wh": start(56, 5e8, 9e8),
                "hall-b.energy_import_wh": start(57, 2e8, 4e8),
                "battery.energy_import_wh": start(58, 1e6, 5e6),
                "battery.energy_export_wh": start(59, 1e6, 5e6),
            },
            soc_wh=0.5 * BATTERY_WH,
        )

    def _start_of(self, day: int) -> _DayStart:
        if day < 0:
            raise ValueError(f"the demo site starts at {self.epoch.isoformat()}; asked for an earlier time")
        if not self._starts:
            self._starts[0] = self._initial()
        last = max(self._starts)
        while last < day:  # days are computed in order, once; later calls are dictionary look-ups
            d = self._compute_day(last)
            self._starts[last + 1] = _DayStart(cum={k: v[-1] for k, v in d.cum.items()}, soc_wh=d.soc[-1])
            last += 1
        return self._starts[day]

    def _day(self, day: int) -> _Day:
        cached = self._days.get(day)
        if cached is not None:
            self._days.move_to_end(day)
            return cached
        return self._compute_day(day)

    def _compute_day(self, day: int) -> _Day:
        cached = self._days.get(day)
        if cached is not None:
            return cached
        start = self._start_of(day)
        t0 = self._epoch_s + day * _DAY
        n, dt = self._n, float(self.step_s)
        times = [t0 + k * dt for k in range(n + 1)]
        pv = [self.pv_w(t) for t in times]
        wind = [self.wind_w(t) for t in times]
        la = [self.load_a_w(t) for t in times]
        lb = [self.load_b_w(t) for t in times]
        batt: list[float] = []
        soc = [start.soc_wh]
        hours = dt / 3600
        for k in range(n):
            surplus = pv[k] + wind[k] - la[k] - lb[k]
            s = soc[-1]
            # a command in force at the step's start, else the battery's own self-consumption rule
            # (charge from any surplus, discharge into any deficit); the physics limits both
            command = self._command_at(times[k])
            p = BATTERY.achieved(command if command is not None else -surplus, s, hours)
            batt.append(p)
            soc.append(BATTERY.soc_after(p, s, hours))
        cum: dict[str, list[float]] = {k: [v] for k, v in start.cum.items()}

        def add(key: str, wh: float) -> None:
            lst = cum[key]
            lst.append(lst[-1] + wh)

        for k in range(n):
            g0 = la[k] + lb[k] - pv[k] - wind[k] - batt[k]
            g1 = la[k + 1] + lb[k + 1] - pv[k + 1] - wind[k + 1] - batt[k]
            add("grid.energy_import_wh", _pos_integral(g0, g1, 1.0) * hours)
            add("grid.energy_export_wh", _pos_integral(-g0, -g1, 1.0) * hours)
            add("pv.energy_export_wh", _pos_integral(pv[k], pv[k + 1], 1.0) * hours)
            add("wind.energy_export_wh", _pos_integral(wind[k], wind[k + 1], 1.0) * hours)
            add("wind.energy_import_wh", _pos_integral(-wind[k], -wind[k + 1], 1.0) * hours)
            add("hall-a.energy_import_wh", (la[k] + la[k + 1]) / 2 * hours)
            add("hall-b.energy_import_wh", (lb[k] + lb[k + 1]) / 2 * hours)
            add("battery.energy_import_wh", max(0.0, -batt[k]) * hours)
            add("battery.energy_export_wh", max(0.0, batt[k]) * hours)
        result = _Day(powers={"pv": pv, "wind": wind, "hall-a": la, "hall-b": lb, "battery": batt}, cum=cum, soc=soc)
        self._days[day] = result
        while len(self._days) > self.cache_days:
            self._days.popitem(last=False)
        return result

    # -- commands (the closed loop) ------------------------------------------------------------------------
    def command(self, at: datetime, power_w: float | None, *, timeout_s: float) -> datetime:
        """Command the battery at `at`: `power_w` (+ discharge; None hands it back to its own rule) until
        `timeout_s` after `at` (the device's watchdog). Returns when it takes effect.

        The battery is constant per step, so a command takes effect at the next step boundary: readings
        before it never change (registers stay monotonic) and everything after is recomputed.
        """
        t = at.timestamp()
        k = math.ceil((t - self._epoch_s) / self.step_s)
        start = self._epoch_s + k * self.step_s
        self._commands.append((start, t + timeout_s, power_w))
        day = self._day_index(start)
        for d in [d for d in self._days if d >= day]:
            del self._days[d]
        for d in [d for d in self._starts if d > day]:
            del self._starts[d]
        return datetime.fromtimestamp(start, UTC)

    def _command_at(self, t: float) -> float | None:
        """The commanded power at `t`, or None (autonomous): the newest command begun by then rules."""
        for start, until, power in reversed(self._commands):
            if start <= t:
                return power if t < until else None
        return None

    # -- the public view -------------------------------------------------------------------------------
    def _locate(self, t: datetime) -> tuple[_Day, int, float]:
        """The day holding `t`, the index of the step `t` falls in, and how far into that step (0..1)."""
        ts = t.timestamp()
        day = self._day_index(ts)
        self._start_of(day)
        sec = ts - (self._epoch_s + day * _DAY)
        k = min(int(sec // self.step_s), self._n - 1)
        return self._day(day), k, (sec - k * self.step_s) / self.step_s

    def power_at(self, t: datetime) -> dict[str, float]:
        """Active power (W) of every device at `t`, with the site's sign conventions."""
        d, k, f = self._locate(t)

        def lin(ch: str) -> float:
            a, b = d.powers[ch][k], d.powers[ch][k + 1]
            return a + (b - a) * f

        out = {ch: lin(ch) for ch in ("pv", "wind", "hall-a", "hall-b")}
        out["battery"] = d.powers["battery"][k]
        out["grid"] = out["hall-a"] + out["hall-b"] - out["pv"] - out["wind"] - out["battery"]
        return out

    def counters_at(self, t: datetime) -> dict[str, float]:
        """Cumulative energy (float Wh since the epoch plus the start offsets) at `t`."""
        d, k, f = self._locate(t)
        hours = self.step_s / 3600
        p = d.powers
        la0, la1, lb0, lb1 = p["hall-a"][k], p["hall-a"][k + 1], p["hall-b"][k], p["hall-b"][k + 1]
        pv0, pv1, w0, w1, b = p["pv"][k], p["pv"][k + 1], p["wind"][k], p["wind"][k + 1], p["battery"][k]
        g0 = la0 + lb0 - pv0 - w0 - b
        g1 = la1 + lb1 - pv1 - w1 - b
        partial = {
            "grid.energy_import_wh": _pos_integral(g0, g1, f),
            "grid.energy_export_wh": _pos_integral(-g0, -g1, f),
            "pv.energy_export_wh": _pos_integral(pv0, pv1, f),
            "wind.energy_export_wh": _pos_integral(w0, w1, f),
            "wind.energy_import_wh": _pos_integral(-w0, -w1, f),
            "hall-a.energy_import_wh": _pos_integral(la0, la1, f),
            "hall-b.energy_import_wh": _pos_integral(lb0, lb1, f),
            "battery.energy_import_wh": max(0.0, -b) * f,
            "battery.energy_export_wh": max(0.0, b) * f,
        }
        return {key: d.cum[key][k] + partial[key] * hours for key in d.cum}

    def state_at(self, t: datetime) -> dict[str, dict[str, float | int]]:
        """device id -> quantity -> value at `t` (UTC-aware), as the simulated devices serve it."""
        if t.tzinfo is None:
            raise ValueError("state_at needs a timezone-aware (UTC) datetime")
        ts = t.timestamp()
        powers = self.power_at(t)
        counters = self.counters_at(t)
        out: dict[str, dict[str, float | int]] = {dev: {} for dev in powers}
        for key, wh in counters.items():
            dev, q = key.split(".", 1)
            out[dev][q] = math.floor(wh)
        freq = 50.0 + (_noise(self.seed, 61, ts, 60) - 0.5) * 0.1
        for dev in ("grid", "hall-a", "hall-b", "pv"):
            out[dev].update(self._electrical(dev, powers[dev], ts, freq))
        for q in ("apparent_power_va", "power_l1_w", "power_l2_w", "power_l3_w"):
            del out["pv"][q]  # the inverter's map has no such registers
        out["pv"]["dc_power_w"] = powers["pv"] / 0.975 if powers["pv"] > 0 else 0.0
        out["pv"]["status"] = 512 if powers["pv"] > 0 else 40960
        out["pv"]["temperature_c"] = 15.0 + powers["pv"] / PV_PEAK_W * 35
        v = self.wind_ms(ts)
        pw = powers["wind"]
        out["wind"].update(
            {
                "power_w": pw,
                "wind_speed_ms": round(v, 2),
                "wind_direction_deg": round(360 * _noise(self.seed, 71, ts, 6 * 3600), 1),
                "rotor_speed_rpm": 0.0 if pw <= 0 else round(6 + 10 * min(1.0, pw / WIND_RATED_W) ** 0.5, 1),
                "status": 4 if v >= WIND_CUT_OUT else (2 if pw > 0 else 0),
                "temperature_c": round(5 + 10 * _noise(self.seed, 72, ts, _DAY), 1),
            }
        )
        soc = self._soc_at(ts)
        out["battery"].update(
            {
                "power_w": powers["battery"],
                "soc_pct": round(100 * soc / BATTERY_WH, 1),
                "voltage_l1_v": 720 + 100 * soc / BATTERY_WH,
                "current_l1_a": round(-powers["battery"] / 770.0, 1),  # DC bus, + charging
                "status": 2,
            }
        )
        for dev, round_trips in self._registered.items():
            for q, as_register in round_trips:
                if q in out[dev]:
                    out[dev][q] = as_register(out[dev][q])
        return out

    def _soc_at(self, ts: float) -> float:
        day = self._day_index(ts)
        self._start_of(day)
        d = self._day(day)
        sec = ts - (self._epoch_s + day * _DAY)
        k = min(int(sec // self.step_s), self._n - 1)
        f = (sec - k * self.step_s) / self.step_s
        return d.soc[k] + (d.soc[k + 1] - d.soc[k]) * f

    def _electrical(self, dev: str, p: float, ts: float, freq: float) -> dict[str, float]:
        stream = sum(map(ord, dev))
        volts = [230.0 + (_noise(self.seed, stream + i, ts, 120) - 0.5) * 6 for i in range(3)]
        share = [0.34, 0.32, 0.34]
        pf = 0.97 if dev != "pv" else 1.0
        out: dict[str, float] = {"power_w": p, "frequency_hz": round(freq, 3), "power_factor": pf}
        q = abs(p) * math.tan(math.acos(pf))
        out["reactive_power_var"] = q
        out["apparent_power_va"] = math.hypot(p, q)
        for i in range(3):
            pi = p * share[i]
            out[f"power_l{i + 1}_w"] = pi
            out[f"voltage_l{i + 1}_v"] = round(volts[i], 1)
            out[f"current_l{i + 1}_a"] = round(abs(pi) / (volts[i] * pf), 3)
        return out


def _register_round_trip(reg: Register) -> Callable[[float | int], int]:
    convert = compile_register(reg)

    def run(value: float | int) -> int:
        v, _quality = convert(encode_register(reg, value), None)
        return int(v) if v is not None else 0

    return run


def _ramp(hour: float, start: float, end: float, ramp_h: float) -> float:
    """1 between start and end (local hours), linear ramps of `ramp_h` hours at both ends."""
    if hour <= start - ramp_h or hour >= end + ramp_h:
        return 0.0
    if hour < start:
        return (hour - (start - ramp_h)) / ramp_h
    if hour > end:
        return ((end + ramp_h) - hour) / ramp_h
    return 1.0


@dataclass
class DemoServers:
    """The running simulators: device id -> server, and the connection URL each device is at."""

    servers: dict[str, SimServer]
    urls: dict[str, str]
    devices: list[DemoDevice]

    def __iter__(self) -> Iterator[DemoDevice]:
        return iter(self.devices)


@asynccontextmanager
async def run_demo_servers(
    site: DemoSite,
    now: Callable[[], datetime],
    *,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
) -> Any:
    """Start one simulated Modbus TCP device per demo device (free ports unless given); stop on exit.

    Values follow `site.state_at(now())` at every request, so an accelerated `now` speeds the site up.
    Yields a `DemoServers`.
    """
    devices = demo_devices()
    servers: dict[str, SimServer] = {}
    urls: dict[str, str] = {}
    # The first state of a day computes and caches the whole day (seconds of CPU on a Pi): done here, before
    # any server answers, so the agent's first polls do not wait behind it and see devices as offline.
    site.state_at(now())
    try:
        for dev in devices:
            dev_map = load_map(dev.map)
            link: DemoBatteryLink | None = None
            if dev.device_class == "battery" and dev_map.control is not None and dev_map.control.battery is not None:
                link = DemoBatteryLink(site, dev_map.control.battery, now, held={})

            def values(dev_id: str = dev.id, link: DemoBatteryLink | None = link) -> Mapping[str, float | int | None]:
                if link is not None:
                    link.tick()
                return site.state_at(now())[dev_id]

            port = (ports or {}).get(dev.id) or free_tcp_port(host)
            for attempt in range(5):
                url = f"tcp://{host}:{port}"
                server = SimServer(
                    dev_map,
                    listen=url,
                    unit_ids=[dev.unit_id],
                    values=values,
                    on_write=link.on_write if link is not None else None,
                )
                try:
                    await server.start()
                    break
                except (OSError, RuntimeError):
                    # A port found free a moment ago was taken since (another demo or program starting
                    # beside this one): take another free port; the config written later names it.
                    await server.stop()
                    if attempt == 4:
                        raise
                    port = free_tcp_port(host)
            if link is not None:
                link.held = server.held  # one dict: what was written reads back, and the watchdog shows
            servers[dev.id] = server
            urls[dev.id] = url
        yield DemoServers(servers, urls, devices)
    finally:
        for server in servers.values():
            await server.stop()
        await asyncio.sleep(0)
