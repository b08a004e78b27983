"""The whole path against real servers: pymodbus simulators -> `gia run` -> ledger -> InfluxDB 1.x + Mosquitto.

The agent runs as a real process (so it can be killed with SIGKILL); the simulated devices run in the
test's event loop as real Modbus TCP servers.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.maps import load_map
from drivers.sim.server import SimServer
from gateway.ledger.store import Ledger
from tests.servers import InfluxDB1, MosquittoBroker, find_binary, free_port, signal_child

pytestmark = [pytest.mark.modbus, pytest.mark.mosquitto, pytest.mark.influxdb]

DEVICES = ("grid", "hall")
POLL_S = 0.5


def meter_values(offset: float) -> Mapping[str, float | int | None]:
    t = time.time()
    return {
        "power_w": round(1000 * offset + 200 * math.sin(t / 5), 1),
        "voltage_l1_v": 230.0,
        "frequency_hz": 50.0,
        "energy_import_wh": int(1_000_000 * offset + (t - 1.79e9) * 10),
        "energy_export_wh": 1234,
    }


class Site:
    def __init__(self) -> None:
        self.sims: dict[str, SimServer] = {}
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        sdm = load_map("eastron-sdm630")
        for i, dev in enumerate(DEVICES, start=1):
            port = free_port()
            self.ports[dev] = port
            self.sims[dev] = SimServer(sdm, listen=f"tcp://127.0.0.1:{port}", values=partial(meter_values, float(i)))
            await self.sims[dev].start()

    async def stop(self) -> None:
        for s in self.sims.values():
            await s.stop()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def write_config(tmp: Path, site: Site, *, mqtt: MosquittoBroker | None, influx: InfluxDB1 | None) -> tuple[Path, int]:
    http_port = free_port()
    cfg: dict[str, Any] = {
        "site": {"id": "e2e", "timezone": "Europe/Riga"},
        "data_dir": "data",
        "ledger": {"commit_interval_s": 0.2},
        "devices": [
            {
                "id": d,
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{site.ports[d]}",
                "map": "eastron-sdm630",
                "poll_interval_s": POLL_S,
                "timeout_s": 0.4,
            }
            for d in DEVICES
        ],
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
        "log_level": "info",
    }
    if mqtt is not None:
        cfg["mqtt"] = {"url": mqtt.url, "client_id": "gia-e2e", "timeout_s": 2}
    if influx is not None:
        influx.create_db("gia")
        cfg["influxdb"] = {"url": influx.url, "api": "v1", "database": "gia", "timeout_s": 2}
    path = tmp / "gia.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, http_port


async def start_agent(config: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    with (config.parent / "agent.log").open("ab") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            cwd=config.parent,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(pred)
        except (OSError, ValueError):
            last = None
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def ledger_groups(path: Path, *, sink: str | None = None) -> dict[tuple[str, int], dict[str, Any]]:
    """Readings per (device, ts); with `sink`, only those up to that sink's cursor (what it has sent).

    Readings committed by the final flush at shutdown lie beyond the cursor: they are in the ledger
    and are forwarded at the next start, so they are pending, not lost.
    """
    led = Ledger(path, readonly=True)
    try:
        limit = led.cursor(sink) if sink else led.head[0]
        groups: dict[tuple[str, int], dict[str, Any]] = {}
        for e in led.iter_all(1, limit):
            groups.setdefault((e.device, e.ts_ms), {})[e.quantity] = e.value
        return groups
    finally:
        led.close()


def influx_points(influx: InfluxDB1) -> dict[tuple[str, int], dict[str, Any]]:
    res = influx.query("SELECT * FROM meter WHERE site = 'e2e'", db="gia")
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for series in res["results"][0].get("series", []):
        cols = series["columns"]
        for row in series["values"]:
            rec = dict(zip(cols, row, strict=True))
            key = (rec.pop("device"), int(rec.pop("time")))  # the fixture queries with epoch=ms
            assert key not in out, f"duplicate point {key}"
            out[key] = {k: v for k, v in rec.items() if v is not None and k not in ("site", "quality")}
    return out


async def stop_agent(proc: asyncio.subprocess.Process) -> int:
    signal_child(proc, signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 20)


@pytest.mark.slow
@pytest.mark.timeout(240)  # a 60-s outage by design, plus start (≤ 30 s), catch-up (≤ 60 s) and stop (≤ 20 s)
async def test_outage_of_influx_and_broker_loses_nothing(
    tmp_path: Path, site: Site, mosquitto_persistent: MosquittoBroker, influxdb_fresh: InfluxDB1
) -> None:
    """Done-when 2: readings written while InfluxDB and the broker are down for 60 s all arrive, once, in order."""
    outage_s = float(os.environ.get("GIA_TEST_OUTAGE_S", "60"))
    config, http_port = write_config(tmp_path, site, mqtt=mosquitto_persistent, influx=influxdb_fresh)
    proc = await start_agent(config)
    try:
        await wait_for(lambda: get_json(f"http://127.0.0.1:{http_port}/healthz")[0] == 200, 30, "healthy agent")
        await asyncio.sleep(2)
        mosquitto_persistent.stop()
        influxdb_fresh.stop()
        await asyncio.sleep(outage_s)
        status, health = get_json(f"http://127.0.0.1:{http_port}/healthz")
        assert status == 503 and any("influxdb" in r for r in health["reasons"]), health
        mosquitto_persistent.start()
        influxdb_fresh.start()

        health = {}

        def caught_up() -> bool:
            health.update(get_json(f"http://127.0.0.1:{http_port}/healthz")[1])
            return health["status"] == "ok" and all(s["lag"] < 40 for s in health["sinks"].values())

        try:
            await wait_for(caught_up, 60, "sinks to catch up")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; health: {health}") from None
    finally:
        assert await stop_agent(proc) == 0, (tmp_path / "agent.log").read_text()
    ledger = ledger_groups(tmp_path / "data" / "ledger.db", sink="influxdb")
    committed = ledger_groups(tmp_path / "data" / "ledger.db")
    pending = len(committed) - len(ledger)
    points = influx_points(influxdb_fresh)
    assert len(ledger) > 2 * outage_s / POLL_S  # readings kept coming in during the outage
    # Everything sent arrived, exactly once (duplicates asserted in influx_points). Influx may also hold
    # the batch in flight when the stop came: written, but its cursor not yet committed; the next start
    # replays it onto the same series and timestamps (an overwrite, not a second point), so those points
    # must be committed ledger entries beyond the cursor, never anything else.
    assert ledger.keys() <= points.keys()
    assert points.keys() <= committed.keys()
    assert pending <= 4 * len(DEVICES)  # only the shutdown flush waits for the next start
    for key in points:
        fields = committed[key]
        assert points[key] == {q: v for q, v in fields.items() if v is not None}, key
    # The broker's retained state is the latest reading of each device.
    for dev in DEVICES:
        out = subprocess.run(
            [
                find_binary("mosquitto_sub"),
                *mosquitto_persistent.client_args(),
                "-t",
                f"gia/e2e/{dev}/state",
                "-C",
                "1",
                "-W",
                "5",
            ],
            capture_output=True,
            text=True,
        )
        state = json.loads(out.stdout)
        mqtt_sent = ledger_groups(tmp_path / "data" / "ledger.db", sink="mqtt")
        last_ts = max(ts for d, ts in mqtt_sent if d == dev)
        assert state["energy_import_wh"] == mqtt_sent[(dev, last_ts)]["energy_import_wh"]


async def test_kill_9_loses_no_committed_reading_and_resumes(
    tmp_path: Path, site: Site, influxdb_fresh: InfluxDB1
) -> None:
    """Done-when 3: SIGKILL mid-run; the chain verifies, nothing committed is lost, forwarding resumes."""
    config, http_port = write_config(tmp_path, site, mqtt=None, influx=influxdb_fresh)
    proc = await start_agent(config)
    await wait_for(lambda: get_json(f"http://127.0.0.1:{http_port}/healthz")[0] == 200, 30, "healthy agent")
    await asyncio.sleep(3)
    signal_child(proc, signal.SIGKILL)
    await proc.wait()
    db = tmp_path / "data" / "ledger.db"
    led = Ledger(db, readonly=True)
    check = led.verify()
    committed = led.head[0]
    led.close()
    assert check.ok and committed > 0
    proc = await start_agent(config)
    try:
        await wait_for(lambda: get_json(f"http://127.0.0.1:{http_port}/healthz")[0] == 200, 30, "restarted agent")
        await wait_for(
            lambda: get_json(f"http://127.0.0.1:{http_port}/healthz")[1]["sinks"]["influxdb"]["cursor"] > committed,
            30,
            "forwarding past the pre-kill head",
        )
    finally:
        assert await stop_agent(proc) == 0
    led = Ledger(db, readonly=True)
    assert led.verify().ok
    assert led.head[0] > committed
    led.close()
    ledger = ledger_groups(db, sink="influxdb")
    points = influx_points(influxdb_fresh)
    assert ledger.keys() == points.keys()


async def test_device_offline_and_back_without_delaying_others(
    tmp_path: Path, site: Site, mosquitto_fresh: MosquittoBroker
) -> None:
    """Done-when 4: a silent device goes offline (health, MQTT) and comes back by itself; others keep time."""
    config, http_port = write_config(tmp_path, site, mqtt=mosquitto_fresh, influx=None)
    proc = await start_agent(config)
    base = f"http://127.0.0.1:{http_port}"

    def availability(dev: str) -> str:
        out = subprocess.run(
            [
                find_binary("mosquitto_sub"),
                *mosquitto_fresh.client_args(),
                "-t",
                f"gia/e2e/{dev}/availability",
                "-C",
                "1",
                "-W",
                "10",  # a retained message comes at once; a TLS connect on a loaded machine may not
            ],
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    try:
        await wait_for(lambda: get_json(base + "/healthz")[0] == 200, 30, "healthy agent")
        site.sims["hall"].pause()
        await wait_for(
            lambda: get_json(base + "/api/v1/devices")[1]["devices"][1]["state"] == "offline", 5, "hall offline"
        )
        polls_before = get_json(base + "/api/v1/devices")[1]["devices"][0]["polls"]
        await asyncio.sleep(4)
        polls_after = get_json(base + "/api/v1/devices")[1]["devices"][0]["polls"]
        assert polls_after - polls_before >= int(4 / POLL_S) - 1  # grid kept its schedule
        status, health = get_json(base + "/healthz")
        assert status == 503 and "device hall is offline" in health["reasons"]
        assert await asyncio.to_thread(availability, "hall") == "offline"
        assert await asyncio.to_thread(availability, "grid") == "online"
        site.sims["hall"].resume()
        await wait_for(lambda: get_json(base + "/healthz")[0] == 200, 20, "hall back online")
        assert await asyncio.to_thread(availability, "hall") == "online"
    finally:
        assert await stop_agent(proc) == 0
    log = (tmp_path / "agent.log").read_text()
    assert log.count("device hall is offline") == 1  # logged on the transition, not every poll
    assert log.count("device hall is online") >= 1


@pytest.mark.parametrize("broker_kind", ["plain", "mutual-tls"])
async def test_mqtt_device_through_the_agent(tmp_path: Path, mosquitto_factory: Any, broker_kind: str) -> None:
    """An MQTT device (Tasmota SML profile) read by `gia run` through the site's broker, into the ledger;
    also through a broker that requires a client certificate."""
    mosquitto_fresh: MosquittoBroker = mosquitto_factory(require_certificate=broker_kind == "mutual-tls")
    mqtt_cfg: dict[str, Any] = {"url": mosquitto_fresh.url}
    if broker_kind == "mutual-tls":
        mqtt_cfg["tls"] = {
            "ca_file": str(mosquitto_fresh.ca_file),
            "cert_file": str(mosquitto_fresh.cert_file),
            "key_file": str(mosquitto_fresh.key_file),
        }
    http_port = free_port()
    cfg = {
        "site": {"id": "mq"},
        "data_dir": "data",
        "ledger": {"commit_interval_s": 0.2},
        "devices": [
            {
                "id": "tasmota",
                "driver": "mqtt",
                "topic": "tele/meter1/SENSOR",
                "profile": "tasmota-sml",
                "poll_interval_s": 0.5,
            }
        ],
        "mqtt": mqtt_cfg,
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
    }
    (tmp_path / "gia.yaml").write_text(yaml.safe_dump(cfg))
    proc = await start_agent(tmp_path / "gia.yaml")
    payload = json.dumps(
        {"Time": "2026-11-29T06:00:00", "SML": {"Total_in": 12345.678, "Total_out": 1.5, "Power_curr": 2300}}
    )
    try:
        await wait_for(lambda: get_json(f"http://127.0.0.1:{http_port}/healthz")[0] in (200, 503), 30, "agent up")
        for _ in range(6):
            subprocess.run(
                [
                    find_binary("mosquitto_pub"),
                    *mosquitto_fresh.client_args(),
                    "-t",
                    "tele/meter1/SENSOR",
                    "-m",
                    payload,
                ],
                check=True,
            )
            await asyncio.sleep(0.5)
        live = await wait_for(
            lambda: get_json(f"http://127.0.0.1:{http_port}/api/v1/live")[1]["devices"]["tasmota"]["values"] or None,
            10,
            "tasmota values",
        )
    finally:
        assert await stop_agent(proc) == 0
    assert live["power_w"]["value"] == 2300
    assert live["energy_import_wh"]["value"] == 12_345_678
