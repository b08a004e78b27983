"""Disk full (issue 8): on a tiny tmpfs the agent keeps the newest register readings, prunes raw samples
first, says so in health, keeps running, and the ledger still verifies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from drivers.maps import load_map
from drivers.sim.server import SimServer
from gateway.ledger.store import Ledger
from tests.agent.test_agent_e2e import get_json, meter_values, wait_for
from tests.servers import free_port

pytestmark = [pytest.mark.modbus, pytest.mark.slow]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "sd"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        msg = f"cannot mount a tmpfs (needs root): {res.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_full_disk_costs_raw_samples_not_registers(tmp_path: Path, tiny_disk: Path) -> None:
    sdm = load_map("eastron-sdm630")
    sims, devices = [], []
    for i in range(4):
        port = free_port()
        sims.append(SimServer(sdm, listen=f"tcp://127.0.0.1:{port}", values=partial(meter_values, float(i + 1))))
        devices.append(
            {
                "id": f"m{i}",
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{port}",
                "map": "eastron-sdm630",
                "poll_interval_s": 0.1,
                "timeout_s": 0.5,
            }
        )
    for sim in sims:
        await sim.start()
    http_port = free_port()
    cfg = {
        "site": {"id": "disk"},
        "data_dir": str(tiny_disk),
        "devices": devices,
        "ledger": {"commit_interval_s": 0.2, "min_free_mb": 1.5, "reserve_mb": 1.0},
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
    }
    (tmp_path / "gia.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    with (tmp_path / "agent.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(tmp_path / "gia.yaml"), env=env, stderr=log
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        await wait_for(
            lambda: (
                get_json(base + "/healthz")[1]["ledger"]["disk"]["pruned_forwarded"] > 0
                or get_json(base + "/healthz")[1]["ledger"]["disk_full_events"] > 0
            ),
            90,
            "disk pressure",
        )
        _, health = get_json(base + "/healthz")
        assert any("disk" in r for r in health["reasons"]), health
        head_then = health["ledger"]["head_seq"]
        await asyncio.sleep(8)  # keeps running under pressure
        _, health = get_json(base + "/healthz")
        assert health["ledger"]["head_seq"] > head_then  # still committing
        assert all(st == "online" for st in health["devices"].values())
        assert proc.returncode is None
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        for sim in sims:
            await sim.stop()
    led = Ledger(tiny_disk / "ledger.db", readonly=True)
    try:
        assert led.verify().ok
        newest_counter = led._db.execute("SELECT max(ts_ms) FROM readings WHERE counter = 1 AND pruned = 0").fetchone()[
            0
        ]
        newest_any = led._db.execute("SELECT max(ts_ms) FROM readings WHERE pruned = 0").fetchone()[0]
        pruned_counters = led._db.execute("SELECT count(*) FROM readings WHERE counter = 1 AND pruned = 1").fetchone()[
            0
        ]
        pruned_instants = led._db.execute("SELECT count(*) FROM readings WHERE counter = 0 AND pruned = 1").fetchone()[
            0
        ]
    finally:
        led.close()
    assert pruned_counters == 0 and pruned_instants > 0
    assert newest_any - newest_counter < 2000  # the newest register readings are there
