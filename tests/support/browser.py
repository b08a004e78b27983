"""Headless Chromium (Debian's package) driven by Playwright, and helpers to run the agent for it.

Never `playwright install`: the browser is `/usr/bin/chromium` from `apt-get install -y chromium`.
A missing browser (or playwright package) fails the test when CI is set, and skips it otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(msg: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        _missing("chromium not found; install it: apt-get install -y chromium")
    assert path is not None
    return path


@dataclass
class Traffic:
    """Bytes received per request, from the DevTools protocol (encoded = as transferred on the wire)."""

    finished: dict[str, int] = field(default_factory=dict)
    streaming: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.finished.values()) + sum(v for k, v in self.streaming.items() if k not in self.finished)

    def by_url(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for rid, url in self.urls.items():
            out[url] = out.get(url, 0) + self.finished.get(rid, self.streaming.get(rid, 0))
        return out


@asynccontextmanager
async def browser_page(*, width: int = 1280, height: int = 900, dark: bool = False) -> AsyncIterator[Any]:
    """A fresh page in a fresh headless Chromium; yields (page, traffic, page errors)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("the playwright package is missing: pip install -e '.[test]'")
        raise
    exe = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                viewport={"width": width, "height": height}, color_scheme="dark" if dark else "light"
            )
            page = await context.new_page()
            traffic = Traffic()
            cdp = await context.new_cdp_session(page)
            await cdp.send("Network.enable")
            cdp.on("Network.requestWillBeSent", lambda e: traffic.urls.__setitem__(e["requestId"], e["request"]["url"]))
            cdp.on(
                "Network.dataReceived",
                lambda e: traffic.streaming.__setitem__(
                    e["requestId"], traffic.streaming.get(e["requestId"], 0) + int(e.get("encodedDataLength", 0))
                ),
            )
            cdp.on(
                "Network.loadingFinished",
                lambda e: traffic.finished.__setitem__(e["requestId"], int(e["encodedDataLength"])),
            )
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, traffic, errors
        finally:
            await browser.close()


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, None


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}: {log.read_text()[-3000:] if log else ''}")
        try:
            status, _ = get_json(url, 1.0)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy after {timeout} s: {log.read_text()[-3000:] if log else ''}")


def start_gia(args: list[str], *, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """`gia ...` as a real process (python -m gateway), stderr to `log`, dying with the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    from tests.servers import _die_with_parent

    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            preexec_fn=_die_with_parent,
        )


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)
    return proc.returncode
