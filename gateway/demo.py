"""`gia demo`: a simulated site plus the agent on embedded defaults, state kept in `./gia-demo/`.

The simulated devices are real Modbus TCP servers on 127.0.0.1 serving the deterministic site model of
`drivers/sim/site.py`; the agent reads them exactly as it reads a real site (same drivers, same maps).
The demo writes `gia-demo/gia.yaml` on every start (so `--config gia-demo/gia.yaml` works for every other
command) and keeps the ledger and keys across runs.

`--speed N` runs simulated time N times faster: simulator and agent share one `ScaledClock`, so the
energy registers stay consistent with the power served. Simulated time never goes backwards across
runs: it starts at the later of now and the newest reading in the ledger.
"""

from __future__ import annotations

import logging
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from drivers.model import QUANTITIES, Sample, from_ms, is_counter
from drivers.sim.site import (
    BATTERY_W,
    BATTERY_WH,
    LATITUDE,
    LONGITUDE,
    PV_PEAK_W,
    TIMEZONE,
    WIND_RATED_W,
    DemoSite,
    demo_devices,
    run_demo_servers,
)
from gateway.agent import Agent
from gateway.ledger.store import Ledger
from gateway.runtime.backup import BackupError, agent_running
from gateway.runtime.clock import Clock, ScaledClock, WallClock
from gateway.runtime.runner import run_until_signal
from gateway.settings import load_config

log = logging.getLogger(__name__)

SITE_ID = "demo"
POLL_INTERVAL_S = 2.0
BACKFILL_STEP = timedelta(minutes=5)
#: What the backfill stores per device: enough for reports (registers) and forecasts (power, wind).
BACKFILL_QUANTITIES = ("power_w", "energy_import_wh", "energy_export_wh", "wind_speed_ms", "soc_pct")
FIRST_PORT = 15020  # stable ports, so a running demo can be pointed at by hand (gia read tcp://...)


#: The demo's weather file reaches this far back (the longest training window) ...
WEATHER_PAST = timedelta(days=400)
#: ... and this far ahead of the start, times the speed (a demo left running keeps model forecasts)
WEATHER_AHEAD = timedelta(days=14)


@dataclass(frozen=True)
class DemoOptions:
    directory: Path
    http: str = "127.0.0.1:8080"
    speed: float = 1.0
    backfill_days: float = 0.0
    mqtt: str | None = None
    influx: str | None = None


def _influx_section(url: str) -> dict[str, Any]:
    """`http://HOST:8086/DB`: InfluxDB 1.x database DB; `...?org=O&bucket=B`: v2 (token: GIA_INFLUXDB__TOKEN)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if "bucket" in q:
        return {"url": base, "api": "v2", "org": q.get("org", "gia"), "bucket": q["bucket"]}
    db = parts.path.strip("/") or "gia"
    return {"url": base, "api": "v1", "database": db}


def _forecasting_available() -> bool:
    import importlib.util

    ok = all(importlib.util.find_spec(m) is not None for m in ("sklearn", "pandas", "holidays"))
    if not ok:
        log.warning("forecasting disabled in the demo: install the extra (pip install 'gia-gateway[forecast]')")
    return ok


def _flexibility_available() -> bool:
    import importlib.util

    ok = all(importlib.util.find_spec(m) is not None for m in ("scipy", "s2python"))
    if not ok:
        log.warning("flexibility disabled in the demo: install the extra (pip install 'gia-gateway[flex]')")
    return ok


def _is_loopback(listen: str) -> bool:
    return listen.rpartition(":")[0].strip("[]") in ("127.0.0.1", "::1", "localhost")


def write_weather(site: DemoSite, path: Path, *, start: datetime, end: datetime) -> Path:
    """The simulated site's weather "forecast" as an hourly CSV for the file provider.

    No weather service is reachable offline, and without weather the wind and PV forecasts are labelled
    baselines; with the site's own weather (plus a forecast-like error) the demo shows the real pipeline:
    power curve, learnt correction, calibrated bands.
    """
    t0 = max(start, site.epoch).replace(minute=0, second=0, microsecond=0)
    hours = max(0, int((end - t0).total_seconds() // 3600))
    cols = ("wind_speed_ms", "wind_direction_deg", "ghi_wm2", "cloud_cover_pct")
    lines = ["ts," + ",".join(cols)]
    for h in range(hours):
        t = t0 + timedelta(hours=h)
        w = site.weather_forecast(t.timestamp())
        lines.append(t.strftime("%Y-%m-%dT%H:%M:%SZ") + "," + ",".join(str(w[c]) for c in cols))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def write_config(opts: DemoOptions, urls: dict[str, str], *, weather: Path | None = None) -> Path:
    d = opts.directory
    http: dict[str, Any] = {"listen": opts.http}
    if _is_loopback(opts.http):
        http["anonymous_viewer_on_loopback"] = True
    else:
        # Reachable from the network: never without a token. One is made once and kept beside the config.
        token_file = d / "viewer-token"
        if not token_file.exists():
            token_file.write_text(secrets.token_hex(32) + "\n")
            token_file.chmod(0o600)
        http["tokens"] = [{"name": "demo-viewer", "token_file": "viewer-token", "roles": ["viewer"]}]
    cfg: dict[str, Any] = {
        "site": {
            "id": SITE_ID,
            "name": "GIA demo site (simulated)",
            "area": "demo-area",
            "timezone": TIMEZONE,
            "location": {"latitude": LATITUDE, "longitude": LONGITUDE},
        },
        "data_dir": ".",
        "devices": [
            {
                "id": dev.id,
                "driver": "modbus",
                "connection": urls[dev.id],
                "unit_id": dev.unit_id,
                "map": dev.map,
                "poll_interval_s": POLL_INTERVAL_S,
                "timeout_s": 1.5,
                "channels": [dict(ch) for ch in dev.channels],
            }
            for dev in demo_devices()
        ],
        "http": http,
        # Forecasts need the scikit-learn extra; without it the demo runs without them (and says so).
        "forecasting": {
            "enabled": _forecasting_available(),
            "weather": {"provider": "file", "path": str(weather)} if weather else {"provider": "none"},
            "targets": {
                "load": {"resolution_s": 3600, "horizon_h": 48},
                "wind": {"resolution_s": 3600, "horizon_h": 48, "capacity_w": WIND_RATED_W},
                "pv": {"resolution_s": 3600, "horizon_h": 48, "capacity_w": PV_PEAK_W},
            },
        },
        "flexibility": {
            "enabled": _flexibility_available(),
            "resolution_s": 3600,
            "horizon_h": 24,
            "generation": ["wind", "pv"],
            "limits": {"grid_connection_w": 1_500_000, "export_limit_w": 2_500_000},
            "assets": [
                {
                    "kind": "battery",
                    "id": "battery",
                    "capacity_wh": BATTERY_WH,
                    "max_charge_w": BATTERY_W,
                    "max_discharge_w": BATTERY_W,
                    "soc": {"device": "battery", "quantity": "soc_pct"},
                },
            ],
        },
    }
    if _flexibility_available():
        # The demo closes the loop: the agent commands the simulated battery (forcible charge/discharge
        # on its Huawei LUNA2000 map) from the plan, and the site model's battery obeys (drivers/sim).
        cfg["control"] = {
            "enabled": True,
            "dry_run": False,
            "interval_s": 30,
            "watchdog_s": 300,
            "actuators": [
                {
                    "kind": "battery",
                    "id": "battery",
                    "device": "battery",
                    "max_charge_w": BATTERY_W,
                    "max_discharge_w": BATTERY_W,
                    "min_soc_pct": 10,
                    "max_soc_pct": 100,
                    "deadband_w": 1000,
                    "min_dwell_s": 0,
                    "grid": {"device": "grid", "quantity": "power_w"},
                }
            ],
        }
    if opts.mqtt:
        cfg["mqtt"] = {"url": opts.mqtt}
    if opts.influx:
        cfg["influxdb"] = _influx_section(opts.influx)
    path = d / "gia.yaml"
    header = "# Written by `gia demo` on every start: edits here are overwritten.\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path


def _newest_ts(ledger: Ledger) -> datetime | None:
    head_seq = ledger.head[0]
    for e in ledger.read_after(max(0, head_seq - 1), 1):
        return from_ms(e.ts_ms)
    return None


def backfill(ledger: Ledger, site: DemoSite, *, days: float, until: datetime) -> int:
    """Append `days` of simulated history (5-min resolution) ending at `until`; returns samples added."""
    start = until - timedelta(days=days)
    start = max(start, site.epoch).replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % 5)
    t, added, batch = start, 0, []
    total_steps = max(1, int((until - start) / BACKFILL_STEP))
    step = 0
    while t < until:
        for dev, values in site.state_at(t).items():
            for q in BACKFILL_QUANTITIES:
                v = values.get(q)
                if v is None:
                    continue
                value: float | int = int(v) if is_counter(q) else round(float(v), 3)
                batch.append(Sample(dev, q, value, QUANTITIES[q].unit, t))
        if len(batch) >= 20_000:
            added += len(batch)
            ledger.append(batch)
            batch = []
        step += 1
        if step % 2000 == 0:
            print(f"\rbackfill: {100 * step // total_steps:3d} %", end="", file=sys.stderr, flush=True)
        t += BACKFILL_STEP
    if batch:
        added += len(batch)
        ledger.append(batch)
    print("\rbackfill: 100 %", file=sys.stderr)
    return added


def _ports() -> dict[str, int]:
    import socket

    ports = {}
    for i, dev in enumerate(demo_devices()):
        port = FIRST_PORT + i
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: the simulator picks a free port for this one
        ports[dev.id] = port
    return ports


async def run_demo(opts: DemoOptions) -> None:
    d = opts.directory.resolve()
    d.mkdir(parents=True, exist_ok=True)
    if agent_running(d):  # before anything rewrites the running demo's config
        raise BackupError(f"another gia agent is running on {d}; stop it first (or use --dir)")
    opts = DemoOptions(d, opts.http, opts.speed, opts.backfill_days, opts.mqtt, opts.influx)
    site = DemoSite()
    now = datetime.now(UTC)
    from gateway.certification.sitekeys import ensure_site_key

    # The site key before any history: a ledger that already holds readings never gets a new key silently.
    ensure_site_key(d / "keys", d / "ledger.db", site=SITE_ID)
    ledger = Ledger(d / "ledger.db")
    try:
        newest = _newest_ts(ledger)
        if opts.backfill_days > 0:
            if newest is None:
                n = backfill(ledger, site, days=opts.backfill_days, until=now)
                log.info("backfill: %d samples over %.0f days", n, opts.backfill_days)
                newest = _newest_ts(ledger)
                # The backfill is history for reports, forecasts and InfluxDB charts. MQTT carries live
                # state: replaying a month of old states to the broker would only flood it (and cost the
                # agent's first minute a core), so the MQTT sink starts after the backfill.
                ledger.set_cursor("mqtt", ledger.head[0], now_ms=int(now.timestamp() * 1000))
            else:
                from gateway.i18n import cli_translator

                t = cli_translator()
                print(
                    t(
                        "--backfill skipped: {dir} already holds history. To start fresh, stop the demo and"
                        " remove that folder (rm -r {dir}), or give another one with --dir.",
                        dir=d,
                    ),
                    file=sys.stderr,
                )
    finally:
        ledger.close()
    origin = max(now, newest + timedelta(seconds=1)) if newest else now
    clock: Clock = WallClock() if opts.speed == 1 and origin <= now else ScaledClock(speed=opts.speed, origin=origin)
    weather = write_weather(
        site,
        d / "weather.csv",
        start=origin - WEATHER_PAST,
        end=origin + min(WEATHER_PAST, WEATHER_AHEAD * max(1.0, opts.speed)),
    )
    async with run_demo_servers(site, clock.now, ports=_ports()) as servers:
        config = write_config(opts, servers.urls, weather=weather)
        cfg = load_config(config)
        agent = Agent(cfg, clock=clock)
        scheme = "https" if cfg.settings.http.tls_cert_file else "http"
        from gateway.i18n import cli_translator

        t = cli_translator()
        print(
            "\n"
            + t("GIA demo: site '{site}', {n} simulated Modbus devices", site=SITE_ID, n=len(servers.urls))
            + (f", {t('time x{speed}', speed=f'{opts.speed:g}')}" if opts.speed != 1 else "")
            + "\n  "
            + t("web page:  {url}", url=f"{scheme}://{opts.http}/")
            + "\n  "
            + t("config:    {path}  (use with --config for every other gia command)", path=config)
            + "\n  "
            + t("data:      {dir}  (ledger, keys, reports)", dir=d)
            + "\n  "
            + t("Ctrl-C stops the demo.")
            + "\n",
            file=sys.stderr,
            flush=True,
        )
        await run_until_signal(agent.run, on_stop=agent.request_stop)


__all__ = ["DemoOptions", "run_demo"]
