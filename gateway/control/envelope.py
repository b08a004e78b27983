"""The safety envelope of one actuator: what may be sent, whatever the plan or an operator asks for.

Pure and deterministic (time is passed in), so the rules are tested without devices and the replay
applies the same ones. In order, for a battery setpoint (W, + discharge):

1. limits: the tighter of the configuration's and the device map's charge/discharge power;
2. state of charge: no discharge at or below `min_soc_pct`, no charge at or above `max_soc_pct`
   (an unknown SoC allows neither: the battery holds);
3. deadband: a change smaller than `deadband_w` is not made (no chattering on forecast noise);
4. dwell: a setpoint is held `min_dwell_s` before it changes, unless the limits force it;
5. ramp: a change is spread at `ramp_w_per_s` at most.

Each step that changed the value says so in `reasons`, which go into the ledger with the command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Envelope:
    max_charge_w: float
    max_discharge_w: float
    min_soc_pct: float = 10.0
    max_soc_pct: float = 95.0
    deadband_w: float = 0.0
    min_dwell_s: float = 0.0
    ramp_w_per_s: float | None = None


@dataclass
class EnvelopeState:
    """What the envelope remembers: the last setpoint sent, when it was sent and when it last changed."""

    last_w: float | None = None
    last_s: float | None = None
    changed_s: float | None = None


@dataclass(frozen=True)
class Decision:
    power_w: float
    reasons: tuple[str, ...] = field(default_factory=tuple)


def apply(env: Envelope, state: EnvelopeState, target_w: float, *, now_s: float, soc_pct: float | None) -> Decision:
    """The setpoint to send for `target_w` now (and remember it in `state`)."""
    reasons: list[str] = []
    if not math.isfinite(target_w):
        target_w, reasons = 0.0, ["target is not a number: hold"]
    hi, lo = env.max_discharge_w, -env.max_charge_w
    if soc_pct is None or not math.isfinite(soc_pct):
        hi, lo = min(hi, 0.0), max(lo, 0.0)
        reasons.append("state of charge unknown: hold")
    else:
        if soc_pct <= env.min_soc_pct:
            hi = min(hi, 0.0)
            reasons.append(f"SoC {soc_pct:g} % at or below {env.min_soc_pct:g} %: no discharge")
        if soc_pct >= env.max_soc_pct:
            lo = max(lo, 0.0)
            reasons.append(f"SoC {soc_pct:g} % at or above {env.max_soc_pct:g} %: no charge")
    want = min(hi, max(lo, target_w))
    if want != target_w and not reasons:
        reasons.append(f"limited to [{lo:g}, {hi:g}] W")
    last = state.last_w
    forced = last is not None and not lo <= last <= hi  # the last setpoint is no longer allowed
    if last is not None and not forced:
        if abs(want - last) < env.deadband_w:
            want = last
        elif state.changed_s is not None and now_s - state.changed_s < env.min_dwell_s and want != last:
            reasons.append(f"held {env.min_dwell_s:g} s before changing")
            want = last
    if last is not None and env.ramp_w_per_s is not None and state.last_s is not None and want != last:
        step = env.ramp_w_per_s * max(0.0, now_s - state.last_s)
        ramped = min(last + step, max(last - step, want))
        if ramped != want:
            reasons.append(f"ramped at {env.ramp_w_per_s:g} W/s")
            want = min(hi, max(lo, ramped))
    if last is None or want != last:
        state.changed_s = now_s
    state.last_w, state.last_s = want, now_s
    return Decision(want + 0.0, tuple(reasons))
