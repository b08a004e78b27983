"""What libfaketime does to the figures of a process it is preloaded into: ledger commits beside a busy loop.

Why: the attack soak (bench/soak.py --attack) once made its clock jump by preloading libfaketime into the
agent with FAKETIME_NO_CACHE, so the stamp file is re-read on every clock read of the process — the
event loop's timers and the interpreter's GIL waits included. Its commit intervals (p99 2-3 s) were
then a figure of the harness, not of the agent. This measures that effect directly, so the soak's choice
(an in-agent jump of the wall clock by default, `--clock-jump wall`) rests on a number.

What runs, twice in fresh processes — without libfaketime (the baseline) and with it as the soak
preloaded it: a thread appends batches of 1000 readings to a real ledger (SQLite WAL, synchronous=FULL,
temp dir) every 0.5 s, while the main thread's asyncio loop opens and closes TCP connections to itself
and runs Python between them (the attacker's idle-socket churn in miniature), for `--seconds`. Prints
each run's commit median and p90, and the ratio with / without (1.0: no effect).

    .venv/bin/python bench/faketime_overhead.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _child(seconds: float) -> None:
    from ledger_contention import batch

    from gateway.ledger.store import Ledger

    work = Path(tempfile.mkdtemp(prefix="gia-faketime-"))
    led = Ledger(work / "ledger.db")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    durations: list[float] = []
    stop = threading.Event()

    def committer() -> None:
        k = 0
        while not stop.is_set():
            rows = batch(1000, t0, k)
            k += 1
            start = time.perf_counter()
            led.append_entries(rows)
            durations.append(time.perf_counter() - start)
            stop.wait(0.5)  # not time.sleep: libfaketime makes it fail with EINVAL in a thread

    async def churn() -> None:
        async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(20):
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                except OSError:
                    pass
            sum(i * i for i in range(20_000))  # Python work between the sockets
            await asyncio.sleep(0)
        server.close()

    thread = threading.Thread(target=committer)
    thread.start()
    asyncio.run(churn())
    stop.set()
    thread.join()
    led.close()
    durations.sort()
    print(
        json.dumps(
            {
                "commits": len(durations),
                "median_ms": statistics.median(durations) * 1000,
                "p90_ms": durations[int(0.9 * len(durations))] * 1000,
            }
        )
    )


def _run(seconds: float, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--seconds", str(seconds)],
        env=env,
        capture_output=True,
        check=True,
        timeout=seconds * 10 + 60,
    )
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.seconds)
        return
    from tests.runtime.test_clock_safety import FAKETIME_LIBS

    lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
    if lib is None:
        raise SystemExit("needs libfaketime: apt-get install -y faketime")
    base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    with tempfile.TemporaryDirectory() as tmp:
        stamp = Path(tmp) / "faketime"
        stamp.write_text("+0\n")
        faked = {
            **base_env,
            "LD_PRELOAD": str(lib),
            "FAKETIME_TIMESTAMP_FILE": str(stamp),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_RESET": "1",
        }
        baseline = _run(args.seconds, base_env)
        preloaded = _run(args.seconds, faked)
    for name, r in (("without libfaketime (baseline)", baseline), ("with libfaketime, as the soak had it", preloaded)):
        print(f"{name:38s}: {r['commits']:3.0f} commits, median {r['median_ms']:6.1f} ms, p90 {r['p90_ms']:6.1f} ms")
    print(f"ratio with / without: median {preloaded['median_ms'] / baseline['median_ms']:.1f}x")


if __name__ == "__main__":
    main()
