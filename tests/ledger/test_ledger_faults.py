"""Fault matrix, ledger and process rows: SQLite locked, SIGKILL during commits, SIGTERM during shutdown.

Disk full is tests/ledger/test_disk_full.py (tiny tmpfs; raw samples go before registers).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.ledger.store import Ledger
from tests.agent.test_agent_e2e import ledger_groups
from tests.servers import InfluxDB1, signal_child
from tests.support.faults import AgentProcess, Meters, get_json, influx_groups, ledger_entries, wait_for, write_config

pytestmark = [pytest.mark.fault, pytest.mark.modbus]

POLL_S = 0.25


@pytest.fixture
async def meters() -> AsyncIterator[Meters]:
    m = await Meters(["a", "b", "c"]).start()
    try:
        yield m
    finally:
        await m.stop()


def _hold_write_lock(db: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Another process takes the ledger's write lock (BEGIN IMMEDIATE) and sits on it."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('ROLLBACK')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
    return proc


async def test_sqlite_locked_by_another_process_loses_nothing(tmp_path: Path, meters: Meters) -> None:
    """Readings taken while another process holds the write lock (longer than busy_timeout) are kept in
    memory and committed afterwards: every poll slot of every device is in the ledger, no gap."""
    config, port = write_config(tmp_path, site="locked", devices=meters.device_configs(poll_s=POLL_S, timeout_s=0.2))
    agent = await AgentProcess(config, port).start()
    try:
        await wait_for(lambda: get_json(agent.base + "/healthz")[0] == 200, 20, "healthy")
        await asyncio.sleep(1)
        holder = await asyncio.to_thread(_hold_write_lock, agent.ledger_path, 7.0)  # busy_timeout is 5 s
        await asyncio.to_thread(holder.communicate, None, 20)
        # ~190 samples/s at 0.2 s commits: a normal queue holds ~40, the 7-s backlog ~1300.
        await wait_for(lambda: get_json(agent.base + "/healthz")[1]["ledger"]["pending"] < 150, 15, "queue drained")
        health = get_json(agent.base + "/healthz")[1]
        assert health["ledger"]["commit_failures"] >= 1, health["ledger"]  # the lock was really in the way
        await asyncio.sleep(1)
    finally:
        assert await agent.stop() == 0, agent.log()[-2000:]
    led = Ledger(agent.ledger_path, readonly=True)
    assert led.verify().ok
    led.close()
    groups = ledger_groups(agent.ledger_path)
    for dev in meters.ids:
        slots = sorted(ts for d, ts in groups if d == dev)
        steps = [b - a for a, b in itertools.pairwise(slots)]
        assert len(slots) > 25
        assert max(steps) < 1.5 * POLL_S * 1000, (dev, max(steps))  # not one poll slot missing


@pytest.mark.influxdb
async def test_kill_9_in_a_loop_keeps_every_commit(tmp_path: Path, meters: Meters, influxdb_fresh: InfluxDB1) -> None:
    """SIGKILL at random moments while readings flow (commits every 50 ms): after each kill the chain
    verifies and every entry committed before it is still there, unchanged; at the end InfluxDB holds
    every forwarded reading exactly once."""
    config, port = write_config(
        tmp_path,
        site="kill9",
        devices=meters.device_configs(poll_s=0.1, timeout_s=0.1),
        influx=influxdb_fresh,
        extra={"ledger": {"commit_interval_s": 0.05}},
    )
    rng = random.Random(9)
    agent = AgentProcess(config, port)
    seen: dict[int, bytes] = {}  # seq -> chain hash of entries seen committed after a kill
    kills = 8
    for _ in range(kills):
        await agent.start()
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        await agent.kill()
        led = Ledger(agent.ledger_path, readonly=True)
        try:
            check = led.verify()
            assert check.ok, check.problem
            for seq, h in seen.items():
                assert led.hash_at(seq) == h, f"committed entry {seq} changed or vanished"
            head = led.head[0]
            for seq in [*rng.sample(range(1, head + 1), min(200, head)), head]:
                seen[seq] = led.hash_at(seq)
        finally:
            led.close()
    await agent.start()
    try:
        await wait_for(lambda: get_json(agent.base + "/healthz")[1]["sinks"]["influxdb"]["lag"] < 50, 30, "caught up")
    finally:
        assert await agent.stop() == 0, agent.log()[-2000:]
    assert max(seen) > 100
    sent = ledger_groups(agent.ledger_path, sink="influxdb")
    every = ledger_groups(agent.ledger_path)
    points = influx_groups(influxdb_fresh, "kill9")  # asserts no duplicate point
    # Everything the cursor passed arrived; beyond it, only a batch sent just before a stop, whose
    # cursor was not saved yet: it is replayed at the next start and overwrites itself.
    assert sent.keys() <= points.keys() <= every.keys()
    assert len(points) - len(sent) <= 200


async def _sigterm_storm(agent: AgentProcess) -> int:
    """SIGTERM, then SIGTERM/SIGINT every 20 ms until the process is gone; returns its exit code."""
    await agent.start()
    await wait_for(lambda: get_json(agent.base + "/healthz")[1]["ledger"]["head_seq"] > 0, 20, "commits")
    await asyncio.sleep(0.5)
    proc = agent.proc
    assert proc is not None
    signal_child(proc, signal.SIGTERM)
    n = 0
    while proc.returncode is None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 0.02)
        except TimeoutError:
            n += 1
            signal_child(proc, signal.SIGINT if n % 3 == 0 else signal.SIGTERM)
        assert n < 1000, "the agent did not stop within 20 s"
    return await proc.wait()


async def test_second_sigterm_during_shutdown_corrupts_nothing(tmp_path: Path, meters: Meters) -> None:
    """More SIGTERMs (and SIGINTs) while the agent is stopping: the queued readings are committed, the
    ledger verifies and SQLite's integrity check passes, every time."""
    config, port = write_config(tmp_path, site="term2", devices=meters.device_configs(poll_s=0.1, timeout_s=0.1))
    agent = AgentProcess(config, port)
    for _ in range(3):
        code = await _sigterm_storm(agent)
        assert code in (0, -signal.SIGTERM, -signal.SIGINT), agent.log()[-2000:]
        led = Ledger(agent.ledger_path, readonly=True)
        try:
            assert led.verify().ok
        finally:
            led.close()
        db = sqlite3.connect(agent.ledger_path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
    assert "Traceback" not in agent.log(), agent.log()[-3000:]
    log = agent.log()
    assert log.count("stopping (committing queued readings)") == 3
    assert len(ledger_entries(agent.ledger_path)) > 0


async def test_repeated_sigterm_still_exits_zero(tmp_path: Path, meters: Meters) -> None:
    config, port = write_config(tmp_path, site="term3", devices=meters.device_configs(poll_s=0.1, timeout_s=0.1))
    agent = AgentProcess(config, port)
    codes = [await _sigterm_storm(agent) for _ in range(3)]
    assert codes == [0, 0, 0]
