"""From the flexibility plan to a setpoint: what each actuator should do in the current interval.

The plan is the flexibility service's (gateway/flexibility, published by the forecasting room) as its
signal payload carries it: `plan.assets[<id>].power_w[i]` for `intervals[i]`. A plan older than the
control section's `max_plan_age_s`, a neutral signal (no usable forecasts) or an interval the plan does
not cover gives no target: the actuator goes back to its own mode, with the reason.

Batteries follow the plan in one of three ways (`follow`):

* `envelope` (default) — the battery's own self-consumption, executed by the agent inside the plan's
  discharge cap: it charges from the *measured* surplus (never from the grid), and discharges into the
  measured deficit at most what the plan schedules, keeping energy for the hours the plan reserves it
  for. This is the PEBC envelope the S2 messages publish (gateway/flexibility/s2.py), applied here.
* `self_consumption` — charge from the measured surplus, discharge into the measured deficit, the plan's
  schedule no cap (the plan still gates it: no usable plan, no command; and it moves the shiftable
  loads). Why: in hourly matching a Wh discharged into a real deficit counts the same whichever hour it
  is discharged in, so holding energy back for a *forecast* deficit pays only when the forecast is right,
  and costs matched energy when a deficit the forecast did not see goes unserved. Replayed on the demo
  site in February 2026 (a development month), the closed loop captured 56-76 % of the perfect-foresight
  gain on the certified storage-aware share this way, 20-38 % inside the envelope (four noise seeds);
* `setpoint` — the plan's power as it is (for sites without a grid meter): forecast errors then move
  the grid exchange, and a surplus that fails to appear is charged from the grid.

`battery_target` and `relay_target` are pure: bench/replay.py runs the same law hour by hour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True)
class PlanPoint:
    """The plan for one asset in the interval holding `now`: planned power (W) and the interval."""

    power_w: float
    start: datetime
    end: datetime
    asset_power_w: float | None = None


def plan_point(payload: Mapping[str, Any] | None, asset: str, now: datetime, *, max_age_s: float) -> PlanPoint | str:
    """The plan's value for `asset` now, or the reason there is none."""
    if payload is None:
        return "no flexibility signal yet (flexibility disabled or no forecast)"
    if payload.get("status") != "ok":
        return f"neutral signal: {payload.get('reason') or 'no usable forecasts'}"
    try:
        generated = datetime.fromisoformat(str(payload["generated_at"]).replace("Z", "+00:00"))
        plan = payload.get("plan") or {}
        assets = plan.get("assets") or {}
        intervals = payload["intervals"]
    except (KeyError, TypeError, ValueError) as exc:
        return f"signal not understood ({type(exc).__name__}: {exc})"
    age = (now - generated).total_seconds()
    if age > max_age_s:
        return f"plan generated {age / 3600:.1f} h ago (limit {max_age_s / 3600:g} h)"
    entry = assets.get(asset)
    if entry is None:
        return f"the plan has no asset {asset!r} (plan status: {plan.get('status', 'none')})"
    key = "power_w" if "power_w" in entry else "curtail_w"
    for i, iv in enumerate(intervals):
        try:
            start = datetime.fromisoformat(str(iv["start"]).replace("Z", "+00:00"))
            end = datetime.fromisoformat(str(iv["end"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError):
            return "signal interval not understood"
        if start <= now < end:
            values = entry.get(key) or []
            if i >= len(values) or values[i] is None:
                return f"the plan for {asset!r} does not cover {iv['start']}"
            return PlanPoint(float(values[i]), start, end)
    return f"the plan does not cover {now.isoformat()}"


def battery_target(
    plan_w: float,
    *,
    follow: Literal["envelope", "setpoint", "self_consumption"],
    surplus_w: float | None,
    max_charge_w: float,
) -> tuple[float, str]:
    """The battery setpoint (W, + discharge) for the planned `plan_w` and the measured `surplus_w`
    (renewable generation minus load without the battery, W); with the mode actually used."""
    if follow == "setpoint" or surplus_w is None:
        return plan_w, "setpoint" if follow == "setpoint" else "setpoint (no grid reading)"
    if surplus_w > 0:
        return -min(surplus_w, max_charge_w), follow
    if follow == "self_consumption":
        return -surplus_w, follow  # the envelope's limits and SoC window still apply
    return min(-surplus_w, max(0.0, plan_w)), "envelope"


def relay_target(plan_w: float, asset_power_w: float, on_fraction: float) -> bool:
    """On when the plan gives the load at least `on_fraction` of its power in this interval."""
    return asset_power_w > 0 and plan_w >= on_fraction * asset_power_w
