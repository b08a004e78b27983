"""`gia read` on meter ports: a P1 port over a pty pair and an M-Bus meter behind a TCP gateway."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from drivers.mbus.sim import MbusSim, SimMeter
from drivers.p1.sim import p1_sim
from tests.drivers.ports import pty_pair
from tests.servers import free_port


async def gia(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.serial
async def test_gia_read_p1_json() -> None:
    async with pty_pair() as pair:
        sim = await p1_sim(pair.b, variant="dsmr5", values=lambda: {"energy_import_wh": 31_415}, period_s=0.1).start()
        try:
            code, out, err = await gia("read", f"serial://{pair.a}", "--p1", "dsmr5", "--json")
        finally:
            await sim.stop()
    assert code == 0, err
    rows = {r["quantity"]: r for r in json.loads(out)}
    assert rows["energy_import_wh"]["value"] == 31_415 and rows["energy_import_wh"]["quality"] == "good"


async def test_gia_read_mbus_and_its_errors() -> None:
    port = free_port()
    sim = await MbusSim([SimMeter(7, 1, "heat", lambda: {"heat_energy_wh": 5_000_000})]).serve_tcp("127.0.0.1", port)
    try:
        code, out, err = await gia("read", f"tcp://127.0.0.1:{port}", "--mbus", "7")
        assert code == 0, err
        assert "heat_energy_wh" in out and "5000000" in out
        code, _, err = await gia("read", f"tcp://127.0.0.1:{port}", "--mbus", "8", "--timeout", "0.3")
        assert code == 1 and "no answer" in err
        code, _, err = await gia("read", f"tcp://127.0.0.1:{port}", "--mbus", "7", "--sml")
        assert code == 2
    finally:
        await sim.stop()
