"""Fault matrix, device reboot behind the network: the TCP connection goes half-open.

A Modbus TCP meter (or an RTU-to-TCP gateway) that loses power sends no FIN: the agent's socket stays
"connected" and requests vanish. The agent must notice (a run of unanswered requests), reconnect, and
put the device back online by itself, without a restart.

Regression for a bug found here: the poller's deadline (`timeout_s`) cancelled each read just before
pymodbus's own timeout of the same length fired, so the bus never counted the silent requests and
kept the dead connection forever (the device stayed offline until the agent was restarted).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.faults import AgentProcess, Meters, get_json, wait_for, write_config
from tests.support.proxies import TcpProxy

pytestmark = [pytest.mark.fault, pytest.mark.modbus]


async def test_half_open_connection_is_dropped_and_device_recovers(tmp_path: Path) -> None:
    meters = await Meters(["m"]).start()
    proxy = await TcpProxy(meters.ports["m"]).start()
    devices = meters.device_configs(poll_s=0.5, timeout_s=0.4)
    devices[0]["connection"] = f"tcp://127.0.0.1:{proxy.port}"
    config, port = write_config(tmp_path, site="halfopen", devices=devices)
    agent = await AgentProcess(config, port).start()
    try:
        await wait_for(
            lambda: (
                (d := get_json(agent.base + "/api/v1/devices")[1]["devices"][0])["state"] == "online" and d["polls"] > 2
            ),
            20,
            "device online and polled",
        )
        before = proxy.accepted
        proxy.blackhole()
        await wait_for(lambda: "device m is offline" in get_json(agent.base + "/healthz")[1]["reasons"], 10, "offline")
        await wait_for(lambda: get_json(agent.base + "/healthz")[0] == 200, 15, "device back on a new connection")
        assert proxy.accepted > before  # on a new connection
        polls = get_json(agent.base + "/api/v1/devices")[1]["devices"][0]["polls"]
        await asyncio.sleep(2)
        assert get_json(agent.base + "/api/v1/devices")[1]["devices"][0]["polls"] > polls
    finally:
        assert await agent.stop() == 0
        await proxy.stop()
        await meters.stop()
