"""One channel's month from its register readings: boundaries, segments, intervals, coverage, VEE.

This is pure arithmetic over integer lists (standard library only) because `gia verify` must recompute a
report with *the same code*: the gateway calls it with readings from the ledger, the verifier with
readings from the evidence bundle, and both must land on the same Wh.

The model (certification.md):

* A channel's readings form *steps* between consecutive readings. Each step has an integer energy in
  register counts: the plain advance; the advance plus the modulus for a rollover; the two halves around
  a recorded meter replacement (closing/opening pair); or, for a decrease without replacement (a
  *reset*), an estimate (the new register value, capped at capacity x time) that is flagged.
* `U[k]` is the cumulative step energy up to reading k. Energy "up to" any instant inside a step is
  `U[a] + floor(E_a * (t - t_a) / (t_b - t_a))`. A period's energy is the difference of that function at
  its two boundaries, so consecutive periods telescope exactly: month M's closing boundary is the very
  same point (same reading or same split of the same step) as month M+1's opening, whoever computes it.
* A boundary is *measured* when a reading lies within the tolerance (±60 s), *interpolated* when the
  bracketing reads are at most `max_interpolation_s` apart, *estimated* beyond, *missing* when there is
  no reading on one side at all (energy beyond the last reading is then not counted).
* Intervals on the clock grid take differences of the same function, so they add up to the period's
  energy exactly (the spec allows one count per interval; we use none).
"""

from __future__ import annotations

import bisect
import itertools
import operator
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, Literal

from gateway.certification.exact import dec_ge, dec_le, iso_ms, ratio
from gateway.certification.merkle import DAY_MS, day_of, merkle_root
from gateway.certification.solar import sun_elevation_deg
from gateway.site.channels import ChannelSpec

Method = Literal["measured", "interpolated", "estimated", "missing"]
_RANK: Final[dict[str, int]] = {"measured": 0, "interpolated": 1, "estimated": 2, "missing": 3}
MAX_GAPS_LISTED: Final = 200


@dataclass(frozen=True, slots=True)
class Replacement:
    """A recorded meter replacement: the old register's closing and the new one's opening value."""

    event_id: int
    ts_ms: int
    device: str
    quantity: str
    closing_wh: int
    opening_wh: int
    old_serial: str | None = None
    new_serial: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "ts": iso_ms(self.ts_ms),
            "device": self.device,
            "quantity": self.quantity,
            "closing_wh": self.closing_wh,
            "opening_wh": self.opening_wh,
            "old_serial": self.old_serial,
            "new_serial": self.new_serial,
        }


@dataclass(slots=True)
class Series:
    """A channel's good integer register readings, sorted by (ts, seq); parallel lists for speed."""

    ts: list[int] = field(default_factory=list)
    value: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    hash: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def slice(self, lo: int, hi: int) -> Series:
        return Series(self.ts[lo:hi], self.value[lo:hi], self.seq[lo:hi], self.hash[lo:hi])


@dataclass(frozen=True, slots=True)
class Params:
    """The method's knobs; embedded in the report so verification recomputes with the same ones."""

    interval_s: int = 900
    boundary_tolerance_s: int = 60
    max_interpolation_s: int = 3600
    gap_min_s: int = 900
    min_energy_coverage: str = "0.99"
    max_estimated_share: str = "0.01"
    capacity_factor: str = "1.2"
    frozen_after_h: int = 24
    pv_night_elevation_deg: str = "-6"
    pv_night_tolerance_wh: int = 10
    latitude: str | None = None
    longitude: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_s,
            "boundary_tolerance_s": self.boundary_tolerance_s,
            "max_interpolation_s": self.max_interpolation_s,
            "gap_min_s": self.gap_min_s,
            "min_energy_coverage": self.min_energy_coverage,
            "max_estimated_share": self.max_estimated_share,
            "capacity_factor": self.capacity_factor,
            "frozen_after_h": self.frozen_after_h,
            "pv_night_elevation_deg": self.pv_night_elevation_deg,
            "pv_night_tolerance_wh": self.pv_night_tolerance_wh,
            "latitude": self.latitude,
            "longitude": self.longitude,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Params:
        return Params(**d)


@dataclass(frozen=True, slots=True)
class _Bound:
    t: int
    method: Method
    at: int | None = None  # measured reading index
    left: int | None = None  # bracketing reading before (index)
    right: int | None = None  # bracketing reading after (index)


@dataclass(slots=True)
class ChannelResult:
    spec: ChannelSpec
    json: dict[str, Any]
    interval_wh: list[int]
    interval_quality: list[str]
    used: Series
    energy_wh: int
    grade: str
    #: (UTC day, entries, Merkle root) of the readings used, per day
    day_roots: list[tuple[str, int, bytes]] = field(default_factory=list)
    #: (first ts, first seq, last ts, last seq) of the readings used; None when none
    used_bounds: tuple[int, int, int, int] | None = None


def _boundary(ts: list[int], t: int, p: Params) -> _Bound:
    n = len(ts)
    if n == 0:
        return _Bound(t, "missing")
    tol = p.boundary_tolerance_s * 1000
    i = bisect.bisect_left(ts, t)
    best: int | None = None
    if i - 1 >= 0 and t - ts[i - 1] <= tol:
        best = i - 1
    if i < n and ts[i] - t <= tol and (best is None or ts[i] - t < t - ts[best]):
        best = i
    if best is not None:
        return _Bound(t, "measured", at=best, left=best, right=best)
    a = i - 1 if i - 1 >= 0 else None
    b = i if i < n else None
    if a is not None and b is not None:
        span = ts[b] - ts[a]
        return _Bound(t, "interpolated" if span <= p.max_interpolation_s * 1000 else "estimated", left=a, right=b)
    return _Bound(t, "missing", left=a, right=b)


class _Steps:
    """Step energies (register counts) of a sliced series, with what was special about each step."""

    def __init__(self, spec: ChannelSpec, s: Series, p: Params, replacements: list[Replacement]) -> None:
        ts, val = s.ts, s.value
        self.n = len(ts)
        e: list[int] = list(map(operator.sub, val[1:], val[:-1]))
        self.kind: dict[int, str] = {}  # step index -> rollover | replacement | reset
        self.note: dict[int, dict[str, Any]] = {}
        rep_ts = [r.ts_ms for r in replacements]
        special = {k for k, d in enumerate(e) if d < 0} if e and min(e) < 0 else set()
        for r in replacements:
            k = bisect.bisect_left(ts, r.ts_ms) - 1  # step with ts[k] < event ts <= ts[k+1]
            if 0 <= k < self.n - 1:
                special.add(k)
        modulus = spec.register_modulus_wh
        for k in sorted(special):
            va, vb, dt = val[k], val[k + 1], ts[k + 1] - ts[k]
            lo = bisect.bisect_right(rep_ts, ts[k])
            hi = bisect.bisect_right(rep_ts, ts[k + 1])
            reps = replacements[lo:hi]
            if reps:
                r = reps[0]
                p1 = r.closing_wh - va
                if p1 < 0 and modulus is not None:
                    p1 += modulus
                p2 = vb - r.opening_wh
                if p1 >= 0 and p2 >= 0:
                    e[k] = p1 + p2
                    self.kind[k] = "meter_replacement"
                    self.note[k] = r.to_json()
                    continue
                e[k] = max(p1, 0) + max(p2, 0)
                self.kind[k] = "reset"
                self.note[k] = {
                    **r.to_json(),
                    "problem": "readings do not match the recorded closing/opening values",
                }
                continue
            # A rollover starts near the top of the register; a reading at or above the modulus cannot
            # be the register's (a wrong modulus, or a hostile MQTT payload): a decrease from it is a
            # reset, or the wrap would count negative energy.
            if modulus is not None and modulus * 9 <= va * 10 < modulus * 10 and 0 <= vb < va:
                e[k] = vb + modulus - va
                self.kind[k] = "rollover"
                continue
            est = max(vb, 0)
            cap = _capacity_counts(spec, p, dt)
            if cap is not None:
                est = min(est, cap)
            e[k] = est
            self.kind[k] = "reset"
        self.e = e
        u = list(itertools.accumulate(e, initial=0))
        self.u = u
        self.ts = ts
        self.estimated = {k for k, kd in self.kind.items() if kd == "reset"}

    def part(self, a: int, t: int) -> int:
        """Counts of step a allocated before instant t (ts[a] <= t <= ts[a+1])."""
        t0, t1 = self.ts[a], self.ts[a + 1]
        if t <= t0:
            return 0
        if t >= t1:
            return self.e[a]
        return self.e[a] * (t - t0) // (t1 - t0)

    def cum_bound(self, b: _Bound) -> int:
        if b.at is not None:
            return self.u[b.at]
        if b.left is not None and b.right is not None:
            return self.u[b.left] + self.part(b.left, b.t)
        if b.left is not None:
            return self.u[b.left]
        if b.right is not None:
            return self.u[b.right]
        return 0

    def cum_at(self, t: int) -> int:
        i = bisect.bisect_right(self.ts, t) - 1
        if i < 0:
            return 0
        if i >= self.n - 1:
            return self.u[self.n - 1]
        return self.u[i] + self.part(i, t)

    def register_at(self, b: _Bound, s: Series, modulus: int | None) -> int | None:
        """The register value the meter would have shown at the boundary (None across a reset)."""
        if b.at is not None:
            return s.value[b.at]
        if b.left is not None and b.right is not None:
            k = b.left
            kind = self.kind.get(k)
            if kind == "reset" or kind == "meter_replacement":
                return None
            v = s.value[k] + self.part(k, b.t)
            return v % modulus if modulus is not None and kind == "rollover" else v
        if b.left is not None:
            return s.value[b.left]
        if b.right is not None:
            return s.value[b.right]
        return None


def _capacity_counts(spec: ChannelSpec, p: Params, dt_ms: int) -> int | None:
    """Largest plausible register advance (counts) over dt: factor x rated power x time / multiplier."""
    if spec.rated_power_w is None:
        return None
    wh = Fraction(Decimal(p.capacity_factor)) * spec.rated_power_w * dt_ms / 3_600_000
    return int(wh // spec.multiplier)


def _reading_json(s: Series, i: int) -> dict[str, Any]:
    return {"seq": s.seq[i], "ts": iso_ms(s.ts[i]), "register_wh": s.value[i]}


def _bound_json(b: _Bound, s: Series, steps: _Steps, modulus: int | None, side: str) -> dict[str, Any]:
    treatment = {
        "measured": "reading within tolerance of the boundary",
        "interpolated": "linear interpolation between the bracketing readings",
        "estimated": "linear split of the step between bracketing readings more than max_interpolation_s apart",
        "missing": "no reading on one side of the boundary: energy beyond the nearest reading not counted",
    }[b.method]
    if b.left is not None and b.right is not None and b.at is None and b.left in steps.estimated:
        treatment = "split of an estimated step (register reset between the bracketing readings)"
    return {
        "ts": iso_ms(b.t),
        "method": b.method,
        "register_wh": steps.register_at(b, s, modulus),
        "reading": _reading_json(s, b.at) if b.at is not None else None,
        "bracket": [_reading_json(s, i) for i in (b.left, b.right) if i is not None] if b.at is None else [],
        "treatment": treatment,
        "side": side,
    }


def _night_flags(p: Params, start_ms: int, n: int) -> list[bool] | None:
    if p.latitude is None or p.longitude is None:
        return None
    lat, lon = float(p.latitude), float(p.longitude)
    limit = float(p.pv_night_elevation_deg)
    step = p.interval_s * 1000
    return [sun_elevation_deg(start_ms + k * step + step // 2, lat, lon) < limit for k in range(n)]


def compute_channel(
    spec: ChannelSpec,
    series: Series,
    *,
    start_ms: int,
    end_ms: int,
    params: Params,
    replacements: list[Replacement] = (),  # type: ignore[assignment]
    bad_readings: int = 0,
    night: list[bool] | None = None,
) -> ChannelResult:
    """Compute one channel over [start_ms, end_ms). `series` may extend beyond; only what is used stays.

    `replacements` must be this channel's (device, quantity) events sorted by time; `bad_readings` is
    the number of non-good readings of the series inside the period (meter status rule); `night` is the
    per-interval night flag list (computed once per report; recomputed here when None).
    """
    p = params
    m = spec.multiplier
    full_ob = _boundary(series.ts, start_ms, p)
    full_cb = _boundary(series.ts, end_ms, p)
    idx = [i for i in (full_ob.left, full_ob.right, full_cb.left, full_cb.right) if i is not None]
    s = series.slice(min(idx), max(idx) + 1) if idx else Series()
    ob = _boundary(s.ts, start_ms, p)
    cb = _boundary(s.ts, end_ms, p)
    reps = [r for r in replacements if s.ts and s.ts[0] < r.ts_ms <= s.ts[-1]]
    steps = _Steps(spec, s, p, reps)
    c_open, c_close = steps.cum_bound(ob), steps.cum_bound(cb)
    total = c_close - c_open

    # -- measured / interpolated / estimated split ------------------------------------------------
    cats = {"measured": 0, "interpolated": 0, "estimated": 0}
    special: dict[int, str] = {k: "estimated" for k in steps.estimated}
    for b in (ob, cb):
        if b.at is None and b.left is not None and b.right is not None:
            prev = special.get(b.left, "measured")
            special[b.left] = prev if _RANK[prev] >= _RANK[b.method] else b.method
    special_sum = 0
    for k, cat in special.items():
        overlap = max(0, min(steps.u[k + 1], c_close) - max(steps.u[k], c_open))
        cats[cat] += overlap
        special_sum += overlap
    cats["measured"] = total - special_sum

    # -- intervals --------------------------------------------------------------------------------
    step_ms = p.interval_s * 1000
    edges = [*range(start_ms, end_ms, step_ms), end_ms]
    cums = [c_open] + [min(max(steps.cum_at(t), c_open), c_close) for t in edges[1:-1]] + [c_close]
    interval_counts = list(map(operator.sub, cums[1:], cums[:-1]))
    interval_wh = [c * m for c in interval_counts]
    tol = p.boundary_tolerance_s * 1000
    max_span = p.max_interpolation_s * 1000
    ts = s.ts
    n = len(ts)
    edge_q: list[str] = []
    for t in edges:
        i = bisect.bisect_left(ts, t - tol)
        if i < n and ts[i] <= t + tol:
            edge_q.append("measured")
            continue
        a = bisect.bisect_right(ts, t) - 1
        if 0 <= a < n - 1:
            ok = ts[a + 1] - ts[a] <= max_span and a not in steps.estimated
            edge_q.append("interpolated" if ok else "estimated")
        else:
            edge_q.append("estimated")
    quality = [edge_q[k] if _RANK[edge_q[k]] >= _RANK[edge_q[k + 1]] else edge_q[k + 1] for k in range(len(edges) - 1)]
    for k in steps.estimated:  # intervals overlapping an estimated step are estimated
        lo = max(0, (ts[k] - start_ms) // step_ms)
        hi = min(len(quality), -(-(ts[k + 1] - start_ms) // step_ms))
        for j in range(lo, hi):
            quality[j] = "estimated"
    n_int = len(quality)
    n_measured = quality.count("measured")

    # -- gaps ---------------------------------------------------------------------------------------
    gaps: list[dict[str, Any]] = []
    gap_ms = p.gap_min_s * 1000
    if n > 1:
        dts = list(map(operator.sub, ts[1:], ts[:-1]))
        gap_steps = [k for k, d in enumerate(dts) if d > gap_ms] if max(dts) > gap_ms else []
    else:
        gap_steps = []
    gap_steps = sorted(set(gap_steps) | {k for k in steps.kind if steps.kind[k] == "reset"})
    for k in gap_steps:
        if ts[k + 1] <= start_ms or ts[k] >= end_ms:
            continue
        est = k in steps.estimated
        lo_c, hi_c = max(steps.u[k], c_open), min(steps.u[k + 1], c_close)
        gaps.append(
            {
                "from": iso_ms(ts[k]),
                "to": iso_ms(ts[k + 1]),
                "duration_s": (ts[k + 1] - ts[k]) // 1000,
                "cause": "register decreased without a recorded replacement" if est else "no readings recorded",
                "treatment": "energy across estimated (new register value, capped at capacity)"
                if est
                else "register advance across the gap measured; spread over intervals linearly",
                "energy_wh": max(0, hi_c - lo_c) * m,
            }
        )
    for b, side in ((ob, "opening"), (cb, "closing")):
        if b.method == "missing":
            gaps.append(
                {
                    "from": iso_ms(b.t) if side == "opening" or n == 0 else iso_ms(ts[-1]),
                    "to": iso_ms(ts[0]) if side == "opening" and n else iso_ms(b.t),
                    "duration_s": None,
                    "cause": f"no reading on the {'earlier' if side == 'opening' else 'later'} side of"
                    f" the {side} boundary",
                    "treatment": "energy beyond the nearest reading not counted",
                    "energy_wh": 0,
                }
            )
    gaps_total = len(gaps)
    gaps = gaps[:MAX_GAPS_LISTED]

    # -- register events ----------------------------------------------------------------------------
    events: list[dict[str, Any]] = []
    for k in sorted(steps.kind):
        if ts[k + 1] <= start_ms or ts[k] >= end_ms:
            continue
        ev: dict[str, Any] = {
            "kind": steps.kind[k],
            "from": _reading_json(s, k),
            "to": _reading_json(s, k + 1),
            "step_energy_wh": steps.e[k] * m,
            "treatment": {
                "rollover": "register wrapped: modulus added",
                "meter_replacement": "old register to its closing value plus new register from its opening",
                "reset": "energy across estimated; validation failure raised",
            }[steps.kind[k]],
        }
        if k in steps.note:
            ev["replacement"] = steps.note[k]
        events.append(ev)

    # -- validation -------------------------------------------------------------------------------
    validation: list[dict[str, Any]] = []

    def rule(name: str, status: str, detail: str, **extra: Any) -> None:
        validation.append({"rule": name, "status": status, "detail": detail, **extra})

    neg = sum(1 for x in interval_wh if x < 0)
    rule("energy_nonnegative", "fail" if neg else "pass", f"{neg} negative interval(s)")
    n_reset = sum(1 for e in events if e["kind"] == "reset")
    rule(
        "register_reset",
        "fail" if n_reset else "pass",
        f"{n_reset} decrease(s) without a recorded meter replacement",
    )
    max_iv = max(interval_wh, default=0)
    if spec.rated_power_w is not None:
        limit = int(Fraction(Decimal(p.capacity_factor)) * spec.rated_power_w * p.interval_s / 3600)
        over = sum(1 for x in interval_wh if x > limit)
        rule(
            "interval_capacity",
            "fail" if over else "pass",
            f"{over} interval(s) above {p.capacity_factor} x rated power x interval",
            max_interval_wh=max_iv,
            limit_wh=limit,
        )
        if spec.role == "generation":
            g_limit = spec.rated_power_w * p.interval_s // 3600 + m
            g_over = sum(1 for x in interval_wh if x > g_limit)
            rule(
                "generation_rated_power",
                "fail" if g_over else "pass",
                f"{g_over} interval(s) above rated power (one count allowed)",
                max_interval_wh=max_iv,
                limit_wh=g_limit,
            )
    else:
        rule("interval_capacity", "skip", "no rated_power_w configured")
    need = max(1, p.frozen_after_h * 3600 // p.interval_s)
    run = longest = 0
    for x, q in zip(interval_wh, quality, strict=True):
        run = run + 1 if x == 0 and q == "measured" else 0
        longest = max(longest, run)
    rule(
        "frozen_register",
        "warn" if longest >= need else "pass",
        f"longest run without advance: {longest * p.interval_s // 60} min",
    )
    inversions = sum(map(operator.gt, s.seq[:-1], s.seq[1:])) if n > 1 else 0
    rule(
        "clock_order",
        "fail" if inversions else "pass",
        f"{inversions} reading(s) stored after a later-stamped one (clock went back)",
    )
    rule(
        "meter_status",
        "warn" if bad_readings else "pass",
        f"{bad_readings} reading(s) not good (invalid, stale or estimated) were not used",
        count=bad_readings,
    )
    if spec.role == "generation" and spec.source == "pv":
        flags = night if night is not None else _night_flags(p, start_ms, n_int)
        if flags is None:
            rule("pv_night", "skip", "site.location not set")
        else:
            bad = [
                k for k, (x, f) in enumerate(zip(interval_wh, flags, strict=False)) if f and x > p.pv_night_tolerance_wh
            ]
            worst = max((interval_wh[k] for k in bad), default=0)
            rule(
                "pv_night",
                "fail" if bad else "pass",
                f"{len(bad)} night interval(s) above {p.pv_night_tolerance_wh} Wh"
                + (f", first at {iso_ms(start_ms + bad[0] * step_ms)}" if bad else ""),
                max_interval_wh=worst,
                limit_wh=p.pv_night_tolerance_wh,
            )

    # -- coverage and grade ------------------------------------------------------------------------
    energy_cov = ratio(cats["measured"], total) if total else "1.000000"
    est_share = ratio(cats["estimated"], total) if total else "0.000000"
    reasons: list[str] = []
    grade = "verified"
    for b, side in ((ob, "opening"), (cb, "closing")):
        if b.method == "missing":
            grade = "unverified"
            reasons.append(f"{spec.id}: {side} boundary missing (no reading on one side)")
        elif b.method != "measured":
            reasons.append(f"{spec.id}: {side} boundary {b.method}")
    if not dec_ge(energy_cov, p.min_energy_coverage):
        reasons.append(f"{spec.id}: energy coverage {energy_cov} < {p.min_energy_coverage}")
    if not dec_le(est_share, p.max_estimated_share):
        reasons.append(f"{spec.id}: estimated share {est_share} > {p.max_estimated_share}")
    for v in validation:
        if v["status"] == "fail":
            reasons.append(f"{spec.id}: validation {v['rule']} failed: {v['detail']}")
    if grade != "unverified" and reasons:
        grade = "provisional"

    out = {
        "id": spec.id,
        "role": spec.role,
        "device": spec.device,
        "quantity": spec.quantity,
        "source": spec.source,
        "renewable": spec.renewable,
        "meter": spec.meter_json(),
        "opening": _bound_json(ob, s, steps, spec.register_modulus_wh, "opening"),
        "closing": _bound_json(cb, s, steps, spec.register_modulus_wh, "closing"),
        "energy_wh": total * m,
        "measured_wh": cats["measured"] * m,
        "interpolated_wh": cats["interpolated"] * m,
        "estimated_wh": cats["estimated"] * m,
        "coverage": {
            "time": ratio(n_measured, n_int) if n_int else "0.000000",
            "energy": energy_cov,
            "intervals": n_int,
            "intervals_measured": n_measured,
        },
        "gaps": gaps,
        "gaps_total": gaps_total,
        "register_events": events,
        "validation": validation,
        "readings": {
            "count": n,
            "first_seq": s.seq[0] if n else None,
            "first_ts": iso_ms(s.ts[0]) if n else None,
            "last_seq": s.seq[-1] if n else None,
            "last_ts": iso_ms(s.ts[-1]) if n else None,
        },
        "grade": grade,
        "reasons": reasons,
    }
    bounds = (s.ts[0], s.seq[0], s.ts[-1], s.seq[-1]) if n else None
    return ChannelResult(spec, out, interval_wh, quality, s, total * m, grade, channel_day_roots(s), bounds)


def channel_day_roots(s: Series) -> list[tuple[str, int, bytes]]:
    """Merkle root of one channel's used readings per UTC day (leaves = chain hashes, time order)."""
    out: list[tuple[str, int, bytes]] = []
    ts = s.ts
    i = 0
    while i < len(ts):
        d = ts[i] // DAY_MS
        j = bisect.bisect_left(ts, (d + 1) * DAY_MS, i)
        out.append((day_of(d * DAY_MS), j - i, merkle_root(s.hash[i:j])))
        i = j
    return out


def night_flags(params: Params, start_ms: int, end_ms: int) -> list[bool] | None:
    """Per-interval "sun below the night elevation" flags for the period (None without a location)."""
    n = -(-(end_ms - start_ms) // (params.interval_s * 1000))
    return _night_flags(params, start_ms, n)
