"""Issue 15, finding 3: a bad or spoofed NTP answer must not poison the clock guard.

Before the fix the guard's floor followed every stored reading and was restored from the ledger: a clock
3 years ahead for 5 s, then corrected, left the agent holding (then dropping) every reading for 3 years,
across restarts. The agent runs here as a real process under libfaketime (its monotonic clock is real),
so the test moves its wall clock the way a bad NTP server would.

What must hold: readings taken while the clock is far ahead of monotonic-derived time are quarantined and
committed re-stamped (`estimated`), never with a time 3 years ahead; recording continues once the clock is
corrected, nothing is lost (no gap in the series), a restarted agent records at once, and readings held
at shutdown are committed `estimated` rather than dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.model import Quality
from gateway.ledger.store import Ledger
from tests.runtime.test_clock_back import _faketime
from tests.support.faults import AgentProcess, Meters, agent_env, get_json, ledger_entries, wait_for, write_config

pytestmark = [pytest.mark.fault, pytest.mark.modbus]

THREE_YEARS_S = 3 * 365 * 86400
DAY_MS = 86_400_000


@pytest.fixture(autouse=True)
def _needs_faketime() -> None:
    """Skip (fail under CI) before a test starts its meters: a skip after that left their sockets open."""
    _faketime()


def _set_offset(stamp: Path, offset: str) -> None:
    """libfaketime re-reads the file on every call: replace it atomically, never a half-written offset."""
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(offset + "\n")
    os.replace(tmp, stamp)


def _faked_agent(
    tmp_path: Path, meters: Meters, stamp: Path, http: dict[str, Any] | None = None, **extra: Any
) -> AgentProcess:
    env = agent_env(
        LD_PRELOAD=str(_faketime()),
        FAKETIME_TIMESTAMP_FILE=str(stamp),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        FAKETIME_DONT_RESET="1",
    )
    config, port = write_config(
        tmp_path, site="clockfwd", devices=meters.device_configs(poll_s=0.5, timeout_s=0.4), http=http, extra=extra
    )
    return AgentProcess(config, port, env=env)


def _good_after(path: Path, seq: int) -> int:
    """Good readings committed after `seq` and stamped with real time (not 3 years ahead)."""
    led = Ledger(path, readonly=True)
    now_ms = int(time.time() * 1000)
    try:
        entries = led.read_after(seq, 100_000)
        return sum(1 for e in entries if e.quality is Quality.GOOD and abs(e.ts_ms - now_ms) < DAY_MS)
    finally:
        led.close()


def _head(path: Path) -> int:
    led = Ledger(path, readonly=True)
    try:
        return led.head[0]
    finally:
        led.close()


async def test_forward_jump_of_three_years_then_corrected_loses_nothing(tmp_path: Path) -> None:
    meters = await Meters(["m"]).start()
    stamp = tmp_path / "faketime"
    _set_offset(stamp, "+0")
    agent = _faked_agent(tmp_path, meters, stamp)
    await agent.start()
    try:
        await wait_for(lambda: get_json(agent.base + "/healthz")[0] == 200, 20, "healthy")
        await asyncio.sleep(1.5)
        _set_offset(stamp, f"+{THREE_YEARS_S}")  # a spoofed NTP answer
        await asyncio.sleep(5)
        _set_offset(stamp, "+0")  # corrected
        corrected = _head(agent.ledger_path)
        # Recording continues: good readings stamped with real time are committed again.
        await wait_for(lambda: _good_after(agent.ledger_path, corrected) >= 10, 20, "good readings after correction")
        health = await agent.health_async()
    finally:
        assert await agent.stop() == 0, agent.log()[-3000:]
    assert health["clock"]["held"] == 0 and health["clock"]["dropped"] == 0, health["clock"]
    first_run_head = _head(agent.ledger_path)

    # A restarted agent (its floor restored from this ledger) records at once.
    restarted = _faked_agent(tmp_path, meters, stamp)
    await restarted.start()
    try:
        head = _head(restarted.ledger_path)
        await wait_for(lambda: _good_after(restarted.ledger_path, head) >= 10, 20, "good readings after restart")
    finally:
        assert await restarted.stop() == 0, restarted.log()[-3000:]
        await meters.stop()

    entries = ledger_entries(agent.ledger_path)
    now_ms = int(time.time() * 1000)
    future = [e for e in entries if e.ts_ms > now_ms + DAY_MS]
    assert not future, f"{len(future)} readings stamped in the future, e.g. {future[:1]}"
    assert any(e.quality is Quality.ESTIMATED for e in entries)  # the quarantined ones, re-stamped
    # Nothing lost: the power series of the first run has no gap where the clock was wrong.
    first_run = sorted(e.ts_ms for e in entries if e.quantity == "power_w" and e.seq <= first_run_head)
    gaps = [b - a for a, b in itertools.pairwise(first_run)]
    assert max(gaps) <= 3000, f"a {max(gaps)} ms gap in the power series"


async def test_a_poisoned_floor_in_the_ledger_does_not_block_a_restarted_agent(tmp_path: Path) -> None:
    """A ledger that already holds a reading 3 years ahead (written by an agent before this fix): the
    agent trusts its steady wall clock after `clock.trust_after_s` and records again, no ledger surgery."""
    meters = await Meters(["m"]).start()
    stamp = tmp_path / "faketime"
    _set_offset(stamp, f"+{THREE_YEARS_S}")
    poisoner = _faked_agent(tmp_path, meters, stamp)
    await poisoner.start()
    try:
        await wait_for(lambda: _head(poisoner.ledger_path) > 20, 20, "readings stored 3 years ahead")
    finally:
        assert await poisoner.stop() == 0, poisoner.log()[-3000:]
    _set_offset(stamp, "+0")
    agent = _faked_agent(tmp_path, meters, stamp, clock={"trust_after_s": 3})
    await agent.start()
    try:
        head = _head(agent.ledger_path)
        await wait_for(lambda: _good_after(agent.ledger_path, head) >= 10, 30, "good readings")
        health = await agent.health_async()
    finally:
        assert await agent.stop() == 0, agent.log()[-3000:]
    assert health["clock"]["dropped"] == 0, health["clock"]
    # Restarted again, with the default wait: the lowered floor is where it restarts from, so it records
    # at once instead of holding against the bad stamps for another `trust_after_s`.
    again = _faked_agent(tmp_path, meters, stamp)
    await again.start()
    try:
        head = _head(again.ledger_path)
        await wait_for(lambda: _good_after(again.ledger_path, head) >= 10, 20, "good readings after a second restart")
    finally:
        assert await again.stop() == 0, again.log()[-3000:]
        await meters.stop()
    led = Ledger(agent.ledger_path, readonly=True)
    try:
        lowered = led.events(kind="clock_floor_lowered")
    finally:
        led.close()
    assert len(lowered) == 1, "the lowered floor is recorded once, for the certification layer"


@pytest.mark.timeout(240)
async def test_readings_held_at_shutdown_are_committed_estimated(tmp_path: Path) -> None:
    """The clock steps back an hour (held: the floor is ahead) and the agent is stopped within the hold:
    the held readings are committed `estimated`, not dropped."""
    meters = await Meters(["m"]).start()
    stamp = tmp_path / "faketime"
    _set_offset(stamp, "+0")
    agent = _faked_agent(tmp_path, meters, stamp)
    await agent.start()
    try:
        await wait_for(lambda: get_json(agent.base + "/healthz")[0] == 200, 20, "healthy")
        # Readings stamped before the step must be stored, or there is nothing for the clock to be behind
        # (healthy can come before the first commit: then every reading is after the step, none held).
        await wait_for(lambda: _head(agent.ledger_path) > 5, 20, "readings committed before the step")
        _set_offset(stamp, "-3600")
        # libfaketime re-reads the offset file every few seconds and a loaded CI machine polls late: allow a
        # minute for the step to be seen and 20 readings to be held (the hold itself lasts trust_after_s)
        held = await wait_for(lambda: (n := agent.health()["clock"]["held"]) >= 20 and n, 60, "readings held")
    finally:
        assert await agent.stop() == 0, agent.log()[-3000:]
        await meters.stop()
    estimated = [e for e in ledger_entries(agent.ledger_path) if e.quality is Quality.ESTIMATED]
    assert len(estimated) >= held, (len(estimated), held)


CERT_TOKEN = "clock-test-certifier-token-0123456789abcdef"


def _report(base: str, month: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{base}/api/v1/sites/clockfwd/reports/{month}", headers={"Authorization": f"Bearer {CERT_TOKEN}"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return dict(json.loads(resp.read()))


async def test_a_clock_jump_ahead_closes_no_month(tmp_path: Path) -> None:
    """One bad NTP answer, 3 years ahead for a few seconds, must not close the month under way: before the
    fix the agent signed and archived the current month from a partial ledger (and every month up to 2029
    after it), because the certification room asked the wall clock, not the clock guard's trusted time."""
    meters = await Meters(["m"]).start()
    stamp = tmp_path / "faketime"
    _set_offset(stamp, "+0")
    http = {"tokens": [{"name": "cert", "roles": ["certifier"], "token": CERT_TOKEN}]}
    agent = _faked_agent(tmp_path, meters, stamp, http=http)
    month = datetime.now(ZoneInfo("Europe/Riga")).strftime("%Y-%m")
    await agent.start()
    try:
        await wait_for(lambda: _head(agent.ledger_path) > 5, 20, "readings of this month committed")
        _set_offset(stamp, f"+{THREE_YEARS_S}")  # a spoofed NTP answer
        await wait_for(lambda: agent.health()["clock"]["quarantined"], 60, "the jump seen by the clock guard")
        during = await asyncio.to_thread(_report, agent.base, month)
        _set_offset(stamp, "+0")  # corrected
        await wait_for(lambda: not agent.health()["clock"]["quarantined"], 60, "the clock back")
        after = await asyncio.to_thread(_report, agent.base, month)
    finally:
        _set_offset(stamp, "+0")
        assert await agent.stop() == 0, agent.log()[-3000:]
        await meters.stop()
    assert during["period"]["complete"] is False and after["period"]["complete"] is False
    led = Ledger(agent.ledger_path, readonly=True)
    try:
        closed = led._db.execute("SELECT count(*) FROM report_archive").fetchone()[0]
    finally:
        led.close()
    assert closed == 0, "a month was closed on a clock 3 years ahead"
    assert not list((tmp_path / "data" / "reports").rglob("*.json"))
