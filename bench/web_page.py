#!/usr/bin/env python3
"""Web page load: time to first render and bytes transferred, beside a baseline from the same run.

Starts a real `gia demo` (temp dir, free port) and headless Chromium (Debian's /usr/bin/chromium via
Playwright; no browser download). Measured, median of N cold loads (fresh browser context each):

* page: `/` until the first live snapshot is drawn (window.giaPage.firstRenderMs, browser clock) and
  the bytes on the wire (DevTools `encodedDataLength`, SSE stream included) at that moment + 1 s;
* baseline: the agent's `/healthz` JSON opened as a document (same server, same browser, no page code),
  i.e. the floor set by the browser and the HTTP stack.

Targets from issue #7: first render < 1 s, < 300 KB transferred.

    .venv/bin/python bench/web_page.py [--loads 5]
"""

from __future__ import annotations

import argparse
import asyncio
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


async def measure(base: str, loads: int) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        try:
            await one_load(browser, base + "/", page_mode=True)  # warm the server's caches once
            page = [await one_load(browser, base + "/", page_mode=True) for _ in range(loads)]
            baseline = [await one_load(browser, base + "/healthz", page_mode=False) for _ in range(loads)]
        finally:
            await browser.close()
    p_ms = statistics.median(m for m, _ in page)
    p_kb = statistics.median(b for _, b in page) / 1024
    b_ms = statistics.median(m for m, _ in baseline)
    b_kb = statistics.median(b for _, b in baseline) / 1024
    print(f"live page  first render {p_ms:7.0f} ms   transferred {p_kb:6.1f} KB   (median of {loads})")
    print(f"baseline   /healthz load {b_ms:6.0f} ms   transferred {b_kb:6.1f} KB")
    print(f"ratio      {p_ms / b_ms:5.1f}x the time, {p_kb / max(b_kb, 0.001):5.1f}x the bytes of the baseline")
    print(f"targets    first render < 1000 ms: {'ok' if p_ms < 1000 else 'MISSED'};"
          f" transferred < 300 KB: {'ok' if p_kb < 300 else 'MISSED'}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=5)
    args = ap.parse_args()
    if not Path("/usr/bin/chromium").exists():
        print("chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--dir", f"{d}/state", "--http", f"127.0.0.1:{port}"],
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
