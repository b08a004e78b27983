"""Feature builders: calendar, origin-aligned lags and weather joins, on a regular UTC grid.

Why origin-aligned: a forecast made at origin `o` for the interval starting at `t = o + (k-1)·res` may only
use values whose interval *ended* by `o`. Instead of fixed lags (t-24 h is unknown when k > 24 h), every
lag is expressed relative to what is known at the origin: "the same time of day on the most recent day
that is complete at `o`", "the last value before `o`", "the mean of the day ending at `o`". The step `k`
is itself a feature, so one model serves every horizon (direct, not recursive: errors do not compound).

No look-ahead by construction: every history read goes through `_take`, which returns NaN for any
position at or after the origin. Weather is different: at `t` it is a *forecast* input, supplied by the
caller for the horizon (the benchmarks state what stands in for it).

"The same time yesterday" is a local wall-clock time: across a DST change it lies 23 or 25 hours back,
not 24 (`LocalShifts`), so a factory that starts at 07:00 local is compared with 07:00 the day before.

Weather by lead (`WeatherInput`): training can pass one frame per forecast lead, as archived by the
gateway (`weather_archive`): frame 0 holds what was known after each hour (used for times before the
origin), frame `b` >= 1 the forecast made about `24·b` hours ahead. A row for step `k` reads the target
hour from frame `ceil(k·resolution / 24 h)`, so the model learns from forecasts at least as old as the
ones it will predict with, never from weather fetched after the fact.

Positions: `y[p]` is the mean over the interval starting at `index[p]`. An origin is a position `i`:
`y[:i]` is known, `y[i:]` is not. Step `k` (1-based) targets position `j = i + k - 1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from forecasting.physics import PowerCurve, clear_sky_ghi, plane_of_array

if TYPE_CHECKING:
    from numpy.typing import NDArray

    FloatArray = NDArray[np.float64]
    IntArray = NDArray[np.int64]

#: weather columns understood everywhere (CSV headers, provider output), SI units in the names
WEATHER_COLUMNS: tuple[str, ...] = (
    "temperature_c",
    "wind_speed_ms",
    "wind_direction_deg",
    "ghi_wm2",
    "cloud_cover_pct",
)


#: calendar columns per target. Weather-driven targets get the season as month only: with day-of-year the
#: trees memorise individual weeks of the training years (wind test error +, interval coverage -)
CALENDAR_FEATURES: dict[str, tuple[str, ...]] = {
    "load": ("hour", "weekday", "doy", "holiday", "offday"),
    "wind": ("hour", "month"),
    "pv": ("hour", "doy"),
}


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """Everything that decides the feature columns; saved with the model so prediction matches training."""

    target: str
    resolution_s: int
    horizon_steps: int
    timezone: str = "UTC"
    holidays_country: str | None = "LV"
    holidays_subdiv: str | None = None
    weather_columns: tuple[str, ...] = ()
    capacity: float | None = None
    power_curve: PowerCurve | None = None
    latitude: float | None = None
    longitude: float | None = None
    #: PV modules' tilt and azimuth (None: horizontal clear-sky only, as for a backtest without a config)
    tilt_deg: float | None = None
    azimuth_deg: float | None = None

    @property
    def steps_per_day(self) -> int:
        return 86400 // self.resolution_s

    @property
    def steps_per_hour(self) -> int:
        return max(1, 3600 // self.resolution_s)


def to_grid(
    values: pd.Series, resolution_s: int, *, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None
) -> pd.Series:
    """Put (ts, value) data on a regular UTC grid of `resolution_s`, NaN where nothing was measured.

    Irregular or finer data is averaged into intervals labelled by their start; gaps stay NaN (the model
    handles missing values natively, so gaps never need invented numbers).
    """
    s = values.astype("float64")
    idx = pd.DatetimeIndex(s.index)
    s.index = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    s = s[~s.index.duplicated(keep="last")].sort_index()
    freq = f"{resolution_s}s"
    s = s.resample(freq, label="left", closed="left").mean()
    lo = start.floor(freq) if start is not None else (s.index[0] if len(s) else None)
    hi = end if end is not None else (s.index[-1] + pd.Timedelta(seconds=resolution_s) if len(s) else None)
    if lo is None or hi is None:
        return pd.Series(dtype="float64", index=pd.DatetimeIndex([], tz="UTC"))
    full = pd.date_range(lo, hi, freq=freq, inclusive="left", tz="UTC")
    return s.reindex(full)


#: weather for the feature builders: one frame for every lead, or one frame per lead (see the docstring)
WeatherInput = pd.DataFrame | Sequence[pd.DataFrame]


def lead_bucket(steps: IntArray, resolution_s: int, buckets: int) -> IntArray:
    """Lead bucket (1..buckets-1) of each step: ceil(lead to the end of the interval / 24 h)."""
    b = -(-(steps * resolution_s) // 86400)
    out: IntArray = np.clip(b, 1, max(1, buckets - 1)).astype(np.int64)
    return out


class LocalShifts:
    """Positions of "the same local wall-clock time N days earlier", DST-correct, computed once per N.

    For a position whose wall-clock time did not exist or was ambiguous N days earlier (the DST hours),
    the plain UTC shift is used.
    """

    def __init__(self, index: pd.DatetimeIndex, timezone: str, resolution_s: int) -> None:
        self._index = index
        self._tz = timezone
        self._res = resolution_s
        self._spd = 86400 // resolution_s
        self._cache: dict[int, IntArray] = {}

    def _table(self, days: int) -> IntArray:
        if days not in self._cache:
            n = len(self._index)
            plain = np.arange(n, dtype=np.int64) - days * self._spd
            if self._tz in ("UTC", "Etc/UTC") or n == 0:
                self._cache[days] = plain
            else:
                wall = self._index.tz_convert(self._tz).tz_localize(None) - pd.Timedelta(days=days)
                back = wall.tz_localize(self._tz, ambiguous="NaT", nonexistent="NaT").tz_convert("UTC")
                delta = (back - self._index[0]).total_seconds().to_numpy(dtype=np.float64) / self._res
                ok = np.isfinite(delta)
                out = plain.copy()
                out[ok] = np.floor(delta[ok]).astype(np.int64)
                self._cache[days] = out
        return self._cache[days]

    def back(self, pos: IntArray, days: IntArray | int) -> IntArray:
        """`pos` moved `days` local days back (days may differ per element)."""
        pos = np.asarray(pos, dtype=np.int64)
        d = np.broadcast_to(np.asarray(days, dtype=np.int64), pos.shape)
        out = pos - d * self._spd
        inside = (pos >= 0) & (pos < len(self._index))
        for v in np.unique(d[inside]) if inside.any() else ():
            sel = inside & (d == v)
            out[sel] = self._table(int(v))[pos[sel]]
        return out

    def days_back(self, origins: IntArray, steps: IntArray) -> IntArray:
        """Per row, the fewest whole local days back at which the target's time is known at the origin."""
        j = origins + steps - 1
        d = np.maximum(1, -(-steps // self._spd)).astype(np.int64)
        for _ in range(2):  # a 25-hour day can push the same time one more day back
            late = self.back(j, d) >= origins
            if not late.any():
                break
            d = d + late
        return d


def _take(y: FloatArray, pos: IntArray, origin: IntArray) -> FloatArray:
    """y[pos], NaN where pos is outside the data or not known at the origin (pos >= origin)."""
    ok = (pos >= 0) & (pos < origin) & (pos < len(y))
    out = np.full(pos.shape, np.nan)
    out[ok] = y[pos[ok]]
    return out


def _window_stats(y: FloatArray, width: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mean, max, min of y[p-width+1 .. p] for every p (NaN-aware); index p-1 gives the window ending at p."""
    s = pd.Series(y)
    r = s.rolling(width, min_periods=max(1, width // 4))
    return r.mean().to_numpy(), r.max().to_numpy(), r.min().to_numpy()


@lru_cache(maxsize=32)
def _holiday_dates(country: str, subdiv: str | None, years: tuple[int, ...]) -> frozenset[date]:
    import holidays

    cal = holidays.country_holidays(country, subdiv=subdiv, years=list(years))
    return frozenset(cal.keys())


def calendar_frame(index: pd.DatetimeIndex, spec: FeatureSpec) -> pd.DataFrame:
    """Local-time calendar features per grid position (DST-correct: local time comes from the zone)."""
    local = index.tz_convert(spec.timezone)
    hour = local.hour.to_numpy() + local.minute.to_numpy() / 60.0
    weekday = local.day_of_week.to_numpy()
    dates = local.date
    if spec.holidays_country and len(index):
        years = tuple(range(int(local.year.min()) - 1, int(local.year.max()) + 2))
        hol = _holiday_dates(spec.holidays_country, spec.holidays_subdiv, years)
        is_hol = np.fromiter((d in hol for d in dates), dtype=bool, count=len(dates))
    else:
        is_hol = np.zeros(len(index), dtype=bool)
    offday = is_hol | (weekday >= 5)
    return pd.DataFrame(
        {
            "hour": hour,
            "weekday": weekday.astype(float),
            "month": local.month.to_numpy().astype(float),
            "doy": local.day_of_year.to_numpy().astype(float),
            "holiday": is_hol.astype(float),
            "offday": offday.astype(float),
        },
        index=index,
    )


def build_features(
    y: FloatArray,
    index: pd.DatetimeIndex,
    origins: IntArray,
    steps: IntArray,
    spec: FeatureSpec,
    *,
    weather: WeatherInput | None = None,
    calendar: pd.DataFrame | None = None,
    shifts: LocalShifts | None = None,
) -> tuple[FloatArray, list[str]]:
    """Feature matrix for (origin, step) pairs given as equal-length arrays.

    `index` covers history and horizon (len(index) >= max target position + 1); `y` may be shorter (the
    unknown future). `weather` is aligned to `index` (NaN where missing): one frame, or one per lead
    (module docstring). Returns (X, column names).
    """
    origins = np.asarray(origins, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.int64)
    spd, sph = spec.steps_per_day, spec.steps_per_hour
    j = origins + steps - 1
    if len(j) and int(j.max()) >= len(index):
        raise ValueError("index does not cover the horizon")
    yk = np.full(len(index), np.nan)
    yk[: len(y)] = y[: len(index)]
    cal = calendar if calendar is not None else calendar_frame(index, spec)
    sh = shifts if shifts is not None else LocalShifts(index, spec.timezone, spec.resolution_s)
    cols: dict[str, FloatArray] = {}
    days_back = sh.days_back(origins, steps)  # most recent local day whose same time is known at the origin

    cols["step_h"] = steps / sph
    cols["origin_hour"] = cal["hour"].to_numpy()[np.clip(origins, 0, len(index) - 1)]
    for name in CALENDAR_FEATURES.get(spec.target, CALENDAR_FEATURES["load"]):
        cols[name] = cal[name].to_numpy()[j]

    lag_d = sh.back(j, days_back)
    cols["lag_day"] = _take(yk, lag_d, origins)
    cols["lag_day_m1h"] = _take(yk, lag_d - sph, origins)
    cols["lag_day_p1h"] = _take(yk, lag_d + sph, origins)
    cols["lag_day2"] = _take(yk, sh.back(j, days_back + 1), origins)
    cols["lag_day3"] = _take(yk, sh.back(j, days_back + 2), origins)
    cols["lag_week"] = _take(yk, sh.back(j, 7), origins)
    cols["lag_week2"] = _take(yk, sh.back(j, 14), origins)
    last = _take(yk, origins - 1, origins)
    cols["last"] = last
    cols["last_m1h"] = _take(yk, origins - 1 - sph, origins)
    anchor = _take(yk, sh.back(origins - 1, days_back), origins)
    cols["lag_day_adj"] = cols["lag_day"] + (last - anchor)
    cols["lag_day_offday"] = cal["offday"].to_numpy()[np.clip(lag_d, 0, len(index) - 1)]
    m24, x24, n24 = _window_stats(yk, spd)
    m3, _, _ = _window_stats(yk, 3 * sph)
    m7, _, _ = _window_stats(yk, 7 * spd)
    prev = origins - 1  # windows ending at the last known position; _take masks negative positions
    for name, arr in (("mean_24h", m24), ("max_24h", x24), ("min_24h", n24), ("mean_3h", m3), ("mean_7d", m7)):
        cols[name] = _take(arr, prev, origins)
    # last week's profile moved to this week's level (the day-of-week shape, current level)
    cols["lag_week_adj"] = cols["lag_week"] + (cols["mean_24h"] - _take(m24, sh.back(prev, 7), origins))

    frames = weather_frames(weather) if weather is not None and spec.weather_columns else []
    lead = lead_bucket(steps, spec.resolution_s, len(frames)) if len(frames) > 1 else np.zeros(len(j), np.int64)
    if frames:
        _weather_features(cols, frames, spec, j, lag_d, lead)

    if spec.target == "pv" and spec.latitude is not None and spec.longitude is not None:
        offset = spec.resolution_s / 2
        if spec.tilt_deg is None:
            cs = clear_sky_ghi(index, spec.latitude, spec.longitude, offset_s=offset)
        else:
            ghi = [f["ghi_wm2"].to_numpy(dtype=np.float64) for f in frames if "ghi_wm2" in f]
            ghi = ghi if "ghi_wm2" in spec.weather_columns else []
            cs, poa = plane_of_array(
                index,
                spec.latitude,
                spec.longitude,
                tilt_deg=spec.tilt_deg,
                azimuth_deg=spec.azimuth_deg,
                ghi=ghi,
                offset_s=offset,
            )
            if poa:
                cols["poa_forecast"] = np.vstack(poa)[lead if len(poa) > 1 else 0, j]
        cols["clear_sky"] = cs[j]
        cs_lag = cs[np.clip(lag_d, 0, len(index) - 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(cs_lag > 50.0, cols["lag_day"] / cs_lag, np.nan)
        cols["lag_day_cs"] = ratio * cs[j]
    names = list(cols)
    X = np.column_stack([cols[n] for n in names]).astype(np.float64)
    return X, names


def weather_frames(weather: WeatherInput) -> list[pd.DataFrame]:
    """The weather as a list by lead: [known after the hour, ~24 h ahead, ~48 h ahead, ...]."""
    if isinstance(weather, pd.DataFrame):
        return [weather]
    return list(weather)


def _weather_features(
    cols: dict[str, FloatArray],
    frames: list[pd.DataFrame],
    spec: FeatureSpec,
    j: IntArray,
    lag_d: IntArray,
    lead: IntArray,
) -> None:
    """Weather at the target time (a forecast), plus what the lag was measured under, plus derived terms.

    With weather by lead, the target-time columns come from the frame of the row's lead and the lag's
    from frame 0 (known after the fact, as it is at prediction time); rolling terms stay within a frame.
    """
    n = len(frames[0])
    spd = spec.steps_per_day
    lagc = np.clip(lag_d, 0, n - 1)

    def stack(c: str) -> NDArray[np.float64]:
        return np.vstack([f[c].to_numpy(dtype=np.float64) if c in f else np.full(n, np.nan) for f in frames])

    for c in spec.weather_columns:
        w = stack(c)
        at_j = w[lead, j]
        if c == "wind_direction_deg":
            rad = np.deg2rad(at_j)
            cols["wind_dir_sin"] = np.sin(rad)
            cols["wind_dir_cos"] = np.cos(rad)
            continue
        cols[c] = at_j
        if c == "temperature_c":
            cols["temperature_lag_day"] = np.where(lag_d >= 0, w[0, lagc], np.nan)
            # trailing windows (ending at the target hour): the same in training and at prediction,
            # where the weather ends with the horizon (a centred window saw beyond it only in training)
            mean24 = np.vstack([pd.Series(r).rolling(spd, min_periods=1).mean().to_numpy() for r in w])
            max24 = np.vstack([pd.Series(r).rolling(spd, min_periods=1).max().to_numpy() for r in w])
            cols["temperature_mean_24h"] = mean24[lead, j]
            cols["temperature_max_day"] = max24[lead, j]
            # buildings answer the weather of the last hours (thermal mass) and the change since the day
            # the lag was measured under; both explicit, as 63-leaf trees rarely rebuild a difference.
            # Chosen on the load benchmark's validation window (bench/forecast_load.py --validation)
            six = 6 * spec.steps_per_hour
            mean6 = np.vstack([pd.Series(r).rolling(six, min_periods=1).mean().to_numpy() for r in w])
            cols["temperature_mean_6h"] = mean6[lead, j]
            cols["temperature_delta_lag"] = at_j - cols["temperature_lag_day"]
        if c == "wind_speed_ms" and spec.power_curve is not None:
            cols["power_curve"] = spec.power_curve.power(at_j)
            # neighbours smooth the timing error of a forecast front
            prev = np.clip(j - spec.steps_per_hour, 0, n - 1)
            nxt = np.clip(j + spec.steps_per_hour, 0, n - 1)
            cols["wind_speed_prev_h"] = w[lead, prev]
            cols["wind_speed_next_h"] = w[lead, nxt]


def origin_step_grid(origins: Sequence[int] | IntArray, horizon_steps: int) -> tuple[IntArray, IntArray]:
    """Cartesian product: every origin with every step 1..horizon_steps (flat, origin-major)."""
    o = np.asarray(origins, dtype=np.int64)
    k = np.arange(1, horizon_steps + 1, dtype=np.int64)
    return np.repeat(o, len(k)), np.tile(k, len(o))
