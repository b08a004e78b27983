"""Reads/s of the OPC UA driver (polling mode) vs a bare asyncua client reading the same nodes, same run.

The server (the simulator serving the IEC 61400-25 node map under one turbine root) runs in its own
process so client and server do not share one event loop. The driver stack is everything a poll does:
the shared session (connection check, error translation), one batched Read of the device's nodes,
status and value conversion (scale, range, counters to integer Wh), `Sample`s. The baseline is a bare
asyncua `Client.read_values` loop over the same node ids (resolved once, as the driver resolves them
once per connection). Rounds alternate so both see the same machine load; medians are compared.

    .venv/bin/python bench/opcua_throughput.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncua.client.client import Client

from drivers.opcua.driver import OpcuaDriver, relative_path, translate
from drivers.opcua.nodemap import load_node_map
from drivers.opcua.session import Endpoint, ns0
from drivers.opcua.sim import OpcuaSimServer

MAP = "iec61400-25-wind-turbine"
ROOT = "WTG01"


def serve(port: int) -> None:
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)

    async def run() -> None:
        server = OpcuaSimServer(load_node_map(MAP), listen=f"opc.tcp://127.0.0.1:{port}", roots=[ROOT])
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(run())


async def driver_rate(url: str, seconds: float) -> float:
    driver = OpcuaDriver(
        device_id="wtg01", node_map=load_node_map(MAP), endpoint=Endpoint(url), root=ROOT, mode="polling"
    )
    async with driver:
        samples = await driver.read(datetime.now(UTC))
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            samples = await driver.read(datetime.now(UTC))
            n += 1
        assert len(samples) == 7 and all(s.quality.value == "good" for s in samples), samples
        return n / (time.perf_counter() - t0)


async def bare_rate(url: str, seconds: float) -> float:
    node_map = load_node_map(MAP)
    client = Client(url, timeout=5)
    await client.connect()
    try:
        ns = (await client.get_namespace_array()).index(node_map.namespace)
        objects = ns0(85)  # the Objects folder
        (root,) = await translate(client, [(objects, relative_path(ROOT, ns))])
        assert not isinstance(root, str), root
        found = await translate(client, [(root, relative_path(n.path or "", ns)) for n in node_map.nodes])
        nodes = [client.get_node(nid) for nid in found if not isinstance(nid, str)]
        assert len(nodes) == 7
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            values = await client.read_values(nodes)
            n += 1
        assert len(values) == 7
        return n / (time.perf_counter() - t0)
    finally:
        await client.disconnect()


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("simulator did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(seconds: float, rounds: int) -> None:
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(port,), daemon=True)
    proc.start()
    try:
        wait_port(port)
        ours, bare = [], []
        for _ in range(rounds):  # alternate so both see the same machine load
            bare.append(asyncio.run(bare_rate(url, seconds)))
            ours.append(asyncio.run(driver_rate(url, seconds)))
    finally:
        proc.terminate()
        proc.join(5)
    o, b = statistics.median(ours), statistics.median(bare)
    rounds_text = f"bare {', '.join(f'{x:.0f}' for x in bare)}; driver {', '.join(f'{x:.0f}' for x in ours)}"
    print(f"rounds of {seconds:g} s (reads/s): {rounds_text}")
    print(f"bare asyncua client, read_values of 7 nodes:       {b:8.0f} reads/s")
    print(f"driver, polling mode (same 7 nodes, 7 samples):    {o:8.0f} reads/s  (target >= 70 % of the bare client)")
    print(f"ratio {o / b:.2f} of the bare client")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    main(args.seconds, args.rounds)
