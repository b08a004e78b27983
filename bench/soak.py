"""Soak: a simulated site polled for a long time while InfluxDB and the broker restart at random times.

What runs:
* N simulated meters (real pymodbus servers): most over Modbus TCP, `--rtu` of them as unit ids on one
  RTU line over a socat pty pair (115200 baud);
* the agent as its own process (`bench/soak.py --agent CONFIG --speed S`, i.e. `Agent` with a
  `ScaledClock`: simulated time S times faster, poll interval 1 simulated second), forwarding to a real
  InfluxDB 1.x and a real Mosquitto, both restarted `--restarts` times at random moments;
* every `--sample-s` seconds the agent's RSS (VmRSS) and open file descriptors are sampled.

At the end (agent stopped with SIGTERM): the ledger's hash chain verifies; every reading the InfluxDB
cursor passed is in InfluxDB exactly once (only a batch sent just before the stop may lie beyond the
cursor); the month's signed report builds (`gia report`) and verifies (`gia verify`); the RSS/FD curve
is printed, and the RSS growth after warm-up (first 20 % of the run) is printed against the 5 % target,
beside the warm-up RSS measured in the same run (the baseline).

    .venv/bin/python bench/soak.py --devices 50 --rtu 4 --minutes 120 --speed 1 --restarts 12   # full run
    .venv/bin/python bench/soak.py --devices 20 --rtu 4 --minutes 8 --speed 10 --restarts 4     # short

With `--attack` (real time only) an attacker process runs beside it from 10 % to 95 % of the run
(`bench/soak_attack.py`: idle sockets at the HTTP connection limit, viewers hammering the history API,
an MQTT device publishing garbage and huge numbers), and at half time the agent's wall clock jumps 3
years ahead for 5 s. Then the soak also checks: nothing stamped in the future, no refused value
stored `good`, no part restarted, `/healthz` answered throughout, RSS growth against 5 % and the p99 of
the commit interval (between the ends of successive commits, from the ledger's health) against 2 s; the
commit delay (a batch's oldest reading from queued to durable, which includes the 1-s batching) is
printed beside it. Every run checks that each reading the Modbus pollers took (their `readings` count in
`/api/v1/devices`) is in the ledger, the quarantined ones of the clock jump included; gaps in a series
(polls without an answer in time) are printed:

    .venv/bin/python bench/soak.py --devices 50 --rtu 4 --minutes 30 --speed 1 --restarts 6 --attack

How the clock jumps (`--clock-jump`): `wall` (default) shifts the agent's `WallClock` — what stamps
readings and what the clock guard compares with monotonic time — by the offset in a file the soak
writes (`JumpingWallClock`, re-read at most every 0.2 s); `faketime` preloads libfaketime into the agent
with FAKETIME_NO_CACHE, so every clock read of the process (Python's GIL waits included) re-reads that
file. That second way distorts what the soak measures: a 1000-reading commit beside a busy event loop
took 531 ms median under it against 17 ms without (`bench/faketime_overhead.py` measures it), which
is how earlier runs saw commit intervals of 2-3 s. A real jump of the whole process's clock under
libfaketime is what tests/runtime/test_clock_safety.py runs against an agent (a bounded test, not a
figure).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _agent_main(config: Path, speed: float, origin: str) -> None:
    """Child mode: the agent with a ScaledClock (what `gia run` is, plus simulated time)."""
    from gateway.agent import Agent
    from gateway.runtime.clock import ScaledClock, WallClock
    from gateway.runtime.logs import setup_logging
    from gateway.runtime.runner import run_until_signal
    from gateway.settings import load_config

    cfg = load_config(config)
    setup_logging(level="warning")
    offset_file = os.environ.get("SOAK_CLOCK_OFFSET_FILE")
    clock: WallClock | ScaledClock
    if offset_file:
        clock = _jumping_wall_clock(Path(offset_file))
    elif speed == 1:
        clock = WallClock()
    else:
        clock = ScaledClock(speed=speed, origin=datetime.fromisoformat(origin))

    trace = os.environ.get("SOAK_TRACEMALLOC")

    async def main() -> None:
        tracer = asyncio.create_task(_trace_allocations(Path(trace))) if trace else None
        agent = Agent(cfg, clock=clock)
        await run_until_signal(agent.run, on_stop=agent.request_stop)
        if tracer is not None:
            tracer.cancel()

    asyncio.run(main())


def _jumping_wall_clock(offset_file: Path) -> Any:
    """The agent's wall clock shifted by the seconds in `offset_file` ("+94608000"), re-read at most every
    0.2 s: a system clock set wrong and corrected, as the agent's clocked parts see it. A `WallClock`, so
    the clock guard measures it against monotonic time as in production (gateway/services.py)."""
    from datetime import timedelta

    from gateway.runtime.clock import WallClock

    class JumpingWallClock(WallClock):
        def __init__(self) -> None:
            self._offset = timedelta(0)
            self._checked = 0.0

        def now(self) -> datetime:
            mono = time.monotonic()
            if mono - self._checked >= 0.2:
                self._checked = mono
                with contextlib.suppress(OSError, ValueError):  # mid-replace: keep the last offset
                    self._offset = timedelta(seconds=float(offset_file.read_text().strip()))
            return super().now() + self._offset

    return JumpingWallClock()


async def _trace_allocations(out: Path, every_s: float = 60.0) -> None:
    """Diagnosis of RSS growth (`SOAK_TRACEMALLOC=FILE`): every minute, the 25 source lines whose
    live Python allocations grew most since the first minute, appended to FILE. Growth that shows in
    RSS but not here is outside Python's objects (C libraries, the allocator's fragmentation). A task
    of the agent's loop (libfaketime makes `time.sleep` in a thread fail); snapshots in a thread."""
    import tracemalloc

    tracemalloc.start(1)
    await asyncio.sleep(every_s)
    base = await asyncio.to_thread(tracemalloc.take_snapshot)
    while True:
        await asyncio.sleep(every_s)
        snap = await asyncio.to_thread(tracemalloc.take_snapshot)
        top = snap.compare_to(base, "lineno")[:25]
        traced, peak = tracemalloc.get_traced_memory()
        with out.open("a") as f:
            f.write(f"== {datetime.now(UTC):%H:%M:%S} traced {traced / 1e6:.1f} MB (peak {peak / 1e6:.1f})\n")
            f.writelines(f"{stat}\n" for stat in top)


def _proc_sample(pid: int) -> tuple[float, int]:
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def _spawn(cmd: list[str], *, cwd: Path, log: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=cwd, stderr=log, env=env)


def _health(http_port: int) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:  # 503 while degraded
        return dict(json.loads(exc.read()))
    except (OSError, ValueError):
        return {}


THREE_YEARS_S = 3 * 365 * 86400


def _set_offset(stamp: Path, offset: str) -> None:
    """The agent re-reads the file (libfaketime on every call, the jumping clock every 0.2 s): replace it
    atomically."""
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(offset + "\n")
    os.replace(tmp, stamp)


def _get_json(http_port: int, path: str) -> dict[str, Any]:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=10) as r:
            return dict(json.loads(r.read()))
    except (OSError, ValueError):
        return {}


def _ledger_entries(db: Path) -> list[Any]:
    """The whole ledger, read once for every check after the run (1.4 M entries in a 30-min soak)."""
    from gateway.ledger.store import Ledger

    led = Ledger(db, readonly=True)
    try:
        return list(led.iter_all())
    finally:
        led.close()


def _readings_checks(entries: list[Any], modbus: list[str], readings: dict[str, int]) -> tuple[bool, str]:
    """Every reading a Modbus poller took (its `readings` count just before the stop) is in the ledger:
    one distinct timestamp per reading; at most one more (a read that finished after the count)."""
    stamps: dict[str, set[int]] = {}
    for e in entries:
        if e.device in readings:
            stamps.setdefault(e.device, set()).add(e.ts_ms)
    lost = {d: readings[d] - len(stamps.get(d, ())) for d in modbus if readings[d] > len(stamps.get(d, ()))}
    extra = {d: len(stamps.get(d, ())) - readings[d] for d in modbus if len(stamps.get(d, ())) > readings[d] + 1}
    taken = sum(readings[d] for d in modbus)
    line = (
        f"readings taken by the {len(modbus)} Modbus pollers: {taken}; in the ledger:"
        f" {sum(len(stamps.get(d, ())) for d in modbus)}; lost {sum(lost.values())} {lost or ''},"
        f" more than taken {extra or 'none'}"
    )
    return bool(readings) and not lost and not extra, line


def _interval_split(before: dict[str, Any], end: dict[str, Any]) -> str:
    """p99 bounds of the commit interval before the attacker started and after (end minus before)."""
    from gateway.ledger.writer import DELAY_BUCKETS_S

    def bound(counts: list[int]) -> str:
        total, seen = sum(counts), 0
        for b, n in zip([*DELAY_BUCKETS_S, float("inf")], counts, strict=True):
            seen += n
            if total and seen >= 0.99 * total:
                return f"p99 <= {b} s over {total} commits"
        return "no commits"

    keys = [*(str(b) for b in DELAY_BUCKETS_S), "inf"]
    b0 = [int(before.get("interval_buckets_s", {}).get(k, 0)) for k in keys]
    b1 = [int(end.get("interval_buckets_s", {}).get(k, 0)) for k in keys]
    return f"before: {bound(b0)}; during and after: {bound([y - x for x, y in zip(b0, b1, strict=True)])}"


def _attack_checks(entries: list[Any], modbus: list[str], mqtt_device: str, poll_s: float) -> tuple[bool, list[str]]:
    """What the attacker must not have caused, read from the ledger after the run."""
    from drivers.model import Quality, refusal

    now_ms = int(time.time() * 1000)
    series: dict[str, list[int]] = {}
    future = estimated = bad_good = mqtt_good = mqtt_invalid = 0
    for e in entries:
        if e.ts_ms > now_ms + 86_400_000:
            future += 1
        if e.quality is Quality.ESTIMATED:
            estimated += 1
        if e.device == mqtt_device:
            if e.quality is Quality.GOOD:
                mqtt_good += 1
                if refusal(e.quantity, e.value) is not None:
                    bad_good += 1
            elif e.quality is Quality.INVALID:
                mqtt_invalid += 1
        if e.quantity == "power_w" and e.device in modbus:
            series.setdefault(e.device, []).append(e.ts_ms)
    gaps = []
    for dev in modbus:
        ts = sorted(series.get(dev, []))
        gaps += [(b - a) / 1000 for a, b in itertools.pairwise(ts)]
    limit = 3 * poll_s
    long_gaps = [g for g in gaps if g > limit]
    lines = [
        f"attack ledger: {len(long_gaps)} gaps > {limit:g} s in {len(modbus)} Modbus series"
        f" (longest {max(gaps, default=0):.1f} s); {estimated} estimated (re-stamped) entries;"
        f" {future} stamped in the future",
        f"attack MQTT device: {mqtt_good} good values, {mqtt_invalid} invalid, {bad_good} refused values stored good",
    ]
    # A gap is a poll that got no answer in time (counted in the device's errors), not a lost reading:
    # `_readings_checks` holds the ledger against what the pollers took. Gaps are printed, not judged.
    ok = future == 0 and bad_good == 0 and mqtt_good > 0 and bool(series)
    return ok, lines


def _report_and_verify(
    work: Path, config: Path, month: str
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    gia = [sys.executable, "-m", "gateway"]
    rep = subprocess.run(
        [*gia, "report", "soak", month, "-o", str(work / "r.json"), "--config", str(config)],
        cwd=work,
        capture_output=True,
        text=True,
    )
    subprocess.run(
        [*gia, "keys", "export", str(work / "k.pem"), "--config", str(config)], cwd=work, capture_output=True
    )
    ver = subprocess.run(
        [*gia, "verify", str(work / "r.json"), "--public-key", str(work / "k.pem")],
        cwd=work,
        capture_output=True,
        text=True,
    )
    return rep, ver


def _curve(samples: list[tuple[float, float, int]]) -> str:
    lines = ["  t (s)   RSS (MB)   FDs   RSS"]
    top = max(s[1] for s in samples)
    step = max(1, len(samples) // 30)
    for t, rss, fds in samples[::step]:
        lines.append(f"{t:7.0f} {rss:9.1f} {fds:6d}   {'#' * int(40 * rss / top)}")
    return "\n".join(lines)


async def soak(args: argparse.Namespace) -> int:
    import yaml

    from drivers.maps import load_map
    from drivers.sim.serial import PtyPair
    from drivers.sim.server import SimServer
    from gateway.ledger.store import Ledger
    from gateway.runtime.clock import ScaledClock
    from tests.servers import InfluxDB1, MosquittoBroker, free_port

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="gia-soak-"))
    speed = args.speed
    if args.attack and speed != 1:
        raise SystemExit("--attack runs in real time (--speed 1): the clock jump is one of the wall clock")
    origin = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    sim_clock = ScaledClock(speed=speed, origin=origin) if speed != 1 else None

    def sim_now_s() -> float:
        return sim_clock.now().timestamp() if sim_clock else time.time()

    def values(i: int) -> Any:
        def v() -> dict[str, float | int | None]:
            t = sim_now_s()
            p = 5000.0 + 1000 * i
            return {
                "power_w": p,
                "voltage_l1_v": 230.0,
                "frequency_hz": 50.0,
                "energy_import_wh": int((t - origin.timestamp()) * p / 3600) + 10_000 * i,
                "energy_export_wh": 0,
            }

        return v

    influx = InfluxDB1(work / "influx")
    broker = MosquittoBroker(work / "mqtt", persistence=True)
    influx.start()
    broker.start()
    influx.create_db("gia")
    sdm = load_map("eastron-sdm630")
    sims: list[SimServer] = []
    devices: list[dict[str, Any]] = []
    n_tcp = args.devices - args.rtu
    taken: set[int] = set()
    for i in range(n_tcp):
        port = free_port()
        while port in taken:  # none is bound before the sims start: two picks may be the same port
            port = free_port()
        taken.add(port)
        sims.append(SimServer(sdm, listen=f"tcp://127.0.0.1:{port}", values=values(i)))
        devices.append({"id": f"tcp{i}", "driver": "modbus", "connection": f"tcp://127.0.0.1:{port}"})
    pty: PtyPair | None = None
    if args.rtu:
        pty = PtyPair().start()
        # One simulated RTU line with several unit ids, all serving the same profile (unit i+1).
        sims.append(
            SimServer(sdm, listen=f"rtu://{pty.b}?baud=115200", unit_ids=range(1, args.rtu + 1), values=values(999))
        )
        for u in range(1, args.rtu + 1):
            devices.append(
                {"id": f"rtu{u}", "driver": "modbus", "connection": f"rtu://{pty.a}?baud=115200", "unit_id": u}
            )
    for d in devices:
        d.update(map="eastron-sdm630", poll_interval_s=1, timeout_s=min(1.0, max(0.3, 2.0 / speed)))
    devices[0]["channels"] = [{"role": "grid_import", "quantity": "energy_import_wh"}]
    modbus_ids = [d["id"] for d in devices]
    attack_topic = "tele/attacked/SENSOR"
    if args.attack:
        devices.append(
            {
                "id": "attacked",
                "driver": "mqtt",
                "topic": attack_topic,
                "profile": "tasmota-energy",
                "poll_interval_s": 1,
            }
        )
    for s in sims:
        await s.start()
    http_port = free_port()
    cfg = {
        "site": {"id": "soak", "timezone": "Europe/Riga"},
        "data_dir": "data",
        "ledger": {"commit_interval_s": 1},
        "devices": devices,
        "influxdb": {"url": influx.url, "api": "v1", "database": "gia", "timeout_s": 5},
        "mqtt": {"url": broker.url, "client_id": "gia-soak", "timeout_s": 5},
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
    }
    config = work / "gia.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = (work / "agent.log").open("ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    env["MALLOC_ARENA_MAX"] = "2"  # as deploy/systemd/gia.service runs the agent
    stamp = work / "faketime"
    if args.attack and args.clock_jump == "wall":
        _set_offset(stamp, "+0")
        env["SOAK_CLOCK_OFFSET_FILE"] = str(stamp)
    elif args.attack:
        from tests.runtime.test_clock_safety import FAKETIME_LIBS

        lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
        if lib is None:
            raise SystemExit("--attack needs libfaketime: apt-get install -y faketime")
        _set_offset(stamp, "+0")
        env.update(
            LD_PRELOAD=str(lib),
            FAKETIME_TIMESTAMP_FILE=str(stamp),
            FAKETIME_NO_CACHE="1",
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            FAKETIME_DONT_RESET="1",
        )
    agent = _spawn(
        [sys.executable, __file__, "--agent", str(config), "--speed", str(speed), "--origin", origin.isoformat()],
        cwd=work,
        log=log,
        env=env,
    )
    duration = args.minutes * 60
    restart_at = sorted(rng.uniform(0.1, 0.85) * duration for _ in range(args.restarts))
    samples: list[tuple[float, float, int]] = []
    restarts: list[str] = []
    attacker: subprocess.Popen[bytes] | None = None
    attack_report: dict[str, Any] = {}
    health_probes = health_failures = 0
    readings: dict[str, int] = {}
    before: dict[str, Any] = {}
    jumped = False
    t0 = time.monotonic()
    try:
        while (el := time.monotonic() - t0) < duration:
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with {agent.returncode}; see {work / 'agent.log'}")
            samples.append((el, *_proc_sample(agent.pid)))
            if args.attack:
                if attacker is None and el >= 0.1 * duration:
                    # the commit figures before the attack: the same run's baseline
                    before = (await asyncio.to_thread(_health, http_port)).get("ledger", {}).get("commit", {})
                    attacker = subprocess.Popen(
                        [
                            sys.executable,
                            str(ROOT / "bench" / "soak_attack.py"),
                            "--http-port",
                            str(http_port),
                            "--sockets",
                            str(args.sockets),
                            "--device",
                            modbus_ids[0],
                            "--mqtt-url",
                            broker.url,
                            "--topic",
                            attack_topic,
                        ],
                        stdout=subprocess.PIPE,
                        stderr=log,
                    )
                if attacker is not None and attacker.returncode is None and el >= 0.95 * duration:
                    attacker.send_signal(signal.SIGTERM)
                    out, _ = attacker.communicate(timeout=60)
                    attack_report = json.loads(out.decode().strip().splitlines()[-1])
                if not jumped and el >= 0.5 * duration:
                    _set_offset(stamp, f"+{THREE_YEARS_S}")  # a spoofed NTP answer...
                    await asyncio.sleep(5)
                    _set_offset(stamp, "+0")  # ...corrected 5 s later
                    jumped = True
                if attacker is not None and attacker.returncode is None:
                    health_probes += 1
                    health_failures += not (await asyncio.to_thread(_health, http_port)).get("status")
            if restart_at and el >= restart_at[0]:
                restart_at.pop(0)
                target = rng.choice(["influxdb", "mosquitto"])
                server = influx if target == "influxdb" else broker
                down = rng.uniform(2, 15)
                await asyncio.to_thread(server.stop, kill=rng.random() < 0.5)
                await asyncio.sleep(down)
                await asyncio.to_thread(server.start)
                restarts.append(f"{el:.0f}s {target} down {down:.1f}s")
            await asyncio.sleep(args.sample_s)
        # Let the sinks catch up, then stop the agent.
        for _ in range(120):
            h = await asyncio.to_thread(_health, http_port)
            if h.get("sinks") and all(s["lag"] < 5 * args.devices * 20 for s in h["sinks"].values()):
                break
            await asyncio.sleep(1)
        final_health = h
        listed = await asyncio.to_thread(_get_json, http_port, "/api/v1/devices")
        readings.update({d["id"]: int(d.get("readings", 0)) for d in listed.get("devices", [])})
    finally:
        if attacker is not None and attacker.returncode is None:
            attacker.kill()
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(30)
        for s in sims:
            await s.stop()
        if pty is not None:
            pty.stop()
        broker.stop()
    # -- checks ----------------------------------------------------------------------------------------
    db = work / "data" / "ledger.db"
    led = Ledger(db, readonly=True)
    check = led.verify()
    cursor = led.cursor("influxdb")
    sent: set[tuple[str, int]] = set()
    every: set[tuple[str, int]] = set()
    for e in led.iter_all():
        # every entry, valueless ones too: a reading whose values were all refused is a point with only
        # `quality="invalid"` (gateway/sinks/influx/sink.py), which SELECT * returns
        every.add((e.device, e.ts_ms))
        if e.seq <= cursor:
            sent.add((e.device, e.ts_ms))
    head = led.head[0]
    led.close()
    points: dict[tuple[str, int], int] = {}
    # Every field (not only power_w): a reading whose power the validity rules refused still has a point.
    res = influx.query("SELECT * FROM meter WHERE site = 'soak'", db="gia")
    for series in res["results"][0].get("series", []):
        cols = series["columns"]
        for row in series["values"]:
            rec = dict(zip(cols, row, strict=True))
            key = (rec["device"], int(rec["time"]))
            points[key] = points.get(key, 0) + 1
    influx.stop()
    dups = sum(1 for n in points.values() if n > 1)
    exact = sent <= points.keys() <= every and dups == 0
    # The month the (simulated) run started in; the report is built from the ledger as it stands.
    month = origin.astimezone(ZoneInfo("Europe/Riga")).strftime("%Y-%m")
    rep, ver = await asyncio.to_thread(_report_and_verify, work, config, month)
    warm = samples[max(1, len(samples) // 5)]
    tail = samples[-max(1, len(samples) // 10) :]
    rss_end = sum(s[1] for s in tail) / len(tail)
    growth = (rss_end - warm[1]) / warm[1] * 100
    print(
        f"soak: {args.devices} devices ({n_tcp} TCP, {args.rtu} RTU on one pty line), poll 1 s simulated,"
        f" speed {speed}x, {args.minutes} min real = {args.minutes * speed / 60:.1f} h simulated"
    )
    print(f"restarts ({len(restarts)}): " + "; ".join(restarts))
    print(
        f"agent exit code {code}; ledger entries {head}; chain verifies: {check.ok}"
        f"{'' if check.ok else ' (' + str(check.problem) + ')'}"
    )
    print(
        f"InfluxDB: {len(points)} points, {len(sent)} readings up to the cursor, {dups} duplicates,"
        f" {len(points.keys() - every)} not in the ledger, {len(sent - points.keys())} missing -> exactly once: {exact}"
    )
    print(
        f"report {month}: {'built' if rep.returncode == 0 else 'FAILED ' + rep.stderr[-300:]};"
        f" gia verify exit {ver.returncode} {ver.stdout.strip()[-200:]}"
    )
    print(_curve(samples))
    print(
        f"RSS after warm-up (baseline, t={warm[0]:.0f}s): {warm[1]:.1f} MB; at the end: {rss_end:.1f} MB;"
        f" growth {growth:+.1f} % (target <= 5 %); FDs {warm[2]} -> {samples[-1][2]}"
    )
    # Every sink caught up and every part still running: a sink that ended itself after an outage
    # (as the MQTT one once did, see gateway/sinks/mqtt.py send) would otherwise pass unnoticed.
    sinks = final_health.get("sinks", {})
    lag_ok = bool(sinks) and all(v["lag"] < 5 * args.devices * 20 for v in sinks.values())
    parts = {name: v["state"] for name, v in final_health.get("parts", {}).items()}
    parts_ok = bool(parts) and all(state == "running" for state in parts.values())
    print(
        "sinks at the end: "
        + ", ".join(f"{n} lag {v['lag']} ({v.get('phase', '?')}, forwarded {v['forwarded']})" for n, v in sinks.items())
        + f"; parts not running: {[n for n, st in parts.items() if st != 'running'] or 'none'}"
    )
    entries = _ledger_entries(db)
    readings_ok, readings_line = _readings_checks(entries, modbus_ids, readings)
    print(readings_line)
    ok = check.ok and exact and rep.returncode == 0 and ver.returncode == 0 and code == 0 and lag_ok and parts_ok
    ok = ok and readings_ok
    commit = final_health.get("ledger", {}).get("commit", {})
    p99 = commit.get("interval_p99_bound_s_since_start")
    print(
        f"commit interval (end to end of successive commits) over {commit.get('commits')} commits: p99 <= {p99} s"
        f" (target <= 2 s), max {commit.get('interval_max_s')} s; histogram {commit.get('interval_buckets_s')}"
    )
    print(
        "commit delay (a batch's oldest reading, queued -> durable): p99 <="
        f" {commit.get('delay_p99_bound_s_since_start')} s, max {commit.get('delay_max_s')} s;"
        f" histogram {commit.get('delay_buckets_s')}"
    )
    lag = final_health.get("runtime", {}).get("loop_lag", {})
    print(
        f"nothing to commit between two commits: max {commit.get('idle_max_s')} s;"
        f" commit duration on the ledger's thread: p99 <= {commit.get('duration_p99_bound_s_since_start')} s,"
        f" max {commit.get('duration_max_s')} s; event-loop lag: p99 <= {lag.get('lag_p99_bound_s_since_start')} s,"
        f" max {lag.get('lag_max_s')} s; histogram {lag.get('lag_buckets_s')}"
    )
    if args.attack:
        print("commit interval before the attack (the baseline) and from its start to the end of the run:")
        print("  " + _interval_split(before, commit))
        attack_ok, lines = _attack_checks(entries, modbus_ids, "attacked", 1.0)
        restarted = {n: v["restarts"] for n, v in final_health.get("parts", {}).items() if v.get("restarts")}
        print(f"attacker ({attack_report.get('seconds', '?')} s): {json.dumps(attack_report)}")
        print(
            f"/healthz during the attack: {health_probes - health_failures}/{health_probes} answered;"
            f" clock jump +3 years for 5 s at half time: {'done' if jumped else 'NOT DONE'};"
            f" parts restarted: {restarted or 'none'}"
        )
        for line in lines:
            print(line)
        ok = ok and attack_ok and jumped and not restarted and health_failures == 0 and bool(attack_report)
        ok = ok and p99 is not None and p99 <= 2.0 and growth <= 5.0
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"state kept in {work}")
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--rtu", type=int, default=4, help="how many of the devices sit on one RTU pty line")
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--speed", type=float, default=10, help="simulated time runs N times faster (1: real time)")
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--sample-s", type=float, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--attack", action="store_true", help="run the attacker beside it (real time only)")
    ap.add_argument("--sockets", type=int, default=100, help="idle sockets (the agent's http.max_connections)")
    ap.add_argument(
        "--clock-jump",
        choices=("wall", "faketime"),
        default="wall",
        help="how the attack's clock jump reaches the agent (see the module's text)",
    )
    ap.add_argument("--agent", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--origin", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent:
        _agent_main(args.agent, args.speed, args.origin)
        return
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
