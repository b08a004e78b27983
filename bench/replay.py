"""Replay a site hour by hour with and without following the flexibility signals (bench and tests).

Inputs are *actual* hourly mean powers (load without the flexible assets, wind, PV). Forecasts are the
actuals perturbed with realistic noise (`NoiseModel`): autocorrelated over lead time, growing with it,
with P10/P90 from the noise's own spread, so the bands are calibrated — the service is tested on
forecasts as good as a decent model, not on the truth.

Three policies, same site, same forecasts:

* `idle` — battery unused, shiftable loads at their fixed default time;
* `default` — what a site does without signals: the battery's own self-consumption rule (charge from
  any surplus, discharge into any deficit, within limits: DemoSite's controller), shiftable loads at
  their default time;
* `signals` — every hour the `FlexibilityService` gets fresh forecasts and the measured SoC; the
  shiftable loads run as its plan says for the first interval, and the battery's own controller runs
  inside the published PEBC envelope: it still charges from any actual surplus, but discharges at most
  what the plan schedules for the hour (so energy is kept for the hours the plan reserves it for);
* `control` — the agent's closed loop (gateway/control): the same plans, turned into setpoints by the
  control room's law (`battery_target`, `follow` envelope or self_consumption, on the measured surplus)
  through its safety envelope (`gateway.control.envelope.apply`: limits, SoC window), executed by the
  simulator's battery physics (`drivers.sim.battery.BatteryModel`) — the code that runs on a site, hour by hour;
* `perfect` — perfect foresight: one plan over the whole replay solved on the *actual* values (the
  same LP, `gateway.flexibility.plan.solve`), executed exactly: the optimum the forecasts aim at.

Indicators on the *actual* values, per hour (the resolution of hourly matching):

* hourly-matched share as certification computes it: sum_h min(load_h, renewable_h) / sum_h load_h.
  Storage does not appear in it — a battery cannot change it, only moving consumption can;
* hourly-matched share counting storage the EnergyTag way: the battery keeps two pools (energy charged
  from renewable surplus, energy charged from the grid) and what it discharges carries the pools'
  mix, so discharged renewable energy counts as renewable supply in its hour;
* grid import and export (MWh), peak import (hourly mean, kW) and the shiftable energy delivered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import numpy as np

from forecasting.types import Forecast, ForecastPoint
from gateway.flexibility.assets import BatteryAsset, ShiftableLoad
from gateway.flexibility.config import FlexibilityConfig
from gateway.flexibility.service import FlexibilityService

Policy = Literal["idle", "default", "signals", "control", "perfect"]
Z80 = 1.2816
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class SiteSeries:
    """Hourly actual mean powers in W, from `start` (UTC, on the hour); pv/wind may be zeros."""

    start: datetime
    load_w: FloatArray
    wind_w: FloatArray
    pv_w: FloatArray
    timezone: str = "UTC"

    def __len__(self) -> int:
        return len(self.load_w)


@dataclass(frozen=True)
class NoiseModel:
    """Forecast error per target as a fraction: load of its mean, wind and PV of their capacity (PV: of the
    actual value too, so night stays known to be dark). The error at lead k is sigma * (0.5 + 0.5 k/24)."""

    load_frac: float = 0.05
    wind_frac: float = 0.15
    pv_frac: float = 0.25
    rho: float = 0.85
    seed: int = 7


@dataclass
class Result:
    policy: Policy
    label: str = ""
    load_wh: float = 0.0
    renewable_wh: float = 0.0
    matched_cert_wh: float = 0.0
    matched_storage_wh: float = 0.0
    import_wh: float = 0.0
    export_wh: float = 0.0
    peak_import_w: float = 0.0
    shiftable_wh: float = 0.0
    shiftable_target_wh: float = 0.0
    updates: int = 0
    neutral_updates: int = 0
    solve_s: float = 0.0
    hourly_import_w: list[float] = field(default_factory=list)
    #: per hour, for the certified accounting: load (W, with the shiftable loads), wind and PV output, and
    #: each battery's achieved power (+ discharge)
    hourly_load_w: list[float] = field(default_factory=list)
    hourly_wind_w: list[float] = field(default_factory=list)
    hourly_pv_w: list[float] = field(default_factory=list)
    hourly_battery_w: list[list[float]] = field(default_factory=list)

    @property
    def share_cert(self) -> float:
        return self.matched_cert_wh / self.load_wh if self.load_wh else math.nan

    @property
    def share_storage(self) -> float:
        return self.matched_storage_wh / self.load_wh if self.load_wh else math.nan


def _ar1(rng: np.random.Generator, n: int, rho: float) -> FloatArray:
    e = rng.normal(0.0, math.sqrt(1 - rho * rho), n)
    out = np.empty(n)
    out[0] = rng.normal()
    for i in range(1, n):
        out[i] = rho * out[i - 1] + e[i]
    return out


def make_forecasts(
    site: SiteSeries,
    i0: int,
    horizon: int,
    noise: NoiseModel,
    *,
    wind_capacity_w: float,
    pv_capacity_w: float,
    issued: datetime,
) -> dict[str, Forecast]:
    """Forecasts of load, wind and pv for hours i0..i0+horizon-1 issued at `issued`."""
    n = min(horizon, len(site) - i0)
    lead = np.arange(1, n + 1, dtype=np.float64)
    grow = 0.5 + 0.5 * np.minimum(lead, 24) / 24
    mean_load = float(np.mean(site.load_w))
    out: dict[str, Forecast] = {}
    specs: list[tuple[str, FloatArray, FloatArray, float, float]] = []
    load = site.load_w[i0 : i0 + n]
    wind = site.wind_w[i0 : i0 + n]
    pv = site.pv_w[i0 : i0 + n]
    specs.append(("load", load, noise.load_frac * mean_load * grow, 0.0, math.inf))
    specs.append(("wind", wind, noise.wind_frac * wind_capacity_w * grow, float(min(0.0, wind.min())), wind_capacity_w))
    specs.append(
        ("pv", pv, (noise.pv_frac * np.maximum(pv, 0.0) + 0.02 * pv_capacity_w * (pv > 0)) * grow, 0.0, pv_capacity_w)
    )
    for k, (target, actual, sigma, lo, hi) in enumerate(specs):
        rng = np.random.default_rng([noise.seed, i0, k])
        p50 = np.clip(actual + sigma * _ar1(rng, n, noise.rho), lo, hi)
        p10 = np.clip(p50 - Z80 * sigma, lo, hi)
        p90 = np.clip(p50 + Z80 * sigma, lo, hi)
        pts = tuple(
            ForecastPoint(site.start + timedelta(hours=i0 + i), float(p10[i]), float(p50[i]), float(p90[i]))
            for i in range(n)
        )
        out[target] = Forecast(target, issued, 3600, "W", pts, "model", "replay-noise")
    return out


def _default_schedule(k: ShiftableLoad, local_hour: int) -> float:
    """Fixed-time operation: full power from the first window's start until the day's energy is done."""
    start_h = k.parsed_windows()[0].start_min // 60
    hours_needed = k.energy_wh_per_day / k.power_w
    h = local_hour - start_h
    if 0 <= h < math.floor(hours_needed):
        return k.power_w
    if h == math.floor(hours_needed):
        return k.power_w * (hours_needed - math.floor(hours_needed))
    return 0.0


class _Battery:
    def __init__(self, b: BatteryAsset, soc_pct: float) -> None:
        self.b = b
        self.e = b.capacity_wh * soc_pct / 100
        self.er = 0.0  # renewable-charged part of the stored energy
        self.eg = self.e

    def apply(self, power_w: float) -> float:
        """Run at `power_w` (+ discharge) for one hour within the SoC window; returns the power achieved."""
        b = self.b
        if power_w > 0:
            p = min(power_w, b.max_discharge_w, max(0.0, (self.e - b.min_wh) * b.discharge_efficiency))
            return p
        p = min(-power_w, b.max_charge_w, max(0.0, (b.max_wh - self.e) / b.charge_efficiency))
        return -p

    def settle(self, power_w: float, renewable_surplus_w: float) -> float:
        """Book one hour at `power_w`; returns the renewable part of a discharge (W)."""
        b = self.b
        if power_w < 0:
            charge = -power_w
            ren = min(charge, max(0.0, renewable_surplus_w))
            self.er += ren * b.charge_efficiency
            self.eg += (charge - ren) * b.charge_efficiency
            self.e += charge * b.charge_efficiency
            return 0.0
        if power_w > 0:
            drawn = power_w / b.discharge_efficiency
            share = self.er / self.e if self.e > 0 else 0.0
            self.er = max(0.0, self.er - drawn * share)
            self.eg = max(0.0, self.eg - drawn * (1 - share))
            self.e -= drawn
            return power_w * share
        return 0.0


def simulate(
    site: SiteSeries,
    config: FlexibilityConfig,
    policy: Policy,
    *,
    hours: int,
    noise: NoiseModel,
    wind_capacity_w: float,
    pv_capacity_w: float,
    soc0_pct: float = 50.0,
    progress: Callable[[int], None] | None = None,
    follow: Literal["envelope", "self_consumption"] = "envelope",
) -> Result:
    """Run `policy` over the first `hours` of `site` (the series must extend a horizon beyond); `follow`:
    the control room's battery mode for the `control` policy."""
    import time

    from drivers.sim.battery import BatteryModel
    from gateway.control.envelope import Envelope, EnvelopeState, apply
    from gateway.control.law import battery_target

    tz = ZoneInfo(site.timezone)
    res = Result(policy, label=f"{policy} ({follow})" if policy == "control" else policy)
    bats = [_Battery(b, soc0_pct) for b in config.batteries]
    closed_loop = policy in ("signals", "control")
    svc = FlexibilityService(config, site="replay", timezone=site.timezone) if closed_loop else None
    models = [
        BatteryModel(
            b.capacity_wh, b.max_charge_w, b.max_discharge_w, b.charge_efficiency, b.min_soc_pct, b.max_soc_pct
        )
        for b in config.batteries
    ]
    envelopes = [
        Envelope(max_charge_w=b.max_charge_w, max_discharge_w=b.max_discharge_w, min_soc_pct=b.min_soc_pct,
                 max_soc_pct=b.max_soc_pct)
        for b in config.batteries
    ]  # fmt: skip
    memories = [EnvelopeState() for _ in config.batteries]
    foresight = _perfect_plan(site, config, hours, soc0_pct) if policy == "perfect" else None
    done: dict[tuple[str, date], float] = {}
    full_days: set[date] = set()
    for i in range(hours):
        ts = site.start + timedelta(hours=i)
        loc = ts.astimezone(tz)
        day = loc.date()
        if loc.hour == 0:
            full_days.add(day)  # a local day whose start lies in the replay (its windows are all inside)
        wind, pv, base = float(site.wind_w[i]), float(site.pv_w[i]), float(site.load_w[i])
        ren = max(0.0, wind) + pv
        base += max(0.0, -wind)
        setpoints = [0.0] * len(bats)
        shift = [0.0] * len(config.shiftable)
        if svc is not None:
            issued = ts + timedelta(minutes=1)
            fcs = make_forecasts(
                site,
                i,
                config.horizon_h,
                noise,
                wind_capacity_w=wind_capacity_w,
                pv_capacity_w=pv_capacity_w,
                issued=issued,
            )
            levels = {bt.b.id: 100.0 * bt.e / bt.b.capacity_wh for bt in bats}
            t0 = time.perf_counter()
            sig = svc.update(
                fcs,
                issued,
                levels=levels,
                shiftable_done_wh={k.id: done.get((k.id, day), 0.0) for k in config.shiftable},
            )
            res.solve_s += time.perf_counter() - t0
            res.updates += 1
            plan = svc.latest_plan
            if not sig.usable or plan is None:
                res.neutral_updates += 1
            else:
                setpoints = [plan.battery_w.get(bt.b.id, [0.0])[0] for bt in bats]
                shift = [plan.shiftable_w.get(k.id, [0.0])[0] for k in config.shiftable]
        elif foresight is not None:
            setpoints = [foresight.battery_w.get(bt.b.id, [0.0] * hours)[i] for bt in bats]
            shift = [foresight.shiftable_w.get(k.id, [0.0] * hours)[i] for k in config.shiftable]
        else:
            shift = [_default_schedule(k, loc.hour) for k in config.shiftable]
        # never more shiftable energy than the day needs
        for j, k in enumerate(config.shiftable):
            left = max(0.0, k.energy_wh_per_day - done.get((k.id, day), 0.0))
            shift[j] = min(shift[j], left)
            done[(k.id, day)] = done.get((k.id, day), 0.0) + shift[j]
        load = base + sum(shift)
        achieved: list[float] = []
        for j, bt in enumerate(bats):
            # the battery's own self-consumption controller: charge from the surplus, discharge into the
            # deficit; with signals it runs inside the published envelope (discharge at most as planned)
            want = load - ren - sum(achieved)
            if policy == "signals" and want > 0:
                want = min(want, max(0.0, setpoints[j]))
            if policy == "control":
                # the control room's law and envelope on the measured surplus, then the battery's physics
                target, _how = battery_target(
                    setpoints[j], follow=follow, surplus_w=-want, max_charge_w=bt.b.max_charge_w
                )
                soc = 100.0 * bt.e / bt.b.capacity_wh
                decision = apply(envelopes[j], memories[j], target, now_s=3600.0 * i, soc_pct=soc)
                achieved.append(models[j].achieved(decision.power_w, bt.e, 1.0))
                continue
            if policy == "perfect":
                achieved.append(models[j].achieved(setpoints[j], bt.e, 1.0))
                continue
            achieved.append(bt.apply(want) if policy != "idle" else 0.0)
        surplus_for_storage = ren - load
        ren_discharge = 0.0
        for bt, p in zip(bats, achieved, strict=True):
            ren_discharge += bt.settle(p, surplus_for_storage)
            if p < 0:
                surplus_for_storage -= -p
        net = load - ren - sum(achieved)
        direct = min(load, ren)
        res.load_wh += load
        res.renewable_wh += ren
        res.matched_cert_wh += direct
        res.matched_storage_wh += direct + min(ren_discharge, load - direct)
        res.import_wh += max(0.0, net)
        res.export_wh += max(0.0, -net)
        res.peak_import_w = max(res.peak_import_w, net)
        res.hourly_import_w.append(max(0.0, net))
        res.hourly_load_w.append(load)
        res.hourly_wind_w.append(max(0.0, wind))
        res.hourly_pv_w.append(pv)
        res.hourly_battery_w.append(list(achieved))
        res.shiftable_wh += sum(shift)
        if progress is not None:
            progress(i)
    res.shiftable_target_wh = sum(k.energy_wh_per_day for k in config.shiftable) * len(full_days)
    return res


def _perfect_plan(site: SiteSeries, config: FlexibilityConfig, hours: int, soc0_pct: float) -> Any:
    """One LP over the whole replay on the actual values (every quantile = the actual): perfect foresight."""
    from gateway.flexibility.plan import PlanInput, solve

    starts = [site.start + timedelta(hours=i) for i in range(hours)]

    def exact(xs: FloatArray) -> list[tuple[float, float, float]]:
        return [(float(x), float(x), float(x)) for x in xs[:hours]]

    generation = {t: exact(v) for t, v in (("wind", site.wind_w), ("pv", site.pv_w)) if t in config.generation}
    inp = PlanInput(
        starts=starts,
        resolution_s=3600,
        load=exact(site.load_w),
        generation=generation,
        battery_soc_pct={b.id: soc0_pct for b in config.batteries},
        thermal_fill_pct={},
        shiftable_done_wh={},
        timezone=site.timezone,
    )
    plan = solve(config, inp)
    if plan.status != "optimal":
        raise RuntimeError(f"perfect-foresight plan not solved: {plan.reason}")
    return plan


def hourly_means(
    fn: Callable[[datetime], dict[str, float]], start: datetime, hours: int, keys: Sequence[str], step_s: int = 300
) -> dict[str, FloatArray]:
    """Hourly means of instantaneous powers (e.g. DemoSite.power_at), trapezoid over `step_s` samples."""
    per = 3600 // step_s
    out = {k: np.zeros(hours) for k in keys}
    prev = fn(start)
    for h in range(hours):
        acc = dict.fromkeys(keys, 0.0)
        for s in range(1, per + 1):
            cur = fn(start + timedelta(seconds=h * 3600 + s * step_s))
            for k in keys:
                acc[k] += (prev[k] + cur[k]) / 2
            prev = cur
        for k in keys:
            out[k][h] = acc[k] / per
    return out


def utc(year: int, month: int, day: int = 1) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)
