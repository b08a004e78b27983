"""Fault matrix, InfluxDB rows: down, slow, 500, 429 and 413, between the agent and a real InfluxDB 1.x.

The agent writes through `InfluxProxy` (tests/support/proxies.py), which forwards to the real server and
stubs only the answers no real InfluxDB gives on demand (see its docstring). What must hold after every
fault: each reading the sink's cursor passed is in InfluxDB exactly once, nothing was skipped as
"rejected", health named the fault while it lasted, and the sink caught up by itself.

A real outage (the server process stopped and started) is the end-to-end test
tests/agent/test_agent_e2e.py::test_outage_of_influx_and_broker_loses_nothing; the soak (bench/soak.py)
restarts InfluxDB at random times.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_agent_e2e import ledger_groups
from tests.servers import InfluxDB1
from tests.support.faults import AgentProcess, Meters, get_json, influx_groups, wait_for, write_config
from tests.support.proxies import InfluxProxy, Mode

pytestmark = [pytest.mark.fault, pytest.mark.modbus, pytest.mark.influxdb]


@pytest.fixture
async def meters() -> AsyncIterator[Meters]:
    m = await Meters(["a", "b"]).start()
    try:
        yield m
    finally:
        await m.stop()


async def test_influx_errors_lose_and_double_nothing(tmp_path: Path, meters: Meters, influxdb_fresh: InfluxDB1) -> None:
    proxy = await InfluxProxy(influxdb_fresh.port, slow_s=4.0).start()
    config, port = write_config(
        tmp_path,
        site="influxfaults",
        devices=meters.device_configs(poll_s=0.25, timeout_s=0.2),
        influx=influxdb_fresh,
        influx_url=proxy.url,
    )
    agent = await AgentProcess(config, port).start()
    seen_errors: set[str] = set()

    def health() -> dict[str, Any]:
        h = get_json(agent.base + "/healthz")[1]
        err = h["sinks"]["influxdb"]["last_error"]
        if err:
            seen_errors.add(err)
        return h

    async def phase(mode: Mode, marker: str) -> None:
        """Hold `mode` until the sink has met it and health names it (the forwarder backs off up to 20 s)."""
        proxy.mode = mode
        await wait_for(
            lambda: (
                proxy.requests.get(mode, 0) > 0
                and marker in (health()["sinks"]["influxdb"]["last_error"] or "").lower()
            ),
            30,
            f"the sink to meet {mode}",
        )

    try:
        await wait_for(lambda: health()["sinks"]["influxdb"]["forwarded"] > 0, 20, "first writes")
        phases: list[tuple[Mode, str]] = [("500", "http 500"), ("429", "http 429"), ("slow", "timed out"), ("drop", "")]
        for mode, marker in phases:
            await phase(mode, marker)
        # The backlog is now larger than the proxy accepts in one request: 413 until the sink splits.
        proxy.max_body = 6000
        proxy.mode = "pass"
        await wait_for(lambda: health()["sinks"]["influxdb"]["lag"] < 60, 30, "the sink to catch up")
    finally:
        assert await agent.stop() == 0, agent.log()[-3000:]
        await proxy.stop()
    assert any("HTTP 500" in e for e in seen_errors), seen_errors
    assert any("HTTP 429" in e for e in seen_errors), seen_errors
    assert any("timeout" in e.lower() or "timed out" in e.lower() for e in seen_errors), seen_errors
    assert proxy.requests.get("413", 0) > 0, proxy.requests  # the limit was hit
    assert 0 < proxy.largest_forwarded <= 6000
    sent = ledger_groups(agent.ledger_path, sink="influxdb")
    every = ledger_groups(agent.ledger_path)
    points = influx_groups(influxdb_fresh, "influxfaults")  # asserts no duplicate point
    # Everything the cursor passed arrived; beyond it, only a batch written just before the stop whose
    # cursor was not saved yet (the next start replays it as an overwrite of the same points). CI saw
    # that: 2 points beyond the cursor, both committed readings (tests/ledger/test_ledger_faults.py).
    assert sent.keys() <= points.keys() <= every.keys(), (len(sent), len(points), len(every))
    for key, value in points.items():
        assert value == {q: v for q, v in every[key].items() if v is not None}, key
    assert "rejected" not in agent.log(), agent.log()[-2000:]
