"""`gia demo` as a new user runs it: every simulated device online with changing values within 30 s,
Ctrl-C stops it cleanly, and its state directory works with --config for other commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger.store import Ledger
from tests.servers import free_port

pytestmark = [pytest.mark.modbus, pytest.mark.slow]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def wait(pred: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = pred()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_demo_runs_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--dir",
            str(tmp_path / "gia-demo"),
            "--http",
            f"127.0.0.1:{port}",
            "--backfill",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        health = wait(lambda: (h := get(base + "/healthz")) and h["status"] == "ok" and h, 30)
        assert time.monotonic() - started < 30
        assert set(health["devices"]) == {"grid", "pv", "wind", "hall-a", "hall-b", "battery"}
        first = get(base + "/api/v1/live")["devices"]
        time.sleep(5)
        later = get(base + "/api/v1/live")["devices"]
        changed = [d for d in first if first[d]["values"] != later[d]["values"]]
        assert len(changed) == 6, changed  # every device's values change over time
        assert later["grid"]["values"]["power_w"]["unit"] == "W"
        page = urllib.request.urlopen(base + "/", timeout=2).read().decode()
        assert "<html" in page.lower()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    # #21 finding 7: the demo starts with every device online (the first day's state was computed while
    # the first polls waited, and two devices were logged offline)
    assert "is offline" not in out, out
    state = tmp_path / "gia-demo"
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(state / "gia.yaml")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stderr
    led = Ledger(state / "ledger.db", readonly=True)
    assert led.verify().ok and led.count() > 2 * 288 * 6  # two days of backfill plus the live readings
    led.close()
    # #21 finding 8: the same command again over the existing folder says how to start fresh
    args = ["demo", "--dir", str(state), "--http", f"127.0.0.1:{port}", "--backfill", "2"]
    again = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait(lambda: get(base + "/healthz")["status"] == "ok", 30)
    finally:
        again.send_signal(signal.SIGINT)
        out, _ = again.communicate(timeout=20)
    assert again.returncode == 0, out
    assert "--backfill skipped" in out and f"rm -r {state}" in out and "--dir" in out, out
    # #21 finding 8: `gia report` says the grade, and warns when a channel has no data that month (here a
    # hall meter added to the config after the fact: the ledger holds nothing of it)
    import yaml

    cfg = yaml.safe_load((state / "gia.yaml").read_text())
    hall = next(d for d in cfg["devices"] if d["id"] == "hall-a")
    cfg["devices"].append({**hall, "id": "hall-c", "connection": f"tcp://127.0.0.1:{free_port()}"})
    (state / "later.yaml").write_text(yaml.safe_dump(cfg))
    month = time.strftime("%Y-%m", time.gmtime(time.time() - 86_400))  # the backfill's month
    rep = subprocess.run(
        [sys.executable, "-m", "gateway", "report", "demo", month, "--config", str(state / "later.yaml"), "-o",
         str(tmp_path / "r.json")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    assert f"{month}: grade" in rep.stderr and "warning: no data this month for" in rep.stderr, rep.stderr
    assert "hall-c" in rep.stderr.split("warning:")[1], rep.stderr


def test_agent_reports_ready_to_systemd(tmp_path: Path) -> None:
    import socket

    cfg = tmp_path / "gia.yaml"
    port = free_port()
    cfg.write_text(
        f"site: {{id: t}}\ndata_dir: data\nhttp: {{listen: '127.0.0.1:{port}', anonymous_viewer_on_loopback: true}}\n"
    )
    sock_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(sock_path))
        srv.settimeout(20)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")} | {"NOTIFY_SOCKET": str(sock_path)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            messages = [srv.recv(4096).decode() for _ in range(2)]
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
    assert "READY=1" in messages
    assert any(m.startswith("WATCHDOG=1\nSTATUS=ok") for m in messages), messages
    assert proc.returncode == 0, err
