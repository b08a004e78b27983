"""The Modbus proxy: a device that accepts one client is read by the agent, and other local clients
read the same registers from the gateway's proxy port (issue 3)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from drivers.maps import load_map
from drivers.sim.server import SimServer
from tests.servers import free_port

pytestmark = pytest.mark.modbus

VALUES = {"power_w": 1234.5, "voltage_l1_v": 231.0, "frequency_hz": 50.0, "energy_import_wh": 4_200_000}


def gia_read_json(url: str) -> list[dict[str, object]]:
    import subprocess

    res = subprocess.run(
        [sys.executable, "-m", "gateway", "read", url, "--map", "eastron-sdm630", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows: list[dict[str, object]] = json.loads(res.stdout)
    return rows


async def test_proxy_serves_what_the_agent_polls(tmp_path: Path) -> None:
    port, proxy_port, http_port = free_port(), free_port(), free_port()
    sim = SimServer(load_map("eastron-sdm630"), listen=f"tcp://127.0.0.1:{port}", values=lambda: VALUES)
    await sim.start()
    cfg = {
        "site": {"id": "px"},
        "data_dir": "data",
        "devices": [
            {
                "id": "inv",
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{port}",
                "map": "eastron-sdm630",
                "poll_interval_s": 0.5,
                "proxy": f"tcp://127.0.0.1:{proxy_port}",
            }
        ],
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
    }
    (tmp_path / "gia.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(tmp_path / "gia.yaml"),
        env=env,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(3)  # the agent polls a few times
        direct = await asyncio.to_thread(gia_read_json, f"tcp://127.0.0.1:{port}")
        proxied = await asyncio.to_thread(gia_read_json, f"tcp://127.0.0.1:{proxy_port}")
        assert {r["quantity"]: r["value"] for r in proxied} == {r["quantity"]: r["value"] for r in direct}
        assert all(r["quality"] == "good" for r in proxied)
        client = AsyncModbusTcpClient("127.0.0.1", port=proxy_port, timeout=2)
        await client.connect()
        try:
            never_polled = await client.read_input_registers(9000, count=2, device_id=1)
            assert never_polled.isError() and never_polled.exception_code == 0x0B  # not a stale or zero number
            write = await client.write_register(0, 1, device_id=1)
            assert write.isError() and write.exception_code == 0x01  # read-only: the device has one master
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        await sim.stop()


async def test_proxy_closes_idle_clients_and_makes_room_at_its_limit() -> None:
    """Issue #15, finding 2: the proxy's port faces the LAN; idle sockets are closed after
    `proxy_idle_timeout_s`, and at `proxy_max_clients` the quietest client makes room for a new one."""
    from drivers.modbus.server import LookupServer

    port = free_port()
    server = LookupServer(
        listen=f"tcp://127.0.0.1:{port}", unit_ids=[1], lookup=lambda *_: [7, 8], max_clients=2, idle_timeout_s=1.0
    )
    await server.start()
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert await client.connect()
        try:
            reply = await client.read_holding_registers(0, count=2, device_id=1)
            assert not reply.isError() and reply.registers == [7, 8]
            for reader, _writer in idle:  # each was closed, first the surplus, then the rest when idle
                assert await asyncio.wait_for(reader.read(1), 3) == b""
        finally:
            client.close()
        assert server.stats.evicted == 3 and server.stats.timed_out >= 1, server.stats
    finally:
        for _r, w in idle:
            w.close()
        await server.stop()
