"""Shared helpers for the deployment tests: paths, running install.sh, reading systemd unit files."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
INSTALL_SH = DEPLOY / "install.sh"
UNIT = DEPLOY / "systemd" / "gia.service"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def gia_exe() -> str:
    """The `gia` of the development venv (the tests run in it)."""
    exe = VENV_BIN / "gia"
    if exe.exists():
        return str(exe)
    found = shutil.which("gia")
    assert found, "the gia console script is not installed (pip install -e .)"
    return found


def need_tool(name: str, package: str) -> str:
    """Path of a host tool; skip without it, but fail under CI (a missing tool must not pass CI)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        msg = f"{name} is missing: apt-get install -y {package}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def need_root() -> None:
    if os.geteuid() != 0:
        msg = "needs root (creates users, chowns files, chroots)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def run_installer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def make_fake_root(root: Path) -> Path:
    """A target root with just the account databases useradd/groupadd need (copies of the host's)."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        src = Path("/etc") / name
        if src.exists():
            shutil.copy2(src, etc / name)
    # The host may already have a 'gia' account; the target root must start without one.
    for name in ("passwd", "group", "shadow", "gshadow"):
        f = etc / name
        if f.exists():
            lines = [ln for ln in f.read_text().splitlines() if not ln.startswith("gia:")]
            f.write_text("\n".join(lines) + "\n")
    return root


def ids(root: Path, db: str) -> dict[str, int]:
    """name -> numeric id from ROOT/etc/passwd or ROOT/etc/group."""
    out = {}
    for line in (root / "etc" / db).read_text().splitlines():
        parts = line.split(":")
        if len(parts) > 2:
            out[parts[0]] = int(parts[2])
    return out


def group_members(root: Path, group: str) -> list[str]:
    for line in (root / "etc" / "group").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == group:
            return [m for m in parts[3].split(",") if m]
    return []


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}}: keys may repeat, which configparser rejects."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], defaultdict(list))
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line}"
        current[key.strip()].append(value.strip())
    return sections


def verify_root(unit_text: str, root: Path) -> Path:
    """A scratch root in which `systemd-analyze verify --root` can load gia.service.

    verify checks that ExecStart's binary exists and loads the targets the unit refers to, so the
    root gets a stub /opt/gia/venv/bin/gia and a copy of the host's systemd units.
    """
    units = root / "usr/lib/systemd/system"
    host_units = Path("/usr/lib/systemd/system")
    if not host_units.is_dir():
        host_units = Path("/lib/systemd/system")
    shutil.copytree(host_units, units, symlinks=True)
    stub = root / "opt/gia/venv/bin/gia"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    dest = root / "etc/systemd/system/gia.service"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(unit_text)
    return dest


def analyze_verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of `unit` in the scratch root `verify_root` prepared."""
    exe = need_tool("systemd-analyze", "systemd")
    return subprocess.run(
        [exe, "verify", f"--root={root}", unit], capture_output=True, text=True, timeout=60, check=False
    )


def sandbox_exposure(tmp_path: Path, text: str, unit: str) -> float:
    """`systemd-analyze security --offline` score of a unit file: 0 (locked) .. 10 (exposed)."""
    import re

    exe = need_tool("systemd-analyze", "systemd")
    path = tmp_path / unit
    path.write_text(text)
    result = subprocess.run(
        [exe, "security", "--offline=true", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))
