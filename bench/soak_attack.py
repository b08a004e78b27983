"""The attacker beside the soak (`bench/soak.py --attack`): what an outsider on the site LAN, a faulty
device or a hostile publisher does to a running agent all at once (issue 15, done-when 3).

Run as its own process by the soak, so its load is not the soak's measuring loop:

* **idle sockets at the limit**: `--sockets N` TCP connections to the agent's HTTP port that never send
  a request; each one the agent closes (header timeout, over the connection limit) is opened again;
* **a viewer hammering the history API**: `--viewers K` loops requesting a year of the energy balance
  and 800 days of a device's trend, as fast as the agent answers (429 is an answer);
* **an MQTT device publishing garbage and huge numbers** on `--topic`: invalid JSON, NaN, 1e400, 1e13 kWh,
  strings, negative energy, deep nesting, 200 kB payloads, interleaved with valid readings so the device
  stays online; reconnects across the broker's restarts.

The forward clock jump is the soak's own part (it owns the agent's libfaketime stamp file).
On SIGTERM it prints one JSON line of counts to stdout and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from typing import Any

GARBAGE: list[bytes] = [
    b"{not json",
    b'{"ENERGY": {"Total": NaN, "Power": 100.0}}',
    b'{"ENERGY": {"Total": 1e400, "Power": -1e400}}',
    b'{"ENERGY": {"Total": 1e13, "Power": 1e308, "Voltage": -230, "Factor": 7}}',
    b'{"ENERGY": {"Total": "12.5", "Power": "lots"}}',
    b'{"ENERGY": {"Total": -5, "Power": 1.5}}',
    b'{"ENERGY": {"Total": 123456789012345678901234567890}}',
    b"[" * 50_000 + b"]" * 50_000,
    b'{"ENERGY": {"Power": ' + b"9" * 5000 + b"}}",
    b'{"pad": "' + b"x" * 200_000 + b'"}',
    b"\xff\xfe\x00binary",
    b"",
]


def valid(i: int) -> bytes:
    return json.dumps(
        {"ENERGY": {"Total": 100.0 + i / 1000, "Power": 800.0, "Voltage": 231.0, "Current": 3.5, "Factor": 0.95}}
    ).encode()


async def idle_sockets(port: int, n: int, counts: Counter[str], stop: asyncio.Event) -> None:
    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                counts["socket_refused"] += 1
                await asyncio.sleep(0.2)
                continue
            counts["socket_opened"] += 1
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.read(1)  # returns b"" when the agent closes it
            counts["socket_closed_by_agent"] += 1
            writer.close()

    await asyncio.gather(*(one() for _ in range(n)))


async def viewer(port: int, counts: Counter[str], stop: asyncio.Event, device: str) -> None:
    paths = [
        "/api/v1/history/energy?view=year",
        "/api/v1/history/energy?view=month",
        f"/api/v1/devices/{device}/trend?quantity=power_w&start=2025-01-01T00:00:00Z&points=1500",
    ]
    i = 0
    while not stop.is_set():
        path = paths[i % len(paths)]
        i += 1
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 30)
            await asyncio.wait_for(reader.read(), 30)
            writer.close()
            parts = status_line.split()
            counts[f"history_{parts[1].decode() if len(parts) > 1 else 'closed'}"] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            counts["history_error"] += 1
            await asyncio.sleep(0.1)


async def publisher(url: str, topic: str, rate: float, counts: Counter[str], stop: asyncio.Event) -> None:
    import aiomqtt

    host, _, port = url.split("://", 1)[1].rpartition(":")
    i = 0
    while not stop.is_set():
        try:
            async with aiomqtt.Client(host, int(port), identifier="gia-soak-attacker") as client:
                while not stop.is_set():
                    payload = valid(i) if i % 3 == 0 else GARBAGE[i % len(GARBAGE)]
                    await client.publish(topic, payload, qos=0)
                    counts["mqtt_valid" if i % 3 == 0 else "mqtt_garbage"] += 1
                    i += 1
                    await asyncio.sleep(1 / rate)
        except aiomqtt.MqttError:
            counts["mqtt_reconnects"] += 1
            await asyncio.sleep(1)


async def main(args: argparse.Namespace) -> None:
    counts: Counter[str] = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    t0 = time.monotonic()
    tasks = [
        asyncio.create_task(idle_sockets(args.http_port, args.sockets, counts, stop)),
        *(asyncio.create_task(viewer(args.http_port, counts, stop, args.device)) for _ in range(args.viewers)),
        asyncio.create_task(publisher(args.mqtt_url, args.topic, args.rate, counts, stop)),
    ]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result: dict[str, Any] = {"seconds": round(time.monotonic() - t0), **counts}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--sockets", type=int, required=True)
    ap.add_argument("--viewers", type=int, default=4)
    ap.add_argument("--device", required=True, help="a device whose trend the viewer requests")
    ap.add_argument("--mqtt-url", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--rate", type=float, default=20.0, help="MQTT messages per second")
    asyncio.run(main(ap.parse_args()))
    sys.exit(0)
