"""The grading policy: the thresholds a certifier sets, and the grading rules that apply them. Pure.

Why a separate module: a grade is a judgement of *facts* (boundary methods, the measured / interpolated /
estimated split, interval coverage, validation results) against *thresholds*, and the thresholds belong
to the certification scheme, not to the site. The gateway grades its own report with the thresholds it
was configured with (printed in the report's `method`); `gia verify --policy FILE` re-grades the very
same facts under the certifier's thresholds and fails a report whose self-declared grade is better.
Both call the functions below, so the two judgements cannot drift apart.

Two kinds of thresholds:

* *grading thresholds* (coverage, estimated share, interval coverage, balance tolerance, settlement
  delay) are applied to the facts the report states, with or without the evidence bundle;
* *method parameters* (boundary tolerance, interpolation span, capacity factor, frozen-register window,
  PV-night limits, interval length) change the facts themselves. A report computed more leniently than
  the policy can only be re-graded by recomputing it from the evidence with the policy's parameters;
  without the evidence its grade under the policy is at best `provisional`.

Standard library only: `gia verify` imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from drivers.errors import GiaError
from gateway.certification.exact import dec_ge, dec_le, parse_iso_ms, ratio

GRADES: Final = ("verified", "provisional", "unverified")

#: Name of the defaults below in reports and verify output.
SCHEME_DEFAULTS: Final = "gia-scheme-defaults/1"


class PolicyError(GiaError, ValueError):
    """A policy file is unusable: the message names the field and what is wrong."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Policy:
    """The scheme's published thresholds (these defaults) or a certifier's own (`--policy FILE`).

    Decimal shares and factors are strings (they are printed into signed reports).
    """

    name: str = SCHEME_DEFAULTS
    # -- method parameters (change the figures) ----------------------------------------------------
    boundary_tolerance_s: int = 60
    max_interpolation_s: int = 3600
    capacity_factor: str = "1.2"
    frozen_after_h: int = 24
    pv_night_elevation_deg: str = "-6"
    pv_night_tolerance_wh: int = 10
    max_interval_s: int = 3600
    # -- grading thresholds (judge the figures) ------------------------------------------------------
    min_energy_coverage: str = "0.99"
    max_estimated_share: str = "0.01"
    min_time_coverage: str = "0.99"
    min_interval_energy_share: str = "0.99"
    balance_tolerance: str = "0.02"
    settlement_delay_h: int = 48
    replacement_late_after_h: int = 48

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: Parameters that change the figures, and in which direction a value is more lenient than the policy.
#: (+1: a larger value is more lenient; -1: a smaller one is.)
FIGURE_PARAMS: Final[dict[str, int]] = {
    "boundary_tolerance_s": +1,
    "max_interpolation_s": +1,
    "capacity_factor": +1,
    "frozen_after_h": +1,
    "pv_night_elevation_deg": -1,
    "pv_night_tolerance_wh": +1,
}
THRESHOLDS: Final[dict[str, int]] = {
    "min_energy_coverage": -1,
    "max_estimated_share": +1,
    "min_time_coverage": -1,
    "min_interval_energy_share": -1,
    "balance_tolerance": +1,
    "settlement_delay_h": -1,
    "replacement_late_after_h": +1,
}
_INT_FIELDS: Final = {f.name for f in fields(Policy) if f.type in ("int", int)}
_DEC_FIELDS: Final = {f.name for f in fields(Policy) if f.type in ("str", str)} - {"name"}


def _check_value(name: str, value: Any) -> Any:
    if name == "name":
        if not isinstance(value, str) or not value:
            raise PolicyError("name: a non-empty string")
        return value
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PolicyError(f"{name}: a non-negative integer, got {value!r}")
        return value
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise PolicyError(f"{name}: a decimal written as a quoted string such as '0.99', got {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise PolicyError(f"{name}: {value!r} is not a decimal number") from None
    if not d.is_finite():
        raise PolicyError(f"{name}: {value!r} must be finite")
    return str(value)


def policy_from_mapping(data: Mapping[str, Any]) -> Policy:
    """A policy from a mapping: unknown keys are errors (a typo must not silently keep a default)."""
    known = {f.name for f in fields(Policy)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(f"unknown policy field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {k: _check_value(k, v) for k, v in data.items()}
    if "name" not in values:
        values["name"] = "certifier policy"
    return Policy(**values)


def load_policy(path: Path) -> Policy:
    """`--policy FILE`: a JSON object (or YAML, when PyYAML is installed) of `Policy` fields."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml  # only for a YAML policy; the verifier needs nothing but the standard library
        except ImportError:
            raise PolicyError(f"{path}: not JSON (install PyYAML to read YAML policies)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"{path}: neither JSON nor YAML ({exc})") from None
    if not isinstance(data, dict):
        raise PolicyError(f'{path}: a policy is an object of thresholds, e.g. {{"min_energy_coverage": "0.99"}}')
    return policy_from_mapping(data)


def policy_of_method(method: Mapping[str, Any]) -> Policy:
    """The thresholds a report says it was graded with (its `method` block)."""
    known = {f.name for f in fields(Policy)} - {"name"}
    return replace(Policy(name="report's own method"), **{k: method[k] for k in known if k in method})


def _lenient(direction: int, reported: Any, policy: Any) -> bool:
    a, b = Decimal(str(reported)), Decimal(str(policy))
    return a > b if direction > 0 else a < b


def lenient_parameters(method: Mapping[str, Any], policy: Policy) -> list[dict[str, Any]]:
    """Every method parameter or threshold of a report that is more lenient than `policy`."""
    out = []
    for table, kind in ((FIGURE_PARAMS, "method"), (THRESHOLDS, "threshold")):
        for name, direction in table.items():
            if name in method and _lenient(direction, method[name], getattr(policy, name)):
                out.append({"parameter": name, "kind": kind, "report": method[name], "policy": getattr(policy, name)})
    if "interval_s" in method and int(method["interval_s"]) > policy.max_interval_s:
        out.append(
            {
                "parameter": "interval_s",
                "kind": "method",
                "report": method["interval_s"],
                "policy": policy.max_interval_s,
            }
        )
    return out


def worst(grades: Iterable[str]) -> str:
    return GRADES[max((GRADES.index(g) for g in grades), default=0)]


@dataclass(slots=True)
class ChannelGrade:
    total: str
    intervals: str
    reasons: list[str]


def _boundary_problem(b: Mapping[str, Any], side: str, policy: Policy) -> tuple[str, str] | None:
    """(grade, reason) for a boundary that keeps the total from being verified under `policy`."""
    method = b.get("method")
    if method == "missing":
        return "unverified", f"{side} boundary missing (no reading on one side)"
    if method == "estimated":
        return "provisional", f"{side} boundary estimated (bracketing readings more than max_interpolation_s apart)"
    t = parse_iso_ms(b["ts"])
    if method == "measured":
        off = abs(parse_iso_ms(b["reading"]["ts"]) - t) // 1000
        if off > policy.boundary_tolerance_s:
            return "provisional", (
                f"{side} boundary reading {off} s from the boundary, beyond the policy's"
                f" boundary_tolerance_s {policy.boundary_tolerance_s}"
            )
        return None
    if method == "interpolated":
        a, c = (parse_iso_ms(r["ts"]) for r in b["bracket"])
        span = (c - a) // 1000
        if span > policy.max_interpolation_s:
            return "provisional", (
                f"{side} boundary interpolated across {span} s, beyond the policy's max_interpolation_s"
                f" {policy.max_interpolation_s}"
            )
        return None
    return "unverified", f"{side} boundary method {method!r} unknown"


def grade_channel(ch: Mapping[str, Any], policy: Policy) -> ChannelGrade:
    """The totals grade and the interval grade of one channel's facts under `policy`.

    Totals: verified when both boundaries are measured (or interpolated between measured readings no
    further apart than the policy allows), measured energy >= min_energy_coverage, estimated <=
    max_estimated_share and no validation rule failed; unverified when a boundary is missing.
    Intervals: never better than the totals; verified only when the share of measured intervals
    (time coverage) and the share of the energy in measured intervals reach the policy's thresholds;
    unverified when not one interval is measured.
    """
    cid = ch["id"]
    total = "verified"
    reasons: list[str] = []
    for side in ("opening", "closing"):
        problem = _boundary_problem(ch[side], side, policy)
        if problem is not None:
            total = worst((total, problem[0]))
            reasons.append(f"{cid}: {problem[1]}")
    energy = int(ch["energy_wh"])
    measured, estimated = int(ch["measured_wh"]), int(ch["estimated_wh"])
    cov = ratio(measured, energy) if energy else "1.000000"
    est = ratio(estimated, energy) if energy else "0.000000"
    if not dec_ge(cov, policy.min_energy_coverage):
        total = worst((total, "provisional"))
        reasons.append(f"{cid}: energy coverage {cov} < {policy.min_energy_coverage}")
    if not dec_le(est, policy.max_estimated_share):
        total = worst((total, "provisional"))
        reasons.append(f"{cid}: estimated share {est} > {policy.max_estimated_share}")
    for v in ch.get("validation", []):
        if v.get("status") == "fail":
            total = worst((total, "provisional"))
            reasons.append(f"{cid}: validation {v['rule']} failed: {v['detail']}")
    intervals = total
    c = ch["coverage"]
    n, n_meas = int(c["intervals"]), int(c["intervals_measured"])
    time_cov = ratio(n_meas, n) if n else "0.000000"
    e_meas = int(c["interval_energy_measured_wh"])
    e_share = ratio(e_meas, energy) if energy else ("1.000000" if n_meas == n else "0.000000")
    if n and n_meas == 0:
        intervals = "unverified"
        reasons.append(f"{cid}: intervals: not one of {n} intervals is measured (allocation is interpolation)")
    else:
        if not dec_ge(time_cov, policy.min_time_coverage):
            intervals = worst((intervals, "provisional"))
            reasons.append(f"{cid}: intervals: time coverage {time_cov} < {policy.min_time_coverage}")
        if not dec_ge(e_share, policy.min_interval_energy_share):
            intervals = worst((intervals, "provisional"))
            reasons.append(
                f"{cid}: intervals: energy in measured intervals {e_share} < {policy.min_interval_energy_share}"
            )
    return ChannelGrade(total, intervals, reasons)


def balance_check(derived_wh: int, metered_wh: int, tolerance: str, *, applies: bool) -> dict[str, Any]:
    """Grid-derived consumption against the consumption (+ auxiliary) meters, within `tolerance`.

    The limit is tolerance x the larger of the two figures, rounded down to the Wh.
    """
    if not applies:
        return {"applies": False, "status": "skip", "detail": "needs grid channels and consumption meters"}
    base = max(abs(derived_wh), abs(metered_wh))
    limit = int(Decimal(tolerance) * base)
    diff = derived_wh - metered_wh
    ok = abs(diff) <= limit
    return {
        "applies": True,
        "derived_consumption_wh": derived_wh,
        "metered_consumption_wh": metered_wh,
        "difference_wh": diff,
        "tolerance": tolerance,
        "limit_wh": limit,
        "status": "pass" if ok else "fail",
        "detail": (
            f"grid-derived consumption {derived_wh} Wh vs consumption + auxiliary meters {metered_wh} Wh:"
            f" difference {diff} Wh, limit {limit} Wh ({tolerance} of {base} Wh)"
        ),
    }


#: Which indicators each claim covers (a report's grade is the worst grade of the claims it makes).
CLAIMS: Final[dict[str, tuple[str, ...]]] = {
    "channel_totals": ("channels[].energy_wh",),
    "energy_balance": (
        "consumption_wh",
        "generation_wh",
        "renewable_generation_wh",
        "grid_import_wh",
        "grid_export_wh",
        "self_consumption_wh",
        "renewable_share",
        "renewable_share_market",
        "co2_location_kg",
        "co2_market_kg",
    ),
    "interval_allocation": (
        "hourly_matched_share",
        "hourly_matched_wh",
        "hourly_load_wh",
        "producer.hourly_generation_wh",
        "producer.hourly_export_wh",
    ),
}


def grade_report(
    channels: Sequence[Mapping[str, Any]],
    *,
    indicators: Mapping[str, Any],
    complete: bool,
    policy: Policy,
    method: Mapping[str, Any] | None = None,
    recomputed: bool = False,
) -> dict[str, Any]:
    """Grades of every claim and the report's grade (the worst claim) under `policy`.

    `method` with `recomputed=False`: a method parameter more lenient than the policy caps every claim
    at provisional (the facts were computed more leniently than the policy allows and cannot be
    re-judged without recomputing them from the evidence).
    """
    reasons: list[str] = []
    per_channel = []
    for ch in channels:
        g = grade_channel(ch, policy)
        per_channel.append({"id": ch["id"], "grade": g.total, "interval_grade": g.intervals})
        reasons.extend(g.reasons)
    totals = worst(p["grade"] for p in per_channel) if per_channel else "unverified"
    intervals = worst(p["interval_grade"] for p in per_channel) if per_channel else "unverified"
    if not per_channel:
        reasons.append("no metering channels configured (devices[].channels)")
    bal = indicators.get("balance_check") or {}
    balance = totals
    if bal.get("applies"):
        again = balance_check(
            int(bal["derived_consumption_wh"]),
            int(bal["metered_consumption_wh"]),
            policy.balance_tolerance,
            applies=True,
        )
        if again["status"] == "fail":
            balance = worst((balance, "provisional"))
            reasons.append(f"energy balance cross-check failed: {again['detail']}")
    basis = indicators.get("threshold_basis")
    claims = {
        "channel_totals": totals,
        "energy_balance": balance,
        "interval_allocation": intervals,
        "threshold_met": intervals if basis == "hourly" else balance,
    }
    if method is not None and not recomputed:
        figure = [p for p in lenient_parameters(method, policy) if p["kind"] == "method"]
        for p in figure:
            reasons.append(
                f"report computed with {p['parameter']} {p['report']}, more lenient than the policy's {p['policy']}:"
                " its figures are re-judged only by recomputing them from the evidence (--evidence)"
            )
        if figure:
            claims = {k: worst((v, "provisional")) for k, v in claims.items()}
    grade = worst(claims.values())
    if not complete:
        # a month that has not closed (open, or within its settlement delay) is provisional whatever its
        # claims: a boundary without a reading after it yet is not missing, only not settled
        grade = "provisional"
        reasons.insert(0, "month not yet closed: figures are provisional")
    counts = {g: sum(1 for p in per_channel if p["grade"] == g) for g in GRADES}
    return {"grade": grade, "claims": claims, "channels": counts, "per_channel": per_channel, "reasons": reasons}
