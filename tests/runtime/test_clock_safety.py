"""Clock safety (issue 8): with the clock in 1970 at start, nothing is stored with a 1970 timestamp;
after the clock is set, held readings are re-stamped (estimated) and flow, and the jump is recorded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from drivers.maps import load_map
from drivers.model import Quality, Sample
from drivers.sim.server import SimServer
from gateway.ledger.store import Ledger
from gateway.runtime.clockguard import RELEASE_FLOOR, ClockGuard
from tests.agent.test_agent_e2e import get_json, wait_for
from tests.servers import free_port

FAKETIME_LIBS = [
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
]


class FakeClocks:
    def __init__(self) -> None:
        self.wall_t = datetime(1970, 1, 1, tzinfo=UTC)
        self.mono_t = 100.0

    def advance(self, seconds: float) -> None:
        self.wall_t += timedelta(seconds=seconds)
        self.mono_t += seconds


async def test_guard_holds_then_restamps_and_records_the_jump() -> None:
    clocks = FakeClocks()
    forwarded: list[Sample] = []
    events: list[tuple[str, str, int]] = []

    async def forward(samples: Sequence[Sample]) -> None:
        forwarded.extend(samples)

    async def record(kind: str, detail: str, ts_ms: int) -> None:
        events.append((kind, detail, ts_ms))

    guard = ClockGuard(
        forward=forward,
        record_event=record,
        wall=lambda: clocks.wall_t,
        mono=lambda: clocks.mono_t,
        synced=lambda: None,
    )
    assert not guard.health.plausible
    await guard.submit([Sample("m", "energy_import_wh", 5, "Wh", clocks.wall_t)])
    clocks.advance(10)
    await guard.submit([Sample("m", "energy_import_wh", 6, "Wh", clocks.wall_t)])
    await guard.check()
    assert forwarded == [] and guard.health.held == 2
    # NTP sets the clock: the wall jumps, the monotonic clock goes on.
    real = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    clocks.wall_t = real
    clocks.mono_t += 5
    await guard.check()
    assert [s.ts for s in forwarded] == [real - timedelta(seconds=15), real - timedelta(seconds=5)]
    assert all(s.quality is Quality.ESTIMATED for s in forwarded)
    assert events and events[0][0] == "clock_jump"
    assert json.loads(events[0][1])["to"] == "2026-11-29T12:00:00Z"
    await guard.submit([Sample("m", "energy_import_wh", 7, "Wh", real)])
    assert forwarded[-1].quality is Quality.GOOD  # plausible clock: straight through


async def test_guard_bounds_what_it_holds() -> None:
    async def nowhere(*_args: object) -> None:
        return None

    guard = ClockGuard(
        forward=nowhere,
        record_event=nowhere,
        max_held=1000,
        wall=lambda: datetime(1970, 1, 1, tzinfo=UTC),
        mono=lambda: 0.0,
        synced=lambda: None,
    )
    for i in range(1500):
        await guard.submit([Sample("m", "power_w", float(i), "W", datetime(1970, 1, 1, tzinfo=UTC))])
    assert guard.health.held == 1000 and guard.health.dropped == 500


@pytest.mark.modbus
async def test_agent_started_in_1970_stores_nothing_from_1970(tmp_path: Path) -> None:
    lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
    if lib is None:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing: apt-get install -y faketime")
        pytest.skip("libfaketime is missing: apt-get install -y faketime")
    port, http_port = free_port(), free_port()
    sim = SimServer(
        load_map("eastron-sdm630"),
        listen=f"tcp://127.0.0.1:{port}",
        values=lambda: {"power_w": 1200.0, "energy_import_wh": 4242},
    )
    await sim.start()
    cfg = {
        "site": {"id": "clk"},
        "data_dir": "data",
        "ledger": {"commit_interval_s": 0.2},
        "devices": [
            {
                "id": "m",
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{port}",
                "map": "eastron-sdm630",
                "poll_interval_s": 0.5,
                "timeout_s": 0.4,
            }
        ],
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
    }
    (tmp_path / "gia.yaml").write_text(yaml.safe_dump(cfg))
    stamp = tmp_path / "faketime"
    stamp.write_text("@1970-01-01 00:00:00\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")} | {
        "LD_PRELOAD": str(lib),
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    }
    with (tmp_path / "agent.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(tmp_path / "gia.yaml"),
            cwd=tmp_path,
            env=env,
            stderr=log,
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        health = await wait_for(
            lambda: (h := get_json(base + "/healthz")) and h[1]["clock"]["held"] > 4 and h, 30, "readings held"
        )
        assert health[0] == 503 and any("system clock" in r for r in health[1]["reasons"]), health
        stamp.write_text("+0\n")  # "NTP" sets the clock: real time from now on
        await wait_for(lambda: get_json(base + "/healthz")[1]["clock"]["restamped"] > 0, 20, "release")
        await asyncio.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        await sim.stop()
    led = Ledger(tmp_path / "data" / "ledger.db", readonly=True)
    entries = led.read_after(0, 100_000)
    events = led.events(kind="clock_jump")
    led.close()
    floor_ms = int(RELEASE_FLOOR.timestamp() * 1000)
    assert entries and all(e.ts_ms >= floor_ms for e in entries)  # nothing from 1970
    assert any(e.quality is Quality.ESTIMATED for e in entries)  # the held ones, re-stamped
    assert any(e.quality is Quality.GOOD for e in entries)  # and live ones after the sync
    assert events and json.loads(events[0].detail)["from"].startswith("1970-01-01")
