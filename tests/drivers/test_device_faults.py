"""Fault matrix, device rows: timeouts, garbled/truncated/exception frames, and a device reboot.

One `gia run` process polls three simulated meters (real Modbus TCP servers):

* `slow` stops answering for a few seconds (a powered-off meter behind a gateway: timeouts);
* `noisy` answers a burst of requests with garbled frames, truncated frames, busy/failure exceptions,
  illegal-address exceptions and dropped connections;
* `boot` reboots: its energy register starts again from 0.

What must hold: no invented or mis-decoded number enters the ledger (the meters serve constants, so any
other value is a decoding error), health names the offline device and clears when it is back, a
device's failure is logged once, and the reboot is stored exactly as read while the monthly report
flags a register reset (estimated energy, validation failure) instead of negative energy.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from drivers.model import Quality
from gateway.certification.compute import ChannelSpec, Params, Series, compute_channel
from tests.support.faults import AgentProcess, Meters, constant_meter, get_json, ledger_entries, wait_for, write_config

pytestmark = [pytest.mark.fault, pytest.mark.modbus]

BOOT_BEFORE = 5_000_000


class Reboot:
    """An energy register that counts up 10 Wh per read, then restarts from 0 after `reboot()`."""

    def __init__(self) -> None:
        self.base = BOOT_BEFORE
        self.t0 = time.monotonic()

    def reboot(self) -> None:
        self.base = 0
        self.t0 = time.monotonic()

    def values(self) -> Mapping[str, float | int | None]:
        return {
            "power_w": 500.0,
            "voltage_l1_v": 230.0,
            "frequency_hz": 50.0,
            "energy_import_wh": self.base + int((time.monotonic() - self.t0) * 20),
            "energy_export_wh": 0,
        }


@pytest.fixture
async def meters() -> AsyncIterator[tuple[Meters, Reboot]]:
    boot = Reboot()
    m = await Meters(["slow", "noisy", "boot"], values={"boot": boot.values}).start()
    try:
        yield m, boot
    finally:
        await m.stop()


async def test_device_faults_never_enter_the_ledger_as_numbers(tmp_path: Path, meters: tuple[Meters, Reboot]) -> None:
    m, boot = meters
    devices = m.device_configs(poll_s=0.5, timeout_s=0.4)
    devices[2]["channels"] = [{"role": "grid_import", "quantity": "energy_import_wh"}]
    config, port = write_config(tmp_path, site="faults", devices=devices)
    agent = await AgentProcess(config, port).start()
    base = agent.base
    try:
        await wait_for(lambda: get_json(base + "/healthz")[0] == 200, 20, "all devices online")
        # -- timeouts ---------------------------------------------------------------------------
        m.sims["slow"].pause()
        status, _health = await wait_for(
            lambda: (r := get_json(base + "/healthz")) and "device slow is offline" in r[1]["reasons"] and r,
            10,
            "slow reported offline",
        )
        assert status == 503
        # -- garbled, truncated, exceptions, dropped connection ----------------------------------
        # Interleaved with good answers, as line noise comes: each fault costs one poll, not the device.
        for fault in ("garbled", "truncated", "busy", "device_failure", "illegal_address", "close"):
            m.sims["noisy"].inject(fault, 1)
            await asyncio.sleep(0.6)
            await wait_for(
                lambda: get_json(base + "/api/v1/devices")[1]["devices"][1]["state"] == "online", 10, "noisy"
            )
        m.sims["slow"].resume()
        boot.reboot()
        await wait_for(lambda: get_json(base + "/healthz")[0] == 200, 30, "every device back online")
        await asyncio.sleep(2)
        devs = {d["id"]: d for d in get_json(base + "/api/v1/devices")[1]["devices"]}
        assert devs["noisy"]["errors"] >= 2 and devs["slow"]["errors"] >= 1, devs
        assert m.sims["noisy"].stats.faults == 6  # every injected fault was served
    finally:
        assert await agent.stop() == 0, agent.log()[-3000:]
    entries = ledger_entries(agent.ledger_path)
    expected = {"slow": constant_meter(0), "noisy": constant_meter(1)}
    seen: dict[tuple[str, str], set[object]] = {}
    for e in entries:
        if e.device in expected and e.value is not None:
            seen.setdefault((e.device, e.quantity), set()).add(e.value)
            if e.quantity in expected[e.device]:
                assert e.value == expected[e.device][e.quantity], e  # never a mis-decoded number
        if e.value is None:
            assert e.quality is Quality.INVALID, e  # an unreadable value is marked, not invented
    assert all(len(v) == 1 for v in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
    for dev in ("slow", "noisy"):
        assert any(e.device == dev for e in entries[-60:]), f"{dev} reads again after its faults"
    log = agent.log()
    assert log.count("device slow is offline") == 1, log  # logged on the transition, not per poll
    # -- the reboot: stored as read ------------------------------------------------------------
    energy = [e.value for e in entries if e.device == "boot" and e.quantity == "energy_import_wh"]
    drop = next(i for i in range(1, len(energy)) if energy[i] < energy[i - 1])
    assert energy[drop - 1] >= BOOT_BEFORE and energy[drop] < 1000, energy[drop - 2 : drop + 2]
    # -- and certified as a reset, never as negative energy -------------------------------------
    # The in-progress month closes at the last whole interval, which this short run may not reach, so
    # the channel arithmetic the report uses runs here over exactly the span of the readings.
    good = [e for e in entries if e.device == "boot" and e.quantity == "energy_import_wh" and e.quality is Quality.GOOD]
    series = Series(
        [e.ts_ms for e in good], [int(e.value) for e in good], [e.seq for e in good], [e.hash for e in good]
    )
    spec = ChannelSpec(id="boot.grid_import", role="grid_import", device="boot", quantity="energy_import_wh")
    start, end = good[0].ts_ms // 60_000 * 60_000, (good[-1].ts_ms // 60_000 + 1) * 60_000
    ch = compute_channel(spec, series, start_ms=start, end_ms=end, params=Params(interval_s=60)).json
    assert [ev["kind"] for ev in ch["register_events"]] == ["reset"], ch["register_events"]
    assert ch["energy_wh"] >= 0 and ch["estimated_wh"] > 0
    assert min(ch["measured_wh"], ch["interpolated_wh"]) >= 0
    rules = {r["rule"]: r["status"] for r in ch["validation"]}
    assert rules["register_reset"] == "fail" and rules["energy_nonnegative"] == "pass"
    assert ch["grade"] != "verified"
    # The signed report over the ledger holding the reset builds and verifies offline.
    month = datetime.now(UTC).astimezone(ZoneInfo("Europe/Riga")).strftime("%Y-%m")
    out = tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "report", "faults", month, "-o", str(out), "--config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    keyfile = tmp_path / "site.pub"
    subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "export", str(keyfile), "--config", str(config)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=30,
    )
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "verify", str(out), "--public-key", str(keyfile)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
