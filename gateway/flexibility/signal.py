"""From forecasts to a three-level signal: surplus quantiles per interval, levels with hysteresis.

Surplus = wind + pv - load (W; positive when the site produces more renewable power than it uses).

How the quantiles are combined (`quantile_combination`):

* `comonotonic` (default, conservative): P10 surplus = sum of the generation P10s - load P90, and P90
  surplus = sum of generation P90s - load P10. This is exact when all forecast errors move together
  and *wider* than the truth otherwise, so the pessimistic surplus we act on is never rosier than the
  forecasts allow. P50 is the sum of the P50s (the median of a sum is not the sum of medians, but for
  roughly symmetric errors it is close).
* `independent`: the P50s add up and each side's half-width (P50-P10, P90-P50) adds in quadrature,
  what independent errors would give. Narrower; use it only when the forecasts' errors are known to
  be unrelated.

Levels (`Thresholds`): `absorb` when the pessimistic surplus (P10) is above `absorb_above_w`: even a
bad forecast leaves renewable power to spare, so consuming more now raises the renewable share.
`reduce` when even the optimistic surplus (P90) is below `reduce_below_w`: every extra W now comes from
the grid. `neutral` in between (the forecasts cannot tell). A Schmitt trigger walks the intervals in
time order: a level is entered `hysteresis_w/2` beyond its threshold and kept until the quantity has
come back `hysteresis_w/2` past it; the first interval continues the level published for it last time,
so successive updates do not flap either.

A stale, empty or missing forecast gives no surplus at all: every interval is `neutral`, the payload
carries the reason, and no plan is presented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from drivers.model import iso_utc
from forecasting.types import Forecast
from gateway.flexibility.config import FlexibilityConfig, QuantileCombination, Thresholds

Level = Literal["absorb", "neutral", "reduce"]
LEVEL_CODE: dict[Level, int] = {"reduce": -1, "neutral": 0, "absorb": 1}
Q = tuple[float, float, float]  # (p10, p50, p90)

#: A forecast generated this far in the future (clock skew) is refused like a stale one.
MAX_FUTURE_SKEW = timedelta(minutes=5)


def floor_time(ts: datetime, resolution_s: int) -> datetime:
    """`ts` rounded down to a multiple of `resolution_s` since the Unix epoch (UTC)."""
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % resolution_s, UTC)


def grid(start: datetime, resolution_s: int, n: int) -> list[datetime]:
    return [start + timedelta(seconds=resolution_s * i) for i in range(n)]


def resample(forecast: Forecast, starts: Sequence[datetime], resolution_s: int) -> list[Q | None]:
    """Overlap-weighted mean of each quantile over each interval; None where coverage is below 99 %.

    Averaging quantiles of 15-min points into an hour is slightly wider than the quantile of the
    hourly mean: on the safe side for a pessimistic P10.
    """
    pts = sorted(forecast.points, key=lambda p: p.ts)
    step = float(forecast.resolution_s)
    out: list[Q | None] = []
    j0 = 0
    for s in starts:
        a = s.timestamp()
        b = a + resolution_s
        acc = [0.0, 0.0, 0.0]
        covered = 0.0
        while j0 < len(pts) and pts[j0].ts.timestamp() + step <= a:
            j0 += 1
        j = j0
        while j < len(pts):
            pa = pts[j].ts.timestamp()
            if pa >= b:
                break
            ov = min(b, pa + step) - max(a, pa)
            if ov > 0:
                p = pts[j]
                acc[0] += p.p10 * ov
                acc[1] += p.p50 * ov
                acc[2] += p.p90 * ov
                covered += ov
            j += 1
        if covered < 0.99 * resolution_s:
            out.append(None)
        else:
            lo, mid, hi = sorted(v / covered for v in acc)
            out.append((lo, mid, hi))
    return out


def combine(generation: Sequence[Q], load: Q, how: QuantileCombination) -> Q:
    """Surplus quantiles from generation and load quantiles (see the module docstring)."""
    p50 = sum(g[1] for g in generation) - load[1]
    if how == "comonotonic":
        p10 = sum(g[0] for g in generation) - load[2]
        p90 = sum(g[2] for g in generation) - load[0]
    else:
        low = [g[1] - g[0] for g in generation] + [load[2] - load[1]]
        high = [g[2] - g[1] for g in generation] + [load[1] - load[0]]
        p10 = p50 - math.sqrt(sum(x * x for x in low))
        p90 = p50 + math.sqrt(sum(x * x for x in high))
    return (min(p10, p50), p50, max(p90, p50))


def levels(surplus: Sequence[Q], thresholds: Thresholds, previous: Level = "neutral") -> list[Level]:
    """Schmitt-trigger levels in time order, starting from `previous` (see the module docstring)."""
    half = thresholds.hysteresis_w / 2.0
    a, r = thresholds.absorb_above_w, thresholds.reduce_below_w
    state: Level = previous
    out: list[Level] = []
    for p10, _p50, p90 in surplus:
        if state == "absorb":
            if p10 < a - half:
                state = "reduce" if p90 < r - half else "neutral"
        elif state == "reduce":
            if p90 > r + half:
                state = "absorb" if p10 > a + half else "neutral"
        else:
            if p10 > a + half:
                state = "absorb"
            elif p90 < r - half:
                state = "reduce"
        out.append(state)
    return out


def forecast_problems(
    forecasts: Mapping[str, Forecast], targets: Iterable[str], now: datetime, max_age_s: float
) -> list[str]:
    """Why the forecasts cannot be used now (empty list: they can)."""
    reasons: list[str] = []
    for t in targets:
        f = forecasts.get(t)
        if f is None:
            reasons.append(f"missing {t} forecast")
            continue
        if f.kind == "empty" or not f.points:
            reasons.append(f"{t} forecast is empty" + (f" ({f.reason})" if f.reason else ""))
            continue
        age = (now - f.generated_at).total_seconds()
        if age > max_age_s:
            reasons.append(
                f"stale {t} forecast: generated {iso_utc(f.generated_at)}, {age / 3600:.1f} h ago"
                f" (limit {max_age_s / 3600:g} h)"
            )
        elif now - f.generated_at < -MAX_FUTURE_SKEW:
            reasons.append(f"{t} forecast generated in the future ({iso_utc(f.generated_at)}): check the clock")
        if f.unit != "W":
            reasons.append(f"{t} forecast is in {f.unit!r}, expected W")
    return reasons


@dataclass(frozen=True, slots=True)
class FlexInterval:
    start: datetime
    end: datetime
    level: Level
    surplus: Q | None  # None when there is no usable forecast
    upward_w: float | None
    downward_w: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "level": self.level,
            "surplus_w": None
            if self.surplus is None
            else {"p10": _r(self.surplus[0]), "p50": _r(self.surplus[1]), "p90": _r(self.surplus[2])},
            "upward_w": None if self.upward_w is None else _r(self.upward_w),
            "downward_w": None if self.downward_w is None else _r(self.downward_w),
        }


@dataclass(frozen=True, slots=True)
class FlexSignal:
    """One computed signal: intervals, the forecasts it came from, the plan (if any), and why not."""

    site: str
    generated_at: datetime
    resolution_s: int
    intervals: tuple[FlexInterval, ...]
    reason: str = ""
    forecast: dict[str, dict[str, Any]] = field(default_factory=dict)
    quantile_combination: str = "comonotonic"
    plan: dict[str, Any] | None = None

    @property
    def usable(self) -> bool:
        """True when the signal rests on current forecasts (not a neutral fallback)."""
        return not self.reason

    def to_payload(self) -> dict[str, Any]:
        """The contract's JSON for `gia/{site}/flex/signal` and GET /api/v1/flexibility."""
        return {
            "site": self.site,
            "generated_at": iso_utc(self.generated_at),
            "resolution_s": self.resolution_s,
            "unit": "W",
            "status": "ok" if self.usable else "neutral",
            "reason": self.reason,
            "quantile_combination": self.quantile_combination,
            "forecast": self.forecast,
            "intervals": [iv.to_json() for iv in self.intervals],
            "plan": self.plan,
        }


def forecast_info(forecasts: Mapping[str, Forecast], targets: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Which forecast each target came from (so a consumer can tell a model from a fallback)."""
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        f = forecasts.get(t)
        if f is not None:
            out[t] = {
                "generated_at": iso_utc(f.generated_at),
                "kind": f.kind,
                "method": f.method,
                "reason": f.reason,
                "resolution_s": f.resolution_s,
            }
    return out


def neutral_signal(
    config: FlexibilityConfig, *, site: str, now: datetime, reason: str, forecast: dict[str, dict[str, Any]]
) -> FlexSignal:
    """All intervals neutral, no surplus, no flexibility figures, no plan: nothing old shown as current."""
    start = floor_time(now, config.resolution_s)
    n = config.horizon_h * 3600 // config.resolution_s
    step = timedelta(seconds=config.resolution_s)
    ivs = tuple(FlexInterval(s, s + step, "neutral", None, None, None) for s in grid(start, config.resolution_s, n))
    return FlexSignal(
        site=site,
        generated_at=now,
        resolution_s=config.resolution_s,
        intervals=ivs,
        reason=reason,
        forecast=forecast,
        quantile_combination=config.quantile_combination,
        plan=None,
    )


def _r(x: float) -> float:
    return round(x, 1)
