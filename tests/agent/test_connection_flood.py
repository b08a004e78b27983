"""Idle sockets must not exhaust the agent (issue #15, finding 2).

An attacker on the site LAN needs no token to open TCP connections to the HTTP port and the Modbus
proxy port and send nothing. Before the fix uvicorn kept every such socket open forever: with the
descriptors used up `/healthz` went unanswered, a meter could not reconnect, and asyncio logged every
failed accept. The agent here runs with a small descriptor limit (as `LimitNOFILE=` would set it) and
is flooded with twice its connection limits of idle sockets, from a separate process as an attacker
would be, while it polls a simulated meter. With HTTPS the sockets never start the TLS handshake: they
count against the same limit (asyncio alone would keep each for 60 s).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.maps import load_map
from gateway.ledger.store import Ledger
from tests.servers import TlsMaterial, free_port
from tests.support.faults import AgentProcess, Meters, wait_for, write_config

pytestmark = [pytest.mark.fault, pytest.mark.modbus]

NOFILE = 512  # the agent's descriptor limit: 2x the limits below would overrun it without the bounds
HTTP_LIMIT = 300
PROXY_LIMIT = 8
HEADER_TIMEOUT_S = 30.0  # longer than the attack: the bound, not the timeout, must protect the agent


def _open_idle(port: int, n: int) -> list[socket.socket]:
    """`n` connections that never send a byte (the attack); a refused one just counts as closed."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        out.append(s)
    return out


def _still_open(socks: list[socket.socket]) -> int:
    """Sockets the server has not closed (a closed one reads EOF or a reset at once)."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(1)
            n += 0 if data == b"" else 1
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def _health(url: str, ca: Path | None) -> tuple[int, dict[str, object]]:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _newest_seq(path: Path) -> int:
    led = Ledger(path, readonly=True)
    try:
        return led.head[0]
    finally:
        led.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
async def test_idle_sockets_at_twice_the_limit_leave_polling_health_and_the_log_intact(
    tmp_path: Path, https: bool, tls_material: TlsMaterial
) -> None:
    meters = await Meters(["m"]).start()
    proxy_port = free_port()
    devices = meters.device_configs(poll_s=0.5)
    devices[0] |= {"proxy": f"tcp://127.0.0.1:{proxy_port}", "proxy_max_clients": PROXY_LIMIT}
    http: dict[str, object] = {"max_connections": HTTP_LIMIT, "header_timeout_s": HEADER_TIMEOUT_S}
    if https:
        http |= {"tls_cert_file": str(tls_material.server_cert), "tls_key_file": str(tls_material.server_key)}
    config, port = write_config(tmp_path, site="flood", devices=devices, http=http)
    agent = AgentProcess(config, port, nofile=NOFILE)
    await agent.start(wait_http=False)
    ca = tls_material.ca_file if https else None
    base = f"http{'s' if https else ''}://127.0.0.1:{port}"

    def health() -> tuple[int, dict[str, object]]:
        return _health(base + "/healthz", ca)

    attack: list[socket.socket] = []
    try:
        await wait_for(lambda: health()[1].get("status") == "ok", 30, "a healthy agent")
        log_before = len(agent.log().splitlines())

        http_socks = await asyncio.to_thread(_open_idle, port, 2 * HTTP_LIMIT)
        proxy_socks = await asyncio.to_thread(_open_idle, proxy_port, 2 * PROXY_LIMIT)
        attack = http_socks + proxy_socks
        seq_at_attack = await asyncio.to_thread(_newest_seq, agent.ledger_path)
        t_attack = time.monotonic()

        # Health answers while the idle sockets are held (a real client evicts an idle one).
        status, body = await asyncio.to_thread(health)
        assert status == 200, body

        # The proxy still serves a real Modbus client.
        client = AsyncModbusTcpClient("127.0.0.1", port=proxy_port, timeout=2)
        assert await client.connect(), "the Modbus proxy refused a real client during the flood"
        try:
            power = next(r for r in load_map("eastron-sdm630").registers if r.quantity == "power_w")
            reply = await client.read_input_registers(power.address, count=2, device_id=1)  # a float32
            assert not reply.isError(), reply
        finally:
            client.close()

        # Devices keep polling: readings are committed after the attack began.
        await wait_for(
            lambda: _newest_seq(agent.ledger_path) > seq_at_attack + 20, 15, "readings committed during the flood"
        )
        # The connection counts never pass the limits: the surplus was closed by the agent.
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t_attack)))
        assert await asyncio.to_thread(_still_open, http_socks) <= HTTP_LIMIT
        assert await asyncio.to_thread(_still_open, proxy_socks) <= PROXY_LIMIT

        status, body = await asyncio.to_thread(health)
        assert status == 200, body
        # The log stays quiet: a handful of lines, not one per refused accept.
        new_lines = agent.log().splitlines()[log_before:]
        assert len(new_lines) <= 20, "\n".join(new_lines[:40])
    finally:
        for s in attack:
            s.close()
        await agent.stop()
        await meters.stop()
