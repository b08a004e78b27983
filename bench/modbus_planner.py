"""Requests per poll and poll latency: the request planner vs one request per value, same run.

The device is a full Eastron SDM630 input-register table (56 float32 values at their real protocol
addresses, 0x0000-0x016A), served by the simulator as a static register image over Modbus TCP on
loopback. Both strategies read the same values through the same bus object; only the plan differs.

    .venv/bin/python bench/modbus_planner.py [--polls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.config import parse_connection
from drivers.modbus.bus import BusPool, ModbusBus
from drivers.modbus.plan import Field, ReadRequest, naive_plan, plan_reads
from drivers.sim.server import SimServer, free_tcp_port

# Eastron SDM630 V2 input registers (protocol addresses of the float32 parameters in its manual).
SDM630_FULL = [
    *range(0x00, 0x2A, 2),  # phase V, A, W, VA, var, PF, phase angle (21 values)
    0x2A, 0x2E, 0x30, 0x34, 0x38, 0x3C, 0x3E, 0x42, 0x46, 0x48, 0x4A, 0x4C, 0x4E, 0x50, 0x52, 0x54, 0x56,
    0x64, 0x66, 0x68, 0x6A, 0xC8, 0xCA, 0xCC, 0xCE, 0xE0, 0xEA, 0xEC, 0xEE, 0xF0, 0xF2, 0xF4, 0xF8, 0xFA,
    0x104, 0x106, 0x108, 0x10A, 0x10C, 0x10E, 0x156, 0x158,
]  # fmt: skip


def image() -> dict[int, int]:
    out: dict[int, int] = {}
    for i, addr in enumerate(SDM630_FULL):
        hi, lo = struct.unpack(">HH", struct.pack(">f", 100.0 + i))
        out[addr], out[addr + 1] = hi, lo
    return out


async def poll(bus: ModbusBus, plan: list[ReadRequest]) -> float:
    t0 = time.perf_counter()
    for req in plan:
        await bus.read(req.rtype, req.address, req.count, unit=1)
    return time.perf_counter() - t0


async def main(polls: int) -> None:
    fields = [Field(f"v{a:x}", "input", a, 2) for a in SDM630_FULL]
    planned = plan_reads(fields, max_registers=80, max_gap=8)  # the SDM630's 80-register limit
    naive = naive_plan(fields)
    server = SimServer(None, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(1,), static={"input": image()})
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(server.listen), timeout_s=2.0, options={})
            await poll(bus, planned)  # connect and warm up
            lat: dict[str, list[float]] = {"planner": [], "naive": []}
            for _ in range(polls):  # interleaved so both see the same machine load
                lat["planner"].append(await poll(bus, planned))
                lat["naive"].append(await poll(bus, naive))
    finally:
        await server.stop()
    p50 = {k: statistics.median(v) * 1000 for k, v in lat.items()}
    print(f"values per poll:            {len(fields)}")
    print(
        f"requests per poll  planner: {len(planned):4d}   naive (one per value): {len(naive):4d}"
        f"   -> {len(naive) / len(planned):.1f}x fewer requests (target >= 5x)"
    )
    print(
        f"poll latency p50   planner: {p50['planner']:6.2f} ms   naive: {p50['naive']:6.2f} ms"
        f"   -> {p50['naive'] / p50['planner']:.1f}x faster"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polls", type=int, default=200)
    asyncio.run(main(ap.parse_args().polls))
