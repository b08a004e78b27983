"""The asset plan: a linear programme that raises the hourly-matched renewable share within every limit.

Decision variables per interval t (all >= 0, power in W, energy in Wh, dt in hours):

    gl  renewable power used on site          ge  renewable power exported
    il  grid import                           u_c curtailment of curtailable asset c
    gc_b battery b charging (from renewables)  d_b battery b discharging    E_b stored energy at the end of t
    x_k shiftable load k                      h_j thermal store j input    B_j its fill at the end of t
    P   the horizon's peak import (one)       ex  import above the contracted peak

Balances: renewables  gl + ge + sum gc + sum u = G        (G = P50 wind + pv, positive part)
          site load   gl + il + sum d = L + sum x + sum h  (L = P50 load, plus any negative generation)
          battery     E_b[t] = E_b[t-1] + eta_c gc dt - d dt / eta_d
          thermal     B_j[t] = B_j[t-1] + (h - demand) dt

Objective (maximise, in Wh): matched renewable energy sum (gl + sum d) dt — per interval this is
min(load, renewable supply), the hourly matching of certification.md with storage counted the
EnergyTag way (energy charged from renewables is renewable when discharged) — minus small tie-breakers:
peak import, grid import, battery throughput, plus the value of energy left in store at the end.

Why the battery charges only from renewables: energy bought from the grid and released later does not
raise the renewable share, and keeping the stored energy 100 % renewable keeps the programme linear
(no pools to track).

Limits (hard constraints, always satisfiable by doing nothing, so the programme is never infeasible
because of the base load itself):

* import: il + m_imp <= max(grid_connection_w, base import) where m_imp = (load P90 - P50) + (gen P50 -
  P10) is the extra import of a pessimistic outcome: with flexibility the worst-case import stays within
  the connection capacity, or — if the site's own load already exceeds it — flexibility adds nothing.
* export: ge + m_exp <= export limit, or the base export less all curtailable power when even that
  cannot be reached.
* contracted peak: import above it is penalised heavily (it may be unavoidable).
* battery power, SoC window; thermal power, fill window; shiftable power inside its windows and its
  energy per local day (what is left of today, and tomorrow's within the horizon).

After solving, every trajectory is re-derived from clipped powers (`_sanitise`), so rounding in the
solver can never put a SoC a few Wh outside its window.

scipy is imported inside `solve` (the `flex` extra): the agent starts without it; when it is missing
the plan falls back to doing nothing, with the reason in the payload.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.flexibility.assets import window_fraction
from gateway.flexibility.config import FlexibilityConfig

Q = tuple[float, float, float]
CONTRACT_PENALTY = 50.0  # Wh of matched energy one Wh above the contracted peak is worth avoiding
TOL = 1e-6


@dataclass(frozen=True, slots=True)
class PlanInput:
    """Everything the plan depends on; pure data."""

    starts: Sequence[datetime]  # interval starts (UTC)
    resolution_s: int
    load: Sequence[Q]  # site load without the flexible assets, W
    generation: Mapping[str, Sequence[Q]]  # source (wind/pv) -> quantiles, W
    battery_soc_pct: Mapping[str, float | None]
    thermal_fill_pct: Mapping[str, float | None]
    shiftable_done_wh: Mapping[str, float]  # energy already delivered today (local day of starts[0])
    timezone: str = "UTC"


@dataclass
class Plan:
    """Setpoints per interval. Battery power is positive when discharging (drivers/model.py)."""

    status: str  # "optimal" | "idle"
    reason: str
    method: str
    battery_w: dict[str, list[float]] = field(default_factory=dict)
    battery_soc_pct: dict[str, list[float]] = field(default_factory=dict)  # at the end of each interval
    battery_start_pct: dict[str, float] = field(default_factory=dict)
    shiftable_w: dict[str, list[float]] = field(default_factory=dict)
    thermal_w: dict[str, list[float]] = field(default_factory=dict)
    thermal_fill_pct: dict[str, list[float]] = field(default_factory=dict)
    curtail_w: dict[str, list[float]] = field(default_factory=dict)
    import_w: list[float] = field(default_factory=list)  # P50 basis
    export_w: list[float] = field(default_factory=list)
    import_limit_w: list[float] = field(default_factory=list)  # the bound the plan was held to (P50 basis)
    export_bound_w: list[float] = field(default_factory=list)
    matched_wh: float = 0.0
    upward_w: list[float] = field(default_factory=list)
    downward_w: list[float] = field(default_factory=list)

    def to_json(self, starts: Sequence[datetime]) -> dict[str, Any]:
        def r(xs: Sequence[float]) -> list[float]:
            return [round(x, 1) for x in xs]

        assets: dict[str, Any] = {}
        for k, v in self.battery_w.items():
            assets[k] = {
                "kind": "battery",
                "power_w": r(v),
                "soc_start_pct": round(self.battery_start_pct[k], 2),
                "soc_pct": [round(x, 2) for x in self.battery_soc_pct[k]],
            }
        for k, v in self.shiftable_w.items():
            assets[k] = {"kind": "shiftable", "power_w": r(v)}
        for k, v in self.thermal_w.items():
            assets[k] = {
                "kind": "thermal",
                "power_w": r(v),
                "fill_pct": [round(x, 2) for x in self.thermal_fill_pct[k]],
            }
        for k, v in self.curtail_w.items():
            assets[k] = {"kind": "curtailable", "curtail_w": r(v)}
        return {
            "status": self.status,
            "reason": self.reason,
            "method": self.method,
            "sign": "battery power_w > 0 discharging, < 0 charging; loads > 0 consuming",
            "expected": {
                "matched_wh": round(self.matched_wh, 1),
                "grid_import_wh": round(sum(self.import_w) * _dt_h(starts), 1),
                "peak_import_w": round(max(self.import_w, default=0.0), 1),
            },
            "grid_import_w": r(self.import_w),
            "grid_export_w": r(self.export_w),
            "assets": assets,
        }


def _dt_h(starts: Sequence[datetime]) -> float:
    if len(starts) < 2:
        return 1.0
    return (starts[1] - starts[0]).total_seconds() / 3600.0


# -- shared pre-computation ------------------------------------------------------------------------------
@dataclass
class _Prep:
    n: int
    dt: float
    gen_pos: list[float]  # G: renewable P50, positive part
    load: list[float]  # L: load P50 plus negative generation
    m_imp: list[float]
    m_exp: list[float]
    src_p50: dict[str, list[float]]
    base_import: list[float]
    base_export: list[float]
    u_imp: list[float]
    u_exp: list[float]
    curt_ub: dict[str, list[float]]
    x_ub: dict[str, list[float]]
    e0: dict[str, float | None]
    b0: dict[str, float | None]
    day_groups: dict[str, list[tuple[list[int], float, float]]]  # shiftable -> [(intervals, lo, hi)]
    notes: list[str]


def _prepare(cfg: FlexibilityConfig, inp: PlanInput) -> _Prep:
    n = len(inp.starts)
    dt = inp.resolution_s / 3600.0
    tz = ZoneInfo(inp.timezone)
    notes: list[str] = []
    gen_p50 = [sum(inp.generation[s][t][1] for s in inp.generation) for t in range(n)]
    gen_pos = [max(0.0, g) for g in gen_p50]
    load = [max(0.0, inp.load[t][1]) + max(0.0, -gen_p50[t]) for t in range(n)]
    m_imp = [
        max(0.0, inp.load[t][2] - inp.load[t][1]) + sum(max(0.0, q[t][1] - q[t][0]) for q in inp.generation.values())
        for t in range(n)
    ]
    m_exp = [
        max(0.0, inp.load[t][1] - inp.load[t][0]) + sum(max(0.0, q[t][2] - q[t][1]) for q in inp.generation.values())
        for t in range(n)
    ]
    thermal_demand = sum(j.demand_w for j in cfg.thermal)
    base_import = [max(0.0, load[t] + thermal_demand - gen_pos[t]) for t in range(n)]
    base_export = [max(0.0, gen_pos[t] - load[t] - thermal_demand) for t in range(n)]
    src_p50 = {s: [max(0.0, q[t][1]) for t in range(n)] for s, q in inp.generation.items()}
    curt_ub: dict[str, list[float]] = {}
    for c in cfg.curtailable:
        src = src_p50.get(c.source, [0.0] * n)
        curt_ub[c.id] = [min(c.max_curtail_w, src[t]) for t in range(n)]
    curt_total = [sum(v[t] for v in curt_ub.values()) for t in range(n)]
    lim_imp = cfg.limits.import_limit_w
    lim_exp = cfg.limits.export_w
    u_imp = [math.inf if lim_imp is None else max(base_import[t], lim_imp - m_imp[t], 0.0) for t in range(n)]
    u_exp = [
        math.inf if lim_exp is None else max(lim_exp - m_exp[t], base_export[t] - curt_total[t], 0.0) for t in range(n)
    ]
    e0: dict[str, float | None] = {}
    for b in cfg.batteries:
        soc = inp.battery_soc_pct.get(b.id)
        if soc is None or not math.isfinite(soc):
            e0[b.id] = None
            notes.append(f"battery {b.id}: state of charge unknown, left idle")
        else:
            e0[b.id] = b.capacity_wh * min(100.0, max(0.0, soc)) / 100.0
    b0: dict[str, float | None] = {}
    for j in cfg.thermal:
        fill = inp.thermal_fill_pct.get(j.id)
        if fill is None or not math.isfinite(fill):
            b0[j.id] = None
            notes.append(f"thermal {j.id}: fill unknown, left on its own control")
        else:
            b0[j.id] = j.capacity_wh * min(100.0, max(0.0, fill)) / 100.0
    # shiftable loads: power bound per interval (window share) and energy per local day
    x_ub: dict[str, list[float]] = {}
    day_groups: dict[str, list[tuple[list[int], float, float]]] = {}
    locals_ = [s.astimezone(tz) for s in inp.starts]
    horizon_end = (inp.starts[-1] + timedelta(seconds=inp.resolution_s)).astimezone(tz) if n else None
    first_day = locals_[0].date() if n else None
    for k in cfg.shiftable:
        ub = [
            k.power_w * window_fraction(k, loc.hour * 60 + loc.minute + loc.second / 60, inp.resolution_s / 60)
            for loc in locals_
        ]
        x_ub[k.id] = ub
        by_day: dict[Any, list[int]] = {}
        for t, loc in enumerate(locals_):
            by_day.setdefault(loc.date(), []).append(t)
        groups: list[tuple[list[int], float, float]] = []
        minutes = k.window_minutes()
        for day, idx in by_day.items():
            need = k.energy_wh_per_day
            if day == first_day:
                need = max(0.0, need - inp.shiftable_done_wh.get(k.id, 0.0))
            later_min = 0
            if horizon_end is not None and horizon_end.date() == day:
                cut = horizon_end.hour * 60 + horizon_end.minute
                later_min = sum(1 for m in minutes if m >= cut)
            lo = max(0.0, need - k.power_w * later_min / 60.0)
            cap = sum(ub[t] for t in idx) * dt
            if lo > cap + 1e-9:
                notes.append(f"shiftable {k.id}: {lo - cap:.0f} Wh of {day} cannot fit in what is left of its windows")
            groups.append((idx, min(lo, cap), need))
        day_groups[k.id] = groups
    return _Prep(
        n,
        dt,
        gen_pos,
        load,
        m_imp,
        m_exp,
        src_p50,
        base_import,
        base_export,
        u_imp,
        u_exp,
        curt_ub,
        x_ub,
        e0,
        b0,
        day_groups,
        notes,
    )


# -- the programme -------------------------------------------------------------------------------------------
class _Vars:
    def __init__(self) -> None:
        self.count = 0
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, n: int, lb: Sequence[float] | float, ub: Sequence[float] | float) -> list[int]:
        start = self.count
        self.count += n
        self.lb += list(lb) if isinstance(lb, Sequence) else [lb] * n
        self.ub += list(ub) if isinstance(ub, Sequence) else [ub] * n
        return list(range(start, start + n))


def solve(cfg: FlexibilityConfig, inp: PlanInput) -> Plan:
    """The optimal plan, or the idle plan with the reason when it cannot be computed."""
    if not inp.starts:
        return idle_plan(cfg, inp, "no intervals to plan")
    try:
        import numpy as np
        from scipy.optimize import linprog  # type: ignore[import-untyped]
        from scipy.sparse import coo_matrix  # type: ignore[import-untyped]
    except ImportError:
        return idle_plan(cfg, inp, "scipy is not installed (pip install 'gia-gateway[flex]'): no plan")
    p = _prepare(cfg, inp)
    result = _solve_lp(cfg, inp, p, np, linprog, coo_matrix, relax_shiftable=False)
    if result is None:
        result = _solve_lp(cfg, inp, p, np, linprog, coo_matrix, relax_shiftable=True)
        if result is None:
            return idle_plan(cfg, inp, "no feasible plan within the limits")
        p.notes.append("shiftable daily energy relaxed: it does not fit within the limits")
    return result


def _solve_lp(
    cfg: FlexibilityConfig, inp: PlanInput, p: _Prep, np: Any, linprog: Any, coo_matrix: Any, *, relax_shiftable: bool
) -> Plan | None:
    n, dt = p.n, p.dt
    w = cfg.weights
    v = _Vars()
    gl = v.add(n, 0.0, math.inf)
    ge = v.add(n, 0.0, p.u_exp)
    il = v.add(n, 0.0, p.u_imp)
    peak = v.add(1, 0.0, math.inf)[0]
    contracted = cfg.limits.contracted_peak_w
    ex = v.add(n, 0.0, math.inf) if contracted is not None else []
    bat: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for b in cfg.batteries:
        e0 = p.e0[b.id]
        if e0 is None:
            continue
        lo, hi = min(b.min_wh, e0), max(b.max_wh, e0)
        bat[b.id] = (v.add(n, 0.0, b.max_charge_w), v.add(n, 0.0, b.max_discharge_w), v.add(n, lo, hi))
    shf = {k.id: v.add(n, 0.0, p.x_ub[k.id]) for k in cfg.shiftable}
    thm: dict[str, tuple[list[int], list[int]]] = {}
    for j in cfg.thermal:
        b0 = p.b0[j.id]
        if b0 is None:
            continue
        thm[j.id] = (v.add(n, 0.0, j.max_power_w), v.add(n, min(j.min_wh, b0), max(j.max_wh, b0)))
    cur = {c.id: v.add(n, 0.0, p.curt_ub[c.id]) for c in cfg.curtailable}

    c = np.zeros(v.count)
    for t in range(n):
        c[gl[t]] -= dt
        c[il[t]] += w.import_per_wh * dt
        for _ch, dis, _e in bat.values():
            c[dis[t]] -= dt
        for ch, dis, _e in bat.values():
            c[ch[t]] += w.cycling_per_wh * dt
            c[dis[t]] += w.cycling_per_wh * dt
        for ids in cur.values():
            c[ids[t]] += 1e-4 * dt  # curtail only when it buys something
        if ex:
            c[ex[t]] += CONTRACT_PENALTY * dt
    c[peak] += w.peak_h
    for b in cfg.batteries:
        if b.id in bat:
            c[bat[b.id][2][n - 1]] -= w.terminal_value * b.discharge_efficiency

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    beq: list[float] = []

    def eq(terms: Sequence[tuple[int, float]], rhs: float) -> None:
        r = len(beq)
        for col, val in terms:
            rows.append(r)
            cols.append(col)
            vals.append(val)
        beq.append(rhs)

    urows: list[int] = []
    ucols: list[int] = []
    uvals: list[float] = []
    bub: list[float] = []

    def le(terms: Sequence[tuple[int, float]], rhs: float) -> None:
        r = len(bub)
        for col, val in terms:
            urows.append(r)
            ucols.append(col)
            uvals.append(val)
        bub.append(rhs)

    for t in range(n):
        eq(
            [(gl[t], 1.0), (ge[t], 1.0)]
            + [(ch[t], 1.0) for ch, _d, _e in bat.values()]
            + [(ids[t], 1.0) for ids in cur.values()],
            p.gen_pos[t],
        )
        eq(
            [(gl[t], 1.0), (il[t], 1.0)]
            + [(dis[t], 1.0) for _c, dis, _e in bat.values()]
            + [(ids[t], -1.0) for ids in shf.values()]
            + [(h[t], -1.0) for h, _b in thm.values()],
            p.load[t],
        )
        le([(il[t], 1.0), (peak, -1.0)], 0.0)
        if ex and contracted is not None:
            le([(il[t], 1.0), (ex[t], -1.0)], contracted)
    for b in cfg.batteries:
        if b.id not in bat:
            continue
        ch, dis, e = bat[b.id]
        e0 = p.e0[b.id]
        assert e0 is not None
        for t in range(n):
            terms = [(e[t], 1.0), (ch[t], -b.charge_efficiency * dt), (dis[t], dt / b.discharge_efficiency)]
            if t == 0:
                eq(terms, e0)
            else:
                eq([*terms, (e[t - 1], -1.0)], 0.0)
    for j in cfg.thermal:
        if j.id not in thm:
            continue
        h, bf = thm[j.id]
        b0 = p.b0[j.id]
        assert b0 is not None
        for t in range(n):
            terms = [(bf[t], 1.0), (h[t], -dt)]
            if t == 0:
                eq(terms, b0 - j.demand_w * dt)
            else:
                eq([*terms, (bf[t - 1], -1.0)], -j.demand_w * dt)
    for k in cfg.shiftable:
        for idx, lo, hi in p.day_groups[k.id]:
            le([(shf[k.id][t], dt) for t in idx], hi)
            if lo > 0 and not relax_shiftable:
                le([(shf[k.id][t], -dt) for t in idx], -lo)

    a_eq = coo_matrix((vals, (rows, cols)), shape=(len(beq), v.count)).tocsr()
    a_ub = coo_matrix((uvals, (urows, ucols)), shape=(len(bub), v.count)).tocsr() if bub else None
    bounds = np.column_stack([np.array(v.lb), np.where(np.isinf(v.ub), np.nan, np.array(v.ub))])
    bounds = [(lo, None if np.isnan(hi) else hi) for lo, hi in bounds]
    res = linprog(
        c,
        A_ub=a_ub,
        b_ub=np.array(bub) if bub else None,
        A_eq=a_eq,
        b_eq=np.array(beq),
        bounds=bounds,
        method="highs",
    )
    if res.status != 0:
        return None
    x = res.x
    battery = {bid: [float(x[d[t]] - x[ch[t]]) for t in range(n)] for bid, (ch, d, _e) in bat.items()}
    shift = {kid: [float(x[ids[t]]) for t in range(n)] for kid, ids in shf.items()}
    therm = {jid: [float(x[h[t]]) for t in range(n)] for jid, (h, _b) in thm.items()}
    curt = {cid: [float(x[ids[t]]) for t in range(n)] for cid, ids in cur.items()}
    return _sanitise(cfg, inp, p, "optimal", "; ".join(p.notes), "linprog/highs", battery, shift, therm, curt)


# -- fallback, clean-up and flexibility ----------------------------------------------------------------------
def idle_plan(cfg: FlexibilityConfig, inp: PlanInput, reason: str) -> Plan:
    """Do nothing: batteries idle, shiftable loads unplanned, thermal stores following their demand."""
    if not inp.starts:
        return Plan("idle", reason, "none")
    p = _prepare(cfg, inp)
    n = p.n
    battery = {b.id: [0.0] * n for b in cfg.batteries if p.e0[b.id] is not None}
    therm = {j.id: [j.demand_w] * n for j in cfg.thermal if p.b0[j.id] is not None}
    # curtail what the export limit requires (the only thing "doing nothing" must still do)
    curt: dict[str, list[float]] = {c.id: [0.0] * n for c in cfg.curtailable}
    for t in range(n):
        excess = max(0.0, p.base_export[t] - p.u_exp[t])
        for c in cfg.curtailable:
            take = min(excess, p.curt_ub[c.id][t])
            curt[c.id][t] = take
            excess -= take
    notes = "; ".join([reason, *p.notes])
    return _sanitise(cfg, inp, p, "idle", notes, "none", battery, {}, therm, curt)


def _sanitise(
    cfg: FlexibilityConfig,
    inp: PlanInput,
    p: _Prep,
    status: str,
    reason: str,
    method: str,
    battery: dict[str, list[float]],
    shift: dict[str, list[float]],
    therm: dict[str, list[float]],
    curt: dict[str, list[float]],
) -> Plan:
    """Clip every setpoint into its limits and re-derive trajectories, so limits hold exactly."""
    n, dt = p.n, p.dt
    plan = Plan(status, reason, method)
    for b in cfg.batteries:
        if b.id not in battery:
            continue
        e0 = p.e0[b.id]
        assert e0 is not None
        lo, hi = min(b.min_wh, e0), max(b.max_wh, e0)
        e = e0
        powers: list[float] = []
        socs: list[float] = []
        for t in range(n):
            pw = min(b.max_discharge_w, max(-b.max_charge_w, battery[b.id][t]))
            if pw > 0:  # discharge: stored energy falls by pw dt / eta_d, never below lo
                pw = min(pw, max(0.0, (e - lo) * b.discharge_efficiency / dt))
                e = max(lo, e - pw * dt / b.discharge_efficiency)
            elif pw < 0:  # charge: stored energy rises by -pw eta_c dt, never above hi
                pw = -min(-pw, max(0.0, (hi - e) / (b.charge_efficiency * dt)))
                e = min(hi, e - pw * b.charge_efficiency * dt)
            if abs(pw) < 1e-3:
                pw = 0.0
            powers.append(pw)
            socs.append(100.0 * e / b.capacity_wh)
        plan.battery_w[b.id] = powers
        plan.battery_soc_pct[b.id] = socs
        plan.battery_start_pct[b.id] = 100.0 * e0 / b.capacity_wh
    for k in cfg.shiftable:
        if k.id in shift:
            plan.shiftable_w[k.id] = [min(p.x_ub[k.id][t], max(0.0, shift[k.id][t])) for t in range(n)]
    for j in cfg.thermal:
        if j.id not in therm:
            continue
        b0 = p.b0[j.id]
        assert b0 is not None
        lo, hi = min(j.min_wh, b0), max(j.max_wh, b0)
        fill = b0
        hs: list[float] = []
        fills: list[float] = []
        for t in range(n):
            h = min(j.max_power_w, max(0.0, therm[j.id][t]))
            h = min(h, max(0.0, (hi - fill) / dt + j.demand_w))  # never overfill
            h = max(h, min(j.max_power_w, (lo - fill) / dt + j.demand_w))  # never run below the window
            fill = min(hi, max(lo, fill + (h - j.demand_w) * dt))
            hs.append(h)
            fills.append(100.0 * fill / j.capacity_wh)
        plan.thermal_w[j.id] = hs
        plan.thermal_fill_pct[j.id] = fills
    for cid, vals in curt.items():
        plan.curtail_w[cid] = [min(p.curt_ub[cid][t], max(0.0, vals[t])) for t in range(n)]
    _balance(cfg, p, plan)
    _flexibility(cfg, p, plan)
    return plan


def _balance(cfg: FlexibilityConfig, p: _Prep, plan: Plan) -> None:
    """P50 grid exchange and matched energy of the plan (with the thermal stores' own demand if unplanned)."""
    unplanned_thermal = sum(j.demand_w for j in cfg.thermal if j.id not in plan.thermal_w)
    matched = 0.0
    for t in range(p.n):
        charge = sum(max(0.0, -v[t]) for v in plan.battery_w.values())
        discharge = sum(max(0.0, v[t]) for v in plan.battery_w.values())
        flex_load = (
            sum(v[t] for v in plan.shiftable_w.values())
            + sum(v[t] for v in plan.thermal_w.values())
            + unplanned_thermal
        )
        gen = p.gen_pos[t] - sum(v[t] for v in plan.curtail_w.values())
        load = p.load[t] + flex_load
        net = load + charge - discharge - gen
        plan.import_w.append(max(0.0, net))
        plan.export_w.append(max(0.0, -net))
        direct = min(load, gen)
        from_store = min(discharge, load - direct)
        matched += (direct + from_store) * p.dt
    plan.matched_wh = matched
    plan.import_limit_w = list(p.u_imp)
    plan.export_bound_w = list(p.u_exp)


def _flexibility(cfg: FlexibilityConfig, p: _Prep, plan: Plan) -> None:
    """Upward (less consumption / more output) and downward (more consumption / less output) W per interval,
    around the planned operating point, capped by what the connection can carry."""
    n, dt = p.n, p.dt
    lim_imp = cfg.limits.import_limit_w
    lim_exp = cfg.limits.export_w
    for t in range(n):
        up = down = 0.0
        for b in cfg.batteries:
            if b.id not in plan.battery_w:
                continue
            e_start = (
                (plan.battery_start_pct[b.id] if t == 0 else plan.battery_soc_pct[b.id][t - 1]) * b.capacity_wh / 100
            )
            pw = plan.battery_w[b.id][t]
            can_dis = min(b.max_discharge_w, max(0.0, (e_start - b.min_wh) * b.discharge_efficiency / dt))
            can_ch = min(b.max_charge_w, max(0.0, (b.max_wh - e_start) / (b.charge_efficiency * dt)))
            up += max(0.0, can_dis - pw)
            down += max(0.0, can_ch + pw)
        for k in cfg.shiftable:
            x = plan.shiftable_w.get(k.id, [0.0] * n)[t]
            up += x
            down += max(0.0, p.x_ub[k.id][t] - x)
        for j in cfg.thermal:
            if j.id not in plan.thermal_w:
                continue
            h = plan.thermal_w[j.id][t]
            fill = plan.thermal_fill_pct[j.id][t - 1] if t else 100.0 * (p.b0[j.id] or 0.0) / j.capacity_wh
            fill_wh = fill * j.capacity_wh / 100
            h_max = min(j.max_power_w, max(0.0, (j.max_wh - fill_wh) / dt + j.demand_w))
            h_min = max(0.0, min(j.max_power_w, (j.min_wh - fill_wh) / dt + j.demand_w))
            up += max(0.0, h - h_min)
            down += max(0.0, h_max - h)
        for cid, vals in plan.curtail_w.items():
            up += vals[t]
            down += max(0.0, p.curt_ub[cid][t] - vals[t])
        for c in cfg.curtailable:
            if c.id not in plan.curtail_w:
                down += p.curt_ub[c.id][t]
        imp, exp = plan.import_w[t], plan.export_w[t]
        if lim_imp is not None:
            down = min(down, exp + max(0.0, lim_imp - imp))
        if lim_exp is not None:
            up = min(up, imp + max(0.0, lim_exp - exp))
        plan.upward_w.append(up)
        plan.downward_w.append(down)
