"""docs/operators.md: every shell command in it is either run here, covered by a named test, or listed
with the reason it cannot run on a machine without hardware, systemd or a container engine. A command
added to the guide without a place in this table fails the test, so the guide cannot drift unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.deploy.helpers import DEPLOY, REPO, gia_exe, need_tool
from tests.servers import free_port, port_open

DOC = REPO / "docs" / "operators.md"
HERE = Path(__file__).parent

# (pattern of a command line in the guide, where it is exercised)
#   "run: <test>"      executed by that test in this file
#   "covered: <test>"  the same command is exercised by that test (in tests/deploy/)
#   "not here: <why>"  needs what this machine does not have
COMMANDS: list[tuple[str, str]] = [
    (r"sudo apt-get install -y git python3 python3-venv", "not here: installs host packages"),
    (r"git clone \S+( \S+)?", "not here: the public repository"),
    (r"cd gia-gateway", "not here: part of the clone"),
    (r"sudo deploy/install\.sh", "covered: test_installer_in_a_clean_debian_root"),
    (
        r"pip download -d wheels --require-hashes -r deploy/requirements\.lock",
        "covered: test_installer_in_a_clean_debian_root",
    ),
    (
        r"sudo PIP_NO_INDEX=1 PIP_FIND_LINKS=\S+ deploy/install\.sh --from \S+",
        "covered: test_installer_in_a_clean_debian_root",
    ),
    (
        r"sudo -u gia /opt/gia/venv/bin/gia check-config --config /etc/gia/gia\.yaml",
        "covered: test_installer_in_a_clean_debian_root",
    ),
    (r"gia sim --list", "run: test_sim_list"),
    (r"gia scan tcp://192\.0\.2\.10:502", "run: test_first_meter_against_the_simulator"),
    (r"gia scan 'rtu:///dev/ttyUSB0\?baud=9600'", "not here: needs an RS-485 adapter"),
    (r"gia read tcp://192\.0\.2\.10:502 --unit 1 --map eastron-sdm630", "run: test_first_meter_against_the_simulator"),
    (
        r"gia read 'rtu:///dev/ttyUSB0\?baud=9600&parity=N' --unit 2 --map eastron-sdm630 --json",
        "not here: needs an RS-485 adapter",
    ),
    (r"gia sim eastron-sdm630 --listen tcp://127\.0\.0\.1:5020", "run: test_first_meter_against_the_simulator"),
    (r"gia read tcp://127\.0\.0\.1:5020 --unit 1 --map eastron-sdm630", "run: test_first_meter_against_the_simulator"),
    (r"sudo systemctl enable --now gia", "not here: systemd is not PID 1 here"),
    (r"systemctl status gia", "not here: systemd is not PID 1 here"),
    (r"journalctl -u gia -f", "not here: systemd is not PID 1 here"),
    (r"curl -s http://127\.0\.0\.1:8080/healthz", "covered: test_installer_in_a_clean_debian_root"),
    (r"sudo cat /etc/gia/secrets/viewer-token", "covered: test_fresh_install_layout"),
    (r"git pull", "not here: the public repository"),
    (r"sudo -u gia /opt/gia/venv/bin/gia backup \S+ --config /etc/gia/gia\.yaml", "run: test_backup_command"),
    (r"sudo sh -c 'umask 077 && tar -C / -czf .*'", "run: test_backup_tar_recipe_is_private"),
    (r"sudo deploy/install\.sh --uninstall( --purge)?", "covered: test_uninstall_keeps_config_and_data_until_purge"),
    (r"sudo install -d -m 0750 -g mosquitto /etc/mosquitto/certs", "not here: the site's own certificates"),
    (r"sudo install -m 0640 -g mosquitto .*", "not here: the site's own certificates"),
    (r"sed 's/SITE_ID/riga-north/g; .*' deploy/mosquitto/bridge\.conf > gia-bridge\.conf", "run: test_bridge_sed_line"),
    (r"sudo systemctl restart mosquitto", "not here: systemd is not PID 1 here"),
    (r"cd deploy", "run: test_compose_secret_lines"),
    (r"cp gia\.example\.yaml gia\.yaml", "run: test_compose_secret_lines"),
    (r"install -d -m 0700 secrets", "run: test_compose_secret_lines"),
    (r"for s in .*; do openssl rand -hex 32 > secrets/\$s; done", "run: test_compose_secret_lines"),
    (r"chmod 0644 secrets/\* gia\.yaml", "run: test_compose_secret_lines"),
    (r"docker compose up -d --build", "not here: no container engine (compose structure: test_containers.py)"),
]


def doc_commands() -> list[str]:
    """Every line of every ```sh block of the guide."""
    lines: list[str] = []
    in_block = False
    for line in DOC.read_text().splitlines():
        if line.strip() == "```sh":
            in_block = True
        elif line.strip() == "```":
            in_block = False
        elif in_block and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def _where(line: str) -> list[str]:
    return [where for pattern, where in COMMANDS if re.fullmatch(pattern, line)]


def test_every_command_in_the_guide_has_a_place() -> None:
    lines = doc_commands()
    assert len(lines) > 20
    unplaced = [ln for ln in lines if len(_where(ln)) != 1]
    assert not unplaced, f"classify these commands in {__file__}: {unplaced}"
    unused = [p for p, _ in COMMANDS if not any(re.fullmatch(p, ln) for ln in lines)]
    assert not unused, f"no longer in the guide: {unused}"


def test_named_tests_exist() -> None:
    source = "\n".join(p.read_text() for p in HERE.glob("test_*.py"))
    for _, where in COMMANDS:
        kind, _, name = where.partition(": ")
        if kind in ("run", "covered"):
            assert f"def {name}(" in source, f"{where}: no such test"


def test_gia_help_lists_the_commands_of_the_guide() -> None:
    result = subprocess.run([gia_exe(), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("run", "check-config", "scan", "sim", "read", "backup", "keys"):
        assert re.search(rf"^│ {re.escape(command)}\s", result.stdout, re.M), command


def test_sim_list() -> None:
    result = subprocess.run([gia_exe(), "sim", "--list"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "eastron-sdm630" in result.stdout


def _doc_line(pattern: str) -> list[str]:
    line = next(ln for ln in doc_commands() if re.fullmatch(pattern, ln))
    argv = line.split()
    assert argv[0] == "gia"
    return [gia_exe(), *argv[1:]]


def test_first_meter_against_the_simulator(tmp_path: Path) -> None:
    """§4 of the guide as written, with the simulator's port made free and the meter's address pointed
    at the simulator: sim, scan and read."""
    port = free_port()
    sim_cmd = [a.replace(":5020", f":{port}") for a in _doc_line(r"gia sim eastron-sdm630 --listen \S+")]
    log = tmp_path / "sim.log"
    with log.open("wb") as out:
        sim = subprocess.Popen(sim_cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            assert sim.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.1)
        read_cmd = [a.replace(":5020", f":{port}") for a in _doc_line(r"gia read tcp://127\.0\.0\.1:5020 .*")]
        read = subprocess.run(read_cmd, capture_output=True, text=True, timeout=60, check=False)
        assert read.returncode == 0, read.stderr
        assert re.search(r"^power_w\s+-?\d+(\.\d+)? W\s+good$", read.stdout, re.M), read.stdout
        # The meter's lines of the guide, aimed at the simulator.
        real = f"127.0.0.1:{port}"
        scan = subprocess.run(
            [a.replace("192.0.2.10:502", real) for a in _doc_line(r"gia scan tcp://192\.0\.2\.10:502")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert scan.returncode == 0, scan.stderr
        assert "unit 1" in scan.stdout + scan.stderr
        as_json = subprocess.run(
            [*[a.replace("192.0.2.10:502", real) for a in _doc_line(r"gia read tcp://192\.0\.2\.10:502 .*")], "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        samples = json.loads(as_json.stdout)
        assert {"quantity", "value", "unit", "quality", "ts"} <= set(samples[0])
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()


def test_backup_command(tmp_path: Path) -> None:
    """`gia backup FILE --config ...` on a config whose ledger exists (created by the ledger itself)."""
    from gateway.ledger.store import Ledger

    data = tmp_path / "data"
    data.mkdir()
    Ledger(data / "ledger.db").close()
    config = tmp_path / "gia.yaml"
    config.write_text(f"site: {{id: riga-north}}\ndata_dir: {data}\nhttp: {{enabled: false}}\n")
    argv = _doc_line_any(r"sudo -u gia /opt/gia/venv/bin/gia backup \S+ --config /etc/gia/gia\.yaml")
    dest = tmp_path / "ledger-backup.db"
    argv = [gia_exe() if a.endswith("/bin/gia") else a for a in argv]
    argv = [
        str(dest) if a.endswith("ledger-backup.db") else str(config) if a == "/etc/gia/gia.yaml" else a for a in argv
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes()[:16] == b"SQLite format 3\x00"


def test_backup_tar_recipe_is_private(tmp_path: Path) -> None:
    """The guide's tar line, run on a copy of the layout under umask 022: the archive (secrets, signing key)
    is 0600. A plain `sudo tar -czf` would write it 0644, readable by every local user."""
    line = next(ln for ln in doc_commands() if " -czf " in ln and "tar " in ln)
    root = tmp_path / "root"
    for rel in ("etc/gia/secrets/viewer-token", "var/lib/gia/keys/site-ed25519.pem", "var/lib/gia/ledger-backup.db"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("secret\n")
    cmd = line.removeprefix("sudo ").replace("tar -C / ", f"tar -C {root} ")
    assert f"-C {root} " in cmd, f"the recipe no longer reads `tar -C / ...`: {line}"
    _run_shell(f"umask 022 && {cmd}", tmp_path)
    archive = tmp_path / "gia-backup.tar.gz"
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600, oct(archive.stat().st_mode)
    listing = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True).stdout
    assert "var/lib/gia/keys/site-ed25519.pem" in listing


def _doc_line_any(pattern: str) -> list[str]:
    line = next(ln for ln in doc_commands() if re.fullmatch(pattern, ln))
    argv = line.split()
    assert argv[:3] == ["sudo", "-u", "gia"]
    return argv[3:]


def _run_shell(line: str, cwd: Path) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", line], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{line}: {result.stderr}"


def test_bridge_sed_line(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY / "mosquitto", tmp_path / "deploy/mosquitto")
    line = next(ln for ln in doc_commands() if ln.startswith("sed 's/SITE_ID/"))
    _run_shell(line, tmp_path)
    out = (tmp_path / "gia-bridge.conf").read_text()
    assert "SITE_ID" not in out
    assert "topic gia/riga-north/# out 1" in out
    assert "address mqtt.example.org:8883" in out


def test_compose_secret_lines(tmp_path: Path) -> None:
    """The container section's setup lines create every secret compose.yaml declares, each random."""
    import yaml

    need_tool("openssl", "openssl")
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    lines = doc_commands()
    start = lines.index("cd deploy")
    setup = lines[start : lines.index("docker compose up -d --build")]
    _run_shell("\n".join(setup), tmp_path)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    values = set()
    for spec in compose["secrets"].values():
        f = tmp_path / "deploy" / spec["file"]
        assert f.is_file(), spec["file"]
        assert oct(f.stat().st_mode & 0o777) == "0o644"
        value = f.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", value)
        values.add(value)
    assert len(values) == len(compose["secrets"])
    assert oct((tmp_path / "deploy/secrets").stat().st_mode & 0o777) == "0o700"
    assert (tmp_path / "deploy/gia.yaml").read_text() == (DEPLOY / "gia.example.yaml").read_text()
