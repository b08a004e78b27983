"""The hub's live-state ingestion beside a bare subscriber, through a real Mosquitto, in the same run.

S simulated sites x 10 devices publish live state (the gateway's JSON: ts, quality, seq, power_w,
energy_import_wh) at 1 Hz per device from a publisher process (paho, QoS 0). Consuming the same messages:

* the hub: N replica processes, each a `gateway.hub.live.LiveIngest` with the MQTT v5 shared subscription
  `$share/bench/gia/+/+/state` (the broker splits the messages between them), its latest-wins buffer and
  batched writes of every state into one database (SQLite file by default, `--database postgresql://...`);
* the baseline: a bare subscriber on `gia/+/+/state` in this process, no processing (it counts, and reads
  the `ts` of every 10th message for its latency): aiomqtt's `async for` (default), or with
  `--baseline paho` a paho callback on paho's network thread (the leanest a Python subscriber gets).

Printed: the offered rate; per consumer the messages/s taken off the broker, end-to-end latency p50/p99
(the publisher's `ts` -> taken off the broker; for the hub also -> written to the database, which includes
the `flush_s` batching), what the hub shed (latest-wins) and wrote; RSS per replica at start and end.
Rates are messages received / publishing time. The last line is the hub's rate over the bare subscriber's.

    .venv/bin/python bench/hub_ingest.py --sites 50 --seconds 30 --replicas 1

Scaling (`--scaling`): the same offered load to one replica, then to two sharing the subscription, in one
run; printed is the two replicas' rate over one's. Two replicas can only take more than one if one is
saturated, and on a small machine one replica keeps up with what a publisher and the broker beside it can
offer. `--cpu-per-replica F` caps each replica at F of a core with a cgroup CPU quota (what systemd's
`CPUQuota=` or `docker run --cpus` set), so one replica saturates below what the machine can offer and
each added replica brings its own F: the deployment this models is one replica per (small) machine.

    .venv/bin/python bench/hub_ingest.py --sites 1000 --seconds 30 --scaling --cpu-per-replica 0.25
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEVICES = 10
DRAIN_S = 4.0


def rss_mb() -> float:
    """Current resident set size (MB) from /proc (not the peak: flatness is what is asked)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def pct(values: list[float], p: float) -> float | None:
    from gateway.hub.live import percentile

    return percentile(values, p)


# -- the publisher (a child process) ------------------------------------------------------------------
def publisher(host: str, port: int, sites: int, seconds: float) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    topics = [f"gia/s{s:04d}/d{d}/state" for s in range(sites) for d in range(DEVICES)]
    slices = 10  # each second in 10 slices: every device once per second, spread evenly
    per = (len(topics) + slices - 1) // slices
    sent, start, seq = 0, time.monotonic(), 0
    tick = start
    for _second in range(round(seconds)):
        for k in range(slices):
            ts = datetime.now(UTC).isoformat()
            for t in topics[k * per : (k + 1) * per]:
                seq += 1
                body = f'{{"ts":"{ts}","quality":"good","seq":{seq},"power_w":{seq % 5000},"energy_import_wh":{seq}}}'
                client.publish(t, body.encode(), qos=0)
                sent += 1
            tick += 1.0 / slices
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    elapsed = time.monotonic() - start
    time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    print(json.dumps({"sent": sent, "elapsed_s": elapsed}), flush=True)


# -- one hub replica (a child process) ----------------------------------------------------------------
async def replica(url: str, database: str, index: int, sites: int, flush_s: float) -> None:
    from gateway.hub.config import DatabaseConfig, LiveConfig
    from gateway.hub.db import create_hub_engine
    from gateway.hub.live import LiveIngest
    from gateway.settings import MqttConfig

    engine = create_hub_engine(DatabaseConfig(url=database))
    zones = {f"s{s:04d}": "Europe/Riga" for s in range(sites)}
    live = LiveIngest(
        MqttConfig(url=url, timeout_s=10),
        LiveConfig(share_group="bench", flush_s=flush_s),
        engine,
        client_id=f"bench-hub-{index}",
        timezones=lambda: zones,
    )
    task = asyncio.create_task(live.run())
    while not live.health.connected:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    rss_start = rss_mb()
    cpu_start = time.process_time()
    print("READY", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    rss_samples = []
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            rss_samples.append(rss_mb())
    await asyncio.sleep(flush_s * 2)  # the last batch to the database
    cpu = time.process_time() - cpu_start
    h = live.health
    task.cancel()
    out = {
        "states": h.states,
        "cpu_s": cpu,
        "written": h.written,
        "shed": live.queue.shed,
        "refused": live.queue.refused,
        "db_errors": h.db_errors,
        "latency_ms": list(h.latency_ms),
        "transit_ms": list(h.transit_ms),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_mb(),
        "rss_max_mb": max(rss_samples, default=rss_start),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
    }
    print("RESULT " + json.dumps(out), flush=True)
    engine.dispose()


# -- the run ----------------------------------------------------------------------------------------------
async def bare_subscriber(host: str, port: int, ready: asyncio.Event, stop: asyncio.Event) -> dict[str, Any]:
    import aiomqtt

    count, lat = 0, []
    cpu_start = time.process_time()  # this process does little else: the subscriber's cost, roughly
    async with aiomqtt.Client(host, port, identifier=f"bench-bare-{os.getpid()}") as c:
        await c.subscribe("gia/+/+/state", qos=0)
        ready.set()

        async def consume() -> None:
            nonlocal count
            async for m in c.messages:
                count += 1
                if count % 10 == 0:  # the only work: the latency of a sample
                    now = time.time()
                    raw = m.payload if isinstance(m.payload, bytes) else b""
                    ts = raw[7 : raw.index(b'"', 7)].decode()
                    lat.append((now - datetime.fromisoformat(ts).timestamp()) * 1000)

        task = asyncio.create_task(consume())
        await stop.wait()
        task.cancel()
    return {"states": count, "transit_ms": lat, "cpu_s": time.process_time() - cpu_start}


async def bare_paho(host: str, port: int, ready: asyncio.Event, stop: asyncio.Event) -> dict[str, Any]:
    """The leanest baseline: paho's own network thread and a counting callback (no asyncio at all)."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    count, lat = 0, []
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        nonlocal count
        count += 1
        if count % 10 == 0:
            raw = m.payload
            lat.append((time.time() - datetime.fromisoformat(raw[7 : raw.index(b'"', 7)].decode()).timestamp()) * 1000)

    cpu_start = time.process_time()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-bare-paho-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(host, port, keepalive=30)
    client.subscribe("gia/+/+/state", qos=0)
    client.loop_start()
    await asyncio.to_thread(subscribed.wait, 10)
    ready.set()
    await stop.wait()
    client.loop_stop()
    client.disconnect()
    return {"states": count, "transit_ms": lat, "cpu_s": time.process_time() - cpu_start}


# -- CPU quota per replica (cgroup v1 `cpu` or v2) ---------------------------------------------------------
def cpu_cap(pid: int, share: float, name: str) -> Path:
    """Put process `pid` (all its threads) in a new cgroup limited to `share` of one core; returns it."""
    period = 100_000
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        group = v1 / name
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(share * period)))
    else:
        group = Path("/sys/fs/cgroup") / name
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{int(share * period)} {period}")
    (group / "cgroup.procs").write_text(str(pid))
    return group


async def run(args: argparse.Namespace) -> float:
    """One measurement with `args.replicas` replicas; prints it and returns the hub's rate (msg/s)."""
    from tests.servers import MosquittoBroker

    with tempfile.TemporaryDirectory(prefix="gia-bench-hub-") as tmp:
        (Path(tmp) / "mosquitto").mkdir()
        broker = MosquittoBroker(Path(tmp) / "mosquitto")
        broker.start()
        database = args.database or f"sqlite:///{Path(tmp) / 'hub.db'}"
        me = str(Path(__file__).resolve())
        children = []
        groups: list[Path] = []
        try:
            for i in range(args.replicas):
                children.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, me, "--child-replica", str(i), "--url", broker.url, "--database", database,
                        "--sites", str(args.sites), "--flush-s", str(args.flush_s),
                        stdout=subprocess.PIPE,
                    )
                )  # fmt: skip
            if args.cpu_per_replica:
                for i, c in enumerate(children):
                    groups.append(cpu_cap(c.pid, args.cpu_per_replica, f"gia-bench-hub-{os.getpid()}-{i}"))
            for c in children:
                assert c.stdout is not None
                line = await asyncio.wait_for(c.stdout.readline(), 60)
                assert line.strip() == b"READY", line
            ready, stop = asyncio.Event(), asyncio.Event()
            baseline = bare_paho if args.baseline == "paho" else bare_subscriber
            bare = asyncio.create_task(baseline(broker.host, broker.port, ready, stop))
            await ready.wait()
            pub = await asyncio.create_subprocess_exec(
                sys.executable, me, "--child-publisher", "--url", broker.url, "--sites", str(args.sites),
                "--seconds", str(args.seconds), stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await pub.communicate()
            published = json.loads(out.decode().strip().splitlines()[-1])
            await asyncio.sleep(DRAIN_S)
            stop.set()
            base = await bare
            results = []
            for c in children:
                c.send_signal(signal.SIGTERM)
            for c in children:
                assert c.stdout is not None
                text = (await c.stdout.read()).decode()
                await c.wait()
                results.append(json.loads(next(x for x in text.splitlines() if x.startswith("RESULT "))[7:]))
        finally:
            for c in children:
                if c.returncode is None:
                    c.kill()
                    await c.wait()
            for g in groups:
                g.rmdir()
            broker.stop()
    elapsed = published["elapsed_s"]
    offered = published["sent"] / elapsed
    hub_states = sum(r["states"] for r in results)
    hub_rate, bare_rate = hub_states / elapsed, base["states"] / elapsed
    lat = [x for r in results for x in r["latency_ms"]]
    transit = [x for r in results for x in r["transit_ms"]]
    cap = f", each capped at {args.cpu_per_replica:g} CPU" if args.cpu_per_replica else ""
    print(
        f"hub ingest: {args.sites} sites x {DEVICES} devices at 1 Hz for {args.seconds:g} s,"
        f" {args.replicas} replica(s){cap}, database {database.split(':')[0]}, flush every {args.flush_s:g} s"
    )
    print(f"published       {published['sent']:>9} msgs  {offered:>9.0f} msg/s offered")
    print(
        f"bare ({args.baseline:7}) {base['states']:>8} msgs  {bare_rate:>9.0f} msg/s"
        f"  latency p50 {pct(base['transit_ms'], 50) or 0:.1f} ms"
        f" p99 {pct(base['transit_ms'], 99) or 0:.1f} ms (taken off the broker)"
    )
    print(
        f"hub ({args.replicas} replica)   {hub_states:>8} msgs  {hub_rate:>9.0f} msg/s"
        f"  latency p50 {pct(transit, 50) or 0:.1f} ms p99 {pct(transit, 99) or 0:.1f} ms (taken off the broker);"
        f" to the database p50 {pct(lat, 50) or 0:.0f} ms p99 {pct(lat, 99) or 0:.0f} ms"
    )
    hub_cpu = sum(r["cpu_s"] for r in results)
    print(
        f"CPU per message: bare subscriber {base['cpu_s'] / max(1, base['states']) * 1e6:.0f} us,"
        f" hub {hub_cpu / max(1, hub_states) * 1e6:.0f} us (all replicas, database writes included)"
    )
    for i, r in enumerate(results):
        print(
            f"  replica {i}: {r['states']} msgs ({r['states'] / max(1, hub_states):.0%}), {r['written']} rows written,"
            f" shed {r['shed']}, refused {r['refused']}, db errors {r['db_errors']};"
            f" RSS {r['rss_start_mb']:.0f} MB at start, {r['rss_end_mb']:.0f} MB at end, max {r['rss_max_mb']:.0f} MB"
        )
    print(f"ratio {hub_rate / bare_rate if bare_rate else 0:.2f} of the bare subscriber")
    return hub_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sites", type=int, default=50)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--database", default=None, help="hub database URL (default: a SQLite file in a temp dir)")
    p.add_argument(
        "--baseline",
        choices=["aiomqtt", "paho"],
        default="aiomqtt",
        help="the bare subscriber: aiomqtt or a paho callback",
    )
    p.add_argument("--flush-s", type=float, default=1.0, help="the replicas' hub.live.flush_s")
    p.add_argument("--scaling", action="store_true", help="one replica, then two, same load: print the ratio")
    p.add_argument(
        "--cpu-per-replica", type=float, default=None, help="cap each replica at this share of a core (cgroup quota)"
    )
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--child-replica", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-publisher", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_publisher:
        from urllib.parse import urlsplit

        u = urlsplit(args.url)
        publisher(u.hostname or "127.0.0.1", u.port or 1883, args.sites, args.seconds)
    elif args.child_replica is not None:
        asyncio.run(replica(args.url, args.database, args.child_replica, args.sites, args.flush_s))
    elif args.scaling:
        rates = []
        for n in (1, 2):
            args.replicas = n
            rates.append(asyncio.run(run(args)))
            print()
        print(f"two replicas take {rates[1] / rates[0] if rates[0] else 0:.2f}x what one takes")
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
