"""Backtesting and accuracy: how good a forecast is, always next to the naive forecasts it must beat.

Protocol (the same for the CLI and the benchmarks): the last `test_fraction` of the rows is the test set;
the model is trained once on everything before it; forecasts are issued from every local midnight in the
test set for `horizon` steps, each from history strictly before its origin (the feature builders enforce
it); P50 is scored by MAE and nMAE (÷ mean load, or ÷ capacity for wind/PV), the quantiles by pinball
loss and P10-P90 coverage. Baselines scored on exactly the same points: persistence (same time on the
latest complete day), same hour last week, and climatology (mean per time of day over the training part).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from forecasting.baselines import BASELINES, baseline_values, climatology_table
from forecasting.features import FeatureSpec, origin_step_grid, to_grid
from forecasting.physics import PowerCurve
from forecasting.pipelines import QUANTILES, TrainedModel, fit_model
from forecasting.types import Forecast

if TYPE_CHECKING:
    from numpy.typing import NDArray

Progress = Callable[[str], None]


@dataclass(slots=True)
class BacktestResult:
    target: str
    method: str  # "model" or the baseline used when the history was too short to train
    note: str
    resolution_s: int
    horizon_steps: int
    origins: int
    points: int
    normaliser: float
    mae: float
    nmae: float
    pinball: float
    coverage: float
    baselines: dict[str, dict[str, float]]
    fit_s: float
    predict_s: float
    weather_columns: tuple[str, ...]
    ts: list[datetime] = field(default_factory=list)
    actual: list[float] = field(default_factory=list)
    p10: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p90: list[float] = field(default_factory=list)
    model: TrainedModel | None = None
    origin_positions: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def skill(self, baseline: str = "persistence") -> float:
        b = self.baselines.get(baseline, {}).get("mae", float("nan"))
        return 1.0 - self.mae / b if b and np.isfinite(b) else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "method": self.method,
            "note": self.note,
            "nmae": self.nmae,
            "mae": self.mae,
            "pinball": self.pinball,
            "coverage_p10_p90": self.coverage,
            "skill_vs_persistence": self.skill("persistence"),
            "normaliser": self.normaliser,
            "origins": self.origins,
            "points": self.points,
            "horizon_steps": self.horizon_steps,
            "resolution_s": self.resolution_s,
            "weather_columns": list(self.weather_columns),
            "fit_s": self.fit_s,
            "predict_s": self.predict_s,
            "baselines": self.baselines,
        }


def pinball(actual: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """Mean pinball loss over P10/P50/P90."""
    losses = []
    for i, tau in enumerate(QUANTILES):
        d = actual - q[:, i]
        losses.append(np.mean(np.maximum(tau * d, (tau - 1) * d)))
    return float(np.mean(losses))


def midnight_origins(index: pd.DatetimeIndex, first: int, last: int, timezone: str, hour: int = 0) -> NDArray[np.int64]:
    local = index.tz_convert(timezone)
    pos = np.arange(first, last, dtype=np.int64)
    sel = (local.hour[first:last] == hour) & (local.minute[first:last] == 0)
    out: NDArray[np.int64] = pos[np.asarray(sel)]
    return out


def run_backtest(
    values: pd.Series,
    *,
    target: str,
    weather: pd.DataFrame | None = None,
    resolution_s: int = 3600,
    horizon_steps: int = 24,
    test_fraction: float = 0.2,
    timezone: str = "UTC",
    holidays_country: str | None = "LV",
    holidays_subdiv: str | None = None,
    capacity: float | None = None,
    power_curve: PowerCurve | None = None,
    cut_out_ms: float = 25.0,
    exclude: pd.Series | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
    max_iter: int = 300,
    coverage: float = 0.8,
    min_train_days: float = 28,
    progress: Progress | None = None,
) -> BacktestResult:
    """Train on the first (1 - test_fraction) of rows, forecast from each midnight of the rest."""
    say = progress or (lambda _msg: None)
    y = to_grid(values, resolution_s)
    index_h = pd.DatetimeIndex(y.index)
    n = len(y)
    spd = 86400 // resolution_s
    test_start = int(n * (1 - test_fraction))
    index = pd.date_range(index_h[0], periods=n + horizon_steps, freq=f"{resolution_s}s")
    yv = y.to_numpy(dtype=np.float64)
    wf: pd.DataFrame | None = None
    wcols: tuple[str, ...] = ()
    if weather is not None and not weather.empty:
        wf = weather.apply(pd.to_numeric, errors="coerce")
        wf = wf.resample(f"{resolution_s}s").mean().reindex(index).interpolate(limit=3, limit_area="inside")
        wanted = {
            "load": ("temperature_c",),
            "wind": ("wind_speed_ms", "wind_direction_deg"),
            "pv": ("ghi_wm2", "cloud_cover_pct", "temperature_c"),
        }.get(target, ())
        wcols = tuple(c for c in wanted if c in wf and wf[c].iloc[:test_start].notna().mean() >= 0.8)
    if capacity is None and target in ("wind", "pv"):
        capacity = float(np.nanmax(yv[:test_start]))
    if target == "wind" and power_curve is None and wf is not None and "wind_speed_ms" in wcols:
        assert capacity is not None
        power_curve = PowerCurve.empirical(
            wf["wind_speed_ms"].to_numpy()[:test_start], yv[:test_start], capacity=capacity, cut_out_ms=cut_out_ms
        )
    spec = FeatureSpec(
        target=target,
        resolution_s=resolution_s,
        horizon_steps=horizon_steps,
        timezone=timezone,
        holidays_country=holidays_country,
        holidays_subdiv=holidays_subdiv,
        weather_columns=wcols,
        capacity=capacity,
        power_curve=power_curve if "wind_speed_ms" in wcols else None,
        latitude=latitude,
        longitude=longitude,
    )
    origins = midnight_origins(index_h, test_start, n - horizon_steps + 1, timezone)  # full horizons only
    if len(origins) == 0:  # very short test sets: use every step as an origin
        origins = np.arange(max(test_start, 1), n, dtype=np.int64)
    oo, kk = origin_step_grid(origins, horizon_steps)
    keep = oo + kk - 1 < n
    oo, kk = oo[keep], kk[keep]
    actual = yv[oo + kk - 1]
    ok = np.isfinite(actual)
    oo, kk, actual = oo[ok], kk[ok], actual[ok]
    if len(actual) == 0:
        raise ValueError("no measured values in the test part; give a longer CSV or a larger --test-fraction")

    train_days = float(np.isfinite(yv[:test_start]).sum()) * resolution_s / 86400
    clim = climatology_table(yv[:test_start], index_h[:test_start], timezone)
    base_preds: dict[str, NDArray[np.float64]] = {}
    for name in BASELINES:
        base_preds[name] = baseline_values(
            name, yv, index, oo, kk, steps_per_day=spd, timezone=timezone, climatology=clim
        )
    if target == "load":
        norm = float(np.mean(np.abs(actual)))
    else:
        norm = float(capacity) if capacity else float(np.mean(np.abs(actual)))
    norm = norm or 1.0

    fit_s = predict_s = 0.0
    method: str = "model"
    note = ""
    q: NDArray[np.float64]
    model: TrainedModel | None = None
    if train_days >= min_train_days:
        say(f"training on {train_days:.0f} days ({', '.join(wcols) or 'no weather'})")
        ex = None
        if exclude is not None:
            ex = exclude.reindex(index_h).fillna(False).to_numpy(dtype=bool)[:test_start]
        t0 = time.perf_counter()
        model = fit_model(
            yv[:test_start],
            index,
            spec,
            weather=wf if wcols else None,
            exclude=ex,
            max_iter=max_iter,
            coverage=coverage,
        )
        fit_s = time.perf_counter() - t0
        say(f"forecasting from {len(origins)} origins")
        t0 = time.perf_counter()
        q = model.predict(yv, index, oo, kk, weather=wf if wcols else None)
        predict_s = (time.perf_counter() - t0) / max(1, len(origins))
    else:
        # too short to train: score the best baseline (chosen on the training part), labelled as such
        scores = {}
        for bname, pred in base_preds.items():
            train_like = np.isfinite(pred)
            scores[bname] = np.nanmean(np.abs(pred - actual)) if train_like.any() else np.inf
        best = min(scores, key=lambda k: scores[k])
        method, note = best, f"history too short to train ({train_days:.1f} days): best baseline scored"
        p = base_preds[best]
        p = np.where(np.isfinite(p), p, np.nanmean(yv[:test_start]))
        q = np.column_stack([p, p, p])
    mae = float(np.mean(np.abs(q[:, 1] - actual)))
    baselines: dict[str, dict[str, float]] = {}
    for name in ("persistence", "same_hour_last_week", "climatology"):
        pred = base_preds[name]
        valid = np.isfinite(pred)
        b_mae = float(np.mean(np.abs(pred[valid] - actual[valid]))) if valid.any() else float("nan")
        baselines[name] = {"mae": b_mae, "nmae": b_mae / norm, "coverage": float(valid.mean())}
    return BacktestResult(
        target=target,
        method=method,
        note=note,
        resolution_s=resolution_s,
        horizon_steps=horizon_steps,
        origins=len(np.unique(oo)),
        points=len(actual),
        normaliser=norm,
        mae=mae,
        nmae=mae / norm,
        pinball=pinball(actual, q) / norm,
        coverage=float(np.mean((actual >= q[:, 0]) & (actual <= q[:, 2]))),
        baselines=baselines,
        fit_s=fit_s,
        predict_s=predict_s,
        weather_columns=wcols,
        ts=[t.to_pydatetime() for t in index[oo + kk - 1]],
        actual=actual.tolist(),
        p10=q[:, 0].tolist(),
        p50=q[:, 1].tolist(),
        p90=q[:, 2].tolist(),
        model=model,
        origin_positions=oo.tolist(),
        steps=kk.tolist(),
    )


def parse_horizon(text: str) -> timedelta:
    """'24h', '48h', '90m', '1d' -> timedelta (at most 48 h)."""
    t = text.strip().lower()
    units = {"h": 3600, "m": 60, "d": 86400}
    if not t or t[-1] not in units or not t[:-1].replace(".", "", 1).isdigit():
        raise ValueError(f"bad horizon {text!r}; use e.g. 24h, 48h, 90m")
    seconds = float(t[:-1]) * units[t[-1]]
    if not 0 < seconds <= 48 * 3600:
        raise ValueError("horizon must be between 1 step and 48h")
    return timedelta(seconds=seconds)


# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Accuracy:
    """Rolling accuracy of past forecasts of one target."""

    points: int
    mae: float
    nmae: float
    persistence_mae: float
    skill_vs_persistence: float
    coverage: float


def rolling_accuracy(
    forecasts: Sequence[Forecast],
    actuals: Sequence[tuple[datetime, float]],
    *,
    now: datetime,
    window: timedelta = timedelta(days=7),
    normaliser: float | None = None,
) -> Accuracy:
    """Score past forecasts whose points fall in [now - window, now) against the actuals (pure function).

    Persistence is scored on the same points, origin-aligned (the same time on the latest day complete
    when the forecast was generated), so skill = 1 - MAE / MAE_persistence compares like with like.
    `normaliser`: capacity for wind/PV; default the mean absolute actual (load).
    """
    act = {
        pd.Timestamp(t).tz_convert("UTC") if pd.Timestamp(t).tz else pd.Timestamp(t).tz_localize("UTC"): v
        for t, v in actuals
    }
    lo, hi = pd.Timestamp(now) - pd.Timedelta(window), pd.Timestamp(now)
    lo = lo.tz_localize("UTC") if lo.tz is None else lo
    hi = hi.tz_localize("UTC") if hi.tz is None else hi
    err, perr, inside, seen = [], [], [], []
    for fc in forecasts:
        gen = pd.Timestamp(fc.generated_at)
        res = pd.Timedelta(seconds=fc.resolution_s)
        for p in fc.points:
            ts = pd.Timestamp(p.ts)
            if not lo <= ts < hi or ts not in act:
                continue
            a = act[ts]
            err.append(abs(p.p50 - a))
            inside.append(p.p10 <= a <= p.p90)
            seen.append(abs(a))
            lead = ts + res - gen.floor(res)
            days_back = max(1, int(np.ceil(lead / pd.Timedelta(days=1))))
            ref = act.get(ts - pd.Timedelta(days=days_back))
            if ref is not None:
                perr.append(abs(ref - a))
    if not err:
        nan = float("nan")
        return Accuracy(0, nan, nan, nan, nan, nan)
    mae = float(np.mean(err))
    norm = normaliser if normaliser else float(np.mean(seen)) or 1.0
    pmae = float(np.mean(perr)) if perr else float("nan")
    skill = 1.0 - mae / pmae if perr and pmae > 0 else float("nan")
    return Accuracy(len(err), mae, mae / norm, pmae, skill, float(np.mean(inside)))
