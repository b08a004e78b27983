"""Forecasting: load, wind and PV forecasts (P10/P50/P90, up to 48 h, 15 min or hourly).

Importing this package costs nothing heavy: scikit-learn is imported inside functions only, numpy/pandas
only by the modules that compute. The gateway needs `types` (Forecast, HistorySource), `config`, and
`service.ForecastService` (run it in a worker thread).

Modules: `types` (boundary types), `config` (the `forecasting:` section), `features` (calendar,
origin-aligned lags, weather joins), `physics` (power curve, clear sky), `baselines`, `pipelines`
(quantile models, calibration), `artifacts` (save/load with version checks), `weather` (provider
interface, Open-Meteo client, file provider), `history` (CSV/in-memory sources), `service`,
`backtest` (protocol, metrics, rolling accuracy), `cli` (`gia forecast ...`).
"""
