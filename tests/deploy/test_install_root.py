"""install.sh against a temporary root prefix (`--root DIR`): files, modes, owners, idempotence, uninstall.

The venv step is skipped here (`--no-venv`, it needs the network or a wheelhouse and takes a minute);
the debootstrap test (test_install_chroot.py, slow) runs the whole installer in a clean Debian root.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.deploy.helpers import (
    DEPLOY,
    INSTALL_SH,
    UNIT,
    gia_exe,
    group_members,
    ids,
    make_fake_root,
    need_root,
    need_tool,
    run_installer,
)

TOKEN = re.compile(r"[0-9a-f]{64}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    need_root()
    return make_fake_root(tmp_path / "root")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _owner(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_uid, st.st_gid


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = run_installer("--root", str(root), "--no-venv", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_shellcheck_clean() -> None:
    exe = need_tool("shellcheck", "shellcheck")
    result = subprocess.run([exe, "--severity=style", str(INSTALL_SH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_help_and_bad_options() -> None:
    result = run_installer("--help")
    assert result.returncode == 0
    for opt in ("--from", "--with-mosquitto", "--uninstall", "--purge", "--root", "--no-start"):
        assert opt in result.stdout
    bad = run_installer("--frobnicate")
    assert bad.returncode == 1
    assert "unknown option '--frobnicate'" in bad.stderr
    assert run_installer("--purge").returncode == 1


def test_refuses_to_run_as_a_normal_user(tmp_path: Path) -> None:
    need_root()
    setpriv = need_tool("setpriv", "util-linux")
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(INSTALL_SH), "--no-venv"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "run as root" in result.stderr


def test_fresh_install_layout(root: Path) -> None:
    result = _install(root)
    users, groups = ids(root, "passwd"), ids(root, "group")
    uid, gid = users["gia"], groups["gia"]
    passwd_line = next(ln for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("gia:"))
    assert passwd_line.endswith(":/var/lib/gia:/usr/sbin/nologin")
    assert uid < 1000, "a system user"
    assert "gia" in group_members(root, "dialout")

    expect = {
        "etc/gia": (0o755, (0, 0)),
        "etc/gia/gia.yaml": (0o640, (0, gid)),
        "etc/gia/gia.env": (0o640, (0, gid)),
        "etc/gia/gia.example.yaml": (0o644, (0, 0)),
        "etc/gia/secrets": (0o750, (0, gid)),
        "etc/gia/secrets/viewer-token": (0o640, (0, gid)),
        "etc/gia/secrets/certifier-token": (0o640, (0, gid)),
        "var/lib/gia": (0o750, (uid, gid)),
        "etc/systemd/system/gia.service": (0o644, (0, 0)),
        "etc/systemd/journald.conf.d/60-gia.conf": (0o644, (0, 0)),
    }
    for rel, (mode, owner) in expect.items():
        p = root / rel
        assert p.exists(), rel
        assert (_mode(p), _owner(p)) == (mode, owner), rel

    assert (root / "etc/gia/gia.yaml").read_text() == (DEPLOY / "gia.example.yaml").read_text()
    assert (root / "etc/systemd/system/gia.service").read_text() == UNIT.read_text()
    viewer = (root / "etc/gia/secrets/viewer-token").read_text().strip()
    certifier = (root / "etc/gia/secrets/certifier-token").read_text().strip()
    assert TOKEN.fullmatch(viewer)
    assert TOKEN.fullmatch(certifier)
    assert viewer != certifier
    assert "systemd is not running here" in result.stdout
    assert not (root / "opt/gia").exists(), "--no-venv must not create the venv"


def test_second_run_upgrades_in_place_and_keeps_state(root: Path) -> None:
    _install(root)
    conf = root / "etc/gia/gia.yaml"
    conf.write_text(conf.read_text().replace("riga-north", "my-site"))
    env = root / "etc/gia/gia.env"
    env.write_text("GIA_LOG_FORMAT=json\n")
    tokens = {p.name: p.read_text() for p in (root / "etc/gia/secrets").iterdir()}
    ledger = root / "var/lib/gia/ledger.db"
    ledger.write_bytes(b"ledger bytes")
    keys = root / "var/lib/gia/keys"
    keys.mkdir()
    (keys / "signing.key").write_bytes(b"private")
    unit = root / "etc/systemd/system/gia.service"
    unit.write_text("stale unit from an old release\n")

    result = _install(root)

    assert "kept the existing /etc/gia/gia.yaml" in result.stdout
    assert "generated" not in result.stdout
    assert "my-site" in conf.read_text()
    assert env.read_text() == "GIA_LOG_FORMAT=json\n"
    assert {p.name: p.read_text() for p in (root / "etc/gia/secrets").iterdir()} == tokens
    assert ledger.read_bytes() == b"ledger bytes"
    assert (keys / "signing.key").read_bytes() == b"private"
    assert unit.read_text() == UNIT.read_text(), "the unit is the installer's: an upgrade replaces it"
    assert sum(1 for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("gia:")) == 1
    assert group_members(root, "dialout").count("gia") == 1


def test_uninstall_keeps_config_and_data_until_purge(root: Path) -> None:
    _install(root)
    (root / "var/lib/gia/ledger.db").write_bytes(b"ledger bytes")
    (root / "opt/gia/venv/bin").mkdir(parents=True)  # as if the venv were there

    result = run_installer("--root", str(root), "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/systemd/system/gia.service").exists()
    assert not (root / "etc/systemd/journald.conf.d/60-gia.conf").exists()
    assert not (root / "opt/gia").exists()
    assert "gia" not in ids(root, "passwd")
    assert "gia" not in group_members(root, "dialout")
    assert (root / "var/lib/gia/ledger.db").read_bytes() == b"ledger bytes"
    assert (root / "etc/gia/gia.yaml").exists()
    assert (root / "etc/gia/secrets/viewer-token").exists()
    assert "--purge deletes them" in result.stdout

    # Reinstalling gives the kept data to the (possibly renumbered) new gia user.
    _install(root)
    uid = ids(root, "passwd")["gia"]
    assert _owner(root / "var/lib/gia/ledger.db")[0] == uid

    purge = run_installer("--root", str(root), "--uninstall", "--purge")
    assert purge.returncode == 0, purge.stderr
    assert not (root / "etc/gia").exists()
    assert not (root / "var/lib/gia").exists()


def test_check_config_accepts_the_installed_config(root: Path, tmp_path: Path) -> None:
    """`gia check-config` on the example config once the installer generated its secrets (paths mapped
    into the temporary root), and the same check failing when a secret is missing."""
    _install(root)
    text = (root / "etc/gia/gia.yaml").read_text()
    text = text.replace("/etc/gia/", f"{root}/etc/gia/").replace("/var/lib/gia", f"{root}/var/lib/gia")
    config = tmp_path / "gia.yaml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_") and k != "CREDENTIALS_DIRECTORY"}
    ok = subprocess.run(
        [gia_exe(), "check-config", "--config", str(config)], capture_output=True, text=True, env=env, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK (3 devices)" in ok.stdout

    (root / "etc/gia/secrets/certifier-token").unlink()
    bad = subprocess.run(
        [gia_exe(), "check-config", "--config", str(config)], capture_output=True, text=True, env=env, check=False
    )
    assert bad.returncode == 2
    assert "http.tokens[1].token_file" in bad.stderr


def test_installer_needs_its_files(tmp_path: Path, root: Path) -> None:
    """A copied-alone install.sh says what is missing instead of half-installing."""
    lonely = tmp_path / "lonely" / "install.sh"
    lonely.parent.mkdir()
    shutil.copy2(INSTALL_SH, lonely)
    result = subprocess.run(
        ["bash", str(lonely), "--root", str(root), "--no-venv"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "gia.example.yaml is missing" in result.stderr
    assert "gia" not in ids(root, "passwd"), "nothing may change before the check"


def _shim(bindir: Path, name: str, log: Path) -> None:
    """`name` on PATH that records its command line, then runs the real program."""
    real = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert real
    bindir.mkdir(exist_ok=True)
    shim = bindir / name
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    shim.chmod(0o755)


def test_broker_password_never_on_a_command_line(root: Path, tmp_path: Path) -> None:
    """`--with-mosquitto` sets gia's broker password without putting it in any argv (ps, /proc/PID/cmdline are
    readable by every local user); the hash it writes verifies against the generated secret."""
    need_tool("mosquitto_passwd", "mosquitto")
    if "mosquitto" not in ids(root, "group"):  # the package's group, as on a system with mosquitto installed
        with (root / "etc/group").open("a") as f:
            f.write("mosquitto:x:64999:\n")
    log = tmp_path / "argv.log"
    _shim(tmp_path / "bin", "mosquitto_passwd", log)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(INSTALL_SH), "--root", str(root), "--no-venv", "--with-mosquitto"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    secret = (root / "etc/gia/secrets/mqtt-password").read_text().strip()
    calls = log.read_text()
    assert calls.strip(), "mosquitto_passwd was not run"
    assert secret not in calls, f"the broker password was on a command line: {calls!r}"
    line = next(ln for ln in (root / "etc/mosquitto/gia.passwd").read_text().splitlines() if ln.startswith("gia:"))
    _, _, iterations, salt, digest = line.split(":", 1)[1].split("$")
    expected = hashlib.pbkdf2_hmac("sha512", secret.encode(), base64.b64decode(salt), int(iterations))
    assert base64.b64decode(digest) == expected, "the stored hash is not of the generated password"
    assert _mode(root / "etc/mosquitto/gia.passwd") == 0o640
    # a second run with the password already set keeps the file as it is
    before = (root / "etc/mosquitto/gia.passwd").read_bytes()
    again = subprocess.run(
        ["bash", str(INSTALL_SH), "--root", str(root), "--no-venv", "--with-mosquitto"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (root / "etc/mosquitto/gia.passwd").read_bytes() == before


def test_uninstall_leaves_nothing_owned_by_the_freed_ids(root: Path) -> None:
    """After --uninstall (data kept) no file carries gia's old uid or gid: the next account created with that
    number (any package's system user) would otherwise own the ledger, the keys and the secrets."""
    _install(root)
    uid, gid = ids(root, "passwd")["gia"], ids(root, "group")["gia"]
    keys = root / "var/lib/gia/keys"
    keys.mkdir()
    (keys / "site-ed25519.pem").write_text("key")
    os.chown(keys / "site-ed25519.pem", uid, gid)
    (root / "var/lib/gia/ledger.db").write_bytes(b"ledger")
    os.chown(root / "var/lib/gia/ledger.db", uid, gid)
    result = run_installer("--root", str(root), "--uninstall")
    assert result.returncode == 0, result.stderr
    owned = [
        str(p.relative_to(root))
        for base in (root / "etc", root / "var/lib/gia")
        for p in [base, *base.rglob("*")]
        if p.lstat().st_uid == uid or p.lstat().st_gid == gid
    ]
    assert not owned, f"still owned by the freed uid {uid} / gid {gid}: {owned}"
    assert (root / "var/lib/gia/ledger.db").read_bytes() == b"ledger"
    # a new install gives the data back to the new gia user
    _install(root)
    new_uid = ids(root, "passwd")["gia"]
    assert _owner(root / "var/lib/gia/keys/site-ed25519.pem")[0] == new_uid
    assert _owner(root / "etc/gia/secrets/viewer-token")[1] == ids(root, "group")["gia"]
