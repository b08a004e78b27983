"""A local archive of the weather the gateway has fetched, in front of a provider with a short memory.

Why: a forecast API serves only a short past (Open-Meteo's forecast API: 92 days back, 16 ahead), but a
wind or PV model trains on a year. Asking for the year makes the API refuse the request (HTTP 400), and a
model that cannot get its weather history is never retrained. So every hour fetched is kept here
(SQLite beside the models), requests are clamped to what the provider serves, and the rest of a
training window comes from the archive. Over the months the archive becomes a record of the weather
the site actually forecast with, which is also what the model sees at prediction time.

A second benefit: when the provider is unreachable, the hours fetched before (the last forecast for
the coming day included) are served from the archive, so a network outage of a few hours costs nothing
instead of degrading wind and PV to baselines. Only when the archive holds nothing for the requested
range is the provider's error passed on.

Each hour keeps its most recently fetched values (a later forecast of the same hour is a better one);
a column the provider left empty does not erase a value fetched before.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pandas as pd

from forecasting.features import WEATHER_COLUMNS
from forecasting.weather import WeatherError, WeatherProvider

log = logging.getLogger(__name__)

_COLS: Final = tuple(WEATHER_COLUMNS)


class ArchivingProvider:
    """A `WeatherProvider` that clamps requests to the inner provider's reach and archives every hour."""

    def __init__(
        self,
        inner: WeatherProvider,
        path: Path,
        *,
        max_past_days: float,
        keep_days: float = 800,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._inner = inner
        self._path = path
        self._max_past = pd.Timedelta(days=max_past_days)
        self._keep = pd.Timedelta(days=keep_days)
        self._now = now
        self._lock = threading.Lock()  # one connection, used from the forecasting worker thread(s)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        cols = ", ".join(f"{c} REAL" for c in _COLS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS weather (ts_ms INTEGER PRIMARY KEY, fetched_ms INTEGER, {cols})")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def fetch(self, start: datetime, end: datetime) -> pd.DataFrame:
        s, e = _utc(start).floor("h"), _utc(end)
        now = _utc(self._now())
        # the provider counts whole days back from today: stay one day inside its limit
        reach = (now - self._max_past).floor("D") + pd.Timedelta(days=1)
        fresh: pd.DataFrame | None = None
        error: WeatherError | None = None
        if max(s, reach) < e:
            try:
                fresh = self._inner.fetch(max(s, reach).to_pydatetime(), e.to_pydatetime())
            except WeatherError as exc:
                error = exc
        try:
            with self._lock:
                if fresh is not None and not fresh.empty:
                    self._store(fresh, now)
                archived = self._load(s, e)
        except sqlite3.Error as exc:  # a broken archive must not cost the fresh forecast
            log.error("forecasting: weather archive %s unusable: %s", self._path, exc)
            if fresh is None:
                raise WeatherError(f"weather provider failed ({error}) and the archive is unusable") from None
            return fresh
        if archived.empty:
            if error is not None:
                raise error
            return archived
        if error is not None:
            log.warning("forecasting: weather provider failed (%s); using %d archived hours", error, len(archived))
        return archived

    def _store(self, frame: pd.DataFrame, now: pd.Timestamp) -> None:
        frame = frame.reindex(columns=list(_COLS))
        idx = pd.DatetimeIndex(frame.index)
        ts = (idx.tz_convert("UTC") if idx.tz is not None else idx.tz_localize("UTC")).as_unit("ms")
        fetched = int(now.timestamp() * 1000)
        rows = [
            (int(t), fetched, *(None if pd.isna(v) else float(v) for v in values))
            for t, values in zip(ts.asi8, frame.itertuples(index=False, name=None), strict=True)
        ]
        names = ", ".join(_COLS)
        marks = ", ".join("?" for _ in range(len(_COLS) + 2))
        keep_old = ", ".join(f"{c} = coalesce(excluded.{c}, {c})" for c in _COLS)
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                f"INSERT INTO weather (ts_ms, fetched_ms, {names}) VALUES ({marks})"
                f" ON CONFLICT(ts_ms) DO UPDATE SET fetched_ms = excluded.fetched_ms, {keep_old}",
                rows,
            )
            horizon = int((now - self._keep).timestamp() * 1000)
            self._db.execute("DELETE FROM weather WHERE ts_ms < ?", (horizon,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _load(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        rows = self._db.execute(
            f"SELECT ts_ms, {', '.join(_COLS)} FROM weather WHERE ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
            (int(start.timestamp() * 1000), int(end.timestamp() * 1000)),
        ).fetchall()
        index = pd.DatetimeIndex(pd.to_datetime([r[0] for r in rows], unit="ms", utc=True))
        frame = pd.DataFrame([r[1:] for r in rows], index=index, columns=list(_COLS), dtype="float64")
        return frame

    def hours(self) -> int:
        """How many hours the archive holds (health and tests)."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM weather").fetchone()
        return int(row[0])


def _utc(ts: datetime | pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
