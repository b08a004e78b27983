"""Modbus RTU requests/s at 9600 baud through the driver's bus vs the theoretical bus limit.

The line: socat pty pairs with the pacer between them (drivers/sim/serial.py), which releases bytes
no faster than 11 bits per byte at the chosen baud. The device: the simulator on the far pty.

The theoretical limit for one read of N registers, computed (not measured):

    request 8 bytes + response (5 + 2N) bytes, 11 bits each, plus two 3.5-character silent
    intervals (one before each frame):   t = ((8 + 5 + 2N) + 2 x 3.5) x 11 / baud

which is ≈ 21.8 requests/s for 10 registers at 9600 baud. The measured figure includes the device's
turnaround and everything the bus does (lock, pacing, error translation). The bus keeps the 3.5-char
silence before each request; the simulated device answers without waiting its own 3.5 characters
(the pacer models byte time, not the device's turnaround), so the measured rate may exceed the
formula by up to one gap (~4 ms of ~46 ms at 9600 baud, ≈ 10 %).

    .venv/bin/python bench/modbus_rtu.py [--baud 9600] [--registers 10] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.config import parse_connection
from drivers.modbus.bus import BusPool
from drivers.sim.serial import BITS_PER_BYTE, Pacer, PtyPair
from drivers.sim.server import SimServer


def theoretical_rate(baud: int, registers: int) -> float:
    frame_bytes = 8 + 5 + 2 * registers
    return baud / ((frame_bytes + 2 * 3.5) * BITS_PER_BYTE)


async def main(baud: int, registers: int, seconds: float) -> None:
    a, b = PtyPair().start(), PtyPair().start()
    pacer = await Pacer(a.b, b.a, baud=baud).start()
    image = {i: i for i in range(registers)}
    server = SimServer(None, listen=f"rtu://{b.b}?baud={baud}", unit_ids=(1,), static={"holding": image})
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(f"rtu://{a.a}?baud={baud}"), timeout_s=2.0, options={})
            await bus.read("holding", 0, registers, unit=1)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                words = await bus.read("holding", 0, registers, unit=1)
                n += 1
            rate = n / (time.perf_counter() - t0)
            assert words == list(range(registers))
            errors = bus.stats.errors
    finally:
        await server.stop()
        await pacer.stop()
        a.stop()
        b.stop()
    limit = theoretical_rate(baud, registers)
    print(f"RTU {baud} baud, {registers} registers/request, {seconds:g} s, {errors} errors")
    print(f"theoretical bus limit (11 bits/byte, 3.5-char gaps): {limit:6.1f} requests/s")
    print(f"measured through the driver's bus:                    {rate:6.1f} requests/s")
    print(f"measured / limit: {100 * rate / limit:.0f} % (target >= 80 %)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--registers", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    asyncio.run(main(args.baud, args.registers, args.seconds))
