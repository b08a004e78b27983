"""Modbus RTU over a serial line: socat pty pairs, a pacer with real 11-bit line timing, several units."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from drivers.base import TransientError
from drivers.config import parse_connection
from drivers.maps import load_map
from drivers.modbus.bus import BusPool
from drivers.modbus.driver import ModbusDriver
from drivers.model import Quality
from drivers.sim.serial import Pacer, PtyPair
from drivers.sim.server import SimServer

pytestmark = [pytest.mark.serial, pytest.mark.modbus]
TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Line:
    client_url: str
    server: SimServer
    pacer: Pacer


def _require_socat() -> None:
    if shutil.which("socat") is None:
        msg = "socat not found; install it: apt-get install -y socat"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


async def open_line(baud: int, units: tuple[int, ...], map_name: str = "eastron-sdm630") -> AsyncIterator[Line]:
    _require_socat()
    a, b = PtyPair().start(), PtyPair().start()
    pacer = await Pacer(a.b, b.a, baud=baud).start()
    m = load_map(map_name)
    server = SimServer(m, listen=f"rtu://{b.b}?baud={baud}", unit_ids=units, values=lambda: {"power_w": 4321.0})
    await server.start()
    try:
        yield Line(f"rtu://{a.a}?baud={baud}", server, pacer)
    finally:
        await server.stop()
        await pacer.stop()
        a.stop()
        b.stop()


@pytest.fixture(params=[9600, 115200], ids=["9600", "115200"])
async def line(request: pytest.FixtureRequest) -> AsyncIterator[Line]:
    async for ln in open_line(int(request.param), (1, 2, 3)):
        yield ln


async def test_several_units_on_one_line(line: Line) -> None:
    m = load_map("eastron-sdm630")
    async with BusPool() as pool:
        conn = parse_connection(line.client_url)
        drivers = [
            ModbusDriver(device_id=f"m{u}", register_map=m, bus=pool.bus(conn, timeout_s=1.0, options={}), unit_id=u)
            for u in (1, 2, 3)
        ]
        assert len(pool.buses) == 1
        for d in drivers:
            samples = {s.quantity: s for s in await d.read(TS)}
            assert samples["power_w"].value == pytest.approx(4321.0)
            assert all(s.quality is Quality.GOOD for s in samples.values())
        # a unit that is not on the line times out without disturbing the others
        absent = ModbusDriver(device_id="x", register_map=m, bus=drivers[0].bus, unit_id=9)
        with pytest.raises(TransientError):
            await absent.read(TS)
        assert len(await drivers[1].read(TS)) == 16


async def test_pacer_imposes_line_timing() -> None:
    async for ln in open_line(9600, (1,)):
        m = load_map("eastron-sdm630")
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(ln.client_url), timeout_s=2.0, options={})
            drv = ModbusDriver(device_id="m", register_map=m, bus=bus, unit_id=1)
            await drv.read(TS)
            requests, registers = bus.stats.requests, bus.stats.registers
            t0 = time.monotonic()
            await drv.read(TS)
            elapsed = time.monotonic() - t0
            requests, registers = bus.stats.requests - requests, bus.stats.registers - registers
        # a read request is 8 bytes, its response 5 + 2 per register; 11 bits per byte on the line
        line_bytes = requests * (8 + 5) + 2 * registers
        assert elapsed >= line_bytes * 11 / 9600 * 0.95
        assert elapsed <= line_bytes * 11 / 9600 * 2 + 0.1


async def test_scan_finds_the_units_on_a_serial_line() -> None:
    from drivers.maps import bundled_maps
    from drivers.modbus.scan import config_snippet, scan

    async for ln in open_line(115200, (1, 3), map_name="carlo-gavazzi-em24"):
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(ln.client_url), timeout_s=0.15, options={})
            hits = await scan(bus, [1, 2, 3, 4], {name: load_map(name) for name in bundled_maps()})
        assert [(h.unit, h.maps) for h in hits] == [(1, ["carlo-gavazzi-em24"]), (3, ["carlo-gavazzi-em24"])]
        assert "unit_id: 3" in config_snippet(ln.client_url, hits)
