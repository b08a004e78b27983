"""Ledger commits while the event loop's thread is busy: multi-row INSERTs vs executemany, same run.

Why: the agent commits on a thread of its own while its event loop thread runs Python (polls, MQTT,
HTTP). sqlite3 releases the GIL around every step of a statement; `executemany` steps once per row,
and each re-acquisition waits for the busy thread to give the GIL up (at most the switch interval,
5 ms). In the attack soak (bench/soak.py --attack) that stretched the commit interval's p99 to 3-5 s.
`Ledger.append` now writes a batch in at most 9 multi-row statements.

What runs: one ledger (SQLite WAL, synchronous=FULL, in a temp dir), batches of `--batch` readings
(50 meters x 10 quantities, as the soak's site) appended from a worker thread while `--busy` threads
spin pure-Python work (0: a quiet process). For each, the median and p99 of one commit's wall time:

* baseline: the earlier code path, the same rows by `executemany` in the same transaction shape;
* ledger:   `Ledger.append` (multi-row INSERTs).

Prints the ratio baseline / ledger (higher is better; target >= 5 with one busy thread). Then a sink's
read of a batch (2 x `--batch` entries): back from SQLite (baseline, one GIL hand-off per row) vs the
writer's in-memory tail (gateway/ledger/tail.py), checked equal.

    .venv/bin/python bench/ledger_contention.py [--batch 500] [--commits 40] [--busy 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.model import Quality, Sample, is_counter
from gateway.ledger.store import Ledger

QUANTITIES = (
    "power_w",
    "energy_import_wh",
    "energy_export_wh",
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "current_l1_a",
    "current_l2_a",
    "current_l3_a",
    "frequency_hz",
)


def batch(n: int, t0: datetime, k: int) -> list[Sample]:
    units = {"power_w": "W", "frequency_hz": "Hz"}
    out = []
    for i in range(n):
        q = QUANTITIES[i % len(QUANTITIES)]
        unit = units.get(q, "Wh" if q.startswith("energy") else q.rsplit("_", 1)[-1].upper())
        value: float | int = k * 10 + i if is_counter(q) else 230.0 + (i % 7) / 10
        out.append(Sample(f"m{i // len(QUANTITIES)}", q, value, unit, t0 + timedelta(seconds=k), Quality.GOOD))
    return out


def append_executemany(led: Ledger, samples: list[Sample]) -> None:
    """The previous `Ledger.append`: the same hash chain, rows written by executemany."""
    rows = led.chained_rows(samples)
    db = led._db
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT INTO readings (seq, ts_ms, device, quantity, value, unit, quality, counter, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.execute("COMMIT")
    led.refresh_head()


def beside_busy_threads(busy: int, work: Callable[[], None]) -> None:
    """Run `work` on a thread of its own while `busy` other threads spin Python (the event loop's load)."""
    stop = threading.Event()
    spinners = [threading.Thread(target=spin, args=(stop,), daemon=True) for _ in range(busy)]
    for t in spinners:
        t.start()
    w = threading.Thread(target=work)
    w.start()
    w.join()
    stop.set()
    for t in spinners:
        t.join()


def spin(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):  # pure Python, as an event loop parsing payloads and building pages
            x = (x + i * i) % 1_000_003


def measure(
    name: str, write: Callable[[Ledger, list[Sample]], object], args: argparse.Namespace, work: Path
) -> list[float]:
    led = Ledger(work / f"{name}.db")
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    times: list[float] = []

    def worker() -> None:
        for k in range(args.commits):
            samples = batch(args.batch, t0, k)
            start = time.perf_counter()
            write(led, samples)
            times.append(time.perf_counter() - start)

    beside_busy_threads(args.busy, worker)
    assert led.verify().ok, "the chain must verify whichever way it was written"
    led.close()
    return times


def measure_reads(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    """A sink's batch of `--batch` x 2 entries: read back from SQLite (baseline) vs the writer's tail."""
    from gateway.ledger.tail import CommittedTail

    led = Ledger(work / f"reads-{args.busy}.db")
    tail = CommittedTail()
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    for k in range(args.commits):
        tail.extend(led.append_entries(batch(args.batch, t0, k)))
    limit = 2 * args.batch
    out: dict[str, list[float]] = {"baseline (SQLite read)": [], "tail (memory)": []}

    def worker() -> None:
        for k in range(args.commits // 2):
            seq = k * limit
            start = time.perf_counter()
            a = led.read_polls_after(seq, limit)
            out["baseline (SQLite read)"].append(time.perf_counter() - start)
            start = time.perf_counter()
            b = tail.polls_after(seq, limit)
            out["tail (memory)"].append(time.perf_counter() - start)
            assert a == b, "the tail must answer what the ledger does"

    beside_busy_threads(args.busy, worker)
    led.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--commits", type=int, default=40)
    ap.add_argument("--busy", type=int, default=1, help="threads spinning Python beside the commits")
    args = ap.parse_args()
    print(f"switch interval {sys.getswitchinterval() * 1000:.0f} ms; {args.commits} commits of {args.batch} readings")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gia-bench-ledger-") as tmp:
        for busy in sorted({0, args.busy}):
            run = argparse.Namespace(**{**vars(args), "busy": busy})
            for name, write in (("baseline (executemany)", append_executemany), ("ledger (multi-row)", Ledger.append)):
                t = measure(f"{name.split()[0]}-{busy}", write, run, Path(tmp))
                p99 = sorted(t)[max(0, round(0.99 * len(t)) - 1)]
                results[(name, busy)] = (statistics.median(t), p99)
                med = statistics.median(t)
                print(f"  busy threads {busy}: {name:<24} median {med * 1000:8.1f} ms  p99 {p99 * 1000:8.1f} ms")
        for busy in sorted({0, args.busy}):
            run = argparse.Namespace(**{**vars(args), "busy": busy})
            for name, t in measure_reads(run, Path(tmp)).items():
                p99 = sorted(t)[max(0, round(0.99 * len(t)) - 1)]
                results[(name, busy)] = (statistics.median(t), p99)
                med = statistics.median(t)
                print(f"  busy threads {busy}: {name:<24} median {med * 1000:8.2f} ms  p99 {p99 * 1000:8.2f} ms")
    for busy in sorted({0, args.busy}):
        base, new = results[("baseline (SQLite read)", busy)], results[("tail (memory)", busy)]
        ratio = f"median {base[0] / new[0]:.0f}x, p99 {base[1] / new[1]:.0f}x"
        print(f"busy threads {busy}: sink read baseline/tail = {ratio}")
    for busy in sorted({0, args.busy}):
        base, new = results[("baseline (executemany)", busy)], results[("ledger (multi-row)", busy)]
        print(
            f"busy threads {busy}: commit median baseline/ledger = {base[0] / new[0]:.1f}x, p99 {base[1] / new[1]:.1f}x"
        )


if __name__ == "__main__":
    main()
