"""One channel's month from its register readings: boundaries, segments, intervals, coverage, VEE.

This is pure arithmetic over integer lists (standard library only) because `gia verify` must recompute a
report with *the same code*: the gateway calls it with readings from the ledger, the verifier with
readings from the evidence bundle, and both must land on the same Wh.

The model (certification.md):

* A channel's readings form *steps* between consecutive readings. Each step has an integer energy in
  register counts: the plain advance; the advance plus the modulus for a rollover; or an estimate that
  is flagged: across a recorded meter replacement (the neighbouring steps' power, after the recorded
  closing/opening pair has been checked against the readings around it), across a decrease without a
  replacement (a *reset*: the new register value, capped at capacity x time), or for an advance above
  the capacity bound (the neighbouring steps' power, capped).
* Step validation comes first: a single reading that disagrees with both neighbours while they agree
  with each other (a spike, a dip to 0, a replayed older value) is excluded, so the bridge between the
  two neighbours is measured and the total stays the true register advance.
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
import math
import operator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, Literal

from gateway.certification.exact import iso_ms, ratio
from gateway.certification.merkle import DAY_MS, day_of, merkle_root
from gateway.certification.policy import Policy, grade_channel, policy_of_method
from gateway.certification.solar import sun_elevation_deg
from gateway.site.channels import ChannelSpec, normalise_serial

Method = Literal["measured", "interpolated", "estimated", "missing"]
_RANK: Final[dict[str, int]] = {"measured": 0, "interpolated": 1, "estimated": 2, "missing": 3}
MAX_GAPS_LISTED: Final = 200


@dataclass(frozen=True, slots=True)
class Replacement:
    """A recorded meter replacement: the old register's closing and the new one's opening value.

    `closing_wh`/`opening_wh` are register values as read from the two meters' displays (register
    counts; Wh when the channel's multiplier is 1). `recorded_ms` is when the record was made, from the
    gateway's guarded clock (None for records made before the field existed).
    """

    event_id: int
    ts_ms: int
    device: str
    quantity: str
    closing_wh: int
    opening_wh: int
    old_serial: str | None = None
    new_serial: str | None = None
    recorded_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "ts": iso_ms(self.ts_ms),
            "recorded_at": iso_ms(self.recorded_ms) if self.recorded_ms is not None else None,
            "device": self.device,
            "quantity": self.quantity,
            "closing_register": self.closing_wh,
            "opening_register": self.opening_wh,
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
    """The method's knobs; embedded in the report (`method`) so verification recomputes with the same ones.

    The grading thresholds among them are the site's; `gia verify --policy` re-grades under the
    certifier's (`policy.Policy` has the same field names).
    """

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
    min_time_coverage: str = "0.99"
    min_interval_energy_share: str = "0.99"
    balance_tolerance: str = "0.02"
    settlement_delay_h: int = 48
    replacement_late_after_h: int = 48
    latitude: str | None = None
    longitude: str | None = None
    #: Each channel's energy per hour (`channels[].hourly_wh`): what an area hub needs to split a shared
    #: generator hour by hour and to match renewable supply hourly across sites. Opt-in, and absent from
    #: `method` when off, so reports made without it keep their bytes.
    hourly_profiles: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        if not self.hourly_profiles:
            del out["hourly_profiles"]
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> Params:
        return Params(**{k: d[k] for k in Params.__dataclass_fields__ if k in d})

    def policy(self) -> Policy:
        """The site's own thresholds, as a policy (what the gateway grades its report with)."""
        return policy_of_method(self.to_json())

    def under(self, policy: Policy) -> Params:
        """These parameters with the method parameters of `policy` (a certifier's recomputation)."""
        return replace(self, **{k: getattr(policy, k) for k in self.__dataclass_fields__ if hasattr(policy, k)})


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
    interval_grade: str = "verified"


#: Readings kept beyond each bracketing reading: step validation looks at two neighbours on each side,
#: so month M and month M+1 judge the readings around their shared boundary from the same readings.
MARGIN_READINGS: Final = 3
MAX_LISTED: Final = 50


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


#: Steps shorter than this are judged over this long a window: a register that moves in quanta (a kWh
#: register scaled to Wh, a float32 register) can tick a whole quantum between two polls a second apart,
#: which is no evidence of power above capacity. A spike or a fake jump is far beyond it.
MIN_STEP_WINDOW_MS: Final = 60_000


class _Cap:
    """The capacity bound in register counts: capacity_factor x rated power x time / multiplier.

    Kept as an exact fraction (counts per ms): `over(e, dt)` is `e > floor(limit) + 1` in integers, the
    limit taken over at least `MIN_STEP_WINDOW_MS` and one count allowed for the register's resolution.
    Without a rated power there is no bound (and the channel cannot be verified).
    """

    def __init__(self, spec: ChannelSpec, p: Params) -> None:
        self.num: int | None = None
        self.den = 1
        if spec.rated_power_w is not None:
            x = Fraction(Decimal(p.capacity_factor)) * spec.rated_power_w / (3_600_000 * spec.multiplier)
            self.num, self.den = x.numerator, x.denominator

    def counts(self, dt_ms: int) -> int | None:
        return None if self.num is None else self.num * dt_ms // self.den

    def over(self, e: int, dt_ms: int) -> bool:
        return self.num is not None and (e - 1) * self.den > self.num * max(dt_ms, MIN_STEP_WINDOW_MS)


def _rollover(modulus: int | None, va: int, vb: int) -> bool:
    """A decrease that is a wrap of the register: it starts near the top. A reading at or above the
    modulus cannot be the register's (a wrong modulus, a hostile payload): a decrease from it is not a
    wrap, or the wrap would count negative energy."""
    return modulus is not None and modulus * 9 <= va * 10 < modulus * 10 and 0 <= vb < va


def _advance(modulus: int | None, va: int, vb: int) -> int:
    d = vb - va
    return d + modulus if d < 0 and modulus is not None and _rollover(modulus, va, vb) else d


def _anomalies(
    val: list[int], e: list[int], dts: list[int], modulus: int | None, cap: _Cap, skip: set[int]
) -> list[int]:
    """Steps that fail validation: a decrease that is no wrap, or an advance above the capacity bound."""
    out: set[int] = set()
    if e and min(e) < 0:
        for k, d in enumerate(e):
            if d < 0 and (not _rollover(modulus, val[k], val[k + 1]) or cap.over(d + (modulus or 0), dts[k])):
                out.add(k)
    if cap.num is not None and e:
        num, den = cap.num, cap.den
        lhs = map(operator.mul, map(operator.sub, e, itertools.repeat(1)), itertools.repeat(den))
        rhs = map(operator.mul, map(max, dts, itertools.repeat(MIN_STEP_WINDOW_MS)), itertools.repeat(num))
        flags = list(map(operator.gt, lhs, rhs))
        if True in flags:
            out.update(k for k, f in enumerate(flags) if f)
    return sorted(out - skip)


def _replacement_steps(ts: list[int], replacements: list[Replacement]) -> dict[int, list[Replacement]]:
    out: dict[int, list[Replacement]] = {}
    for r in replacements:
        k = bisect.bisect_left(ts, r.ts_ms) - 1  # step with ts[k] < event ts <= ts[k+1]
        if 0 <= k < len(ts) - 1:
            out.setdefault(k, []).append(r)
    return out


def _outliers(
    s: Series, anomalies: list[int], modulus: int | None, cap: _Cap, rep_steps: dict[int, list[Replacement]]
) -> dict[int, str]:
    """Single readings that disagree with both neighbours while the neighbours agree with each other.

    A spike (a reading far above the register), a dip (a reading of 0, a replayed older value): both
    steps touching the reading fail validation, the step bridging it passes (advance >= 0 and within the
    capacity bound). Such a reading is excluded; the bridge is two measured readings, so the total
    stays the true register advance. Everything else that fails is estimated by `_Steps`.
    """
    ts, val = s.ts, s.value
    n = len(ts)
    out: dict[int, str] = {}
    if n < 3 or not anomalies:
        return out

    def ok(i: int, j: int) -> bool:
        if any(k in rep_steps for k in range(i, j)):
            return False
        d = _advance(modulus, val[i], val[j])
        return d >= 0 and not cap.over(d, ts[j] - ts[i])

    def why(j: int) -> str:
        if val[j] >= val[j - 1]:
            return "spike"
        return "replayed" if val[j] in set(val[:j]) else "dip"

    def fits(j: int) -> bool:
        """Without reading j its neighbours agree with each other and with their own next neighbours."""
        return (j - 2 < 0 or j - 2 in out or ok(j - 2, j - 1)) and (j + 2 >= n or ok(j + 1, j + 2))

    for k in anomalies:
        if k in out or k + 1 in out or k in rep_steps:
            continue
        negative = _advance(modulus, val[k], val[k + 1]) < 0
        first, second = (k, k + 1) if negative else (k + 1, k)  # the likelier culprit first
        candidates = [j for j in (first, second) if 1 <= j < n - 1 and j - 1 not in out and ok(j - 1, j + 1)]
        # both readings of the failing step may be bridged over: exclude the one whose removal leaves the
        # neighbourhood consistent (a dip to 0 right after a real reading must not take that reading out)
        pick = next((j for j in candidates if fits(j)), candidates[0] if candidates else None)
        if pick is not None:
            out[pick] = why(pick)
    return out


class _Steps:
    """Step energies (register counts) of a cleaned series, with what was special about each step."""

    def __init__(
        self, spec: ChannelSpec, s: Series, p: Params, replacements: list[Replacement], cap: _Cap, anomalies: list[int]
    ) -> None:
        ts, val = s.ts, s.value
        self.n = n = len(ts)
        e: list[int] = list(map(operator.sub, val[1:], val[:-1]))
        dts: list[int] = list(map(operator.sub, ts[1:], ts[:-1]))
        self.kind: dict[int, str] = {}  # step -> rollover | meter_replacement | reset | capacity
        self.note: dict[int, dict[str, Any]] = {}
        self.rejected: dict[int, dict[str, Any]] = {}
        self.late: list[int] = []
        modulus = spec.register_modulus_wh
        rep_steps = _replacement_steps(ts, replacements)
        special = set(anomalies) | set(rep_steps)
        if e and min(e) < 0:
            special.update(k for k, d in enumerate(e) if d < 0)  # rollovers too: the modulus is added below
        raw = list(e)

        def neighbour_rate_estimate(k: int) -> int | None:
            num = den = 0
            for j in (k - 1, k + 1):
                if 0 <= j < n - 1 and j not in special and raw[j] >= 0:
                    num += raw[j]
                    den += dts[j]
            return num * dts[k] // den if den else None

        late_ms = p.replacement_late_after_h * 3_600_000
        for k in sorted(special):
            va, vb, dt = val[k], val[k + 1], dts[k]
            if k in rep_steps:
                r = rep_steps[k][0]
                problem, pair = _check_replacement(r, k, s, modulus, cap, raw, dts, special, p)
                if problem is None:
                    est = neighbour_rate_estimate(k)
                    how = "from the neighbouring steps' average power" if est is not None else "from the recorded pair"
                    value = pair if est is None else est
                    limit = cap.counts(dt)
                    e[k] = value if limit is None else min(value, limit)
                    self.kind[k] = "meter_replacement"
                    self.note[k] = {**r.to_json(), "recorded_pair_advance": pair, "estimate": how}
                    if r.recorded_ms is None or r.recorded_ms - r.ts_ms > late_ms:
                        self.late.append(k)
                        self.note[k]["late"] = True
                    continue
                self.rejected[k] = {**r.to_json(), "problem": problem}
            adv = _advance(modulus, va, vb)
            if adv < 0:
                est = max(vb, 0)
                limit = cap.counts(dt)
                e[k] = est if limit is None else min(est, limit)
                self.kind[k] = "reset"
            elif cap.over(adv, dt):
                est = neighbour_rate_estimate(k) or 0
                limit = cap.counts(dt)
                e[k] = est if limit is None else min(est, limit)
                self.kind[k] = "capacity"
                frozen = k >= 1 and val[k - 1] == va
                self.note[k] = {
                    "register_advance": adv,
                    "limit": limit,
                    "cause": "register frozen, then caught up" if frozen else "advance above the capacity bound",
                }
            elif adv != e[k]:
                e[k] = adv
                self.kind[k] = "rollover"
        self.e = e
        self.u = list(itertools.accumulate(e, initial=0))
        self.ts = ts
        self.estimated = {k for k, kd in self.kind.items() if kd in ("reset", "capacity", "meter_replacement")}

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
        """The register value the meter would have shown at the boundary (None across a special step)."""
        if b.at is not None:
            return s.value[b.at]
        if b.left is not None and b.right is not None:
            k = b.left
            kind = self.kind.get(k)
            if kind in ("reset", "meter_replacement", "capacity"):
                return None
            v = s.value[k] + self.part(k, b.t)
            return v % modulus if modulus is not None and kind == "rollover" else v
        if b.left is not None:
            return s.value[b.left]
        if b.right is not None:
            return s.value[b.right]
        return None


def _resolution(raw: list[int], k: int) -> int:
    """The register's apparent resolution near step k: the largest power of ten dividing every advance
    around it (1 when unknown). A register kept in kWh and scaled to Wh moves in steps of 1000."""
    g = 0
    for j in range(max(0, k - 50), min(len(raw), k + 51)):
        if j != k and raw[j] > 0:
            g = math.gcd(g, raw[j])
            if g == 1:
                break
    res = 1
    while g and g % (res * 10) == 0:
        res *= 10
    return res


def _check_replacement(
    r: Replacement,
    k: int,
    s: Series,
    modulus: int | None,
    cap: _Cap,
    raw: list[int],
    dts: list[int],
    special: set[int],
    p: Params,
) -> tuple[str | None, int]:
    """(problem or None, register advance the recorded pair implies across the step).

    The closing value must lie between the old meter's last reading and what it could have counted up
    to the recorded instant; the opening value between what the new meter could have counted from the
    recorded instant and its first reading: within the register's resolution and the power seen (the
    capacity bound; without a rated power, the neighbouring steps' power x capacity_factor).
    """
    ta, tb = s.ts[k], s.ts[k + 1]
    va, vb = s.value[k], s.value[k + 1]
    p1 = r.closing_wh - va
    if p1 < 0 and modulus is not None and _rollover(modulus, va, r.closing_wh % modulus):
        p1 += modulus
    p2 = vb - r.opening_wh
    pair = max(p1, 0) + max(p2, 0)
    if not r.new_serial:
        return "no serial of the new meter recorded (gia meter-replacement --new-serial)", pair
    if (
        r.old_serial is not None
        and r.new_serial is not None
        and r.old_serial.strip().upper() == r.new_serial.strip().upper()
    ):
        return f"new serial {r.new_serial!r} is the old meter's serial: not a replacement", pair
    if p1 < 0:
        return (
            f"closing register {r.closing_wh} is below the old meter's last reading {va} at {iso_ms(ta)}",
            pair,
        )
    if p2 < 0:
        return (
            f"opening register {r.opening_wh} is above the new meter's first reading {vb} at {iso_ms(tb)}",
            pair,
        )
    res = _resolution(raw, k)

    def bound(dt_ms: int) -> int | None:
        limit = cap.counts(dt_ms)
        if limit is not None:
            return limit
        rates = [
            Fraction(raw[j], dts[j])
            for j in (k - 1, k + 1)
            if 0 <= j < len(raw) and j not in special and raw[j] >= 0 and dts[j] > 0
        ]
        if not rates:
            return None
        return int(Fraction(Decimal(p.capacity_factor)) * max(rates) * dt_ms)

    for part, dt_ms, what, ref, ref_ts in (
        (p1, r.ts_ms - ta, "closing", va, ta),
        (p2, tb - r.ts_ms, "opening", vb, tb),
    ):
        limit = bound(max(0, dt_ms))
        if limit is not None and part > limit + res:
            side = "above the old meter's last" if what == "closing" else "below the new meter's first"
            return (
                f"{what} register {r.closing_wh if what == 'closing' else r.opening_wh} is {part} counts {side}"
                f" reading {ref} at {iso_ms(ref_ts)}: more than the {limit + res} possible in {max(0, dt_ms) // 1000} s"
                " at the power seen (capacity bound plus the register's resolution)",
                pair,
            )
    return None, pair


def _capacity_counts(spec: ChannelSpec, p: Params, dt_ms: int) -> int | None:
    """Largest plausible register advance (counts) over dt: factor x rated power x time / multiplier."""
    return _Cap(spec, p).counts(dt_ms)


def _reading_json(s: Series, i: int) -> dict[str, Any]:
    return {"seq": s.seq[i], "ts": iso_ms(s.ts[i]), "register_value": s.value[i]}


def _bound_json(b: _Bound, s: Series, steps: _Steps, modulus: int | None, side: str) -> dict[str, Any]:
    treatment = {
        "measured": "reading within tolerance of the boundary",
        "interpolated": "linear interpolation between the bracketing readings",
        "estimated": "linear split of the step between bracketing readings more than max_interpolation_s apart",
        "missing": "no reading on one side of the boundary: energy beyond the nearest reading not counted",
    }[b.method]
    if b.left is not None and b.right is not None and b.at is None and b.left in steps.estimated:
        treatment = f"split of an estimated step ({steps.kind[b.left]}) between the bracketing readings"
    return {
        "ts": iso_ms(b.t),
        "method": b.method,
        "register_value": steps.register_at(b, s, modulus),
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


_CAUSE: Final = {
    "reset": (
        "register decreased without a recorded replacement",
        "energy across estimated (new register value, capped at capacity)",
    ),
    "capacity": (
        "register advance above the capacity bound",
        "step excluded; energy estimated from the neighbouring steps' power, capped at capacity",
    ),
    "meter_replacement": (
        "meter replaced",
        "energy across the swap estimated from the neighbouring steps' power, capped at capacity",
    ),
}
_TREATMENT: Final = {
    "rollover": "register wrapped: modulus added",
    "meter_replacement": "old register to its closing value, new register from its opening; the energy across"
    " the swap step estimated from the neighbouring steps",
    "reset": "energy across estimated; validation failure raised",
    "capacity": "step above the capacity bound excluded; energy estimated; validation failure raised",
}


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
    serials: list[int] | None = None,
) -> ChannelResult:
    """Compute one channel over [start_ms, end_ms). `series` may extend beyond; only what is used stays.

    `replacements` must be this channel's (device, quantity) events sorted by time; `bad_readings` is
    the number of non-good readings of the series inside the period (meter status rule); `night` is the
    per-interval night flag list (computed once per report; recomputed here when None); `serials` the
    serial numbers the device reported in the period, in time order (where its map reads them).
    """
    p = params
    m = spec.multiplier
    modulus = spec.register_modulus_wh
    full_ob = _boundary(series.ts, start_ms, p)
    full_cb = _boundary(series.ts, end_ms, p)
    idx = [i for i in (full_ob.left, full_ob.right, full_cb.left, full_cb.right) if i is not None]
    if idx:
        lo, hi = max(0, min(idx) - MARGIN_READINGS), min(len(series), max(idx) + 1 + MARGIN_READINGS)
        used = series.slice(lo, hi)
    else:
        used = Series()
    reps = [r for r in replacements if used.ts and used.ts[0] < r.ts_ms <= used.ts[-1]]
    cap = _Cap(spec, p)

    # -- step validation: exclude outlier readings, then estimate what still fails ------------------
    raw_e = list(map(operator.sub, used.value[1:], used.value[:-1]))
    raw_dt = list(map(operator.sub, used.ts[1:], used.ts[:-1]))
    rep_steps = _replacement_steps(used.ts, reps)
    anomalies = _anomalies(used.value, raw_e, raw_dt, modulus, cap, set(rep_steps))
    excluded = _outliers(used, anomalies, modulus, cap, rep_steps)
    if excluded:
        keep = [i for i in range(len(used)) if i not in excluded]
        s = Series(
            [used.ts[i] for i in keep], [used.value[i] for i in keep], [used.seq[i] for i in keep],
            [used.hash[i] for i in keep],
        )  # fmt: skip
        e2 = list(map(operator.sub, s.value[1:], s.value[:-1]))
        d2 = list(map(operator.sub, s.ts[1:], s.ts[:-1]))
        anomalies = _anomalies(s.value, e2, d2, modulus, cap, set(_replacement_steps(s.ts, reps)))
    else:
        s = used
    ob = _boundary(s.ts, start_ms, p)
    cb = _boundary(s.ts, end_ms, p)
    steps = _Steps(spec, s, p, reps, cap, anomalies)
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
        lo_i = max(0, (ts[k] - start_ms) // step_ms)
        hi_i = min(len(quality), -(-(ts[k + 1] - start_ms) // step_ms))
        for j in range(lo_i, hi_i):
            quality[j] = "estimated"
    n_int = len(quality)
    n_measured = quality.count("measured")
    measured_iv_wh = sum(x for x, q in zip(interval_wh, quality, strict=True) if q == "measured")

    # -- gaps ---------------------------------------------------------------------------------------
    gaps: list[dict[str, Any]] = []
    gap_ms = p.gap_min_s * 1000
    if n > 1:
        dts = list(map(operator.sub, ts[1:], ts[:-1]))
        gap_steps = [k for k, d in enumerate(dts) if d > gap_ms] if max(dts) > gap_ms else []
    else:
        gap_steps = []
    gap_steps = sorted(set(gap_steps) | steps.estimated)
    for k in gap_steps:
        if ts[k + 1] <= start_ms or ts[k] >= end_ms:
            continue
        kind = steps.kind.get(k)
        cause, treatment = _CAUSE.get(kind or "", ("no readings recorded", ""))
        if kind is None or kind == "rollover":
            cause = "no readings recorded"
            treatment = "register advance across the gap measured; spread over intervals linearly"
        lo_c, hi_c = max(steps.u[k], c_open), min(steps.u[k + 1], c_close)
        gaps.append(
            {
                "from": iso_ms(ts[k]),
                "to": iso_ms(ts[k + 1]),
                "duration_s": (ts[k + 1] - ts[k]) // 1000,
                "cause": cause,
                "treatment": treatment,
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
    for k in sorted(set(steps.kind) | set(steps.rejected)):
        if ts[k + 1] <= start_ms or ts[k] >= end_ms:
            continue
        if k in steps.rejected:
            events.append(
                {
                    "kind": "meter_replacement_rejected",
                    "from": _reading_json(s, k),
                    "to": _reading_json(s, k + 1),
                    "replacement": steps.rejected[k],
                    "treatment": "record not applied: it does not agree with the readings around it;"
                    " validation failure raised",
                }
            )
        if k not in steps.kind:
            continue
        ev: dict[str, Any] = {
            "kind": steps.kind[k],
            "from": _reading_json(s, k),
            "to": _reading_json(s, k + 1),
            "step_energy_wh": steps.e[k] * m,
            "treatment": _TREATMENT[steps.kind[k]],
        }
        if steps.kind[k] == "meter_replacement":
            ev["replacement"] = steps.note[k]
        elif k in steps.note:
            ev["detail"] = steps.note[k]
        events.append(ev)
    in_period = [i for i in sorted(excluded) if start_ms - max_span <= used.ts[i] < end_ms + max_span]
    excluded_json = [
        {"seq": used.seq[i], "ts": iso_ms(used.ts[i]), "register_value": used.value[i], "reason": excluded[i]}
        for i in in_period[:MAX_LISTED]
    ]

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
    rule(
        "reading_outlier",
        "warn" if in_period else "pass",
        f"{len(in_period)} reading(s) disagreeing with both neighbours excluded (spike, dip or replayed value);"
        " the step across them is bridged by the neighbouring readings",
        count=len(in_period),
    )
    max_iv = max(interval_wh, default=0)
    if spec.rated_power_w is not None:
        n_cap = sum(1 for e in events if e["kind"] == "capacity")
        rule(
            "step_capacity",
            "fail" if n_cap else "pass",
            f"{n_cap} step(s) above {p.capacity_factor} x rated power x time excluded and estimated",
            count=n_cap,
        )
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
        rule(
            "interval_capacity",
            "fail",
            "no rated_power_w configured for this channel: the capacity rule cannot be applied, so spikes"
            " and impossible steps cannot be told from energy (set devices[].channels[].rated_power_w)",
            max_interval_wh=max_iv,
            limit_wh=None,
        )
    n_rej = sum(1 for e in events if e["kind"] == "meter_replacement_rejected")
    first_problem = next((e["replacement"]["problem"] for e in events if e["kind"] == "meter_replacement_rejected"), "")
    rule(
        "meter_replacement",
        "fail" if n_rej else "pass",
        f"{n_rej} recorded meter replacement(s) disagree with the readings around them"
        + (f"; first: {first_problem}" if first_problem else ""),
    )
    n_late = sum(1 for k in steps.late if start_ms < ts[k + 1] and ts[k] < end_ms)
    rule(
        "late_record",
        "warn" if n_late else "pass",
        f"{n_late} meter replacement(s) recorded more than {p.replacement_late_after_h} h after the event"
        " (or without a recording time)",
    )
    read = list(dict.fromkeys(str(x) for x in serials or []))
    applied_to = {
        normalise_serial(e["replacement"].get("new_serial")) for e in events if e["kind"] == "meter_replacement"
    }
    if not read and not spec.serial:
        rule(
            "meter_serial",
            "warn",
            "no serial configured or read from the meter: that no other site counts this meter cannot be checked",
        )
    elif read and spec.serial and spec.serial not in read:
        rule("meter_serial", "fail", f"configured serial {spec.serial}, the meter reports {', '.join(read)}")
    elif len(read) > 1 and any(x not in applied_to for x in read[1:]):
        rule("meter_serial", "fail", f"the meter's serial changed ({' -> '.join(read)}) without a recorded replacement")
    else:
        rule(
            "meter_serial",
            "pass",
            f"serial {', '.join(read)} read from the meter" if read else f"serial {spec.serial} as configured",
        )
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
    inversions = sum(map(operator.gt, used.seq[:-1], used.seq[1:])) if len(used) > 1 else 0
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
            worst_iv = max((interval_wh[k] for k in bad), default=0)
            rule(
                "pv_night",
                "fail" if bad else "pass",
                f"{len(bad)} night interval(s) above {p.pv_night_tolerance_wh} Wh"
                + (f", first at {iso_ms(start_ms + bad[0] * step_ms)}" if bad else ""),
                max_interval_wh=worst_iv,
                limit_wh=p.pv_night_tolerance_wh,
            )

    # -- coverage and grade ------------------------------------------------------------------------
    out: dict[str, Any] = {
        "id": spec.id,
        "role": spec.role,
        "device": spec.device,
        "quantity": spec.quantity,
        "source": spec.source,
        "renewable": spec.renewable,
        "meter": {**spec.meter_json(), "serial_read": read},
        "opening": _bound_json(ob, s, steps, modulus, "opening"),
        "closing": _bound_json(cb, s, steps, modulus, "closing"),
        "energy_wh": total * m,
        "measured_wh": cats["measured"] * m,
        "interpolated_wh": cats["interpolated"] * m,
        "estimated_wh": cats["estimated"] * m,
        "coverage": {
            "time": ratio(n_measured, n_int) if n_int else "0.000000",
            "energy": ratio(cats["measured"], total) if total else "1.000000",
            "intervals": n_int,
            "intervals_measured": n_measured,
            "interval_energy_measured_wh": measured_iv_wh,
        },
        "gaps": gaps,
        "gaps_total": gaps_total,
        "register_events": events,
        "excluded_readings": excluded_json,
        "validation": validation,
        "readings": {
            "count": len(used),
            "first_seq": used.seq[0] if len(used) else None,
            "first_ts": iso_ms(used.ts[0]) if len(used) else None,
            "last_seq": used.seq[-1] if len(used) else None,
            "last_ts": iso_ms(used.ts[-1]) if len(used) else None,
        },
    }
    if p.hourly_profiles:
        per_hour = max(1, 3600 // p.interval_s)
        out["hourly_wh"] = [sum(interval_wh[k : k + per_hour]) for k in range(0, len(interval_wh), per_hour)]
    g = grade_channel(out, p.policy())
    out["grade"] = g.total
    out["interval_grade"] = g.intervals
    out["reasons"] = g.reasons
    bounds = (used.ts[0], used.seq[0], used.ts[-1], used.seq[-1]) if len(used) else None
    return ChannelResult(
        spec, out, interval_wh, quality, used, total * m, g.total, channel_day_roots(used), bounds, g.intervals
    )


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
