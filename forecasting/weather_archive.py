"""A local archive of the weather *forecasts* the gateway fetched, kept by lead, in front of a provider.

Why an archive: a forecast API serves only a short past (Open-Meteo's forecast API: 92 days back, 16
ahead), but a wind or PV model trains on a year. Asking for the year makes the API refuse the request
(HTTP 400), and a model that cannot get its weather history is never retrained. So every hour fetched
is kept here (SQLite beside the models), requests are clamped to what the provider serves, and the rest
of a training window comes from the archive.

Why by lead, first value kept: a model must be trained on the weather it will predict with. The agent
predicts with forecasts made up to 48 h ahead; an hour fetched again after it has passed comes back as
near-observed weather (the API's `past_days` are its latest runs). Keeping the *latest* fetch per hour
trained the models on near-observed weather (the value kept for one hour had been fetched 203 h after
it) while predictions used day-ahead values: trained on true wind and scored on forecast-like wind,
P10–P90 coverage fell from 79.7 % to 28.3 %. So each hour keeps, per lead bucket, the value **first**
fetched in it and never overwrites it with a later fetch:

* bucket 0: fetched during or after the hour (what is known after the fact: lag features use it);
* bucket b >= 1: fetched between 24·(b-1) and 24·b hours before the hour; the first such fetch is the
  oldest, about 24·b hours ahead, which is what Open-Meteo's Previous Runs API calls `_previous_day{b}`.

A training window older than the archive is back-filled from the Previous Runs API (`backfill`), once
per day of history (a failed day is retried a day later). `fetch_leads` gives training its frames by
lead; `fetch` gives a prediction the freshest forecast for the horizon and bucket 0 for the past.

When the provider is unreachable, the hours fetched before (the last forecast for the coming day
included) are served from the archive, so a network outage of a few hours costs nothing instead of
degrading wind and PV to baselines. Only when the archive holds nothing for the requested range is the
provider's error passed on. A column the provider left empty is filled by a later fetch in the same
bucket; a value once stored is never replaced.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

import pandas as pd

from forecasting.features import WEATHER_COLUMNS
from forecasting.weather import WeatherError, WeatherProvider

log = logging.getLogger(__name__)

_COLS: Final = tuple(WEATHER_COLUMNS)
#: lead buckets kept: 0 (after the fact), 1 (~24 h ahead), 2 (~48 h ahead: the longest horizon)
LEAD_BUCKETS: Final = 3
#: longest back-fill request, days (keeps one response well under the client's body limit)
BACKFILL_CHUNK_DAYS: Final = 31
#: a back-fill request that failed is retried after this long
BACKFILL_RETRY: Final = pd.Timedelta(days=1)


class LeadSource(Protocol):
    """A source of past forecasts by lead (`weather.PreviousRunsProvider`)."""

    def fetch_leads(self, start: datetime, end: datetime) -> list[pd.DataFrame]: ...


class ArchivingProvider:
    """A `WeatherProvider` that clamps requests to the inner provider's reach and archives by lead."""

    def __init__(
        self,
        inner: WeatherProvider,
        path: Path,
        *,
        max_past_days: float,
        keep_days: float = 800,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        backfill: LeadSource | None = None,
    ) -> None:
        self._inner = inner
        self._path = path
        self._max_past = pd.Timedelta(days=max_past_days)
        self._keep = pd.Timedelta(days=keep_days)
        self._now = now
        self._backfill = backfill
        self._lock = threading.Lock()  # one connection, used from the forecasting worker thread(s)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode = WAL")
        cols = ", ".join(f"{c} REAL" for c in _COLS)
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS weather_lead (ts_ms INTEGER NOT NULL, lead INTEGER NOT NULL,"
            f" fetched_ms INTEGER NOT NULL, {cols}, PRIMARY KEY (ts_ms, lead))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS backfill (day TEXT PRIMARY KEY, tried_ms INTEGER NOT NULL, ok INTEGER NOT NULL)"
        )
        self._migrate()

    def _migrate(self) -> None:
        """The first archive (one row per hour, latest fetch kept) knows no leads: its rows fetched after
        their hour are kept as bucket 0 (after the fact), the rest is dropped (its lead is unknown)."""
        query = "SELECT name FROM sqlite_master WHERE type='table' AND name='weather'"
        if self._db.execute(query).fetchone() is None:
            return
        names = ", ".join(_COLS)
        self._db.execute("BEGIN IMMEDIATE")  # the agent and a training process may open it at once
        try:
            if self._db.execute(query).fetchone() is not None:
                self._db.execute(
                    f"INSERT OR IGNORE INTO weather_lead (ts_ms, lead, fetched_ms, {names})"
                    f" SELECT ts_ms, 0, fetched_ms, {names} FROM weather WHERE fetched_ms >= ts_ms"
                )
                self._db.execute("DROP TABLE weather")
                log.info("forecasting: weather archive %s migrated to forecasts by lead", self._path)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------ reading
    def fetch(self, start: datetime, end: datetime) -> pd.DataFrame:
        """For a prediction: the fresh forecast for hours from now on, bucket 0 for the past.

        Where the fresh fetch has no value (provider down), the archive's freshest forecast is used.
        """
        s, e = _utc(start).floor("h"), _utc(end)
        now = _utc(self._now())
        fresh, error = self._fetch_fresh(s, e, now)
        try:
            with self._lock:
                if fresh is not None and not fresh.empty:
                    self._store_fetch(fresh, now)
                frames = self._load(s, e)
        except sqlite3.Error as exc:  # a broken archive must not cost the fresh forecast
            log.error("forecasting: weather archive %s unusable: %s", self._path, exc)
            if fresh is None:
                raise WeatherError(f"weather provider failed ({error}) and the archive is unusable") from None
            return fresh
        cut = now.floor("h")
        b0, b1, b2 = frames
        forecast = b1.combine_first(b2)  # the freshest archived forecast first
        past, future = b0.combine_first(forecast), forecast.combine_first(b0)
        if fresh is not None and not fresh.empty:
            fresh = fresh.reindex(columns=list(_COLS))
            past, future = past.combine_first(fresh), fresh.combine_first(future)
        out = pd.concat([past[past.index < cut], future[future.index >= cut]]).sort_index()
        if out.dropna(how="all").empty:
            if error is not None:
                raise error
            return out.iloc[0:0]
        if error is not None:
            log.warning("forecasting: weather provider failed (%s); using %d archived hours", error, len(out))
        return out

    def fetch_leads(self, start: datetime, end: datetime) -> list[pd.DataFrame]:
        """For training: one frame per lead bucket, forecasts as first fetched, back-filled if needed.

        A bucket's gaps are filled from the other forecast bucket (an older or a younger forecast is
        still a forecast), never from bucket 0: a model must not learn from weather known after the fact.
        """
        s, e = _utc(start).floor("h"), _utc(end)
        now = _utc(self._now())
        fresh, _ = self._fetch_fresh(s, e, now)
        with self._lock:
            if fresh is not None and not fresh.empty:
                self._store_fetch(fresh, now)
        self._backfill_missing(s, min(e, now.floor("h")), now)
        with self._lock:
            b0, b1, b2 = self._load(s, e)
        f1, f2 = b1.combine_first(b2), b2.combine_first(b1)
        return [b0.combine_first(f1), f1, f2]

    def hours(self, lead: int | None = None) -> int:
        """How many hours the archive holds (in one lead bucket, or any): health and tests."""
        with self._lock:
            if lead is None:
                row = self._db.execute("SELECT count(DISTINCT ts_ms) FROM weather_lead").fetchone()
            else:
                row = self._db.execute("SELECT count(*) FROM weather_lead WHERE lead = ?", (lead,)).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------------------------------ internals
    def _fetch_fresh(
        self, s: pd.Timestamp, e: pd.Timestamp, now: pd.Timestamp
    ) -> tuple[pd.DataFrame | None, WeatherError | None]:
        # the provider counts whole days back from today: stay one day inside its limit
        reach = (now - self._max_past).floor("D") + pd.Timedelta(days=1)
        if max(s, reach) >= e:
            return None, None
        try:
            return self._inner.fetch(max(s, reach).to_pydatetime(), e.to_pydatetime()), None
        except WeatherError as exc:
            return None, exc

    def _store_fetch(self, frame: pd.DataFrame, now: pd.Timestamp) -> None:
        """Store a live fetch: each hour goes to the bucket of its lead at `now`."""
        idx = _index_utc(frame)
        lead_h = (idx - now).total_seconds().to_numpy() / 3600.0
        bucket = [max(0, int(b)) for b in -(-lead_h // 24)]  # ceil(lead / 24 h); hours begun are 0
        self._store(frame, bucket, now)

    def _store(self, frame: pd.DataFrame, bucket: Sequence[int], now: pd.Timestamp) -> None:
        frame = frame.reindex(columns=list(_COLS))
        ts = _index_utc(frame).as_unit("ms").asi8
        fetched = int(now.timestamp() * 1000)
        rows = [
            (int(t), int(b), fetched, *(None if pd.isna(v) else float(v) for v in values))
            for t, b, values in zip(ts, bucket, frame.itertuples(index=False, name=None), strict=True)
            if 0 <= int(b) < LEAD_BUCKETS and any(not pd.isna(v) for v in values)
        ]
        names = ", ".join(_COLS)
        marks = ", ".join("?" for _ in range(len(_COLS) + 3))
        fill_only = ", ".join(f"{c} = coalesce({c}, excluded.{c})" for c in _COLS)
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                f"INSERT INTO weather_lead (ts_ms, lead, fetched_ms, {names}) VALUES ({marks})"
                f" ON CONFLICT(ts_ms, lead) DO UPDATE SET {fill_only}",
                rows,
            )
            horizon = int((now - self._keep).timestamp() * 1000)
            self._db.execute("DELETE FROM weather_lead WHERE ts_ms < ?", (horizon,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _load(self, start: pd.Timestamp, end: pd.Timestamp) -> list[pd.DataFrame]:
        rows = self._db.execute(
            f"SELECT ts_ms, lead, {', '.join(_COLS)} FROM weather_lead WHERE ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms",
            (int(start.timestamp() * 1000), int(end.timestamp() * 1000)),
        ).fetchall()
        frames = []
        for lead in range(LEAD_BUCKETS):
            mine = [r for r in rows if r[1] == lead]
            index = pd.DatetimeIndex(pd.to_datetime([r[0] for r in mine], unit="ms", utc=True))
            frames.append(pd.DataFrame([r[2:] for r in mine], index=index, columns=list(_COLS), dtype="float64"))
        return frames

    def _backfill_missing(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp) -> None:
        """Ask the back-fill source for the days in [start, end) with no forecast and not tried lately."""
        if self._backfill is None or start >= end:
            return
        days = pd.date_range(start.floor("D"), end, freq="D", inclusive="left")
        if len(days) == 0:
            return
        with self._lock:
            have = {
                int(r[0])
                for r in self._db.execute(
                    "SELECT ts_ms / 86400000 FROM weather_lead WHERE lead > 0 AND ts_ms >= ? AND ts_ms < ?"
                    " GROUP BY ts_ms / 86400000 HAVING count(*) >= ?",  # every hour at every forecast lead
                    (int(days[0].timestamp() * 1000), int(end.timestamp() * 1000), 24 * (LEAD_BUCKETS - 1)),
                )
            }
            tried = {r[0]: (int(r[1]), bool(r[2])) for r in self._db.execute("SELECT day, tried_ms, ok FROM backfill")}
        retry_ms = int((now - BACKFILL_RETRY).timestamp() * 1000)
        todo = []
        for d in days:
            key = d.strftime("%Y-%m-%d")
            if int(d.timestamp()) // 86400 in have:
                continue
            t = tried.get(key)
            if t is not None and (t[1] or t[0] > retry_ms):
                continue
            todo.append(d)
        for chunk in _runs(todo, BACKFILL_CHUNK_DAYS):
            lo, hi = chunk[0], chunk[-1] + pd.Timedelta(days=1)
            try:
                frames = self._backfill.fetch_leads(lo.to_pydatetime(), hi.to_pydatetime())
                ok = True
            except WeatherError as exc:
                log.warning("forecasting: weather back-fill %s..%s failed: %s", lo.date(), chunk[-1].date(), exc)
                frames, ok = [], False
            with self._lock:
                for lead, frame in enumerate(frames[:LEAD_BUCKETS]):
                    if not frame.empty:
                        self._store(frame, [lead] * len(frame), now)
                self._db.executemany(
                    "INSERT OR REPLACE INTO backfill (day, tried_ms, ok) VALUES (?, ?, ?)",
                    [(d.strftime("%Y-%m-%d"), int(now.timestamp() * 1000), int(ok)) for d in chunk],
                )
            if ok:
                log.info("forecasting: weather back-filled %s..%s from past forecasts", lo.date(), chunk[-1].date())


def _runs(days: list[pd.Timestamp], most: int) -> list[list[pd.Timestamp]]:
    """Consecutive days grouped into runs of at most `most`."""
    out: list[list[pd.Timestamp]] = []
    for d in days:
        if out and d - out[-1][-1] == pd.Timedelta(days=1) and len(out[-1]) < most:
            out[-1].append(d)
        else:
            out.append([d])
    return out


def _index_utc(frame: pd.DataFrame) -> pd.DatetimeIndex:
    idx = pd.DatetimeIndex(frame.index)
    return idx.tz_convert("UTC") if idx.tz is not None else idx.tz_localize("UTC")


def _utc(ts: datetime | pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
