"""Ingest path: readings/s from submission through ledger commit to InfluxDB acknowledgement, beside raw
influxdb-client batch writes of the same points in the same run; and the agent's RSS under real polling.

Stages (all against a real VictoriaMetrics serving the InfluxDB v2 write API, started here):

A. baseline  — influxdb-client's synchronous WriteApi writes the very lines the sink produces, in
               batches of the same size, nothing else: the ceiling for any gateway.
B. pipeline  — the same readings as `Sample`s pushed into the LedgerWriter as fast as it accepts them
               (what pollers do), hash-chained and committed (SQLite WAL, synchronous=FULL), read back
               by the Forwarder, formatted by the InfluxSink, written, acknowledged, cursor committed.
               Rate = readings / (first submit -> cursor reaches the last reading).
C. agent     — `gia run` as its own process polling N simulated Modbus TCP meters (real pymodbus
               servers) every 0.25 s, forwarding to VictoriaMetrics: achieved readings/s, sink lag,
               and the agent's peak RSS (VmHWM) — without scikit-learn loaded.

Target (issue 2): B keeps >= 50 % of A; the agent's RSS stays under 100 MB.

    .venv/bin/python bench/ingest.py [--readings 200000] [--devices 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from drivers.maps import load_map
from drivers.model import Sample
from drivers.sim.server import SimServer
from gateway.ledger.reader import LedgerReader
from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.runtime.clock import WallClock
from gateway.settings import InfluxConfig
from gateway.sinks.base import Sink
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.influx.sink import InfluxSink
from tests.servers import VictoriaMetrics, free_port

QUANTITIES = [
    ("power_w", "W"),
    ("voltage_l1_v", "V"),
    ("current_l1_a", "A"),
    ("frequency_hz", "Hz"),
    ("energy_import_wh", "Wh"),
]
BATCH_ENTRIES = int(os.environ.get("BENCH_BATCH", "5000"))


def make_samples(n: int, t0: datetime) -> list[Sample]:
    out: list[Sample] = []
    i = 0
    while len(out) < n:
        dev = f"m{i % 10}"
        ts = t0 + timedelta(seconds=i // 10)
        for q, unit in QUANTITIES:
            value: float | int = 1_000_000 + i if q == "energy_import_wh" else 230.0 + (i % 97) * 0.13
            out.append(Sample(dev, q, value, unit, ts))
        i += 1
    return out[:n]


def cfg(vm: VictoriaMetrics, bucket: str) -> InfluxConfig:
    return InfluxConfig(
        url=vm.url,
        api="v2",
        token="bench-token",
        org="gia",
        bucket=bucket,
        batch_size=BATCH_ENTRIES,
    )


def baseline(vm: VictoriaMetrics, samples: list[Sample]) -> float:
    """Stage A: raw influxdb-client writes of the sink's own lines, same batch size."""
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(Path(tmp) / "l.db", synchronous="OFF")
        led.append(samples)
        batches, seq = [], 0
        while polls := led.read_polls_after(seq, BATCH_ENTRIES):
            batches.append(polls)
            seq = polls[-1].last_seq
        led.close()
    sink = InfluxSink(cfg(vm, "a"), site="bench-a", device_classes={f"m{i}": "meter" for i in range(10)})
    bodies = ["\n".join(sink.lines(polls)) for polls in batches]
    with InfluxDBClient(url=vm.url, token="bench-token", org="gia") as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        t = time.perf_counter()
        for body in bodies:
            api.write(bucket="a", record=body, write_precision="ms")
        elapsed = time.perf_counter() - t
    return len(samples) / elapsed


async def pipeline(vm: VictoriaMetrics, samples: list[Sample]) -> tuple[float, float]:
    """Stage B: submit -> commit -> forward -> acknowledged; returns (readings/s, commit-only readings/s)."""
    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(Path(tmp) / "l.db")
        writer = LedgerWriter(led, commit_interval_s=1.0, max_batch=BATCH_ENTRIES, max_queue=100_000)
        classes = {f"m{i}": "meter" for i in range(10)}

        def factory() -> Sink:
            return InfluxSink(cfg(vm, "b"), site="bench-b", device_classes=classes)

        reader = LedgerReader(Path(tmp) / "l.db")
        fw = Forwarder(sink_factory=factory, name="influxdb", writer=writer, reader=reader, clock=WallClock())
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(fw.run())]
        t = time.perf_counter()
        await writer.submit(samples)
        while writer.head_seq < len(samples):
            await asyncio.sleep(0.01)
        committed = time.perf_counter() - t
        while fw.health.cursor < len(samples):
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reader.close()
        writer.close()
    return len(samples) / elapsed, len(samples) / committed


def vm_rss_kb(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def agent_run(vm: VictoriaMetrics, devices: int, seconds: float) -> dict[str, float]:
    """Stage C: the real agent process polling real Modbus servers."""
    sdm = load_map("eastron-sdm630")

    def values(i: int) -> dict[str, float | int | None]:
        t = time.time()
        return {
            "power_w": 1000.0 * i + (t % 60),
            "voltage_l1_v": 230.0,
            "current_l1_a": 5.0,
            "frequency_hz": 50.0,
            "energy_import_wh": int(t * 10) + i,
        }

    sims = []
    for i in range(devices):
        port = free_port()
        sim = SimServer(sdm, listen=f"tcp://127.0.0.1:{port}", values=partial(values, i))
        await sim.start()
        sims.append((sim, port))
    http_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = {
            "site": {"id": "bench-c"},
            "data_dir": tmp,
            "devices": [
                {
                    "id": f"meter{i}",
                    "driver": "modbus",
                    "connection": f"tcp://127.0.0.1:{port}",
                    "map": "eastron-sdm630",
                    "poll_interval_s": 0.25,
                    "timeout_s": 1.0,
                }
                for i, (_, port) in enumerate(sims)
            ],
            "influxdb": {"url": vm.url, "api": "v2", "token": "bench-token", "org": "gia", "bucket": "c"},
            "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
        }
        path = Path(tmp) / "gia.yaml"
        path.write_text(yaml.safe_dump(conf))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(3)  # start-up and first connections
            h0 = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5).read())
            t0 = time.perf_counter()
            await asyncio.sleep(seconds)
            h1 = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5).read())
            elapsed = time.perf_counter() - t0
            rss, hwm = vm_rss_kb(proc.pid)
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        for sim, _ in sims:
            await sim.stop()
    fwd = h1["sinks"]["influxdb"]
    return {
        "readings_per_s": (h1["ledger"]["head_seq"] - h0["ledger"]["head_seq"]) / elapsed,
        "forwarded_per_s": (fwd["forwarded"] - h0["sinks"]["influxdb"]["forwarded"]) / elapsed,
        "lag": fwd["lag"],
        "rss_mb": rss / 1024,
        "peak_rss_mb": hwm / 1024,
        "sklearn_loaded": float("sklearn" in maps),
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    samples = make_samples(args.readings, datetime(2026, 1, 1, tzinfo=UTC))
    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(Path(tmp))
        vm.start()
        try:
            raw = await asyncio.to_thread(baseline, vm, samples)
            pipe, commit_only = await pipeline(vm, samples)
            agent = await agent_run(vm, args.devices, args.seconds)
        finally:
            vm.stop()
    ratio = pipe / raw
    print(f"A baseline  influxdb-client raw writes of the same lines : {raw:10,.0f} readings/s")
    print(f"B pipeline  submit -> ledger commit -> InfluxDB ack         : {pipe:10,.0f} readings/s")
    print(f"            (ledger commit alone, synchronous=FULL)         : {commit_only:10,.0f} readings/s")
    print(f"  ratio B/A = {ratio:.2f}  (target >= 0.50) {'PASS' if ratio >= 0.5 else 'MISS'}")
    print(
        f"C agent     {args.devices} Modbus meters every 0.25 s: {agent['readings_per_s']:,.0f} readings/s polled, "
        f"{agent['forwarded_per_s']:,.0f}/s forwarded, lag {agent['lag']:.0f} entries"
    )
    print(
        f"  agent RSS {agent['rss_mb']:.1f} MB, peak {agent['peak_rss_mb']:.1f} MB (target < 100 MB) "
        f"{'PASS' if agent['peak_rss_mb'] < 100 else 'MISS'}; scikit-learn loaded: {bool(agent['sklearn_loaded'])}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
