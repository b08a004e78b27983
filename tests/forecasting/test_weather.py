"""Open-Meteo-format client against a real local HTTP server; file provider; garbage and timeouts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from forecasting.weather import FileProvider, OpenMeteoProvider, WeatherError


def recorded_response(start: str, hours: int) -> dict[str, object]:
    """The shape Open-Meteo returns for hourly=...&timezone=UTC&wind_speed_unit=ms."""
    times = pd.date_range(start, periods=hours, freq="h")
    return {
        "latitude": 56.95,
        "longitude": 24.1,
        "generationtime_ms": 0.1,
        "utc_offset_seconds": 0,
        "timezone": "GMT",
        "timezone_abbreviation": "GMT",
        "elevation": 7.0,
        "hourly_units": {
            "time": "iso8601",
            "temperature_2m": "°C",
            "wind_speed_100m": "m/s",
            "wind_direction_100m": "°",
            "shortwave_radiation": "W/m²",
            "cloud_cover": "%",
        },
        "hourly": {
            "time": [t.strftime("%Y-%m-%dT%H:%M") for t in times],
            "temperature_2m": [float(i % 24) for i in range(hours)],
            "wind_speed_100m": [5.0 + (i % 5) for i in range(hours)],
            "wind_direction_100m": [180.0] * hours,
            "shortwave_radiation": [0.0 if i % 24 < 6 else 100.0 for i in range(hours)],
            "cloud_cover": [50] * (hours - 1) + [None],
        },
    }


class _Handler(BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        _Handler.requests.append(self.path)
        path = urlsplit(self.path).path
        q = parse_qs(urlsplit(self.path).query)
        if path == "/slow":
            time.sleep(1.5)
        if path == "/500":
            self.send_response(500)
            self.end_headers()
            return
        if path == "/garbage":
            body = b"<html>not json</html>"
        elif path == "/badlen":
            r = recorded_response("2024-03-01", 48)
            r["hourly"]["temperature_2m"] = [1.0]  # type: ignore[index]
            body = json.dumps(r).encode()
        elif path == "/kmh":
            r = recorded_response("2024-03-01", 48)
            r["hourly_units"]["wind_speed_100m"] = "km/h"  # type: ignore[index]
            body = json.dumps(r).encode()
        else:
            start = q.get("start_date", ["2024-03-01"])[0]
            end = q.get("end_date", ["2024-03-02"])[0]
            hours = int((pd.Timestamp(end) - pd.Timestamp(start)).days + 1) * 24
            body = json.dumps(recorded_response(start, hours)).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def weather_server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, name="weather-test-server", daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


def provider(url: str, timeout: float = 2.0) -> OpenMeteoProvider:
    return OpenMeteoProvider(url=url, latitude=56.95, longitude=24.1, timeout_s=timeout)


def test_open_meteo_client_parses_recorded_format(weather_server: str) -> None:
    start, end = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 3, tzinfo=UTC)
    frame = provider(f"{weather_server}/v1/forecast").fetch(start, end)
    assert len(frame) == 48
    assert frame.index[0] == pd.Timestamp("2024-03-01T00:00Z")
    assert frame["temperature_c"].iloc[5] == 5.0
    assert frame["wind_speed_ms"].between(5, 9).all()
    # shortwave_radiation is the mean of the preceding hour: value stamped 06:00 describes 05:00-06:00
    assert frame["ghi_wm2"].iloc[5] == 100.0 and frame["ghi_wm2"].iloc[4] == 0.0
    query = parse_qs(urlsplit(_Handler.requests[-1]).query)
    assert query["wind_speed_unit"] == ["ms"] and query["timezone"] == ["UTC"]
    assert "wind_speed_100m" in query["hourly"][0]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/garbage", "not JSON"),
        ("/badlen", "length"),
        ("/500", "HTTP 500"),
        ("/kmh", "km/h"),
    ],
)
def test_bad_responses_raise_weather_error(weather_server: str, path: str, message: str) -> None:
    with pytest.raises(WeatherError, match=message):
        provider(weather_server + path).fetch(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))


def test_timeout_is_a_weather_error_within_the_deadline(weather_server: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(WeatherError, match="failed"):
        provider(weather_server + "/slow", timeout=0.3).fetch(
            datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
        )
    assert time.monotonic() - t0 < 1.4


def test_connection_refused_is_a_weather_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WeatherError):
        provider(f"http://127.0.0.1:{port}/v1/forecast", timeout=1).fetch(
            datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
        )


def test_file_provider(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    p.write_text("ts,temperature_c,wind_speed_ms\n2024-03-01T00:00:00Z,1.5,4\n2024-03-01T01:00:00Z,2.5,x\n")
    frame = FileProvider(p).fetch(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))
    assert frame["temperature_c"].tolist() == [1.5, 2.5]
    assert pd.isna(frame["wind_speed_ms"].iloc[1])
    with pytest.raises(WeatherError):
        FileProvider(tmp_path / "missing.csv").fetch(datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))
