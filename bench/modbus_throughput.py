"""Polls/s of the driver stack vs a bare pymodbus client loop on the same server, same run.

The server (the simulator serving a static 10-register image) runs in its own process so client and
server do not share one event loop. The driver stack is everything a poll does: the ModbusDriver
choosing due registers and its cached plan, the shared bus (lock, error translation), decoding with
sentinel/range checks and building `Sample`s. The baseline is a bare `AsyncModbusTcpClient` loop
reading the same 10 registers (the only pymodbus call outside drivers/modbus/bus.py: it is the
baseline by definition).

    .venv/bin/python bench/modbus_throughput.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymodbus.client import AsyncModbusTcpClient

from drivers.config import parse_connection
from drivers.maps import parse_map
from drivers.modbus.bus import BusPool
from drivers.modbus.driver import ModbusDriver
from drivers.sim.server import SimServer, free_tcp_port

MAP = """
device_class: meter
product: {brand: Bench, model: Ten registers, manual: none}
defaults: {type: holding, data_type: uint16}
registers:
  - {quantity: voltage_l1_v, address: 0, scale: 0.1}
  - {quantity: voltage_l2_v, address: 1, scale: 0.1}
  - {quantity: voltage_l3_v, address: 2, scale: 0.1}
  - {quantity: current_l1_a, address: 3, scale: 0.01}
  - {quantity: current_l2_a, address: 4, scale: 0.01}
  - {quantity: current_l3_a, address: 5, scale: 0.01}
  - {quantity: power_w, address: 6, data_type: int32}
  - {quantity: frequency_hz, address: 8, scale: 0.01}
  - {quantity: power_factor, address: 9, data_type: int16, scale: 0.001}
"""


def serve(port: int) -> None:
    async def run() -> None:
        image = {0: 2301, 1: 2302, 2: 2303, 3: 1000, 4: 1001, 5: 1002, 6: 0, 7: 5000, 8: 5000, 9: 990}
        server = SimServer(None, listen=f"tcp://127.0.0.1:{port}", static={"holding": image})
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(run())


async def driver_rate(url: str, seconds: float) -> float:
    register_map = parse_map(MAP, source="bench")
    async with BusPool() as pool:
        bus = pool.bus(parse_connection(url), timeout_s=2.0, options={})
        drv = ModbusDriver(device_id="m", register_map=register_map, bus=bus, unit_id=1)
        await drv.read(datetime.now(UTC))
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            samples = await drv.read(datetime.now(UTC))
            n += 1
        assert len(samples) == 9
        return n / (time.perf_counter() - t0)


async def bare_rate(port: int, seconds: float) -> float:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    try:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            rr = await client.read_holding_registers(0, count=10, device_id=1)
            assert not rr.isError()
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        client.close()


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("simulator did not start")


def main(seconds: float, rounds: int) -> None:
    port = free_tcp_port()
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(port,), daemon=True)
    proc.start()
    try:
        wait_port(port)
        ours, bare = [], []
        for _ in range(rounds):  # alternate so both see the same machine load
            bare.append(asyncio.run(bare_rate(port, seconds)))
            ours.append(asyncio.run(driver_rate(f"tcp://127.0.0.1:{port}", seconds)))
    finally:
        proc.terminate()
        proc.join(5)
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"bare pymodbus client loop (10 registers/request): {b:8.0f} requests/s")
    print(f"driver stack (same registers, 9 samples/poll):     {o:8.0f} polls/s")
    print(f"driver / bare: {100 * o / b:.0f} % (target >= 70 %)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    main(args.seconds, args.rounds)
