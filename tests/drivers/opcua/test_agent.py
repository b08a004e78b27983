"""End to end: `gia run` (a real agent process) reads a device on a real OPC UA server into the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
import yaml

from drivers.model import Quality
from drivers.opcua.nodemap import load_node_map
from drivers.opcua.sim import OpcuaSimServer
from gateway.ledger.store import Entry, Ledger
from tests.servers import free_port, signal_child

pytestmark = pytest.mark.opcua


def entries(path: Path) -> list[Entry]:
    if not path.exists():
        return []
    try:
        led = Ledger(path, readonly=True)
    except sqlite3.OperationalError:  # the agent is still creating it
        return []
    try:
        assert led.verify().ok
        return list(led.iter_all())
    finally:
        led.close()


async def test_gia_run_reads_an_opcua_turbine_into_the_ledger(tmp_path: Path) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    sim = OpcuaSimServer(load_node_map("iec61400-25-wind-turbine"), listen=url, roots=["WTG01", "WTG02"])
    await sim.start()
    devices = [
        {
            "id": root.lower(),
            "driver": "opcua",
            "endpoint": url,
            "map": "iec61400-25-wind-turbine",
            "root": root,
            "mode": mode,
            "poll_interval_s": 0.5,
            "channels": [{"role": "generation", "quantity": "energy_export_wh", "source": "wind", "renewable": True}],
        }
        for root, mode in (("WTG01", "subscription"), ("WTG02", "polling"))
    ]
    config = tmp_path / "gia.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "site": {"id": "park"},
                "data_dir": "data",
                "ledger": {"commit_interval_s": 0.2},
                "devices": devices,
                "http": {"enabled": False},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    log = tmp_path / "agent.log"
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(config),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    ledger = tmp_path / "data" / "ledger.db"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = await asyncio.to_thread(entries, ledger)
            readings = {(e.device, e.ts_ms) for e in got if e.quantity == "energy_export_wh"}
            if len({d for d, _ in readings}) == 2 and len(readings) >= 6:
                break
            assert proc.returncode is None, log.read_text()
            await asyncio.sleep(0.3)
        else:
            raise AssertionError(f"no readings in the ledger; agent log:\n{log.read_text()}")
    finally:
        signal_child(proc, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()
        await sim.stop()
    got = entries(ledger)
    for device in ("wtg01", "wtg02"):
        mine = [e for e in got if e.device == device]
        assert {e.quantity for e in mine} == set(load_node_map("iec61400-25-wind-turbine").quantities())
        assert all(e.quality is Quality.GOOD for e in mine), [e for e in mine if e.quality is not Quality.GOOD]
        energy = [e.value for e in mine if e.quantity == "energy_export_wh"]
        assert all(isinstance(v, int) for v in energy) and energy == sorted(energy)  # a counter, in Wh
    assert "Traceback" not in log.read_text()
