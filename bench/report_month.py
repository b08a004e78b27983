"""Monthly report generation time vs simply scanning the same rows from SQLite (same run).

A site with 20 energy-register channels read every 10 s for March (743 h): ~5.3 M ledger entries. The
ledger file is built once in a temp dir (rows hashed exactly as `Ledger.append` does, checked with
`Ledger.verify` on a prefix), then:

* baseline: the per-channel range queries the report runs, rows fetched and discarded;
* report:   `ReportService.report_json` for the closed month (fetch, compute, Merkle roots, sign).

Target: report <= 3 x scan. Usage: .venv/bin/python bench/report_month.py [--channels 20] [--step 10]
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from drivers.config import ChannelConfig, ModbusDeviceConfig
from gateway.certification.periods import month_period
from gateway.certification.service import ReportService
from gateway.certification.sitekeys import rotate_site_key
from gateway.ledger.store import GENESIS, Ledger, canonical_entry
from gateway.settings import Settings, SiteConfig
from gateway.site.resolve import resolve_site

QUANTITIES = ("energy_import_wh", "energy_export_wh")


def build_ledger(path: Path, n_channels: int, step_s: int, start_ms: int, end_ms: int) -> int:
    """Append readings in time order like the agent does; returns the entry count."""
    Ledger(path).close()  # schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    chans = [(f"m{c // 2:02d}", QUANTITIES[c % 2], 1000 * (c + 1)) for c in range(n_channels)]
    prev, seq = GENESIS, 0
    sha = hashlib.sha256
    batch: list[tuple[object, ...]] = []
    ts = start_ms - 2 * 3_600_000
    k = 0
    db.execute("BEGIN")
    while ts <= end_ms + 2 * 3_600_000:
        for dev, q, watts in chans:
            seq += 1
            value = 100_000 + watts * k * step_s // 3600
            # identical bytes to RFC 8785 for these ASCII/integer entries (checked below)
            canon = (
                f'{{"device":"{dev}","quality":"good","quantity":"{q}","seq":{seq},"ts":{ts},'
                f'"unit":"Wh","value":{value}}}'
            ).encode()
            prev = sha(prev + canon).digest()
            batch.append((seq, ts, dev, q, value, "Wh", "good", 1, prev))
        if len(batch) >= 100_000:
            db.executemany(
                "INSERT INTO readings (seq, ts_ms, device, quantity, value, unit, quality, counter, hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
            batch.clear()
        ts += step_s * 1000
        k += 1
    db.executemany(
        "INSERT INTO readings (seq, ts_ms, device, quantity, value, unit, quality, counter, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )
    db.execute("COMMIT")
    db.close()
    assert canonical_entry(1, 0, "m00", "energy_import_wh", 5, "Wh", "good") == (
        b'{"device":"m00","quality":"good","quantity":"energy_import_wh","seq":1,"ts":0,"unit":"Wh","value":5}'
    )
    led = Ledger(path, readonly=True)
    check = led.verify(1, 50_000)
    led.close()
    assert check.ok, check.problem
    return seq


def scan(path: Path, n_channels: int, start_ms: int, end_ms: int) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = 0
    margin = 3_660_000
    for c in range(n_channels):
        dev, q = f"m{c // 2:02d}", QUANTITIES[c % 2]
        got = db.execute(
            "SELECT ts_ms, value, seq, hash FROM readings WHERE device = ? AND quantity = ? AND ts_ms >= ?"
            " AND ts_ms < ? AND pruned = 0 ORDER BY ts_ms, seq",
            (dev, q, start_ms - margin, end_ms + margin),
        ).fetchall()
        rows += len(got)
        del got
    db.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=20)
    ap.add_argument("--step", type=int, default=10, help="seconds between readings")
    ap.add_argument("--month", default="2025-03")
    args = ap.parse_args()
    period = month_period(args.month, "Europe/Riga")
    with tempfile.TemporaryDirectory(prefix="gia-bench-") as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        n = build_ledger(d / "ledger.db", args.channels, args.step, period.start_ms, period.end_ms)
        print(f"built ledger: {n:,} entries in {time.perf_counter() - t:.1f} s", flush=True)
        devices = [
            ModbusDeviceConfig(
                id=f"m{i:02d}",
                connection="tcp://127.0.0.1:502",
                sunspec=True,
                # rated powers, so the step validation (capacity bound per step) runs as on a real site
                channels=[
                    ChannelConfig(
                        role="grid_import", quantity="energy_import_wh", id=f"m{i:02d}.import", rated_power_w=100_000
                    ),
                    ChannelConfig(
                        role="grid_export", quantity="energy_export_wh", id=f"m{i:02d}.export", rated_power_w=100_000
                    ),
                ][: max(0, args.channels - 2 * i)],
            )
            for i in range((args.channels + 1) // 2)
        ]
        settings = Settings(site=SiteConfig(id="bench", timezone="Europe/Riga"), data_dir=d, devices=devices)
        now = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)
        scans = []
        for _ in range(2):
            t = time.perf_counter()
            rows = scan(d / "ledger.db", args.channels, period.start_ms, period.end_ms)
            scans.append(time.perf_counter() - t)
        base = min(scans)
        print(f"baseline scan: {rows:,} rows in {base:.2f} s ({rows / base / 1e6:.2f} M rows/s)", flush=True)
        # the site key, as `gia keys rotate` makes it for a ledger with history (outside the timing)
        rotate_site_key(d / "keys", d / "ledger.db", site="bench", reason="benchmark key")
        svc = ReportService(settings, resolve_site(settings, base_dir=d), now_ms=lambda: now, reports_dir=d / "r1")
        t = time.perf_counter()
        data = svc.report_json("bench", args.month)
        rep_s = time.perf_counter() - t
        import json

        rep = json.loads(data)
        print(
            f"report: {rep_s:.2f} s for {rep['evidence']['entries']:,} readings used, grade {rep['quality']['grade']},"
            f" {len(data):,} bytes"
        )
        print(f"ratio report / scan: {rep_s / base:.2f} (target <= 3)")
        import resource

        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
