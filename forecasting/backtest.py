"""Backtesting and accuracy: how good a forecast is, always next to the naive forecasts it must beat.

Protocol (the same for the CLI and the benchmarks): the last `test_fraction` of the rows is the test set;
the model is trained once on everything before it; forecasts are issued at a local time of day
(`issued_at`, default 00:00) from every such time in the test set, each from history strictly before
its origin (the feature builders enforce it), and scored on the `horizon` steps that begin at the first
local midnight at or after the issue: issued at 00:00, steps 1-24 (the day it starts); issued at 12:00
the next day, steps 13-36 — a day-ahead market's protocol, where the bid for tomorrow closes around noon.

Scores: P50 by MAE and nMAE (÷ mean load, or ÷ capacity for wind/PV), the quantiles by pinball loss and
P10–P90 coverage (a zero-width band has no coverage: reported as null, never 1.0). Every naive baseline
(`baselines.BASELINES`) is scored on exactly the same points as the model, and the model's skill is
against the **best** of them (`best_naive`); errors are also broken down by lead time (`by_lead`).

The weather in a CSV is whatever the file holds at the target hour: observed weather makes any model
look better than it will be with a forecast. So every result states its `weather_kind` — `observed`,
`reanalysis`, `forecast`, `perturbed(σ, ρ)` (observed plus AR(1) noise standing in for a forecast's
error), or `none`.

`split="validation"` scores the window just before the test window instead (same length), training on
what precedes it: choices (hyper-parameters, features) are made there, never on the test window.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from forecasting.baselines import BASELINES, baseline_values, choose_baseline, climatology_table
from forecasting.features import FeatureSpec, LocalShifts, to_grid
from forecasting.physics import PowerCurve
from forecasting.pipelines import QUANTILES, TrainedModel, fit_model
from forecasting.recalibrate import needed_scales, rescale, rolling_scales
from forecasting.types import Forecast

if TYPE_CHECKING:
    from numpy.typing import NDArray

Progress = Callable[[str], None]
Split = Literal["test", "validation"]

#: weather the features use, per target (the same choice as the service's)
BACKTEST_WEATHER: dict[str, tuple[str, ...]] = {
    "load": ("temperature_c",),
    "wind": ("wind_speed_ms", "wind_direction_deg"),
    "pv": ("ghi_wm2", "cloud_cover_pct", "temperature_c"),
}
#: width of the lead-time buckets in `by_lead`, hours
LEAD_BUCKET_H = 6
_KIND = re.compile(r"^(observed|reanalysis|forecast|none|perturbed\(\s*([0-9.]+)\s*,\s*([0-9.]+)\s*\))$")


def parse_weather_kind(text: str) -> str:
    """'observed', 'reanalysis', 'forecast', 'none' or 'perturbed(σ, ρ)' in canonical form; ValueError else."""
    m = _KIND.match(text.strip().replace("σ", "").replace("ρ", ""))
    if m is None:
        raise ValueError(f"bad weather kind {text!r}; use observed, reanalysis, forecast or perturbed(SIGMA, RHO)")
    if m.group(2) is not None:
        return perturbed_kind(float(m.group(2)), float(m.group(3)))
    return m.group(1)


def perturbed_kind(sigma: float, rho: float) -> str:
    return f"perturbed({sigma:g}, {rho:g})"


def ar1_noise(n: int, *, sigma: float, rho: float, seed: int) -> NDArray[np.float64]:
    """Autocorrelated noise (AR(1), stationary std `sigma`): a forecast's errors persist for hours."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, sigma * np.sqrt(1 - rho**2), n)
    out = np.empty(n)
    out[0] = rng.normal(0.0, sigma)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + e[i]
    return out


def parse_issued_at(text: str) -> tuple[int, int]:
    """'HH:MM' -> (hour, minute); ValueError with the fix otherwise."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if m is None or not (0 <= int(m.group(1)) <= 23 and 0 <= int(m.group(2)) <= 59):
        raise ValueError(f"bad --issued-at {text!r}; use local time HH:MM, e.g. 00:00 or 12:00")
    return int(m.group(1)), int(m.group(2))


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
    coverage: float  # NaN when there is no band (zero width)
    baselines: dict[str, dict[str, float]]
    best_naive: dict[str, Any]
    by_lead: list[dict[str, Any]]
    fit_s: float
    predict_s: float
    weather_columns: tuple[str, ...]
    weather_kind: str
    issued_at: str
    first_step: int
    last_step: int
    split: str
    train_end: int  # grid position where the scored part starts (the training part is before it)
    train_window: tuple[str, str]
    scored_window: tuple[str, str]
    ts: list[datetime] = field(default_factory=list)
    actual: list[float] = field(default_factory=list)
    p10: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p90: list[float] = field(default_factory=list)
    model: TrainedModel | None = None
    origin_positions: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    baseline_p50: dict[str, list[float]] = field(default_factory=dict)

    def skill(self, baseline: str = "persistence") -> float:
        b = self.best_naive if baseline == "best_naive" else self.baselines.get(baseline, {})
        mae = float(b.get("mae", float("nan")))
        return 1.0 - self.mae / mae if mae and np.isfinite(mae) else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "method": self.method,
            "note": self.note,
            "weather_kind": self.weather_kind,
            "weather_columns": list(self.weather_columns),
            "issued_at": self.issued_at,
            "steps": [self.first_step, self.last_step],
            "split": self.split,
            "train_window": list(self.train_window),
            "scored_window": list(self.scored_window),
            "nmae": self.nmae,
            "mae": self.mae,
            "pinball": self.pinball,
            "coverage_p10_p90": self.coverage,
            "skill_vs_best_naive": self.skill("best_naive"),
            "skill_vs_persistence": self.skill("persistence"),
            "normaliser": self.normaliser,
            "origins": self.origins,
            "points": self.points,
            "horizon_steps": self.horizon_steps,
            "resolution_s": self.resolution_s,
            "fit_s": self.fit_s,
            "predict_s": self.predict_s,
            "baselines": {**self.baselines, "best_naive": self.best_naive},
            "by_lead": self.by_lead,
        }


def pinball(actual: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """Mean pinball loss over P10/P50/P90."""
    losses = []
    for i, tau in enumerate(QUANTILES):
        d = actual - q[:, i]
        losses.append(np.mean(np.maximum(tau * d, (tau - 1) * d)))
    return float(np.mean(losses))


def band_coverage(actual: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]) -> float:
    """Share of actuals inside [lo, hi], over the points that have a band (NaN when none has one)."""
    has = hi > lo
    if not has.any():
        return float("nan")
    return float(np.mean((actual[has] >= lo[has]) & (actual[has] <= hi[has])))


def common_points(
    ok: NDArray[np.bool_], preds: dict[str, NDArray[np.float64]], *, min_share: float = 0.9
) -> tuple[NDArray[np.bool_], list[str]]:
    """(points every usable method is scored on, usable baselines).

    A baseline is usable when it has a value on at least `min_share` of the points the model has (a
    short history has no value from four weeks ago; it is then reported as null, not scored on fewer
    points); the points kept are those where the model and every usable baseline have a value.
    """
    usable = [name for name, p in preds.items() if ok.any() and np.isfinite(p[ok]).mean() >= min_share]
    if not usable and preds:  # keep the baseline with the most values rather than none
        usable = [max(preds, key=lambda n: int(np.isfinite(preds[n][ok]).sum()))]
    out = ok.copy()
    for name in usable:
        out &= np.isfinite(preds[name])
    return out, usable


def issue_origins(
    index: pd.DatetimeIndex, first: int, last: int, timezone: str, hour: int = 0, minute: int = 0
) -> NDArray[np.int64]:
    """Positions in [first, last) whose local time is hour:minute."""
    local = index.tz_convert(timezone)
    pos = np.arange(first, last, dtype=np.int64)
    sel = (local.hour[first:last] == hour) & (local.minute[first:last] == minute)
    out: NDArray[np.int64] = pos[np.asarray(sel)]
    return out


def _first_steps(index: pd.DatetimeIndex, origins: NDArray[np.int64], timezone: str) -> NDArray[np.int64]:
    """Per origin, the step whose interval starts at the first local midnight at or after the origin."""
    local = index.tz_convert(timezone)
    day_start = local.normalize()
    out = np.empty(len(origins), dtype=np.int64)
    res = index[1] - index[0] if len(index) > 1 else pd.Timedelta(hours=1)
    for i, o in enumerate(origins):
        t = local[o]
        midnight = day_start[o] if t == day_start[o] else (t + pd.Timedelta(days=1)).normalize()
        out[i] = int((midnight.tz_convert("UTC") - index[o].tz_convert("UTC")) / res) + 1
    return out


def run_backtest(
    values: pd.Series,
    *,
    target: str,
    weather: pd.DataFrame | None = None,
    weather_kind: str = "observed",
    issued_at: str = "00:00",
    resolution_s: int = 3600,
    horizon_steps: int = 24,
    test_fraction: float = 0.2,
    split: Split = "test",
    timezone: str = "UTC",
    holidays_country: str | None = "LV",
    holidays_subdiv: str | None = None,
    capacity: float | None = None,
    power_curve: PowerCurve | None = None,
    cut_out_ms: float = 25.0,
    exclude: pd.Series | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
    tilt_deg: float | None = None,
    azimuth_deg: float | None = None,
    max_iter: int = 300,
    coverage: float = 0.8,
    min_train_days: float = 28,
    model: TrainedModel | None = None,
    model_horizon_steps: int | None = None,
    max_rows: int = 60_000,
    progress: Progress | None = None,
    recalibrate: bool = True,
) -> BacktestResult:
    """Train on the rows before the scored window, forecast from each issue time in it (module docstring).

    `recalibrate`: scale each issue's band by the errors of the hours already past at that issue
    (`forecasting.recalibrate`, as the agent does); False scores the trained bands as they are.

    `model`: a model trained before on the same split (a benchmark scoring two protocols trains once);
    it is used when it covers the steps needed, else a new one is trained, for `model_horizon_steps`
    steps (default: the last step scored; the agent's models cover 48 h).
    """
    say = progress or (lambda _msg: None)
    hh, mm = parse_issued_at(issued_at)
    y = to_grid(values, resolution_s)
    if split == "validation":  # the window before the test window, as long as it; the test part is dropped
        y = y.iloc[: int(len(y) * (1 - test_fraction))]
        test_fraction = test_fraction / (1 - test_fraction)
    index_h = pd.DatetimeIndex(y.index)
    n = len(y)
    spd = 86400 // resolution_s
    test_start = int(n * (1 - test_fraction))
    yv = y.to_numpy(dtype=np.float64)

    origins = issue_origins(index_h, test_start, n, timezone, hh, mm)
    first = _first_steps(index_h, origins, timezone) if len(origins) else np.zeros(0, np.int64)
    full = origins + first - 1 + horizon_steps <= n  # full horizons only
    origins, first = origins[full], first[full]
    if len(origins) == 0:
        raise ValueError(
            f"no issue time {issued_at} with a full {horizon_steps}-step horizon in the scored part;"
            " give a longer CSV or a larger --test-fraction"
        )
    max_step = int(first.max()) + horizon_steps - 1
    index = pd.date_range(index_h[0], periods=n + max_step, freq=f"{resolution_s}s")
    oo = np.repeat(origins, horizon_steps)
    kk = (first[:, None] + np.arange(horizon_steps)[None, :]).ravel().astype(np.int64)

    wf: pd.DataFrame | None = None
    wcols: tuple[str, ...] = ()
    if weather is not None and not weather.empty:
        wf = weather.apply(pd.to_numeric, errors="coerce")
        wf = wf.resample(f"{resolution_s}s").mean().reindex(index).interpolate(limit=3, limit_area="inside")
        wanted = BACKTEST_WEATHER.get(target, ())
        wcols = tuple(c for c in wanted if c in wf and wf[c].iloc[:test_start].notna().mean() >= 0.8)
    kind = weather_kind if wcols else "none"
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
        horizon_steps=max(max_step, model_horizon_steps or 0),
        timezone=timezone,
        holidays_country=holidays_country,
        holidays_subdiv=holidays_subdiv,
        weather_columns=wcols,
        capacity=capacity,
        power_curve=power_curve if "wind_speed_ms" in wcols else None,
        latitude=latitude,
        longitude=longitude,
        tilt_deg=tilt_deg,
        azimuth_deg=azimuth_deg,
    )

    # baselines, on the same (origin, step) pairs; climatology from the training part only
    train_days = float(np.isfinite(yv[:test_start]).sum()) * resolution_s / 86400
    clim = climatology_table(yv[:test_start], index_h[:test_start], timezone)
    shifts = LocalShifts(index, timezone, resolution_s)
    base_preds: dict[str, NDArray[np.float64]] = {
        name: baseline_values(
            name, yv, index, oo, kk, steps_per_day=spd, timezone=timezone, climatology=clim, shifts=shifts
        )
        for name in BASELINES
    }
    actual_all = yv[oo + kk - 1]

    fit_s = predict_s = 0.0
    method: str = "model"
    note = ""
    q: NDArray[np.float64]
    if train_days >= min_train_days:
        if model is None or model.spec.horizon_steps < max_step or model.spec.weather_columns != wcols:
            say(f"training on {train_days:.0f} days ({', '.join(wcols) or 'no weather'}, weather: {kind})")
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
                max_rows=max_rows,
            )
            fit_s = time.perf_counter() - t0
        say(f"forecasting from {len(origins)} origins issued at {issued_at} ({timezone})")
        t0 = time.perf_counter()
        q = model.predict(yv, index, oo, kk, weather=wf if wcols else None)
        predict_s = (time.perf_counter() - t0) / max(1, len(origins))
        if recalibrate:
            # as the agent does: each issue's band scaled by the errors of the hours already past then
            issue_ms = (index[oo].asi8 // 1_000_000).astype(np.int64)
            target_ms = (index[oo + kk - 1].asi8 // 1_000_000).astype(np.int64)
            scales = rolling_scales(
                issue_ms, target_ms, needed_scales(q, actual_all), points_per_day=float(horizon_steps)
            )
            q = rescale(q, scales, model.lower, model.upper)
    else:
        # too short to train: the best baseline *chosen on the training part*, with its residual band
        model = None
        choice = choose_baseline(
            yv[:test_start],
            index_h[:test_start],
            steps_per_day=spd,
            horizon_steps=max_step,
            timezone=timezone,
            first_step=int(first.min()),
        )
        method = choice.name
        note = (
            f"history too short to train ({train_days:.1f} days): baseline {choice.name} (chosen on the training part)"
        )
        p = base_preds[choice.name]
        p = np.where(np.isfinite(p), p, np.nanmean(yv[:test_start]))
        q = np.sort(np.column_stack([p + choice.q_low, p, p + choice.q_high]), axis=1)

    # the same points for every method: measured, and the model and every baseline have a value
    ok, usable = common_points(np.isfinite(actual_all) & np.isfinite(q).all(axis=1), base_preds)
    if not ok.any():
        raise ValueError("no measured values in the test part; give a longer CSV or a larger --test-fraction")
    oo, kk, actual, q = oo[ok], kk[ok], actual_all[ok], q[ok]
    base_ok = {name: pred[ok] for name, pred in base_preds.items() if name in usable}
    if target == "load":
        norm = float(np.mean(np.abs(actual)))
    else:
        norm = float(capacity) if capacity else float(np.mean(np.abs(actual)))
    norm = norm or 1.0

    mae = float(np.mean(np.abs(q[:, 1] - actual)))
    baselines: dict[str, dict[str, float]] = {}
    for name in BASELINES:
        b_mae = float(np.mean(np.abs(base_ok[name] - actual))) if name in base_ok else float("nan")
        baselines[name] = {"mae": b_mae, "nmae": b_mae / norm}
    best = min(base_ok, key=lambda b: baselines[b]["mae"])
    best_naive = {"name": best, **baselines[best]}
    lead_h = np.ceil(kk * resolution_s / 3600).astype(np.int64)
    by_lead = []
    for lo in range(int((lead_h.min() - 1) // LEAD_BUCKET_H * LEAD_BUCKET_H) + 1, int(lead_h.max()) + 1, LEAD_BUCKET_H):
        sel = (lead_h >= lo) & (lead_h < lo + LEAD_BUCKET_H)
        if not sel.any():
            continue
        b_maes = {name: float(np.mean(np.abs(pred[sel] - actual[sel]))) for name, pred in base_ok.items()}
        b_best = min(b_maes, key=lambda b: b_maes[b])
        m = float(np.mean(np.abs(q[sel, 1] - actual[sel])))
        by_lead.append(
            {
                "lead_h": f"{lo}-{lo + LEAD_BUCKET_H - 1}",
                "points": int(sel.sum()),
                "mae": m,
                "nmae": m / norm,
                "coverage_p10_p90": band_coverage(actual[sel], q[sel, 0], q[sel, 2]),
                "best_naive": {"name": b_best, "mae": b_maes[b_best], "nmae": b_maes[b_best] / norm},
            }
        )
    span = index[oo + kk - 1]
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
        coverage=band_coverage(actual, q[:, 0], q[:, 2]),
        baselines=baselines,
        best_naive=best_naive,
        by_lead=by_lead,
        fit_s=fit_s,
        predict_s=predict_s,
        weather_columns=wcols,
        weather_kind=kind,
        issued_at=f"{hh:02d}:{mm:02d}",
        first_step=int(kk.min()),
        last_step=int(kk.max()),
        split=split,
        train_end=test_start,
        train_window=(_iso(index_h[0]), _iso(index_h[test_start - 1])),
        scored_window=(_iso(span.min()), _iso(span.max())),
        ts=[t.to_pydatetime() for t in span],
        actual=actual.tolist(),
        p10=q[:, 0].tolist(),
        p50=q[:, 1].tolist(),
        p90=q[:, 2].tolist(),
        model=model,
        origin_positions=oo.tolist(),
        steps=kk.tolist(),
        baseline_p50={name: pred.tolist() for name, pred in base_ok.items()},
    )


def _iso(t: pd.Timestamp) -> str:
    return str(t.tz_convert("UTC").strftime("%Y-%m-%dT%H:%MZ"))


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
    """Rolling accuracy of past forecasts of one target, next to every naive baseline on the same points."""

    points: int
    mae: float
    nmae: float
    coverage: float  # NaN when no scored forecast had a band
    baselines: dict[str, dict[str, float]]
    best_naive: dict[str, Any]
    window_days: float

    @property
    def skill_vs_best_naive(self) -> float:
        b = float(self.best_naive.get("mae", float("nan")))
        return 1.0 - self.mae / b if b and np.isfinite(b) and self.points else float("nan")

    def to_json(self) -> dict[str, Any]:
        """The `accuracy` object in a published forecast's metadata (NaN as null)."""

        def num(x: float) -> float | None:
            return round(float(x), 6) if np.isfinite(x) else None

        return {
            "window_days": self.window_days,
            "points": self.points,
            "nmae": num(self.nmae),
            "mae": num(self.mae),
            "coverage_p10_p90": num(self.coverage),
            "best_naive": {k: (num(v) if isinstance(v, float) else v) for k, v in self.best_naive.items()},
            "skill_vs_best_naive": num(self.skill_vs_best_naive),
        }


def rolling_accuracy(
    forecasts: Sequence[Forecast],
    actuals: Sequence[tuple[datetime, float]] | pd.Series,
    *,
    now: datetime,
    window: timedelta = timedelta(days=7),
    normaliser: float | None = None,
    timezone: str = "UTC",
) -> Accuracy:
    """Score past forecasts whose points fall in [now - window, now) against the actuals (pure function).

    Every naive baseline is computed as it would have been when each forecast was generated (origin-
    aligned, from the actuals before it) and scored on exactly the model's points; only points where the
    actual and every baseline exist count. Climatology comes from the actuals before the window. Give
    actuals from at least 28 days before the window so the weekly baselines exist.
    `normaliser`: capacity for wind/PV; default the mean absolute actual (load).
    """
    nan = float("nan")
    empty = Accuracy(0, nan, nan, nan, {}, {}, window / timedelta(days=1))
    if isinstance(actuals, pd.Series):
        series = actuals.astype("float64")
        series.index = pd.DatetimeIndex([_ts(t) for t in series.index])
    else:
        series = pd.Series([float(v) for _, v in actuals], index=pd.DatetimeIndex([_ts(t) for t, _ in actuals]))
    scored = [fc for fc in forecasts if fc.points]
    if series.dropna().empty or not scored:
        return empty
    res = scored[0].resolution_s
    spd = 86400 // res
    lo, hi = _ts(now) - pd.Timedelta(window), _ts(now)
    start = min(series.index.min(), *(_ts(fc.generated_at).floor(f"{res}s") for fc in scored))
    grid = to_grid(series, res, start=start.floor(f"{res}s"), end=hi)
    index = pd.DatetimeIndex(grid.index)
    y = grid.to_numpy(dtype=np.float64)
    o_list, j_list, p_list = [], [], []
    for fc in scored:
        if fc.resolution_s != res:
            continue
        o = int((_ts(fc.generated_at).floor(f"{res}s") - index[0]) / pd.Timedelta(seconds=res))
        for p in fc.points:
            ts = _ts(p.ts)
            if lo <= ts < hi and o >= 1:
                o_list.append(o)
                j_list.append(int((ts - index[0]) / pd.Timedelta(seconds=res)))
                p_list.append((p.p10, p.p50, p.p90))
    if not o_list:
        return empty
    oo, jj = np.asarray(o_list, dtype=np.int64), np.asarray(j_list, dtype=np.int64)
    kk = jj - oo + 1
    q = np.asarray(p_list, dtype=np.float64)
    actual = np.where((jj >= 0) & (jj < len(y)), y[np.clip(jj, 0, len(y) - 1)], np.nan)
    before = index < lo
    clim = climatology_table(y[before], index[before], timezone)
    shifts = LocalShifts(index, timezone, res)
    preds: dict[str, NDArray[np.float64]] = {
        name: baseline_values(
            name, y, index, oo, kk, steps_per_day=spd, timezone=timezone, climatology=clim, shifts=shifts
        )
        for name in BASELINES
    }
    ok, usable = common_points(np.isfinite(actual) & (kk >= 1), preds)
    if not ok.any():
        return empty
    a = actual[ok]
    mae = float(np.mean(np.abs(q[ok, 1] - a)))
    norm = normaliser if normaliser else float(np.mean(np.abs(a))) or 1.0
    baselines: dict[str, dict[str, float]] = {}
    for name, pred in preds.items():
        b = float(np.mean(np.abs(pred[ok] - a))) if name in usable else float("nan")
        baselines[name] = {"mae": b, "nmae": b / norm}
    best = min(usable, key=lambda b: baselines[b]["mae"])
    return Accuracy(
        points=int(ok.sum()),
        mae=mae,
        nmae=mae / norm,
        coverage=band_coverage(a, q[ok, 0], q[ok, 2]),
        baselines=baselines,
        best_naive={"name": best, **baselines[best]},
        window_days=window / timedelta(days=1),
    )


def _ts(t: datetime | pd.Timestamp) -> pd.Timestamp:
    x = pd.Timestamp(t)
    return x.tz_localize("UTC") if x.tz is None else x.tz_convert("UTC")
