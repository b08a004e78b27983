"""The whole installer in a clean Debian bookworm root (debootstrap + chroot), as on a fresh Pi.

A minbase bookworm root with python3, python3-venv, systemd and mosquitto is built once with debootstrap
and cached as a tarball in /var/cache/gia-test/ (never in the repository); each run unpacks it into a
temp dir. The package is installed from a wheel built from this checkout, its dependencies from a
wheelhouse cached beside the tarball, so the chroot needs no network. Systemd does not run in a
chroot: the installer must notice, install the unit without starting it, and the unit must then pass
`systemd-analyze verify` against that root. Then the installed agent is started as user gia and
answers on HTTP with the generated token; a second run changes nothing; --uninstall keeps the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, REPO, need_root, need_tool
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CACHE = Path(os.environ.get("GIA_TEST_CACHE", "/var/cache/gia-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = ("python3", "python3-venv", "ca-certificates", "systemd", "mosquitto")


def _rootfs_tarball() -> Path:
    debootstrap = need_tool("debootstrap", "debootstrap")
    key = hashlib.sha256(" ".join((SUITE, platform.machine(), *INCLUDE)).encode()).hexdigest()[:10]
    tarball = CACHE / f"{SUITE}-minbase-{platform.machine()}-{key}.tar"
    if tarball.exists():
        return tarball
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    build = CACHE / f"build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    try:
        subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--cache-dir={debs}",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(build),
                MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=840,
        )
        shutil.rmtree(build / "var/cache/apt/archives", ignore_errors=True)
        tmp = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(build), "--numeric-owner", "-cf", str(tmp), "."], check=True)
        tmp.rename(tarball)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return tarball


def _wheels(dest: Path) -> Path:
    """This checkout as a wheel in dest/, its dependencies in the cached wheelhouse (copied to dest/wheelhouse)."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # Build from a copy of the package sources: an in-tree build would leave build/ in the checkout.
    tree = dest.parent / "gia-build"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("drivers", "gateway", "forecasting"):
        shutil.copytree(REPO / name, tree / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), str(tree)], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr
    shutil.rmtree(tree)
    wheel = next(dest.glob("gia_gateway-*.whl"))
    house = CACHE / f"wheelhouse-py{sys.version_info.major}{sys.version_info.minor}-{platform.machine()}"
    house.mkdir(parents=True, exist_ok=True)
    # exactly the files the installer's lock names (it checks their hashes), as the operators' guide says
    locked = ["--require-hashes", "-r", str(DEPLOY / "requirements.lock")]
    offline = subprocess.run(
        [*pip, "download", "--no-index", "--find-links", str(house), "--dest", str(house), *locked],
        capture_output=True,
        check=False,
    )
    if offline.returncode != 0:  # a new dependency: fetch what is missing from the package index
        subprocess.run(
            [*pip, "download", "--find-links", str(house), "--dest", str(house), *locked],
            check=True,
            capture_output=True,
            timeout=600,
        )
    (house / wheel.name).unlink(missing_ok=True)
    shutil.copytree(house, dest / "wheelhouse")
    return wheel


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    need_root()
    need_tool("chroot", "coreutils")
    tarball = _rootfs_tarball()
    root = tmp_path_factory.mktemp("debian") / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)], check=True)
    src = root / "tmp/gia-src"
    src.mkdir(parents=True)
    shutil.copytree(DEPLOY, src / "deploy")
    wheel = _wheels(src)
    (src / "wheel-name").write_text(wheel.name)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _chroot(
    root: Path, *cmd: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    return subprocess.run(
        ["chroot", str(root), *cmd],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    wheel = (root / "tmp/gia-src/wheel-name").read_text()
    result = _chroot(
        root,
        "bash",
        "/tmp/gia-src/deploy/install.sh",
        "--from",
        f"/tmp/gia-src/{wheel}",
        *args,
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/tmp/gia-src/wheelhouse"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _snapshot(root: Path, *rels: str) -> dict[str, bytes]:
    out = {}
    for rel in rels:
        base = root / rel
        for p in sorted([base] if base.is_file() else base.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _http(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _run_agent_once(root: Path) -> None:
    """Start the installed agent as user gia in the chroot, check HTTP and the ledger, stop it with SIGTERM."""
    port = free_port()
    token = (root / "etc/gia/secrets/viewer-token").read_text().strip()
    proc = subprocess.Popen(
        [
            "chroot", str(root),
            "setpriv", "--reuid=gia", "--regid=gia", "--init-groups",
            "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", f"GIA_HTTP__LISTEN=127.0.0.1:{port}",
            "/opt/gia/venv/bin/gia", "run", "--config", "/etc/gia/gia.yaml", "--log-format", "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        health = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = _http(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                time.sleep(0.3)
        assert health in (200, 503), f"no /healthz answer (exit {proc.poll()})"
        assert _http(f"http://127.0.0.1:{port}/api/v1/live") == 401
        assert _http(f"http://127.0.0.1:{port}/api/v1/live", token) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out
    for line in out.splitlines():
        if line.startswith("{"):
            json.loads(line)  # --log-format json: every log line is one JSON object
    ledger = root / "var/lib/gia/ledger.db"
    assert ledger.exists()
    assert ledger.stat().st_uid == int(
        next(ln for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("gia:")).split(":")[2]
    )


def test_installer_in_a_clean_debian_root(debian_root: Path) -> None:
    root = debian_root
    first = _install(root, "--with-mosquitto")
    assert "systemd is not running here" in first.stdout
    assert "created system user gia" in first.stdout
    assert (root / "opt/gia/venv/bin/gia").exists()
    assert (root / "etc/systemd/system/gia.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/gia.service").exists()

    # The unit as installed passes systemd-analyze verify against this root, silently.
    analyze = need_tool("systemd-analyze", "systemd")
    verify = subprocess.run(
        [analyze, "verify", f"--root={root}", "gia.service"], capture_output=True, text=True, check=False, timeout=60
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout + verify.stderr == ""

    # The config the installer wrote (example + local broker) is valid, checked as the service user.
    check = _chroot(root, "setpriv", "--reuid=gia", "--regid=gia", "--init-groups",
                    "/opt/gia/venv/bin/gia", "check-config", "--config", "/etc/gia/gia.yaml")  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    config = (root / "etc/gia/gia.yaml").read_text()
    assert "password_file: /etc/gia/secrets/mqtt-password" in config
    passwd = (root / "etc/mosquitto/gia.passwd").read_text()
    assert passwd.startswith("gia:$7$"), "mosquitto_passwd hashes (PBKDF2-SHA512)"
    assert (root / "tmp/gia-src/deploy/mosquitto/gia.conf").read_bytes() == (
        root / "etc/mosquitto/conf.d/gia.conf"
    ).read_bytes()
    assert _chroot(root, "/opt/gia/venv/bin/gia", "--help").returncode == 0

    _run_agent_once(root)

    # Second run: an in-place upgrade that keeps config, secrets, broker users, ledger and keys.
    kept = ("etc/gia", "etc/mosquitto/gia.passwd", "etc/mosquitto/gia.acl", "var/lib/gia")
    before = _snapshot(root, *kept)
    second = _install(root, "--with-mosquitto")
    assert "kept the existing /etc/gia/gia.yaml" in second.stdout
    assert "generated" not in second.stdout
    assert _snapshot(root, *kept) == before

    # Uninstall keeps config and data; purge removes them.
    gone = _chroot(root, "bash", "/tmp/gia-src/deploy/install.sh", "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not (root / "etc/systemd/system/gia.service").exists()
    assert not (root / "opt/gia").exists()
    assert _chroot(root, "getent", "passwd", "gia").returncode == 2
    assert (root / "var/lib/gia/ledger.db").exists()
    assert (root / "etc/gia/gia.yaml").read_text() == config
    purge = _chroot(root, "bash", "/tmp/gia-src/deploy/install.sh", "--uninstall", "--purge")
    assert purge.returncode == 0, purge.stderr
    assert not (root / "etc/gia").exists()
    assert not (root / "var/lib/gia").exists()
    assert not (root / "etc/mosquitto/conf.d/gia.conf").exists()

    # A wheel changed in the wheelhouse (or on the index) no longer matches the lock: nothing is installed.
    house = root / "tmp/gia-src/wheelhouse"
    victim = next(house.glob("smllib-*.whl"))
    with victim.open("ab") as f:
        f.write(b"tampered")
    wheel = (root / "tmp/gia-src/wheel-name").read_text()
    tampered = _chroot(
        root, "bash", "/tmp/gia-src/deploy/install.sh", "--from", f"/tmp/gia-src/{wheel}",
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/tmp/gia-src/wheelhouse"},
    )  # fmt: skip
    assert tampered.returncode != 0, tampered.stdout
    assert "DO NOT MATCH THE HASHES" in tampered.stderr, tampered.stderr
    assert not (root / "opt/gia/venv/bin/gia").exists()
