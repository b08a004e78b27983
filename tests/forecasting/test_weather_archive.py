"""The weather archive in front of a real local HTTP server that keeps Open-Meteo's reach (92 days back).

The server refuses a start date beyond its reach with HTTP 400, as the real forecast API does; without
the archive a year-long training window is refused and a wind model never trains.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest

from forecasting.config import ForecastingConfig, TargetConfig
from forecasting.history import FrameHistory
from forecasting.service import ForecastService, make_weather_provider
from forecasting.weather import OpenMeteoProvider, WeatherError
from forecasting.weather_archive import ArchivingProvider

from .test_wind_pv import CAP, wind_frame


class OpenMeteoLike:
    """Open-Meteo's forecast API (`/v1/forecast`, within [today - 92 d, today + 16 d]) and its Previous
    Runs API (`/previous/v1/forecast`: `<variable>_previous_dayN`), serving a weather frame.

    With `stamp=True` every value is its lead time in hours instead: the forecast API's value for an
    hour is (hour - today) (negative once the hour has passed: weather known after the fact), the
    Previous Runs API's `_previous_dayN` is 24·N and its plain variable 0. A model's features then show
    which forecast each training row used.
    """

    VARIABLES: ClassVar[dict[str, str]] = {
        "temperature_2m": "temperature_c",
        "wind_speed_100m": "wind_speed_ms",
        "wind_direction_100m": "wind_direction_deg",
    }

    def __init__(self, frame: pd.DataFrame, today: datetime, *, stamp: bool = False) -> None:
        self.frame = frame
        self.today = today
        self.stamp = stamp
        self.down = False
        self.requests: list[tuple[str, str]] = []
        self.previous_requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                start, end = q["start_date"][0], q["end_date"][0]
                previous = url.path.startswith("/previous/")
                (outer.previous_requests if previous else outer.requests).append((start, end))
                status, body = outer.answer(start, end, q["hourly"][0].split(","), previous=previous)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    def answer(self, start: str, end: str, names: list[str], *, previous: bool) -> tuple[int, dict[str, Any]]:
        if self.down:
            return 503, {"error": True, "reason": "maintenance"}
        first = (pd.Timestamp(self.today) - pd.Timedelta(days=92)).strftime("%Y-%m-%d")
        if start < first and not previous:
            return 400, {"error": True, "reason": f"Parameter 'start_date' is out of allowed range from {first}"}
        last = pd.Timestamp(end, tz="UTC") + pd.Timedelta(hours=23)
        hours = pd.date_range(pd.Timestamp(start, tz="UTC"), last, freq="h")
        rows = self.frame.reindex(hours)
        hourly: dict[str, Any] = {"time": [t.strftime("%Y-%m-%dT%H:%M") for t in hours]}
        for name in names:
            var, _, day = name.partition("_previous_day")
            if var not in self.VARIABLES or (day and not previous):
                continue
            if self.stamp:
                lead = 24.0 * int(day) if previous and day else 0.0 if previous else None
                now = pd.Timestamp(self.today)
                hourly[name] = [lead if lead is not None else (t - now) / pd.Timedelta(hours=1) for t in hours]
            else:
                col = rows[self.VARIABLES[var]] if self.VARIABLES[var] in rows else pd.Series(np.nan, index=hours)
                hourly[name] = [None if pd.isna(v) else round(float(v), 2) for v in col]
        units = {n: "m/s" for n in names if n.startswith("wind_speed")}
        return 200, {"utc_offset_seconds": 0, "hourly_units": units, "hourly": hourly}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1/forecast"

    @property
    def previous_url(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/previous/v1/forecast"

    def __enter__(self) -> OpenMeteoLike:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(timeout=5)


WEATHER_START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def weather() -> pd.DataFrame:
    idx = pd.date_range(WEATHER_START, periods=400 * 24, freq="h", tz="UTC")
    ws = 7 + 3 * np.sin(np.arange(len(idx)) / 30)
    return pd.DataFrame({"wind_speed_ms": ws, "wind_direction_deg": 200.0}, index=idx)


def archiving(server: OpenMeteoLike, path: Path) -> ArchivingProvider:
    http = OpenMeteoProvider(url=server.url, latitude=56.95, longitude=24.1, timeout_s=5)
    return ArchivingProvider(http, path, max_past_days=92, now=lambda: server.today)


def test_a_year_long_request_is_refused_by_the_api_but_not_through_the_archive(
    weather: pd.DataFrame, tmp_path: Path
) -> None:
    today = WEATHER_START + timedelta(days=300)
    with OpenMeteoLike(weather, today) as server:
        plain = OpenMeteoProvider(url=server.url, latitude=56.95, longitude=24.1)
        with pytest.raises(WeatherError, match="HTTP 400"):
            plain.fetch(today - timedelta(days=365), today + timedelta(days=2))
        arch = archiving(server, tmp_path / "weather.db")
        got = arch.fetch(today - timedelta(days=365), today + timedelta(days=2))
        assert server.requests[-1][0] >= (today - timedelta(days=92)).strftime("%Y-%m-%d")
        assert got.index[0] <= pd.Timestamp(today - timedelta(days=90)) and got.index[-1] >= pd.Timestamp(today)
        assert got["wind_speed_ms"].notna().all()


def test_the_archive_grows_into_a_training_window_and_survives_a_restart(weather: pd.DataFrame, tmp_path: Path) -> None:
    day0 = WEATHER_START + timedelta(days=100)
    with OpenMeteoLike(weather, day0) as server:
        arch = archiving(server, tmp_path / "weather.db")
        arch.fetch(day0 - timedelta(days=365), day0 + timedelta(days=2))
        arch.close()
        server.today = day0 + timedelta(days=150)  # five months later, after a restart
        arch = archiving(server, tmp_path / "weather.db")
        got = arch.fetch(server.today - timedelta(days=365), server.today + timedelta(days=2))
    # 91 days from the first fetch + 93 from the second, with the 58 days between them never fetched
    expected = weather.loc[got.index, "wind_speed_ms"].round(2)
    assert np.allclose(got["wind_speed_ms"], expected)
    assert got.index[0] < pd.Timestamp(day0 - timedelta(days=88))
    assert len(got) == arch.hours() >= (91 + 93) * 24


def test_provider_down_serves_the_last_fetched_forecast_and_an_empty_archive_fails(
    weather: pd.DataFrame, tmp_path: Path
) -> None:
    today = WEATHER_START + timedelta(days=200)
    with OpenMeteoLike(weather, today) as server:
        empty = archiving(server, tmp_path / "empty.db")
        server.down = True
        with pytest.raises(WeatherError, match="HTTP 503"):
            empty.fetch(today - timedelta(days=28), today + timedelta(days=2))
        server.down = False
        arch = archiving(server, tmp_path / "weather.db")
        arch.fetch(today - timedelta(days=28), today + timedelta(days=2))
        server.down = True
        server.today = today + timedelta(hours=3)
        got = arch.fetch(server.today - timedelta(days=28), server.today + timedelta(days=1))
    assert got.index[-1] >= pd.Timestamp(server.today + timedelta(hours=23))  # the coming day is covered


def test_wind_trains_on_past_forecasts_reaching_further_than_the_forecast_api(tmp_path: Path) -> None:
    """120 days of plant history, a forecast API reaching 92 days: the window is back-filled with past
    forecasts (Previous Runs API) and the model trains on all of it. Without back-fill, the hours the
    forecast API serves from its past are weather known after the fact: no wind model trains on those."""
    f = wind_frame(122)
    hist, now = f.iloc[: 120 * 24], f.index[120 * 24].to_pydatetime()
    with OpenMeteoLike(f[["wind_speed_ms", "wind_direction_deg"]], now) as server:
        weather = {"provider": "open-meteo", "url": server.url, "backfill_url": server.previous_url}
        cfg = ForecastingConfig(
            enabled=True,
            min_history_days=14,
            max_iter=30,
            targets={"wind": TargetConfig(horizon_h=24, capacity_w=CAP)},
            weather=weather,
        )
        no_backfill = cfg.model_copy(update={"weather": cfg.weather.model_copy(update={"backfill": False})})
        plain = make_weather_provider(no_backfill, latitude=56.95, longitude=24.1, archive_dir=tmp_path / "plain")
        assert isinstance(plain, ArchivingProvider)
        plain._now = lambda: now
        svc = ForecastService(
            no_backfill, FrameHistory({"wind": hist["value"]}), artifact_dir=tmp_path / "plain", weather=plain
        )
        res = svc.train("wind", now=now)
        assert not res.trained and "needs weather history" in res.reason

        provider = make_weather_provider(cfg, latitude=56.95, longitude=24.1, archive_dir=tmp_path)
        assert isinstance(provider, ArchivingProvider)
        provider._now = lambda: now  # the server's "today"
        svc = ForecastService(cfg, FrameHistory({"wind": hist["value"]}), artifact_dir=tmp_path, weather=provider)
        res = svc.train("wind", now=now)
        assert res.trained, res.reason
        assert res.weather_columns == ("wind_speed_ms", "wind_direction_deg")
        assert len(server.previous_requests) == 4  # 120 days in chunks of at most 31
        fc = svc.predict("wind", now)
        provider.fetch_leads(now - timedelta(days=120), now)
        assert len(server.previous_requests) == 4  # back-filled days are not asked again
    assert fc.kind == "model", fc.reason
    model = svc._model("wind")
    assert model is not None and pd.Timestamp(model.train_start) <= pd.Timestamp(now - timedelta(days=119))


def stamped(server: OpenMeteoLike, arch: ArchivingProvider, at: datetime) -> pd.DataFrame:
    """A prediction's fetch at `at` (28 days back, 2 ahead), the server's clock moved there too."""
    server.today = at
    arch._now = lambda: at
    return arch.fetch(at - timedelta(days=28), at + timedelta(days=2))


def test_the_archive_keeps_the_first_value_fetched_at_each_lead(tmp_path: Path) -> None:
    """Each value is its lead in hours. Fetches every 6 h: an hour's ~24 h-ahead and ~48 h-ahead
    forecasts stay as first fetched, a later fetch (nearer, or after the hour) never replaces them."""
    t0 = WEATHER_START + timedelta(days=100)
    with OpenMeteoLike(pd.DataFrame(), t0, stamp=True) as server:
        arch = archiving(server, tmp_path / "weather.db")
        for h in range(0, 73, 6):
            got = stamped(server, arch, t0 + timedelta(hours=h))
        now = t0 + timedelta(hours=72)
        # a prediction gets the freshest forecast for the horizon and weather after the fact for the past
        ahead = got[got.index >= pd.Timestamp(now)]["temperature_c"]
        assert np.allclose(ahead.to_numpy(), np.arange(len(ahead)))
        assert (got[got.index < pd.Timestamp(now)]["temperature_c"] <= 0).all()
        b0, b1, b2 = arch.fetch_leads(t0, now)
    hour = pd.Timestamp(t0 + timedelta(hours=60))  # fetched at leads 60, 54, ..., 6, 0, then after it
    assert b2.loc[hour, "temperature_c"] == 42.0  # the first fetch reaching it (t0 + 18 h asks 48 h ahead)
    assert b1.loc[hour, "temperature_c"] == 24.0  # the first within 24 h, not the 18, 12, 6 of later fetches
    assert b0.loc[hour, "temperature_c"] == 0.0  # the first fetch during or after the hour
    live = b1.index >= pd.Timestamp(t0 + timedelta(hours=48))  # hours fetched at every lead
    f1, f2 = b1.loc[live, "temperature_c"].dropna(), b2.loc[live, "temperature_c"].dropna()
    assert len(f1) == len(f2) == 24 and (f1 > 0).all() and (f1 <= 24).all() and (f2 > 24).all()


def test_training_uses_forecasts_at_the_leads_the_agent_predicts_with(tmp_path: Path) -> None:
    """The agent's forecasting service, default settings, a lead-stamping provider: a 120-day load history
    is back-filled with past forecasts; each training row's temperature is a forecast made at least as far
    ahead as the row's step (bucket ceil(step / 24 h)), never weather fetched after the hour, while the
    lag features use the weather known after the fact (as a prediction does)."""
    from forecasting.features import build_features
    from forecasting.pipelines import training_rows

    from .conftest import make_load

    f = make_load(120)
    now = end_of_frame(f)
    with OpenMeteoLike(pd.DataFrame(), now, stamp=True) as server:
        cfg = ForecastingConfig(
            enabled=True,
            weather={"provider": "open-meteo", "url": server.url, "backfill_url": server.previous_url},
        )
        provider = make_weather_provider(cfg, latitude=56.95, longitude=24.1, archive_dir=tmp_path)
        assert isinstance(provider, ArchivingProvider)
        for h in range(48, 0, -6):  # the agent ran for the last two days, fetching every 6 hours
            stamped(server, provider, now - timedelta(hours=h))
        stamped(server, provider, now)
        svc = ForecastService(
            cfg,
            FrameHistory({"load": f["value"]}),
            artifact_dir=tmp_path / "models",
            weather=provider,
            timezone="Europe/Riga",
        )
        ts, why = svc.training_set("load", now=now)
        assert ts is not None, why
        assert isinstance(ts.weather, list) and len(ts.weather) == 3
        origins, steps = training_rows(ts.y, ts.spec, max_rows=60_000)
        X, names = build_features(ts.y, ts.index, origins, steps, ts.spec, weather=ts.weather)
        temp = X[:, names.index("temperature_c")]
        bucket = -(-steps // 24)
        have = np.isfinite(temp)
        assert have.mean() > 0.99
        assert (temp[have] > 24 * (bucket[have] - 1)).all() and (temp[have] <= 24 * bucket[have]).all()
        lag = X[:, names.index("temperature_lag_day")]
        assert (lag[np.isfinite(lag)] <= 0).all()
        fc = svc.predict("load", now)  # the first model, trained with the default settings
        assert fc.kind == "model", fc.reason
        assert fc.to_payload()["metadata"]["weather"] == ["temperature_c"]
        assert server.previous_requests and all(e >= s for s, e in server.previous_requests)


def end_of_frame(frame: pd.DataFrame) -> datetime:
    last: pd.Timestamp = pd.DatetimeIndex(frame.index)[-1]
    end: datetime = (last + pd.Timedelta(hours=1)).to_pydatetime()
    return end


def test_an_archive_of_the_first_format_keeps_only_what_was_fetched_after_the_hour(tmp_path: Path) -> None:
    """The first archive kept the latest fetch per hour, lead unknown: its rows fetched after their hour
    become weather known after the fact (bucket 0); the others are dropped, never used as forecasts."""
    import sqlite3

    path = tmp_path / "weather.db"
    db = sqlite3.connect(path)
    cols = ", ".join(
        f"{c} REAL" for c in ("temperature_c", "wind_speed_ms", "wind_direction_deg", "ghi_wm2", "cloud_cover_pct")
    )
    db.execute(f"CREATE TABLE weather (ts_ms INTEGER PRIMARY KEY, fetched_ms INTEGER, {cols})")
    hour = int(pd.Timestamp("2024-05-01T10:00Z").timestamp() * 1000)
    db.execute("INSERT INTO weather VALUES (?, ?, 1.0, 5.0, 180.0, NULL, NULL)", (hour, hour + 3_600_000))
    db.execute("INSERT INTO weather VALUES (?, ?, 2.0, 6.0, 180.0, NULL, NULL)", (hour + 3_600_000, hour))
    db.commit()
    db.close()
    with OpenMeteoLike(pd.DataFrame(), WEATHER_START, stamp=True) as server:
        arch = archiving(server, path)
        assert arch.hours(lead=0) == 1 and arch.hours() == 1
        b0, b1, _ = arch._load(
            pd.Timestamp(hour, unit="ms", tz="UTC"), pd.Timestamp(hour + 7_200_000, unit="ms", tz="UTC")
        )
        assert b0["temperature_c"].tolist() == [1.0] and b1.empty
        arch.close()
        assert archiving(server, path).hours() == 1  # opened again: nothing left to migrate
