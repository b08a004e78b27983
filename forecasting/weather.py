"""Weather input: a small provider interface, an Open-Meteo-format HTTP client and a CSV file provider.

Every provider returns an hourly UTC frame indexed by interval start, with columns from
`features.WEATHER_COLUMNS` (SI units in the names), NaN where a value is missing, and raises only
`WeatherError` — a timeout, a refused connection or a garbage body all become one error the service
turns into "baseline used, reason: ..." in the forecast's metadata.

Open-Meteo conventions handled here: instantaneous variables (temperature, wind) are stamped at the hour;
`shortwave_radiation` is the mean of the *preceding* hour, so it is moved back one hour to our
interval-start labels. Requests ask for `timezone=UTC` and `wind_speed_unit=ms`.

`PreviousRunsProvider` reads Open-Meteo's Previous Runs API, where `temperature_2m_previous_day1` is the
value forecast 24 h before the valid time, `_previous_day2` 48 h before (https://open-meteo.com/en/docs/
previous-runs-api; archived from January 2024 for most models). The weather archive back-fills a
training window from it with forecasts at the leads the gateway predicts with.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

import pandas as pd

from drivers.errors import GiaError
from forecasting.features import WEATHER_COLUMNS

log = logging.getLogger(__name__)

#: Open-Meteo hourly variable -> our column name
OPEN_METEO_VARIABLES: Final[dict[str, str]] = {
    "temperature_2m": "temperature_c",
    "wind_speed_100m": "wind_speed_ms",
    "wind_direction_100m": "wind_direction_deg",
    "shortwave_radiation": "ghi_wm2",
    "cloud_cover": "cloud_cover_pct",
}
_PRECEDING_HOUR: Final = frozenset({"shortwave_radiation"})
_MAX_BODY: Final = 20 * 1024 * 1024


class WeatherError(GiaError):
    """Weather could not be obtained (network, timeout, malformed data). Transient: retry next time."""


class WeatherProvider(Protocol):
    """Hourly weather (observed for the past, forecast for the future) for the site."""

    def fetch(self, start: datetime, end: datetime) -> pd.DataFrame:
        """Rows for hours starting in [start, end), UTC index, WEATHER_COLUMNS; raises WeatherError."""
        ...


def parse_open_meteo(payload: Any, *, suffix: str = "") -> pd.DataFrame:
    """Parse an Open-Meteo JSON body into our frame; anything malformed raises WeatherError.

    `suffix` picks the variables named `<variable><suffix>` (e.g. `_previous_day1`).
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("hourly"), dict):
        raise WeatherError("malformed Open-Meteo response: no 'hourly' object")
    hourly = payload["hourly"]
    times = hourly.get("time")
    if not isinstance(times, list) or not times:
        raise WeatherError("malformed Open-Meteo response: 'hourly.time' missing or empty")
    try:
        offset = int(payload.get("utc_offset_seconds", 0) or 0)
        idx = pd.DatetimeIndex(pd.to_datetime(times, format="ISO8601")) - pd.Timedelta(seconds=offset)
        idx = pd.DatetimeIndex(idx)
    except (ValueError, TypeError) as exc:
        raise WeatherError(f"malformed Open-Meteo response: bad time values ({exc})") from None
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    units = payload.get("hourly_units") or {}
    wind_unit = units.get(f"wind_speed_100m{suffix}") if isinstance(units, dict) else None
    if wind_unit not in (None, "m/s"):
        raise WeatherError(f"wind speed in {wind_unit!r}; request wind_speed_unit=ms")
    frame = pd.DataFrame(index=idx)
    for src, col in OPEN_METEO_VARIABLES.items():
        vals = hourly.get(src + suffix)
        if vals is None:
            continue
        if not isinstance(vals, list) or len(vals) != len(times):
            raise WeatherError(f"malformed Open-Meteo response: '{src}' length differs from 'time'")
        try:
            series = pd.Series([float("nan") if v is None else float(v) for v in vals], index=idx)
        except (TypeError, ValueError):
            raise WeatherError(f"malformed Open-Meteo response: non-numeric '{src}'") from None
        if src in _PRECEDING_HOUR:
            series.index = idx - pd.Timedelta(hours=1)
        frame[col] = series
    if frame.columns.empty:
        raise WeatherError(f"Open-Meteo response holds none of the requested variables{suffix and ' (' + suffix + ')'}")
    frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    return frame.reindex(columns=list(WEATHER_COLUMNS))


class OpenMeteoProvider:
    """HTTP client for the Open-Meteo forecast API (or any server speaking its JSON format).

    Blocking (urllib) on purpose: the service runs in a worker thread, never on the event loop. One
    deadline (`timeout_s`) bounds connect and each read.
    """

    def __init__(self, *, url: str, latitude: float, longitude: float, timeout_s: float = 10.0) -> None:
        self._url = url
        self._lat = latitude
        self._lon = longitude
        self._timeout = timeout_s

    def request_url(self, start: datetime, end: datetime) -> str:
        last = (pd.Timestamp(end) - pd.Timedelta(seconds=1)).tz_convert("UTC")
        params = {
            "latitude": f"{self._lat:.4f}",
            "longitude": f"{self._lon:.4f}",
            "hourly": ",".join(OPEN_METEO_VARIABLES),
            "wind_speed_unit": "ms",
            "timezone": "UTC",
            "start_date": pd.Timestamp(start).tz_convert("UTC").strftime("%Y-%m-%d"),
            "end_date": last.strftime("%Y-%m-%d"),
        }
        return f"{self._url}?{urllib.parse.urlencode(params)}"

    def fetch(self, start: datetime, end: datetime) -> pd.DataFrame:
        frame = parse_open_meteo(_get_json(self.request_url(start, end), self._timeout))
        return _between(frame, start, end)


#: lead days asked of the Previous Runs API: the gateway forecasts up to 48 h ahead
PREVIOUS_RUN_DAYS: Final = (1, 2)


class PreviousRunsProvider:
    """Client for Open-Meteo's Previous Runs API (or a server speaking its JSON format).

    `fetch_leads` returns `[day 0, day 1, day 2]` frames: day 0 is the plain variable (the latest run,
    near the measurement), day N the `_previous_dayN` variable (forecast 24·N hours before valid time).
    """

    def __init__(self, *, url: str, latitude: float, longitude: float, timeout_s: float = 10.0) -> None:
        self._url = url
        self._lat = latitude
        self._lon = longitude
        self._timeout = timeout_s

    def request_url(self, start: datetime, end: datetime) -> str:
        last = (pd.Timestamp(end) - pd.Timedelta(seconds=1)).tz_convert("UTC")
        names = [v + suffix for v in OPEN_METEO_VARIABLES for suffix in ("", *_suffixes())]
        params = {
            "latitude": f"{self._lat:.4f}",
            "longitude": f"{self._lon:.4f}",
            "hourly": ",".join(names),
            "wind_speed_unit": "ms",
            "timezone": "UTC",
            "start_date": pd.Timestamp(start).tz_convert("UTC").strftime("%Y-%m-%d"),
            "end_date": last.strftime("%Y-%m-%d"),
        }
        return f"{self._url}?{urllib.parse.urlencode(params)}"

    def fetch_leads(self, start: datetime, end: datetime) -> list[pd.DataFrame]:
        payload = _get_json(self.request_url(start, end), self._timeout)
        frames = []
        for suffix in ("", *_suffixes()):
            try:
                frames.append(_between(parse_open_meteo(payload, suffix=suffix), start, end))
            except WeatherError:
                if not suffix:
                    raise
                frames.append(pd.DataFrame(columns=list(WEATHER_COLUMNS), dtype="float64"))
        return frames


def _suffixes() -> tuple[str, ...]:
    return tuple(f"_previous_day{d}" for d in PREVIOUS_RUN_DAYS)


def _between(frame: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    s, e = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    out: pd.DataFrame = frame[(frame.index >= s.floor("h")) & (frame.index < e)]
    return out


def _get_json(url: str, timeout: float) -> Any:
    """GET a JSON body with one deadline; every failure is a WeatherError (never a URL with secrets)."""
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "gia-gateway"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(_MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # the error holds the response's socket open otherwise
        raise WeatherError(f"weather server answered HTTP {exc.code}") from None
    except OSError as exc:  # URLError, TimeoutError, ConnectionError are all OSErrors
        reason = getattr(exc, "reason", exc)
        raise WeatherError(f"weather request failed: {reason}") from None
    if len(body) > _MAX_BODY:
        raise WeatherError("weather response too large")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WeatherError("weather response is not JSON") from None


class FileProvider:
    """Weather from a CSV (`ts` UTC plus any of WEATHER_COLUMNS): recorded forecasts, or for tests."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def fetch(self, start: datetime, end: datetime) -> pd.DataFrame:
        try:
            raw = pd.read_csv(self._path)
            ts = pd.to_datetime(raw["ts"], utc=True, format="ISO8601")
        except (OSError, KeyError, ValueError, pd.errors.ParserError) as exc:
            raise WeatherError(f"weather file {self._path} unreadable: {exc}") from None
        frame = raw.drop(columns=["ts"]).apply(pd.to_numeric, errors="coerce")
        frame.index = pd.DatetimeIndex(ts)
        frame = frame[~frame.index.duplicated(keep="last")].sort_index()
        frame = frame.reindex(columns=list(WEATHER_COLUMNS)).resample("1h").mean()
        s, e = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
        out: pd.DataFrame = frame[(frame.index >= s.floor("h")) & (frame.index < e)]
        return out


def align(frame: pd.DataFrame | None, index: pd.DatetimeIndex) -> pd.DataFrame | None:
    """Weather on a forecast grid (hourly values repeated over 15-min steps, short gaps interpolated)."""
    if frame is None or frame.empty:
        return None
    hourly = frame.reindex(columns=list(WEATHER_COLUMNS))
    hourly = hourly.interpolate(limit=3, limit_area="inside")
    both = index.union(pd.DatetimeIndex(hourly.index))
    out: pd.DataFrame = hourly.reindex(both).ffill(limit=3).reindex(index)
    return out
