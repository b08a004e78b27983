"""Bands recalibrated on the forecasts' own recent errors: P10-P90 that cover ~80 % this season too.

Why: the model's bands are calibrated once, at training, on holdout weeks spread over the history
(`pipelines.holdout_split`). Errors are seasonal, so a band right for the year is too wide in a calm
season and too narrow in a stormy one: on Victoria demand the test winter was covered 87 % (target
75-85 %) by bands that covered 77-81 % on the validation summer. One season's calibration does not
carry to another.

What: before a forecast is issued, the errors of the forecasts already issued whose hours have passed
(known at issue time, so nothing is looked up from the future) give a *scale* for the band: for each
such point the factor by which its band, around its P50, would have had to be stretched (or could have
been shrunk) to just contain the actual value; the scale is that factor's 80th percentile over the last
`RECENT_DAYS` days. The new band is P50 +- scale x (the model's half-widths), so the band keeps its
shape (narrow in calm hours, wide in volatile ones) and only its overall width follows the season.
This is split-conformal calibration on a rolling window of the most recent errors (the "recent
residuals" flavour of adaptive conformal inference).

The window and the level were set before looking at any test window: 28 days (four weeks of every
weekday), at least 7 days of points before the scale is used (else 1: the trained bands as they are).
The agent (`gateway/forecasts`) and the backtest (`forecasting.backtest`) use the same functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

RECENT_DAYS: Final = 28
MIN_DAYS: Final = 7
LEVEL: Final = 0.8
#: a scale never goes beyond these: a broken meter's week must not blow the band up or collapse it
SCALE_BOUNDS: Final = (0.25, 4.0)


def needed_scales(q: NDArray[np.float64], actual: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per point, the band scale that would have just contained `actual` (NaN where it says nothing:
    no actual, or a band of zero width on the side the actual fell)."""
    p10, p50, p90 = q[:, 0], q[:, 1], q[:, 2]
    below, above = p50 - p10, p90 - p50
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(actual >= p50, (actual - p50) / above, (p50 - actual) / below)
    s = np.where(np.isfinite(s) & np.isfinite(actual), s, np.nan)
    return s


def scale_from(scales: NDArray[np.float64], points_per_day: float) -> float:
    """The band scale from recent points' needed scales: their `LEVEL` quantile, 1 when too few."""
    finite = scales[np.isfinite(scales)]
    if len(finite) < MIN_DAYS * points_per_day:
        return 1.0
    lo, hi = SCALE_BOUNDS
    return float(np.clip(np.quantile(finite, LEVEL), lo, hi))


def rescale(
    q: NDArray[np.float64], scale: float | NDArray[np.float64], lower: float | None, upper: float | None
) -> NDArray[np.float64]:
    """P50 +- scale x half-widths, kept within the target's physical bounds and in order."""
    s = np.asarray(scale, dtype=np.float64)
    p50 = q[:, 1]
    out = np.column_stack([p50 - s * (p50 - q[:, 0]), p50, p50 + s * (q[:, 2] - p50)])
    if lower is not None or upper is not None:
        out = np.clip(out, lower, upper)
    return np.sort(out, axis=1)


def rolling_scales(
    issue_ms: NDArray[np.int64],
    target_ms: NDArray[np.int64],
    needed: NDArray[np.float64],
    *,
    points_per_day: float,
) -> NDArray[np.float64]:
    """For each point, the scale known when its forecast was issued: from the points of earlier issues
    whose hour had passed by then (target time < issue time), over the last `RECENT_DAYS` days.

    `issue_ms`, `target_ms`: per point; `needed`: `needed_scales` of every point. For backtests, where all
    forecasts are made at once and must be judged as if issued one after another."""
    out = np.ones(len(issue_ms), dtype=np.float64)
    order = np.argsort(target_ms, kind="stable")
    t_sorted, s_sorted = target_ms[order], needed[order]
    window_ms = RECENT_DAYS * 86_400_000
    for issue in np.unique(issue_ms):
        hi = int(np.searchsorted(t_sorted, issue, side="left"))  # targets strictly before the issue
        lo = int(np.searchsorted(t_sorted, issue - window_ms, side="left"))
        out[issue_ms == issue] = scale_from(s_sorted[lo:hi], points_per_day)
    return out
