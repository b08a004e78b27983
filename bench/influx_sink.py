"""Points/s of InfluxSink against real servers, beside a raw client loop writing the same lines.

Baselines measured in the same run:
* VictoriaMetrics /api/v2/write: influxdb-client's synchronous WriteApi fed the pre-formatted lines.
* InfluxDB 1.x /write: a urllib3 POST loop of the same bodies.

The sink's figure includes everything it does per batch: grouping ledger entries into points,
formatting, the request in a worker thread and the await. Each point carries 5 quantities (5 ledger
entries); a request carries `--entries` entries (the forwarder's batch), i.e. entries/5 points.

    .venv/bin/python bench/influx_sink.py [--points 20000] [--entries 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.model import Quality
from gateway.ledger.store import Entry
from gateway.settings import InfluxConfig
from gateway.sinks.influx.sink import InfluxSink
from tests.servers import InfluxDB1, VictoriaMetrics

QUANTITIES = [("power_w", "W"), ("voltage_l1_v", "V"), ("current_l1_a", "A"), ("energy_import_wh", "Wh")]
QUANTITIES += [("frequency_hz", "Hz")]


def make_entries(points: int, t0_ms: int) -> list[Entry]:
    """`points` instants x 5 quantities over 10 meters, as the ledger would hand them out."""
    out: list[Entry] = []
    seq = 0
    for i in range(points):
        device = f"m{i % 10}"
        ts = t0_ms + (i // 10) * 1000
        for q, unit in QUANTITIES:
            seq += 1
            value: float | int = 1_000_000 + i if q == "energy_import_wh" else 230.0 + (i % 97) * 0.13
            out.append(Entry(seq, ts, device, q, value, unit, Quality.GOOD, b""))
    return out


def chunks(entries: list[Entry], n: int) -> list[list[Entry]]:
    return [entries[i : i + n] for i in range(0, len(entries), n)]


async def run_sink(cfg: InfluxConfig, batches: list[list[Entry]]) -> tuple[float, int]:
    classes = {f"m{i}": "meter" for i in range(10)}
    async with InfluxSink(cfg, site="bench", device_classes=classes) as sink:
        t = time.perf_counter()
        for b in batches:
            await sink.send(b)
        return time.perf_counter() - t, sink.points_written


def bodies(cfg: InfluxConfig, batches: list[list[Entry]]) -> list[bytes]:
    sink = InfluxSink(cfg, site="bench", device_classes={f"m{i}": "meter" for i in range(10)})
    return [("\n".join(sink.lines(b)) + "\n").encode() for b in batches]


def raw_v2(url: str, payloads: list[bytes]) -> float:
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS
    from influxdb_client.domain.write_precision import WritePrecision

    with InfluxDBClient(url=url, token="t", org="o") as client:
        api = client.write_api(write_options=SYNCHRONOUS)
        t = time.perf_counter()
        for p in payloads:
            api.write(bucket="b", org="o", record=p, write_precision=WritePrecision.MS)
        return time.perf_counter() - t


def raw_v1(url: str, payloads: list[bytes]) -> float:
    import urllib3

    pool = urllib3.PoolManager(retries=False)
    t = time.perf_counter()
    for p in payloads:
        r = pool.request("POST", f"{url}/write?db=bench&precision=ms", body=p)
        assert r.status == 204, r.data
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--entries", type=int, default=5000, help="ledger entries per send (forwarder batch)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        vm = VictoriaMetrics(Path(tmp) / "vm")
        influx = InfluxDB1(Path(tmp) / "influx")
        try:
            vm.start()
            influx.start()
            influx.create_db("bench")
            targets = [
                ("VictoriaMetrics v2", InfluxConfig(url=vm.url, token="t", org="o", bucket="b"), raw_v2),
                ("InfluxDB 1.6 v1", InfluxConfig(url=influx.url, api="v1", database="bench"), raw_v1),
            ]
            print(f"{args.points} points x {len(QUANTITIES)} quantities, {args.entries} entries per request")
            fmt = InfluxSink(targets[0][1], site="bench", device_classes={f"m{i}": "meter" for i in range(10)})
            batches = chunks(make_entries(args.points, 1_600_000_000_000), args.entries)
            t = time.perf_counter()
            for b in batches:
                fmt.lines(b)
            print(f"{'formatting only':20s} sink.lines() {args.points / (time.perf_counter() - t):9,.0f} points/s")
            for name, cfg, raw in targets:
                sink_rates, raw_rates = [], []
                for r in range(args.rounds):
                    # fresh timestamps each round: every write is new data, not an overwrite
                    t0 = 1_700_000_000_000 + r * 10_000_000_000
                    batches = chunks(make_entries(args.points, t0), args.entries)
                    payloads = bodies(cfg, chunks(make_entries(args.points, t0 + 5_000_000_000), args.entries))
                    raw_rates.append(args.points / raw(cfg.url, payloads))
                    elapsed, n = asyncio.run(run_sink(cfg, batches))
                    assert n == args.points
                    sink_rates.append(n / elapsed)
                s, b = statistics.median(sink_rates), statistics.median(raw_rates)
                print(
                    f"{name:20s} sink {s:9,.0f} points/s   raw client loop (same lines, pre-formatted) "
                    f"{b:9,.0f} points/s   ratio {s / b:.2f}"
                )
        finally:
            vm.stop()
            influx.stop()


if __name__ == "__main__":
    main()
