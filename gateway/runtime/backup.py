"""Backups an operator can trust: config, signing keys, ledger and stored reports in one tarball.

The ledger is copied with SQLite's online backup API, so a backup taken while the agent writes is
consistent. `restore` verifies the ledger's hash chain before it puts anything in place, refuses while an
agent holds the data directory's lock, and never silently replaces a signing key or ledger (`--force`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from drivers.errors import GiaError
from gateway.ledger.store import Ledger

LOCK_NAME = "agent.lock"


class BackupError(GiaError):
    """A backup or restore that cannot proceed; the message says why and what to do."""


def acquire_agent_lock(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data directory for the agent's lifetime (one agent per ledger)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = (data_dir / LOCK_NAME).open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise BackupError(f"another gia agent is running on {data_dir}; stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def agent_running(data_dir: Path) -> bool:
    path = data_dir / LOCK_NAME
    if not path.exists():
        return False
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def create_bundle(dest: Path, *, config: Path, data_dir: Path, ledger_path: Path) -> list[str]:
    """Write `dest` (.tar.gz): gia.yaml, keys/, reports/, ledger.db. Returns the member names."""
    members: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "ledger.db"
        if ledger_path.exists():
            led = Ledger(ledger_path)
            try:
                led.backup(copy)
            finally:
                led.close()
        tmp_dest = dest.with_name(dest.name + ".tmp")
        with tarfile.open(tmp_dest, "w:gz") as tar:
            tar.add(config, arcname="gia.yaml")
            members.append("gia.yaml")
            if copy.exists():
                tar.add(copy, arcname="ledger.db")
                members.append("ledger.db")
            for sub in ("keys", "reports"):
                if (data_dir / sub).is_dir():
                    tar.add(data_dir / sub, arcname=sub)
                    members.append(sub + "/")
        os.chmod(tmp_dest, 0o600)  # holds the private signing key
        tmp_dest.replace(dest)
    return members


def restore_bundle(src: Path, *, config: Path, data_dir: Path, ledger_path: Path, force: bool) -> list[str]:
    """Put a bundle's ledger, keys and reports in place; the bundled config goes beside the live one."""
    if agent_running(data_dir):
        raise BackupError(f"a gia agent is running on {data_dir}; stop it (systemctl stop gia) and retry")
    if not force and (ledger_path.exists() or (data_dir / "keys").exists()):
        raise BackupError(f"{data_dir} already holds a ledger or keys; pass --force to replace them")
    done: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(src, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
        root = Path(tmp)
        if (root / "ledger.db").exists():
            led = Ledger(root / "ledger.db")  # opening migrates an older schema in the copy
            try:
                check, events = led.verify(), led.verify_events()
            finally:
                led.close()
            for c in (check, events):
                if not c.ok:
                    raise BackupError(f"the ledger in {src} does not verify ({c.problem}); not restored")
        data_dir.mkdir(parents=True, exist_ok=True)
        if (root / "ledger.db").exists():
            for suffix in ("-wal", "-shm"):
                Path(str(ledger_path) + suffix).unlink(missing_ok=True)
            shutil.copy2(root / "ledger.db", ledger_path)
            done.append(str(ledger_path))
        for sub in ("keys", "reports"):
            if (root / sub).is_dir():
                shutil.rmtree(data_dir / sub, ignore_errors=True)
                shutil.copytree(root / sub, data_dir / sub)
                done.append(str(data_dir / sub))
        if (root / "gia.yaml").exists():
            target = config.with_name(config.name + ".from-backup")
            target.write_bytes((root / "gia.yaml").read_bytes())
            done.append(str(target))
    keys = data_dir / "keys"
    if keys.is_dir():
        keys.chmod(0o700)
        for f in keys.iterdir():
            f.chmod(0o600)
    return done


__all__ = ["BackupError", "acquire_agent_lock", "agent_running", "create_bundle", "restore_bundle"]
