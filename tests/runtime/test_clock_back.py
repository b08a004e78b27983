"""Fault matrix, clock row: the wall clock jumps BACK while the agent runs (tests/runtime/test_clock_safety.py
covers a start in 1970 and the forward jump when NTP sets the clock).

The agent runs under libfaketime with a timestamp file, so the test moves its wall clock while the
monotonic clock goes on. What must hold after a backward jump of a few seconds:

* the jump is recorded in the ledger's event table (`clock_jump`, negative delta);
* no reading is stored as `good` with a timestamp before the newest reading already stored: readings
  are held until the clock passes that reading again (health says so meanwhile);
* the held readings are not lost: they are committed afterwards, marked `estimated`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from drivers.model import Quality
from gateway.ledger.store import Ledger
from tests.runtime.test_clock_safety import FAKETIME_LIBS
from tests.support.faults import AgentProcess, Meters, agent_env, get_json, wait_for, write_config

pytestmark = [pytest.mark.fault, pytest.mark.modbus]

JUMP_S = 8


def _faketime() -> Path:
    lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
    if lib is None:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing: apt-get install -y faketime")
        pytest.skip("libfaketime is missing: apt-get install -y faketime")
    return lib


async def test_backward_jump_holds_readings_until_time_passes_the_newest(tmp_path: Path) -> None:
    lib = _faketime()
    meters = await Meters(["m"]).start()
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")
    env = agent_env(
        LD_PRELOAD=str(lib),
        FAKETIME_TIMESTAMP_FILE=str(stamp),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        FAKETIME_DONT_RESET="1",
    )
    config, port = write_config(tmp_path, site="clockback", devices=meters.device_configs(poll_s=0.5, timeout_s=0.4))
    agent = AgentProcess(config, port, env=env)
    await agent.start()
    try:
        await wait_for(lambda: get_json(agent.base + "/healthz")[0] == 200, 20, "healthy")
        await asyncio.sleep(2)
        led = Ledger(agent.ledger_path, readonly=True)
        newest_before = led.newest_ts_ms() or 0
        head_before = led.head[0]
        led.close()
        stamp.write_text(f"-{JUMP_S}\n")  # the wall clock steps back JUMP_S seconds
        health = await wait_for(
            lambda: (h := get_json(agent.base + "/healthz")[1])["clock"]["held"] > 0 and h, 5, "readings held"
        )
        assert any("clock" in r for r in health["reasons"]), health
        await wait_for(lambda: get_json(agent.base + "/healthz")[1]["clock"]["restamped"] > 0, 3 * JUMP_S, "release")
        await asyncio.sleep(1.5)
    finally:
        assert await agent.stop() == 0, agent.log()[-2000:]
        await meters.stop()
    led = Ledger(agent.ledger_path, readonly=True)
    try:
        entries = list(led.iter_all())
        jumps = [json.loads(e.detail) for e in led.events(kind="clock_jump")]
    finally:
        led.close()
    assert any(j["delta_s"] < -(JUMP_S - 2) for j in jumps), jumps
    # Only what was committed after `newest_before` was read can be late: the readings stored before it
    # are older by construction (issue 15: on a loaded machine the agent had stored for longer before the
    # test saw it healthy, and this check counted its first two polls, 16 readings, as "late").
    late_good = [
        e for e in entries if e.seq > head_before and e.quality is Quality.GOOD and e.ts_ms < newest_before - 2000
    ]
    assert not late_good, f"{len(late_good)} good readings stamped before the newest stored one: {late_good[:2]}"
    assert any(e.quality is Quality.ESTIMATED for e in entries)  # held, then committed: not lost
