"""Baselines: what every model is compared with, and what is published when no model can be trusted.

The naive forecasts a user judges a model by, all origin-aligned like the features (they never look
ahead either) and in local wall-clock time across DST:

* `last_value`: the last measured value, held flat;
* `persistence`: the same time on the most recent local day complete at the origin ("same hour
  yesterday" for a day-ahead forecast);
* `same_hour_last_week`: the same local time seven days earlier;
* `same_hour_mean_4w`: the mean of the same local time 7, 14, 21 and 28 days earlier;
* `climatology`: the mean per local time of day over the history given (the training part).

A model is reported against the **best** of them on the same points (`best_naive`), not against one
chosen in advance: for wind, `last_value` beats `persistence`; for load, the weekly ones often do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from forecasting.features import LocalShifts, _take

if TYPE_CHECKING:
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]
    IntArray = NDArray[np.int64]

BaselineName = Literal["last_value", "persistence", "same_hour_last_week", "same_hour_mean_4w", "climatology"]
BASELINES: tuple[BaselineName, ...] = (
    "last_value",
    "persistence",
    "same_hour_last_week",
    "same_hour_mean_4w",
    "climatology",
)


def climatology_table(y: FloatArray, index: pd.DatetimeIndex, timezone: str) -> dict[int, float]:
    """Mean value per local time-of-day slot (minutes after midnight) over the given history."""
    local = index[: len(y)].tz_convert(timezone)
    slot = local.hour * 60 + local.minute
    s = pd.Series(y[: len(index)], index=slot).dropna()
    means = s.groupby(level=0).mean()
    return {int(k): float(v) for k, v in zip(means.index.to_numpy(), means.to_numpy(), strict=True)}


def baseline_values(
    name: BaselineName,
    y: FloatArray,
    index: pd.DatetimeIndex,
    origins: IntArray,
    steps: IntArray,
    *,
    steps_per_day: int,
    timezone: str,
    climatology: dict[int, float] | None = None,
    shifts: LocalShifts | None = None,
) -> FloatArray:
    """Point forecast of one baseline for (origin, step) pairs; NaN where the history has no value."""
    origins = np.asarray(origins, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.int64)
    j = origins + steps - 1
    sh = shifts or LocalShifts(index, timezone, 86400 // steps_per_day)
    if name == "persistence":
        return _take(y, sh.back(j, sh.days_back(origins, steps)), origins)
    if name == "same_hour_last_week":
        return _take(y, sh.back(j, 7), origins)
    if name == "same_hour_mean_4w":
        weeks = np.vstack([_take(y, sh.back(j, 7 * w), origins) for w in (1, 2, 3, 4)])
        counts = np.isfinite(weeks).sum(axis=0)
        total = np.nansum(weeks, axis=0)
        out: FloatArray = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
        return out
    if name == "last_value":
        return _take(y, origins - 1, origins)
    table = climatology or {}
    local = index[j].tz_convert(timezone)
    slots = local.hour * 60 + local.minute
    return np.array([table.get(int(s), np.nan) for s in slots], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class BaselineChoice:
    """The baseline that did best on recent history, with its residual quantiles for P10/P90.

    `q_low == q_high == 0` (a zero-width band) means the history was too short to estimate errors:
    such a forecast has no interval, and its coverage is not reported as 1.0 or anything else.
    """

    name: BaselineName
    mae: float
    q_low: float
    q_high: float


def choose_baseline(
    y: FloatArray,
    index: pd.DatetimeIndex,
    *,
    steps_per_day: int,
    horizon_steps: int,
    timezone: str,
    candidates: tuple[BaselineName, ...] = BASELINES,
    first_step: int = 1,
) -> BaselineChoice:
    """Evaluate each baseline on the history `y` (origins each quarter day) and keep the lowest MAE.

    Only `y` is looked at, so a backtest passes its training part and never the test part. Steps
    `first_step..horizon_steps` are scored (a noon-issued day-ahead forecast is judged on 13..36).
    With too little history to evaluate anything, `last_value` with no interval is returned.
    """
    n = len(y)
    first = steps_per_day  # at least one day before the first evaluated origin
    origins = np.arange(first, max(first, n - 1), max(1, steps_per_day // 4), dtype=np.int64)
    best: BaselineChoice | None = None
    if len(origins):
        k = np.arange(first_step, horizon_steps + 1, dtype=np.int64)
        oo, kk = np.repeat(origins, len(k)), np.tile(k, len(origins))
        keep = oo + kk - 1 < n
        oo, kk = oo[keep], kk[keep]
        actual = y[oo + kk - 1]
        clim = climatology_table(y, index, timezone)
        shifts = LocalShifts(index, timezone, 86400 // steps_per_day)
        for name in candidates:
            pred = baseline_values(
                name, y, index, oo, kk, steps_per_day=steps_per_day, timezone=timezone, climatology=clim, shifts=shifts
            )
            ok = np.isfinite(pred) & np.isfinite(actual)
            if ok.sum() < max(24, horizon_steps):
                continue
            res = actual[ok] - pred[ok]
            mae = float(np.mean(np.abs(res)))
            if best is None or mae < best.mae:
                best = BaselineChoice(name, mae, float(np.quantile(res, 0.1)), float(np.quantile(res, 0.9)))
    return best or BaselineChoice("last_value", float("nan"), 0.0, 0.0)
