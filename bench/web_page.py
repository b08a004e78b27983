#!/usr/bin/env python3
"""Web page load: time to first render and bytes transferred, beside a baseline from the same run.

Starts a real `gia demo` (temp dir, free port) and headless Chromium (Debian's /usr/bin/chromium via
Playwright; no browser download). Measured, median of N cold loads (fresh browser context each):

* page: `/` until the first live snapshot is drawn (window.giaPage.firstRenderMs, browser clock) and
  the bytes on the wire (DevTools `encodedDataLength`, SSE stream included) at that moment + 1 s;
* baseline: the agent's `/healthz` JSON opened as a document (same server, same browser, no page code),
  i.e. the floor set by the browser and the HTTP stack.

Targets from issue #7: first render < 1 s, < 300 KB transferred.

Issue 21 adds the history: the same measures for `/history` (page weight with its script and the
month view drawn), and a month view of a **50-device site** (100 energy-register channels, a month of
readings every 5 min) computed on the ledger's reader thread while a writer ingests 50 devices x 10
values per second with `commit_interval_s: 1` — its commit intervals (p50/p95/max) beside the same
writer's without history queries, in the same run.

    .venv/bin/python bench/web_page.py [--loads 5] [--skip-month]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.browser import CHROMIUM_ARGS as ARGS  # one list of the flags Chromium needs here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ok(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become healthy in {timeout} s")


async def one_load(browser: Any, url: str, *, page_mode: bool) -> tuple[float, int]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    cdp = await ctx.new_cdp_session(page)
    await cdp.send("Network.enable")
    sizes: dict[str, int] = {}
    cdp.on("Network.dataReceived", lambda e: sizes.__setitem__(e["requestId"], sizes.get(e["requestId"], 0)
                                                                + int(e.get("encodedDataLength", 0))))  # fmt: skip
    done: dict[str, int] = {}
    cdp.on("Network.loadingFinished", lambda e: done.__setitem__(e["requestId"], int(e["encodedDataLength"])))
    t0 = time.perf_counter()
    await page.goto(url, wait_until="load")
    if page_mode:
        await page.wait_for_function("() => window.giaPage && window.giaPage.firstRenderMs !== null")
        ms = float(await page.evaluate("window.giaPage.firstRenderMs"))
        await page.wait_for_timeout(1000)
    else:
        ms = (time.perf_counter() - t0) * 1000
        await page.wait_for_timeout(300)  # let the DevTools events for the document arrive
    total = sum(done.values()) + sum(v for k, v in sizes.items() if k not in done)
    await ctx.close()
    return ms, total


async def history_load(browser: Any, url: str) -> tuple[float, int]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    cdp = await ctx.new_cdp_session(page)
    await cdp.send("Network.enable")
    done: dict[str, int] = {}
    cdp.on("Network.loadingFinished", lambda e: done.__setitem__(e["requestId"], int(e["encodedDataLength"])))
    t0 = time.perf_counter()
    await page.goto(url, wait_until="load")
    await page.wait_for_function("() => window.giaHistory && window.giaHistory.energyDrawn !== null")
    ms = (time.perf_counter() - t0) * 1000
    await page.wait_for_timeout(500)
    await ctx.close()
    return ms, sum(done.values())


async def measure(base: str, loads: int) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        try:
            await one_load(browser, base + "/", page_mode=True)  # warm the server's caches once
            page = [await one_load(browser, base + "/", page_mode=True) for _ in range(loads)]
            baseline = [await one_load(browser, base + "/healthz", page_mode=False) for _ in range(loads)]
            await history_load(browser, base + "/history")
            hist = [await history_load(browser, base + "/history") for _ in range(loads)]
        finally:
            await browser.close()
    p_ms = statistics.median(m for m, _ in page)
    p_kb = statistics.median(b for _, b in page) / 1024
    b_ms = statistics.median(m for m, _ in baseline)
    b_kb = statistics.median(b for _, b in baseline) / 1024
    print(f"live page  first render {p_ms:7.0f} ms   transferred {p_kb:6.1f} KB   (median of {loads})")
    print(f"baseline   /healthz load {b_ms:6.0f} ms   transferred {b_kb:6.1f} KB")
    print(f"ratio      {p_ms / b_ms:5.1f}x the time, {p_kb / max(b_kb, 0.001):5.1f}x the bytes of the baseline")
    h_ms = statistics.median(m for m, _ in hist)
    h_kb = statistics.median(b for _, b in hist) / 1024
    print(f"history    month view drawn {h_ms:5.0f} ms   transferred {h_kb:6.1f} KB   (median of {loads}, wall clock)")
    print(f"targets    first render < 1000 ms: {'ok' if p_ms < 1000 else 'MISSED'};"
          f" transferred < 300 KB: {'ok' if p_kb < 300 else 'MISSED'}")  # fmt: skip


async def _ingest(path: Path, seconds: float, during: Any | None) -> list[float]:
    """Commit intervals (s) of a writer taking 50 devices x 10 values each second, optionally while
    `during(reader)` runs month views on the reader thread."""
    from datetime import UTC, datetime

    from drivers.model import Sample
    from gateway.ledger.reader import LedgerReader
    from gateway.ledger.store import Ledger
    from gateway.ledger.writer import LedgerWriter

    led = Ledger(path)
    writer = LedgerWriter(led, commit_interval_s=1.0, max_batch=100_000, max_queue=1_000_000)
    reader = LedgerReader(path)
    stamps: list[float] = []
    run = asyncio.create_task(writer.run())

    async def watch() -> None:
        seq = writer.head_seq
        while True:
            seq = await writer.wait_beyond(seq, 5.0)
            stamps.append(time.perf_counter())

    async def feed() -> None:
        k = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            now = datetime.now(UTC)
            for d in range(50):
                await writer.submit(
                    [Sample(f"m{d}", "power_w", float(k % 997 + q), "W", now) for q in range(9)]
                    + [Sample(f"m{d}", "energy_import_wh", 10**9 + k, "Wh", now)]
                )
            k += 1
            await asyncio.sleep(0.1)

    w = asyncio.create_task(watch())
    side = asyncio.create_task(during(reader)) if during else None
    await feed()
    w.cancel()
    if side:
        side.cancel()
    await writer.flush()
    run.cancel()
    reader.close()
    writer.close()
    return [b - a for a, b in itertools.pairwise(stamps)]


def month_view_bench(seconds: float) -> None:
    """A month view of a 50-device site on the reader thread, and what it does to ingestion."""
    from datetime import UTC, datetime, timedelta

    from drivers.model import Sample
    from gateway.ledger.store import Ledger
    from gateway.site.channels import ChannelSpec
    from gateway.site.history import period_balances

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.db"
        led = Ledger(path, synchronous="NORMAL")
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        start = end - timedelta(days=31)
        t, k, batch = start, 0, []
        while t < end:
            for dev in range(50):
                batch.append(Sample(f"m{dev}", "energy_import_wh", 10**9 + 500 * k + dev, "Wh", t))
                batch.append(Sample(f"m{dev}", "energy_export_wh", 10**8 + 100 * k, "Wh", t))
            if len(batch) >= 50_000:
                led.append(batch)
                batch = []
            t += timedelta(minutes=5)
            k += 1
        if batch:
            led.append(batch)
        rows = led.count()
        led.close()
        chans = []
        for dev in range(50):
            role_in, role_out = ("grid_import", "grid_export") if dev == 0 else ("consumption", "auxiliary")
            chans += [ChannelSpec(f"m{dev}.in", role_in, f"m{dev}", "energy_import_wh"),
                      ChannelSpec(f"m{dev}.out", role_out, f"m{dev}", "energy_export_wh")]  # fmt: skip
        view_ms: list[float] = []

        async def views(reader: Any) -> None:
            while True:
                t0 = time.perf_counter()
                await reader.call(
                    lambda lg: period_balances(
                        chans, lg, view="month", anchor=end.date(), timezone="Europe/Riga", now=datetime.now(UTC)
                    )
                )
                view_ms.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.2)

        base = asyncio.run(_ingest(path, seconds, None))
        loaded = asyncio.run(_ingest(path, seconds, views))

    def q(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    print(f"month view 50 devices, 100 channels, {rows:,} register rows: median {statistics.median(view_ms):.0f} ms,"
          f" max {max(view_ms):.0f} ms over {len(view_ms)} views (target < 1000 ms:"
          f" {'ok' if statistics.median(view_ms) < 1000 else 'MISSED'})")  # fmt: skip
    alone = f"p50 {q(base, 0.5):.3f} s  p95 {q(base, 0.95):.3f} s  max {max(base):.3f} s"
    print(f"ingestion  commit interval alone     {alone}")
    print(f"ingestion  with month views running  p50 {q(loaded, .5):.3f} s  p95 {q(loaded, .95):.3f} s"
          f"  max {max(loaded):.3f} s  (ratio p95 {q(loaded, .95) / q(base, .95):.2f})")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--skip-month", action="store_true", help="skip the 50-device month view")
    ap.add_argument("--seconds", type=float, default=20.0, help="ingestion seconds per side of the comparison")
    args = ap.parse_args()
    if not args.skip_month:
        month_view_bench(args.seconds)
    if not Path("/usr/bin/chromium").exists():
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--dir", f"{d}/state", "--http", f"127.0.0.1:{port}",
             "--backfill", "35"],
            cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ok(f"http://127.0.0.1:{port}/healthz", 40)
            asyncio.run(measure(f"http://127.0.0.1:{port}", args.loads))
        finally:
            proc.terminate()
            proc.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
