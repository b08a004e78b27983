"""`ForecastService`: train and predict load/wind/PV, meant to run in a worker thread inside the agent.

    service = ForecastService(config, history, artifact_dir=Path("/var/lib/gia/models"),
                              weather=make_weather_provider(config), timezone="Europe/Riga")
    await asyncio.to_thread(service.train, "load")               # nightly
    fc = await asyncio.to_thread(service.predict, "load", now)   # every 15 min / hour
    mqtt.publish(f"gia/{site}/forecast/load", json.dumps(fc.to_payload()), retain=True)

Decisions, in the order `predict` takes them (each fallback says why in `Forecast.reason`):
1. no history at all -> `kind="empty"`, no points;
2. less than `min_history_days` of values in the whole training window (gaps allowed: every measured
   interval counts) -> best baseline ("cold start"); the model takes over by itself once enough data
   exists (the next `predict` trains when nothing usable is saved; a failed training is retried an hour
   later, and `needs_training` says so too, so the retrain loop gets a first model as well);
3. a saved model whose library versions differ -> retrained, never unpickled;
4. a model that needs weather when the provider fails -> best baseline ("weather unavailable: ...");
5. otherwise the model, P10 <= P50 <= P90, clipped to physical limits.
Nothing here raises on bad data: errors become a labelled baseline forecast and a log line.

Blocking and CPU-heavy by design (scikit-learn, HTTP): call it with `asyncio.to_thread`. A lock makes
concurrent `train`/`predict` calls safe; scikit-learn uses `threads` OpenMP threads (default 1, so the
agent's pollers keep the other core).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from forecasting import artifacts
from forecasting.backtest import Accuracy, rolling_accuracy
from forecasting.baselines import baseline_values, choose_baseline, climatology_table
from forecasting.config import ForecastingConfig, TargetConfig, TargetName
from forecasting.features import WEATHER_COLUMNS, FeatureSpec, WeatherInput, to_grid
from forecasting.physics import PowerCurve
from forecasting.pipelines import TrainedModel, TrainingCancelled, fit_model
from forecasting.types import Forecast, ForecastPoint, HistorySource
from forecasting.weather import (
    FileProvider,
    OpenMeteoProvider,
    PreviousRunsProvider,
    WeatherError,
    WeatherProvider,
    align,
)

log = logging.getLogger(__name__)

#: weather columns each target's model may use (only those the provider actually delivers are kept)
TARGET_WEATHER: dict[str, tuple[str, ...]] = {
    "load": ("temperature_c",),
    "wind": ("wind_speed_ms", "wind_direction_deg"),
    "pv": ("ghi_wm2", "cloud_cover_pct", "temperature_c"),
}
#: days of history read for a prediction (lags reach back 16 days; baselines are chosen on 4 weeks)
PREDICT_HISTORY_DAYS = 28
#: budget of the first model a target gets (see `train(quick=True)`): ~5x cheaper than the full one
QUICK_MAX_ITER = 100
QUICK_MAX_ROWS = 20_000
#: a training that failed (not a cold start) is tried again after this long
RETRY_FAILED = pd.Timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class TrainResult:
    target: str
    trained: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    weather_columns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """What a training sees: the history grid, the weather (by lead when archived) and the feature spec."""

    y: np.ndarray[Any, np.dtype[np.float64]]
    index: pd.DatetimeIndex
    spec: FeatureSpec
    weather: WeatherInput | None
    exclude: np.ndarray[Any, np.dtype[np.bool_]] | None
    days: float


class Trainer(Protocol):
    """Runs `ForecastService.train` somewhere else (the agent: a child process, `gateway.forecasts.training`)."""

    def __call__(self, target: TargetName, now: datetime | None, quick: bool) -> TrainResult: ...

    def stop(self) -> None:
        """Abandon running and later trainings (the agent is stopping)."""


def make_weather_provider(
    config: ForecastingConfig,
    *,
    latitude: float | None = None,
    longitude: float | None = None,
    archive_dir: Path | None = None,
) -> WeatherProvider | None:
    """The configured provider, or None ('none', or Open-Meteo without a location).

    With `archive_dir`, an HTTP provider is wrapped in the weather archive (`weather_archive`): requests
    stay within the provider's reach and training windows longer than that come from fetched hours.
    """
    w = config.weather
    if w.provider == "file" and w.path is not None:
        return FileProvider(w.path)
    if w.provider == "open-meteo":
        loc = config.location
        lat = loc.latitude if loc else latitude
        lon = loc.longitude if loc else longitude
        if lat is None or lon is None:
            log.warning("forecasting: open-meteo weather needs a location (forecasting.location or site)")
            return None
        http = OpenMeteoProvider(url=w.url, latitude=lat, longitude=lon, timeout_s=w.timeout_s)
        if archive_dir is None:
            return http
        from forecasting.weather_archive import ArchivingProvider

        backfill = (
            PreviousRunsProvider(url=w.backfill_url, latitude=lat, longitude=lon, timeout_s=w.timeout_s)
            if w.backfill
            else None
        )
        return ArchivingProvider(
            http,
            archive_dir / "weather.db",
            max_past_days=w.max_past_days,
            keep_days=config.train_window_days + 35,
            backfill=backfill,
        )
    return None


def _utc(ts: datetime) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


class ForecastService:
    """Train and serve forecasts for the configured targets (see the module docstring)."""

    def __init__(
        self,
        config: ForecastingConfig,
        history: HistorySource,
        *,
        artifact_dir: Path,
        weather: WeatherProvider | None = None,
        timezone: str | None = None,
        latitude: float | None = None,
        longitude: float | None = None,
        threads: int = 1,
        trainer: Trainer | None = None,
    ) -> None:
        self._cfg = config
        self._trainer = trainer
        self._history = history
        self._dir = artifact_dir
        self._weather = weather
        self._tz = config.timezone or timezone or "UTC"
        self._lat = config.location.latitude if config.location else latitude
        self._lon = config.location.longitude if config.location else longitude
        self._threads = threads
        self._lock = threading.Lock()
        self._models: dict[str, TrainedModel] = {}
        self._load_reason: dict[str, str] = {}
        self._last_weather_error: str | None = None
        self._failed_train: dict[str, tuple[pd.Timestamp, str]] = {}
        self._stop = threading.Event()

    def cancel_training(self) -> None:
        """Make a running (and every later) `train` give up at its next estimator: the agent is stopping.

        A training thread cannot be killed, and Python waits for it before the process exits; this
        bounds that wait to one estimator fit instead of a whole model (tens of seconds on a Pi).
        """
        self._stop.set()
        if self._trainer is not None:
            self._trainer.stop()

    # ---------------------------------------------------------------- configuration helpers
    def target_config(self, target: TargetName) -> TargetConfig:
        return self._cfg.targets.get(target) or TargetConfig()

    def _series(self, target: TargetName) -> str:
        return self.target_config(target).series or target

    def _spec(
        self, target: TargetName, weather_columns: tuple[str, ...], curve: PowerCurve | None, capacity: float | None
    ) -> FeatureSpec:
        tc = self.target_config(target)
        return FeatureSpec(
            target=target,
            resolution_s=tc.resolution_s,
            horizon_steps=tc.horizon_h * 3600 // tc.resolution_s,
            timezone=self._tz,
            holidays_country=self._cfg.holidays_country,
            holidays_subdiv=self._cfg.holidays_subdiv,
            weather_columns=weather_columns,
            capacity=capacity,
            power_curve=curve,
            latitude=self._lat,
            longitude=self._lon,
            tilt_deg=tc.tilt_deg if target == "pv" else None,
            azimuth_deg=tc.azimuth_deg if target == "pv" else None,
        )

    def _grid(self, target: TargetName, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
        tc = self.target_config(target)
        pairs = self._history.values(self._series(target), start.to_pydatetime(), end.to_pydatetime(), tc.resolution_s)
        clean = [(t, v) for t, v in pairs if v is not None and np.isfinite(v)]
        if clean:
            s = pd.Series([v for _, v in clean], index=pd.DatetimeIndex([_utc(t) for t, _ in clean]))
        else:
            s = pd.Series(dtype="float64", index=pd.DatetimeIndex([], tz="UTC"))
        return to_grid(s, tc.resolution_s, start=start, end=end)

    def _fetch_weather(self, start: pd.Timestamp, end: pd.Timestamp) -> tuple[pd.DataFrame | None, str]:
        if self._weather is None:
            return None, "no weather provider configured"
        try:
            frame = self._weather.fetch(start.to_pydatetime(), end.to_pydatetime())
        except WeatherError as exc:
            if self._last_weather_error != str(exc):
                log.error("forecasting: weather unavailable: %s", exc)
            self._last_weather_error = str(exc)
            return None, f"weather unavailable: {exc}"
        except Exception as exc:  # a provider bug must not take forecasting down
            log.exception("forecasting: weather provider failed")
            return None, f"weather provider failed: {exc.__class__.__name__}"
        if self._last_weather_error is not None:
            log.info("forecasting: weather available again")
            self._last_weather_error = None
        return frame, ""

    def _fetch_training_weather(self, start: pd.Timestamp, end: pd.Timestamp) -> list[pd.DataFrame] | None:
        """Weather for a training window: by lead from the archive (forecasts as first fetched), else the
        provider's one frame (a file of recorded forecasts, a test's frame)."""
        by_lead = getattr(self._weather, "fetch_leads", None)
        if by_lead is None:
            frame, _ = self._fetch_weather(start, end)
            return None if frame is None else [frame]
        try:
            frames: list[pd.DataFrame] = by_lead(start.to_pydatetime(), end.to_pydatetime())
        except WeatherError as exc:
            log.error("forecasting: weather history unavailable: %s", exc)
            return None
        except Exception:  # a provider bug must not take forecasting down
            log.exception("forecasting: weather provider failed")
            return None
        return frames

    # ---------------------------------------------------------------- training
    def train(self, target: TargetName, *, now: datetime | None = None, quick: bool = False) -> TrainResult:
        """Fit and save the target's model from history up to `now`; returns why when it cannot.

        `quick` is for a target's first model, trained inside `predict` while the user waits for the first
        forecast: fewer boosting rounds on fewer rows (QUICK_*), ~5x faster. Such a model is marked
        (`metrics["quick"]`) and `needs_training` asks for the full one at the next round.
        With a `trainer`, the work happens there and the saved model is loaded from the artifact directory.
        """
        if self._trainer is not None:
            if self._stop.is_set():
                return TrainResult(target, False, "training cancelled (stopping)")
            result = self._trainer(target, now, quick)
            if result.trained:
                with self._lock:
                    self._models.pop(target, None)  # `_model` loads the new artifact
                    self._load_reason.pop(target, None)
        else:
            result = self._train_here(target, now=now, quick=quick)
        at = _utc(now or datetime.now(UTC))
        if result.trained:
            self._failed_train.pop(target, None)
        elif not result.reason.startswith(("cold start", "training cancelled")):
            self._failed_train[target] = (at, result.reason)
        return result

    def training_set(self, target: TargetName, *, now: datetime | None = None) -> tuple[TrainingSet | None, str]:
        """The data a training of `target` at `now` uses, or None and why not (cold start, no weather...).

        Weather comes by lead when the provider archives it (`fetch_leads`): the rows of step k read the
        forecast made about ceil(k h / 24 h) days ahead, as the agent will predict with.
        """
        tc = self.target_config(target)
        end = _utc(now or datetime.now(UTC)).floor(f"{tc.resolution_s}s")
        start = end - pd.Timedelta(days=self._cfg.train_window_days)
        y = self._grid(target, start, end)
        valid = y.dropna()
        days = len(valid) * tc.resolution_s / 86400
        if days < self._cfg.min_history_days:
            return None, f"cold start: {days:.1f} days of history < {self._cfg.min_history_days:g}"
        first = valid.index[0]
        y = y[y.index >= first]
        index = pd.DatetimeIndex(y.index)
        weather_cols: tuple[str, ...] = ()
        frames: list[pd.DataFrame] | None = None
        main: pd.DataFrame | None = None
        wanted = TARGET_WEATHER.get(target, ())
        if self._weather is not None:
            raw = self._fetch_training_weather(first, end)
            if raw is not None:
                aligned = [align(f, index) for f in raw]
                empty = pd.DataFrame(index=index, columns=list(WEATHER_COLUMNS), dtype="float64")
                frames = [f if f is not None else empty for f in aligned]
                if all(f is None for f in aligned):
                    frames = None
            if frames is not None:
                main = frames[1] if len(frames) > 1 else frames[0]  # the forecasts most rows read
                if target in ("wind", "pv"):
                    # Forecast weather may reach less far back than the plant's history (an archive
                    # without back-fill grows from the first fetch): train on the span with weather.
                    have = main[list(wanted)].notna().any(axis=1).to_numpy()
                    if have.any():
                        since = index[int(np.argmax(have))]
                        if since > first and (end - since) >= pd.Timedelta(days=self._cfg.min_history_days):
                            keep = index >= since
                            y, index = y[keep], pd.DatetimeIndex(y.index[keep])
                            frames = [f[keep] for f in frames]
                            main = main[keep]
                weather_cols = tuple(c for c in wanted if main[c].notna().mean() >= 0.8)
        if target in ("wind", "pv") and not weather_cols:
            return None, f"{target} needs weather history ({', '.join(wanted)}); baseline used"
        capacity = tc.capacity_w
        yv = y.to_numpy(dtype=np.float64)
        if capacity is None and target in ("wind", "pv"):
            capacity = float(np.nanmax(yv))
        curve: PowerCurve | None = None
        exclude: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        if target == "wind" and main is not None and "wind_speed_ms" in weather_cols:
            assert capacity is not None
            ws = main["wind_speed_ms"].to_numpy()  # forecast wind: the curve absorbs the forecast's bias
            curve = self._power_curve(tc, capacity, ws, yv)
            exclude = outage_mask(yv, curve.power(ws), capacity)
        spec = self._spec(target, weather_cols, curve, capacity)
        weather: WeatherInput | None = None
        if frames is not None and weather_cols:
            weather = frames if len(frames) > 1 else frames[0]
        return TrainingSet(yv, index, spec, weather, exclude, days), ""

    def _train_here(self, target: TargetName, *, now: datetime | None, quick: bool) -> TrainResult:
        tc = self.target_config(target)
        end = _utc(now or datetime.now(UTC)).floor(f"{tc.resolution_s}s")
        try:
            ts, why = self.training_set(target, now=end.to_pydatetime())
        except Exception as exc:
            log.exception("forecasting: history for %s unreadable", target)
            return TrainResult(target, False, f"history unreadable: {exc.__class__.__name__}")
        if ts is None:
            return TrainResult(target, False, why)
        spec, days = ts.spec, ts.days
        try:
            from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,unused-ignore]

            with threadpool_limits(self._threads):
                model = fit_model(
                    ts.y,
                    ts.index,
                    spec,
                    weather=ts.weather,
                    exclude=ts.exclude,
                    max_iter=min(self._cfg.max_iter, QUICK_MAX_ITER) if quick else self._cfg.max_iter,
                    max_rows=QUICK_MAX_ROWS if quick else 60_000,
                    coverage=self._cfg.interval_coverage,
                    should_stop=self._stop.is_set,
                )
        except TrainingCancelled:
            return TrainResult(target, False, "training cancelled (stopping)")
        except ValueError as exc:
            return TrainResult(target, False, f"not trained: {exc}")
        if quick:
            model.metrics["quick"] = 1.0
        model.trained_at = end.to_pydatetime()
        artifacts.save(model, self._dir, target)
        with self._lock:
            self._models[target] = model
            self._load_reason.pop(target, None)
        log.info(
            "forecasting: %s trained on %.0f days in %.1f s%s",
            target,
            days,
            model.metrics["fit_s"],
            " (first, quick model; the full one follows at the next round)" if quick else "",
        )
        return TrainResult(target, True, "", dict(model.metrics), spec.weather_columns)

    def _power_curve(
        self, tc: TargetConfig, capacity: float, ws: np.ndarray[Any, Any], y: np.ndarray[Any, Any]
    ) -> PowerCurve:
        if tc.power_curve:
            return PowerCurve.from_points(tc.power_curve, cut_out_ms=tc.cut_out_ms, capacity=capacity)
        if tc.turbine_type:
            try:
                return PowerCurve.from_windpowerlib(tc.turbine_type, capacity=capacity, cut_out_ms=tc.cut_out_ms)
            except (RuntimeError, ValueError) as exc:
                log.warning("forecasting: %s; learning the power curve from history instead", exc)
        n = min(len(ws), len(y))
        return PowerCurve.empirical(ws[:n], y[:n], capacity=capacity, cut_out_ms=tc.cut_out_ms)

    def needs_training(self, target: TargetName, now: datetime) -> bool:
        """True when a training is due: no usable model yet (and history allows one), a quick first model,
        or a model older than `retrain_interval_h` *and* data newer than what it was trained on.

        Age counts from when the model was trained, not from its last value: when a meter falls silent,
        the last value stops moving and the model would otherwise be "due" at every round.
        """
        tc = self.target_config(target)
        origin = _utc(now).floor(f"{tc.resolution_s}s")
        model = self._model(target)
        if model is None or not self._fits(model, target):
            return self._ready_to_train(target, origin)[0]
        if model.metrics.get("quick"):
            return not self._recently_failed(target, origin)
        trained = _utc(model.trained_at or model.train_end)
        if origin - trained <= pd.Timedelta(hours=self._cfg.retrain_interval_h):
            return False
        if self._recently_failed(target, origin):
            return False
        newer = self._grid(target, _utc(model.train_end).floor(f"{tc.resolution_s}s"), origin).iloc[1:]
        return bool(newer.notna().any())

    def _fits(self, model: TrainedModel, target: TargetName) -> bool:
        tc = self.target_config(target)
        steps = tc.horizon_h * 3600 // tc.resolution_s
        return model.spec.resolution_s == tc.resolution_s and model.spec.horizon_steps >= steps

    def _recently_failed(self, target: TargetName, origin: pd.Timestamp) -> bool:
        failed = self._failed_train.get(target)
        return failed is not None and origin - failed[0] < RETRY_FAILED

    def _ready_to_train(self, target: TargetName, origin: pd.Timestamp) -> tuple[bool, str]:
        """Whether a first model can be trained now: enough history over the whole training window
        (every measured interval counts, gaps allowed) and no failed training in the last hour."""
        if self._recently_failed(target, origin):
            return False, self._failed_train[target][1]
        tc = self.target_config(target)
        y = self._grid(target, origin - pd.Timedelta(days=self._cfg.train_window_days), origin)
        days = float(y.notna().sum()) * tc.resolution_s / 86400
        if days < self._cfg.min_history_days:
            return False, f"cold start: {days:.1f} days of history < {self._cfg.min_history_days:g}"
        return True, ""

    def _model(self, target: TargetName) -> TrainedModel | None:
        with self._lock:
            if target in self._models:
                return self._models[target]
        res = artifacts.load(self._dir, target)
        if res.model is None:
            with self._lock:
                self._load_reason[target] = res.reason
            return None
        with self._lock:
            self._models[target] = res.model
        return res.model

    # ---------------------------------------------------------------- prediction
    def predict(self, target: TargetName, now: datetime) -> Forecast:
        """The forecast from `now` over the target's horizon. Never raises on data problems."""
        tc = self.target_config(target)
        res_s = tc.resolution_s
        freq = f"{res_s}s"
        origin = _utc(now).floor(freq)
        steps = tc.horizon_h * 3600 // res_s
        generated = _utc(now).to_pydatetime()
        hist_start = origin - pd.Timedelta(days=PREDICT_HISTORY_DAYS)
        try:
            y = self._grid(target, hist_start, origin)
        except Exception as exc:
            log.exception("forecasting: history for %s unreadable", target)
            return self._empty(target, generated, f"history unreadable: {exc.__class__.__name__}")
        days = float(y.notna().sum()) * res_s / 86400
        if days == 0:
            return self._empty(target, generated, "no history yet")
        model = self._model(target)
        if model is None or not self._fits(model, target):
            ready, reason = self._ready_to_train(target, origin)
            if ready:
                result = self.train(target, now=now, quick=True)
                model = self._model(target) if result.trained else None
                reason = result.reason
            elif self._load_reason.get(target, "no saved model") != "no saved model":
                reason = f"{reason}; saved model not used: {self._load_reason[target]}"
            if model is None:
                return self._baseline(target, y, origin, steps, generated, reason or "no usable model")
        index = pd.date_range(hist_start, origin + pd.Timedelta(seconds=res_s * steps), freq=freq, inclusive="left")
        wframe: pd.DataFrame | None = None
        if model.spec.weather_columns:
            raw, why = self._fetch_weather(hist_start, index[-1] + pd.Timedelta(seconds=res_s))
            wframe = align(raw, index)
            future = None if wframe is None else wframe.iloc[len(y) :][list(model.spec.weather_columns)]
            if future is None or future.isna().mean().max() > 0.2:
                why = why or "weather forecast missing for the horizon"
                return self._baseline(target, y, origin, steps, generated, why)
        try:
            t0 = time.perf_counter()
            from threadpoolctl import threadpool_limits  # type: ignore[import-untyped,unused-ignore]

            o = np.full(steps, len(y), dtype=np.int64)
            k = np.arange(1, steps + 1, dtype=np.int64)
            with threadpool_limits(self._threads):
                q = model.predict(y.to_numpy(dtype=np.float64), index, o, k, weather=wframe)
            elapsed = time.perf_counter() - t0
        except Exception as exc:  # a model that cannot predict is retrained next time, not fatal now
            log.exception("forecasting: %s model failed to predict", target)
            with self._lock:
                self._models.pop(target, None)
            return self._baseline(target, y, origin, steps, generated, f"model failed: {exc.__class__.__name__}")
        if not np.isfinite(q).all():
            return self._baseline(target, y, origin, steps, generated, "model produced non-finite values")
        pts = tuple(
            ForecastPoint(index[len(y) + i].to_pydatetime(), float(q[i, 0]), float(q[i, 1]), float(q[i, 2]))
            for i in range(steps)
        )
        meta = {
            "training_window": [model.train_start.isoformat(), model.train_end.isoformat()],
            "trained_at": model.trained_at.isoformat() if model.trained_at is not None else None,
            # the first model a target gets is a cheap one (`train(quick=True)`); the full one follows
            "quick": bool(model.metrics.get("quick")),
            "weather": list(model.spec.weather_columns),
            "predict_s": round(elapsed, 4),
        }
        return Forecast(target, generated, res_s, tc.unit, pts, "model", "hgb-quantile", "", meta)

    def accuracy(
        self, target: TargetName, forecasts: Sequence[Forecast], now: datetime, *, window_days: float = 7
    ) -> Accuracy:
        """Live accuracy of the forecasts published for `target` over the last `window_days`: rolling nMAE,
        P10-P90 coverage and skill against the best naive baseline, all on the same points."""
        tc = self.target_config(target)
        origin = _utc(now).floor(f"{tc.resolution_s}s")
        window = pd.Timedelta(days=window_days)
        y = self._grid(target, origin - window - pd.Timedelta(days=30), origin)
        norm: float | None = None
        if target in ("wind", "pv"):
            norm = tc.capacity_w or (float(np.nanmax(y.to_numpy())) if y.notna().any() else None)
        return rolling_accuracy(
            forecasts,
            y.dropna(),
            now=origin.to_pydatetime(),
            window=window.to_pytimedelta(),
            normaliser=norm,
            timezone=self._tz,
        )

    def recalibrated(self, target: TargetName, fc: Forecast, raw_past: Sequence[Forecast], now: datetime) -> Forecast:
        """`fc` (a model's forecast) with its band scaled by the errors of the model's own past forecasts
        whose hours have passed, over the last `recalibrate.RECENT_DAYS` days (`forecasting.recalibrate`;
        the backtest does the same). `raw_past`: earlier *unscaled* forecasts, so the scale is measured
        against the bands the model makes, not against bands already scaled. The scale and the days of
        errors it rests on go to `metadata.band_scale`; under a week of errors the band is left as it is."""
        from forecasting import recalibrate

        if fc.kind != "model" or not fc.points:
            return fc
        tc = self.target_config(target)
        origin = _utc(now).floor(f"{tc.resolution_s}s")
        since = origin - pd.Timedelta(days=recalibrate.RECENT_DAYS)
        y = self._grid(target, since - pd.Timedelta(days=1), origin).dropna()
        # One pass: the points of the window whose hour has a measured value. The days of errors are the
        # span of those hours only (past forecasts also hold hours still ahead, up to 48 h: counting them
        # let scaling start two days before a week of errors existed).
        rows: list[tuple[float, float, float, float]] = []
        stamps: list[pd.Timestamp] = []
        for f in raw_past:
            if f.kind != "model":
                continue
            for p in f.points:
                ts = pd.Timestamp(p.ts)
                actual = y.get(ts) if since <= ts < origin else None
                if actual is not None:
                    rows.append((p.p10, p.p50, p.p90, float(actual)))
                    stamps.append(ts)
        scale, days = 1.0, 0.0
        if rows:
            arr = np.array(rows, dtype=np.float64)
            days = (max(stamps) - min(stamps)).total_seconds() / 86400
            needed = recalibrate.needed_scales(arr[:, :3], arr[:, 3])
            scale = recalibrate.scale_from(needed, len(rows) / max(days, 1e-9))
        q = np.array([[p.p10, p.p50, p.p90] for p in fc.points], dtype=np.float64)
        lower = 0.0 if target in ("wind", "pv") else None
        upper = tc.capacity_w if target in ("wind", "pv") else None
        q = recalibrate.rescale(q, scale, lower, upper)
        points = tuple(
            ForecastPoint(p.ts, float(q[i, 0]), float(q[i, 1]), float(q[i, 2])) for i, p in enumerate(fc.points)
        )
        meta = {**fc.metadata, "band_scale": {"scale": round(scale, 4), "days": round(days, 2)}}
        return dataclasses.replace(fc, points=points, metadata=meta)

    def _empty(self, target: TargetName, generated: datetime, reason: str) -> Forecast:
        tc = self.target_config(target)
        return Forecast(target, generated, tc.resolution_s, tc.unit, (), "empty", "none", reason)

    def _baseline(
        self, target: TargetName, y: pd.Series, origin: pd.Timestamp, steps: int, generated: datetime, reason: str
    ) -> Forecast:
        """The best baseline on recent history, with intervals from its own past errors."""
        tc = self.target_config(target)
        res_s = tc.resolution_s
        spd = 86400 // res_s
        yv = y.to_numpy(dtype=np.float64)
        index = pd.date_range(
            y.index[0], origin + pd.Timedelta(seconds=res_s * steps), freq=f"{res_s}s", inclusive="left"
        )
        choice = choose_baseline(yv, index, steps_per_day=spd, horizon_steps=steps, timezone=self._tz)
        o = np.full(steps, len(yv), dtype=np.int64)
        k = np.arange(1, steps + 1, dtype=np.int64)
        clim = climatology_table(yv, index, self._tz)
        p50 = baseline_values(choice.name, yv, index, o, k, steps_per_day=spd, timezone=self._tz, climatology=clim)
        # gaps in the chosen baseline: climatology, then the last measured value
        fill = baseline_values("climatology", yv, index, o, k, steps_per_day=spd, timezone=self._tz, climatology=clim)
        last = float(y.dropna().iloc[-1])
        p50 = np.where(np.isfinite(p50), p50, np.where(np.isfinite(fill), fill, last))
        q = np.column_stack([p50 + choice.q_low, p50, p50 + choice.q_high])
        q = np.sort(q, axis=1)
        if target in ("wind", "pv"):
            q = np.clip(q, 0.0, tc.capacity_w)
        pts = tuple(
            ForecastPoint(index[len(yv) + i].to_pydatetime(), float(q[i, 0]), float(q[i, 1]), float(q[i, 2]))
            for i in range(steps)
        )
        return Forecast(
            target,
            generated,
            res_s,
            tc.unit,
            pts,
            "baseline",
            choice.name,
            reason,
            {"baseline_mae": None if not np.isfinite(choice.mae) else round(choice.mae, 3)},
        )


def outage_mask(
    y: np.ndarray[Any, Any], expected: np.ndarray[Any, Any], capacity: float
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Training rows to skip: the farm produced (almost) nothing while the curve expected a lot.

    Unflagged downtime and curtailment look like this; learning from them would teach the model that
    strong wind sometimes means zero output. Evaluation still counts them (the meter is the truth).
    """
    n = min(len(y), len(expected))
    out = np.zeros(len(y), dtype=bool)
    with np.errstate(invalid="ignore"):
        out[:n] = (y[:n] <= 0.01 * capacity) & (expected[:n] >= 0.5 * capacity)
    return out
