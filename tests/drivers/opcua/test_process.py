"""`gia sim` as its own process (a real server restart), `gia scan` and `gia read` on it, end to end."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from drivers.base import DriverError
from drivers.opcua.driver import OpcuaDriver
from drivers.opcua.nodemap import load_node_map
from drivers.opcua.session import Endpoint, OpcuaPool
from gateway.cli import build_app
from gateway.settings import load_settings
from tests.servers import OpcuaSimFactory

pytestmark = pytest.mark.opcua

UNKNOWN_SERVER = """\
device_class: meter
product: {brand: ACME, model: PLC energy block, manual: "test fixture"}
nodes:
  - {quantity: power_w, node: "nsu=urn:acme:plc;s=Feeder1.ActivePower", example: 41000}
  - {quantity: energy_import_wh, node: "nsu=urn:acme:plc;s=Feeder1.ImportedEnergy", example: 123456789}
  - {quantity: frequency_hz, node: "nsu=urn:acme:plc;s=Feeder1.GridFrequency", example: 50.0}
"""


async def test_subscriptions_survive_a_server_restart_and_scan_finds_each_turbine(
    opcua_sim_factory: OpcuaSimFactory, tmp_path: Path
) -> None:
    sim = opcua_sim_factory("iec61400-25-wind-turbine", roots=("WTG01", "Park/WTG02"))
    pool = OpcuaPool(reconnect_max_s=0.5)
    driver = OpcuaDriver(
        device_id="wtg01",
        node_map=load_node_map("iec61400-25-wind-turbine"),
        endpoint=Endpoint(sim.url, timeout_s=2.0),
        mode="subscription",
        poll_interval_s=0.5,
        stale_after_intervals=2,
        pool=pool,
    )

    async def read_until(good: bool, timeout: float) -> str:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            try:
                samples = await driver.read(datetime.now(UTC))
                last = ",".join(sorted({s.quality.value for s in samples}))
                if good and last == "good" and len(samples) == 7:
                    return last
            except DriverError as exc:
                last = str(exc)
                if not good:
                    return last
            await asyncio.sleep(0.25)
        raise AssertionError(f"timed out; last: {last}")

    async with pool, driver:
        await read_until(True, 10)
        (session,) = pool.sessions()
        await asyncio.to_thread(sim.stop)
        assert "not connected" in await read_until(False, 10)
        await asyncio.to_thread(sim.start)  # same port, a new process: no session, no subscription
        await read_until(True, 20)
        assert session.stats.connects == 2 and driver.stats.setups == 2
        notifications = driver.stats.notifications
        deadline = time.monotonic() + 5
        while driver.stats.notifications == notifications and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the simulator writes new values every second: they must arrive
        assert driver.stats.notifications > notifications

    # The same server through the commands a technician uses (CliRunner runs asyncio.run: not in this loop).
    result = await asyncio.to_thread(CliRunner().invoke, build_app(), ["scan", sim.url])
    assert result.exit_code == 0, result.output
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(result.stdout)
    devices = load_settings(cfg).devices  # what check-config runs
    assert [(d.id, getattr(d, "root", None), getattr(d, "map", None)) for d in devices] == [
        ("wtg01", "WTG01", "iec61400-25-wind-turbine"),
        ("wtg02", "Park/WTG02", "iec61400-25-wind-turbine"),
    ]
    args = ["read", sim.url, "--map", "iec61400-25-wind-turbine", "--root", "Park/WTG02", "--json"]
    read = await asyncio.to_thread(CliRunner().invoke, build_app(), args)
    assert read.exit_code == 0, read.output
    rows = {r["quantity"]: r for r in json.loads(read.stdout)}
    assert rows["energy_export_wh"]["unit"] == "Wh" and all(r["quality"] == "good" for r in rows.values())


def test_scan_of_an_unknown_server_proposes_a_node_map(
    opcua_sim_factory: OpcuaSimFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "acme.yaml"
    served.write_text(UNKNOWN_SERVER)
    sim = opcua_sim_factory(str(served))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(build_app(), ["scan", sim.url, "--map-out", "proposed.yaml"])
    assert result.exit_code == 0, result.output
    proposed = yaml.safe_load((tmp_path / "proposed.yaml").read_text())
    assert {n["quantity"] for n in proposed["nodes"]} == {"power_w", "energy_import_wh", "frequency_hz"}
    assert all(n["node"].startswith("nsu=urn:acme:plc;s=Feeder1.") for n in proposed["nodes"])
    (tmp_path / "gia.yaml").write_text(result.stdout)
    (device,) = load_settings(tmp_path / "gia.yaml").devices
    assert getattr(device, "map", None) == "proposed.yaml"
    read = CliRunner().invoke(build_app(), ["read", sim.url, "--map", "proposed.yaml", "--json"])
    assert read.exit_code == 0, read.output
    rows = {r["quantity"]: r for r in json.loads(read.stdout)}
    assert rows["frequency_hz"]["value"] == pytest.approx(50.0, rel=0.01) and rows["power_w"]["quality"] == "good"
    again = CliRunner().invoke(build_app(), ["scan", sim.url, "--map-out", "proposed.yaml"])
    assert again.exit_code == 2 and "exists" in again.output  # never overwrites a map the operator may have edited


def test_unreachable_and_malformed_urls() -> None:
    from tests.servers import free_port

    dead = CliRunner().invoke(build_app(), ["scan", f"opc.tcp://127.0.0.1:{free_port()}", "--timeout", "0.5"])
    assert dead.exit_code == 1 and "connection refused" in dead.output
    creds = CliRunner().invoke(build_app(), ["scan", "opc.tcp://user:pw@127.0.0.1:4840"])
    assert creds.exit_code == 2 and "holds credentials" in creds.output
    read = CliRunner().invoke(
        build_app(),
        ["read", f"opc.tcp://127.0.0.1:{free_port()}", "--map", "iec61400-25-wind-turbine", "--timeout", "0.5"],
    )
    assert read.exit_code == 1 and "connection refused" in read.output
