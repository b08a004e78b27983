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
from typing import Any
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
    """Serves a weather frame in Open-Meteo's JSON shape, within [today - 92 d, today + 16 d]."""

    def __init__(self, frame: pd.DataFrame, today: datetime) -> None:
        self.frame = frame
        self.today = today
        self.down = False
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                q = parse_qs(urlsplit(self.path).query)
                start, end = q["start_date"][0], q["end_date"][0]
                outer.requests.append((start, end))
                status, body = outer.answer(start, end)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    def answer(self, start: str, end: str) -> tuple[int, dict[str, Any]]:
        if self.down:
            return 503, {"error": True, "reason": "maintenance"}
        first = (pd.Timestamp(self.today) - pd.Timedelta(days=92)).strftime("%Y-%m-%d")
        if start < first:
            return 400, {"error": True, "reason": f"Parameter 'start_date' is out of allowed range from {first}"}
        rows = self.frame.loc[pd.Timestamp(start, tz="UTC") : pd.Timestamp(end, tz="UTC") + pd.Timedelta(hours=23)]
        return 200, {
            "utc_offset_seconds": 0,
            "hourly_units": {"wind_speed_100m": "m/s"},
            "hourly": {
                "time": [t.strftime("%Y-%m-%dT%H:%M") for t in rows.index],
                "wind_speed_100m": rows["wind_speed_ms"].round(2).tolist(),
                "wind_direction_100m": rows["wind_direction_deg"].tolist(),
            },
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1/forecast"

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


def test_wind_trains_on_more_history_than_the_api_reaches(tmp_path: Path) -> None:
    """120 days of plant history, weather API reaching 92 days: the model trains on the weather there is."""
    f = wind_frame(122)
    hist, now = f.iloc[: 120 * 24], f.index[120 * 24].to_pydatetime()
    with OpenMeteoLike(f[["wind_speed_ms", "wind_direction_deg"]], now) as server:
        cfg = ForecastingConfig(
            enabled=True,
            min_history_days=14,
            max_iter=30,
            targets={"wind": TargetConfig(horizon_h=24, capacity_w=CAP)},
            weather={"provider": "open-meteo", "url": server.url},
        )
        provider = make_weather_provider(cfg, latitude=56.95, longitude=24.1, archive_dir=tmp_path)
        assert isinstance(provider, ArchivingProvider)
        provider._now = lambda: now  # the server's "today"
        svc = ForecastService(cfg, FrameHistory({"wind": hist["value"]}), artifact_dir=tmp_path, weather=provider)
        res = svc.train("wind", now=now)
        assert res.trained, res.reason
        assert res.weather_columns == ("wind_speed_ms", "wind_direction_deg")
        fc = svc.predict("wind", now)
    assert fc.kind == "model", fc.reason
    model = svc._model("wind")
    assert model is not None and pd.Timestamp(model.train_start) >= pd.Timestamp(now - timedelta(days=92))
