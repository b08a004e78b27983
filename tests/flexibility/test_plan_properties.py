"""Property tests: over random forecasts, assets and limits the plan never violates a configured limit.

Checked on every generated case, from the plan's own numbers *and* recomputed independently here:
battery power within its limits and SoC within its window (or no further outside it than it started);
thermal fill likewise; shiftable power only inside its windows and never more energy than the day needs;
grid import within the connection capacity including the pessimistic margin (or, when the site's own
load already exceeds it, no worse than without flexibility); export within its limit likewise.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.flexibility.assets import window_fraction
from gateway.flexibility.config import FlexibilityConfig
from gateway.flexibility.plan import PlanInput, idle_plan, solve

TOL = 0.01  # W / Wh: solver round-off after the plan's own clean-up must stay far below this

power = st.floats(min_value=1_000, max_value=400_000, allow_nan=False)
frac = st.floats(min_value=0.0, max_value=0.6)


@st.composite
def cases(draw: st.DrawFn) -> tuple[FlexibilityConfig, PlanInput]:
    res = draw(st.sampled_from([900, 3600]))
    n = draw(st.integers(min_value=1, max_value=24 if res == 3600 else 48))
    start = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(hours=draw(st.integers(0, 23)))
    starts = [start + timedelta(seconds=res * i) for i in range(n)]

    def quantiles(lo: float, hi: float) -> list[tuple[float, float, float]]:
        out = []
        for _ in range(n):
            p50 = draw(st.floats(min_value=lo, max_value=hi, allow_nan=False))
            a, b = draw(frac), draw(frac)
            out.append((p50 - a * abs(p50) - 1.0, p50, p50 + b * abs(p50) + 1.0))
        return out

    load = quantiles(0, 800_000)
    generation = {"wind": quantiles(-5_000, 1_500_000), "pv": quantiles(0, 200_000)}
    assets: list[dict[str, Any]] = []
    lo_soc = draw(st.floats(0, 60))
    assets.append(
        {
            "kind": "battery",
            "id": "b1",
            "capacity_wh": draw(st.floats(1_000, 500_000)),
            "max_charge_w": draw(power),
            "max_discharge_w": draw(power),
            "charge_efficiency": draw(st.floats(0.7, 1.0)),
            "discharge_efficiency": draw(st.floats(0.7, 1.0)),
            "min_soc_pct": lo_soc,
            "max_soc_pct": draw(st.floats(lo_soc + 5, 100)),
        }
    )
    if draw(st.booleans()):
        assets.append(
            {
                "kind": "battery",
                "id": "b2",
                "capacity_wh": draw(st.floats(1_000, 300_000)),
                "max_charge_w": draw(power),
                "max_discharge_w": draw(power),
            }
        )
    if draw(st.booleans()):
        h1 = draw(st.integers(0, 20))
        h2 = draw(st.integers(h1 + 1, 24))
        p = draw(power)
        assets.append(
            {
                "kind": "shiftable",
                "id": "s1",
                "power_w": p,
                "windows": [f"{h1:02d}:00-{h2:02d}:00"],
                "energy_wh_per_day": p * (h2 - h1) * draw(st.floats(0.05, 1.0)),
            }
        )
    if draw(st.booleans()):
        mx = draw(power)
        assets.append(
            {
                "kind": "thermal",
                "id": "t1",
                "max_power_w": mx,
                "capacity_wh": draw(st.floats(5_000, 400_000)),
                "demand_w": mx * draw(st.floats(0, 1)),
            }
        )
    if draw(st.booleans()):
        assets.append({"kind": "curtailable", "id": "c1", "source": "wind", "max_curtail_w": draw(power)})
    conn = draw(st.none() | st.floats(50_000, 2_000_000))
    limits: dict[str, Any] = {"grid_connection_w": conn}
    if draw(st.booleans()):
        limits["export_limit_w"] = draw(st.floats(0, 1_500_000))
    if conn is not None and draw(st.booleans()):
        limits["contracted_peak_w"] = draw(st.floats(10_000, conn))
    cfg = FlexibilityConfig.model_validate({"enabled": True, "resolution_s": res, "limits": limits, "assets": assets})
    inp = PlanInput(
        starts=starts,
        resolution_s=res,
        load=load,
        generation=generation,
        battery_soc_pct={"b1": draw(st.floats(0, 100)), "b2": draw(st.none() | st.floats(0, 100))},
        thermal_fill_pct={"t1": draw(st.floats(0, 100))},
        shiftable_done_wh={"s1": draw(st.floats(0, 2_000_000))},
        timezone=draw(st.sampled_from(["UTC", "Europe/Riga", "Australia/Melbourne"])),
    )
    return cfg, inp


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_the_plan_never_violates_a_limit(case: tuple[FlexibilityConfig, PlanInput]) -> None:
    cfg, inp = case
    plan = solve(cfg, inp)
    check(cfg, inp, plan)
    check(cfg, inp, idle_plan(cfg, inp, "test"))


def check(cfg: FlexibilityConfig, inp: PlanInput, plan: Any) -> None:
    n = len(inp.starts)
    dt = inp.resolution_s / 3600
    tz = ZoneInfo(inp.timezone)
    assert plan.status in ("optimal", "idle")
    for b in cfg.batteries:
        soc0 = inp.battery_soc_pct.get(b.id)
        if soc0 is None:
            assert b.id not in plan.battery_w
            continue
        e = b.capacity_wh * soc0 / 100
        lo, hi = min(b.min_wh, e), max(b.max_wh, e)
        for t, pw in enumerate(plan.battery_w[b.id]):
            assert -b.max_charge_w - TOL <= pw <= b.max_discharge_w + TOL
            e -= pw * dt / b.discharge_efficiency if pw > 0 else pw * b.charge_efficiency * dt
            assert lo - TOL <= e <= hi + TOL, (t, e, lo, hi)
            assert abs(plan.battery_soc_pct[b.id][t] * b.capacity_wh / 100 - e) < 1.0
    for j in cfg.thermal:
        fill_pct = inp.thermal_fill_pct["t1"]
        assert fill_pct is not None
        fill = j.capacity_wh * fill_pct / 100
        lo, hi = min(j.min_wh, fill), max(j.max_wh, fill)
        for h in plan.thermal_w.get(j.id, []):
            assert -TOL <= h <= j.max_power_w + TOL
            fill += (h - j.demand_w) * dt
            assert lo - 1.0 <= fill <= hi + 1.0
    for k in cfg.shiftable:
        x = plan.shiftable_w.get(k.id, [0.0] * n)
        for t, s in enumerate(inp.starts):
            loc = s.astimezone(tz)
            cap = k.power_w * window_fraction(k, loc.hour * 60 + loc.minute, inp.resolution_s / 60)
            assert -TOL <= x[t] <= cap + TOL
        first_day = inp.starts[0].astimezone(tz).date()
        today = sum(x[t] * dt for t, s in enumerate(inp.starts) if s.astimezone(tz).date() == first_day)
        assert today <= max(0.0, k.energy_wh_per_day - inp.shiftable_done_wh["s1"]) + 1.0
    conn = cfg.limits.import_limit_w
    exp_lim = cfg.limits.export_w
    for t in range(n):
        gen50 = sum(q[t][1] for q in inp.generation.values())
        load50 = max(0.0, inp.load[t][1]) + max(0.0, -gen50) + sum(j.demand_w for j in cfg.thermal)
        ren = max(0.0, gen50)
        m_imp = (inp.load[t][2] - inp.load[t][1]) + sum(q[t][1] - q[t][0] for q in inp.generation.values())
        m_exp = (inp.load[t][1] - inp.load[t][0]) + sum(q[t][2] - q[t][1] for q in inp.generation.values())
        base_import = max(0.0, load50 - ren)
        if conn is not None:
            # worst-case import within the connection, or no worse than the site without flexibility
            assert plan.import_w[t] + m_imp <= max(conn, base_import + m_imp) + TOL
        if exp_lim is not None:
            curt = sum(min(c.max_curtail_w, max(0.0, inp.generation[c.source][t][1])) for c in cfg.curtailable)
            base_export = max(0.0, ren - load50)
            assert plan.export_w[t] + m_exp <= max(exp_lim, base_export - curt + m_exp, m_exp) + TOL
