"""gia backup / gia restore: a consistent bundle while the agent runs; restore verifies, refuses to
clobber or to run under a live agent, and puts ledger, keys and reports back byte for byte."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from drivers.maps import load_map
from drivers.sim.server import SimServer
from gateway.ledger.store import Ledger
from gateway.runtime.backup import acquire_agent_lock
from tests.agent.test_agent_e2e import get_json, meter_values, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.modbus


def gia(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env, timeout=60)


def config(path: Path, data: str, port: int, http_port: int) -> Path:
    cfg = {
        "site": {"id": "bk"},
        "data_dir": data,
        "ledger": {"commit_interval_s": 0.2},
        "devices": [
            {
                "id": "m",
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{port}",
                "map": "eastron-sdm630",
                "poll_interval_s": 0.2,
                "timeout_s": 0.5,
            }
        ],
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_backup_while_running_then_restore(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    sim = SimServer(load_map("eastron-sdm630"), listen=f"tcp://127.0.0.1:{port}", values=lambda: meter_values(1.0))
    await sim.start()
    site = tmp_path / "site"
    site.mkdir()
    cfg = config(site / "gia.yaml", "data", port, http_port)
    assert gia("keys", "show", "--config", str(cfg)).returncode == 0  # creates the signing key
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--config", str(cfg), env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for(
            lambda: get_json(f"http://127.0.0.1:{http_port}/healthz")[1]["ledger"]["head_seq"] > 500, 30, "readings"
        )
        second = await asyncio.to_thread(gia, "run", "--config", str(cfg))
        assert second.returncode == 1 and "another gia agent is running" in second.stderr
        bundle = tmp_path / "site.tar.gz"
        passphrase = tmp_path / "passphrase"
        passphrase.write_text("a long backup passphrase\n")
        res = await asyncio.to_thread(
            gia, "backup", str(bundle), "--config", str(cfg), "--include-key", "--passphrase-file", str(passphrase)
        )
        assert res.returncode == 0, res.stderr
        assert "encrypted with your passphrase" in res.stdout
        refused = await asyncio.to_thread(gia, "restore", str(bundle), "--config", str(cfg), "--force")
        assert refused.returncode == 1 and "is running" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        await sim.stop()
    assert oct(bundle.stat().st_mode & 0o777) == "0o600"
    with tarfile.open(bundle) as tar:
        assert {"gia.yaml", "ledger.db", "keys"} <= {m.split("/")[0] for m in tar.getnames()}
        key = tar.extractfile("keys/site-ed25519.pem.enc")
        assert key is not None and b"BEGIN ENCRYPTED PRIVATE KEY" in key.read()  # never in clear
    # A new gateway (fresh data dir) gets the site back, key included with the passphrase.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cfg2 = config(fresh / "gia.yaml", "data", port, http_port)
    res = gia("restore", str(bundle), "--config", str(cfg2))
    assert res.returncode == 1 and "--passphrase-file" in res.stderr
    res = gia("restore", str(bundle), "--config", str(cfg2), "--passphrase-file", str(passphrase))
    assert res.returncode == 0, res.stderr
    restored = Ledger(fresh / "data" / "ledger.db", readonly=True)
    assert restored.verify().ok and restored.count() > 500
    restored.close()
    shown = [gia("keys", "show", "--config", str(c)).stdout for c in (cfg, cfg2)]
    assert "key_id (fingerprint)" in shown[0] and shown[0] == shown[1]  # the same key
    assert (fresh / "gia.yaml.from-backup").exists()
    again = gia("restore", str(bundle), "--config", str(cfg2), "--passphrase-file", str(passphrase))
    assert again.returncode == 1 and "--force" in again.stderr


def test_restore_refuses_a_tampered_ledger(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = config(tmp_path / "gia.yaml", "data", 5020, free_port())
    from datetime import UTC, datetime

    from drivers.model import Sample

    led = Ledger(data / "ledger.db")
    led.append(
        [Sample("m", "energy_import_wh", 10 + i, "Wh", datetime(2026, 2, 1, 0, i, tzinfo=UTC)) for i in range(5)]
    )
    led.close()
    bundle = tmp_path / "b.tar.gz"
    assert gia("backup", str(bundle), "--config", str(cfg)).returncode == 0
    # Tamper inside the bundle, then try to restore it elsewhere.
    work = tmp_path / "work"
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    db = sqlite3.connect(work / "ledger.db")
    db.execute("UPDATE readings SET value = 99 WHERE seq = 3")
    db.commit()
    db.close()
    with tarfile.open(bundle, "w:gz") as tar:
        for name in ("gia.yaml", "ledger.db"):
            tar.add(work / name, arcname=name)
    target = tmp_path / "t"
    target.mkdir()
    cfg2 = config(target / "gia.yaml", "data", 5020, free_port())
    res = gia("restore", str(bundle), "--config", str(cfg2))
    assert res.returncode == 1 and "does not verify" in res.stderr
    assert not (target / "data" / "ledger.db").exists()


def test_lock_is_exclusive(tmp_path: Path) -> None:
    from gateway.runtime.backup import BackupError, agent_running

    lock = acquire_agent_lock(tmp_path)
    try:
        assert agent_running(tmp_path)
        with pytest.raises(BackupError, match="another gia agent"):
            acquire_agent_lock(tmp_path)
    finally:
        lock.close()
    assert not agent_running(tmp_path)
