"""History from a CSV or an in-memory frame: the `HistorySource` the CLI and the tests use.

The agent uses the ledger instead (the lead adapts it to `HistorySource`); this module is what lets
`gia forecast backtest --data FILE.csv` run on any exported series.

CSV format: a `ts` column (ISO 8601, UTC; naive times are taken as UTC), a `value` column, optional
weather columns named as in `features.WEATHER_COLUMNS` (`temperature_c`, `wind_speed_ms`, ...), and an
optional `availability` column (0..1; hours below 0.95 — downtime, curtailment — are not trained on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from drivers.errors import GiaError
from forecasting.features import WEATHER_COLUMNS, to_grid


class DataError(GiaError, ValueError):
    """The input file cannot be used; the message names the fix."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class SeriesData:
    values: pd.Series  # UTC index, float
    weather: pd.DataFrame | None  # UTC index, WEATHER_COLUMNS present in the file
    extra: pd.DataFrame  # any other numeric columns (e.g. availability)


def read_csv(path: Path) -> SeriesData:
    """Read `ts,value[,weather...]`; raise DataError with a one-line fix on anything unusable."""
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    missing = {"ts", "value"} - set(raw.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; need `ts` (UTC) and `value`")
    try:
        ts = pd.to_datetime(raw["ts"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: `ts` is not ISO 8601 ({exc}); write e.g. 2024-01-01T00:00:00Z") from None
    idx = pd.DatetimeIndex(ts)
    values = pd.Series(pd.to_numeric(raw["value"], errors="coerce").to_numpy(), index=idx, dtype="float64")
    wcols = [c for c in WEATHER_COLUMNS if c in raw.columns]
    weather = None
    if wcols:
        weather = raw[wcols].apply(pd.to_numeric, errors="coerce")
        weather.index = idx
    other = [c for c in raw.columns if c not in {"ts", "value", *wcols}]
    extra = raw[other].apply(pd.to_numeric, errors="coerce") if other else pd.DataFrame(index=idx)
    extra.index = idx
    if values.notna().sum() == 0:
        raise DataError(f"{path}: no numeric values in `value`")
    return SeriesData(values.sort_index(), None if weather is None else weather.sort_index(), extra.sort_index())


def infer_resolution(index: pd.DatetimeIndex) -> int:
    """900 or 3600: the grid the data fits (finer data is averaged up to 15 min)."""
    if len(index) < 3:
        return 3600
    step = float(pd.Series(index).diff().dt.total_seconds().median())
    return 900 if step <= 900 else 3600


class FrameHistory:
    """A HistorySource over in-memory series (name -> UTC-indexed values)."""

    def __init__(self, series: Mapping[str, pd.Series]) -> None:
        self._series = dict(series)

    def values(
        self, series: str, start: datetime, end: datetime, resolution_s: int
    ) -> Sequence[tuple[datetime, float]]:
        s = self._series.get(series)
        if s is None or s.empty:
            return []
        grid = to_grid(s, resolution_s)
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
        grid = grid[(grid.index >= lo) & (grid.index < hi)].dropna()
        return [
            (t.to_pydatetime(), float(v)) for t, v in zip(pd.DatetimeIndex(grid.index), grid.to_numpy(), strict=True)
        ]


class FrameWeather:
    """A WeatherProvider over an in-memory frame (the weather columns of a CSV): for the CLI and tests."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame.reindex(columns=list(WEATHER_COLUMNS)).resample("1h").mean()

    def fetch(self, start: datetime, end: datetime) -> pd.DataFrame:
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
        return self._frame[(self._frame.index >= lo.floor("h")) & (self._frame.index < hi)]
