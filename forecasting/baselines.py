"""Baselines: what every model is compared with, and what is published when no model can be trusted.

All baselines use the same origin-aligned positions as the features, so they never look ahead either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from forecasting.features import _take

if TYPE_CHECKING:
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]
    IntArray = NDArray[np.int64]

BaselineName = Literal["persistence", "same_hour_last_week", "climatology", "last_value"]
BASELINES: tuple[BaselineName, ...] = ("persistence", "same_hour_last_week", "climatology", "last_value")


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
) -> FloatArray:
    """Point forecast of one baseline for (origin, step) pairs; NaN where the history has no value."""
    j = origins + steps - 1
    if name == "persistence":
        days_back = np.maximum(1, -(-steps // steps_per_day))
        return _take(y, j - steps_per_day * days_back, origins)
    if name == "same_hour_last_week":
        return _take(y, j - 7 * steps_per_day, origins)
    if name == "last_value":
        return _take(y, origins - 1, origins)
    table = climatology or {}
    local = index[j].tz_convert(timezone)
    slots = local.hour * 60 + local.minute
    return np.array([table.get(int(s), np.nan) for s in slots], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class BaselineChoice:
    """The baseline that did best on recent history, with its residual quantiles for P10/P90."""

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
) -> BaselineChoice:
    """Evaluate each baseline on the history (origins each day) and keep the one with the lowest MAE.

    With too little history to evaluate anything, `last_value` with no interval is returned.
    """
    n = len(y)
    first = steps_per_day  # at least one day before the first evaluated origin
    origins = np.arange(first, max(first, n - 1), max(1, steps_per_day // 4), dtype=np.int64)
    best: BaselineChoice | None = None
    if len(origins):
        k = np.arange(1, horizon_steps + 1, dtype=np.int64)
        oo, kk = np.repeat(origins, len(k)), np.tile(k, len(origins))
        keep = oo + kk - 1 < n
        oo, kk = oo[keep], kk[keep]
        actual = y[oo + kk - 1]
        clim = climatology_table(y, index, timezone)
        for name in candidates:
            pred = baseline_values(
                name, y, index, oo, kk, steps_per_day=steps_per_day, timezone=timezone, climatology=clim
            )
            ok = np.isfinite(pred) & np.isfinite(actual)
            if ok.sum() < max(24, horizon_steps):
                continue
            res = actual[ok] - pred[ok]
            mae = float(np.mean(np.abs(res)))
            if best is None or mae < best.mae:
                best = BaselineChoice(name, mae, float(np.quantile(res, 0.1)), float(np.quantile(res, 0.9)))
    return best or BaselineChoice("last_value", float("nan"), 0.0, 0.0)
