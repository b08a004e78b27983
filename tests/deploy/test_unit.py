"""The systemd unit: accepted by `systemd-analyze verify`, hardened, consistent with install.sh and the config.

`systemd-analyze verify` exits 0 even for unknown keys and unparsable values (it only warns), so the
tests demand that it prints nothing at all, and prove with a misspelt directive that they would notice.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import (
    DEPLOY,
    INSTALL_SH,
    UNIT,
    analyze_verify,
    parse_unit,
    sandbox_exposure,
    verify_root,
)

HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "CapabilityBoundingSet": "",
    "SupplementaryGroups": "dialout",
    "DevicePolicy": "closed",
    "ReadWritePaths": "/var/lib/gia",
    "Type": "notify",
    "Restart": "on-failure",
    "User": "gia",
}


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return analyze_verify(root, "gia.service")


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    verify_root(UNIT.read_text(), tmp_path)
    result = _verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", "systemd-analyze verify warned:\n" + result.stderr


@pytest.mark.parametrize(
    ("directive", "broken"),
    [("ProtectSystem=strict", "ProtectSytem=strict"), ("Type=notify", "Type=notfy")],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, directive: str, broken: str) -> None:
    text = UNIT.read_text()
    assert directive in text
    verify_root(text.replace(directive, broken), tmp_path)
    result = _verify(tmp_path)
    assert result.stdout + result.stderr != ""


def test_unit_has_the_hardening_directives() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{key}= should be {value!r}, is {service.get(key)}"
    assert service["WatchdogSec"], "Type=notify without a watchdog"
    devices = sorted(service["DeviceAllow"])
    assert devices == ["char-ttyACM rw", "char-ttyAMA rw", "char-ttyUSB rw"], devices
    assert "PrivateDevices" not in service, "PrivateDevices=yes would hide the serial adapters"
    assert "AmbientCapabilities" not in service or service["AmbientCapabilities"] == [""]


def test_unit_sandbox_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security` scores the sandbox 0 (locked) .. 10 (exposed); keep it low."""
    assert sandbox_exposure(tmp_path, UNIT.read_text(), "gia.service") <= 2.0


def test_unit_paths_match_installer_and_example_config() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    installer = INSTALL_SH.read_text()
    exec_start = service["ExecStart"][0].split()
    assert exec_start[0] == "/opt/gia/venv/bin/gia"
    assert exec_start[1] == "run"
    assert exec_start[exec_start.index("--config") + 1] == "/etc/gia/gia.yaml"
    assert "--log-format ${GIA_LOG_FORMAT}" in service["ExecStart"][0]
    for const in ('VENV_DIR="/opt/gia/venv"', 'CONF_DIR="/etc/gia"', 'DATA_DIR="/var/lib/gia"'):
        assert const in installer
    assert service["StateDirectory"] == ["gia"]
    example = yaml.safe_load((DEPLOY / "gia.example.yaml").read_text())
    assert example["data_dir"] == "/var/lib/gia" == service["ReadWritePaths"][0]
    assert service["EnvironmentFile"] == ["-/etc/gia/gia.env"]


def test_exit_code_2_is_not_restarted() -> None:
    """`gia run` exits 2 on an invalid config: restarting cannot fix it, so the unit must not loop."""
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["RestartPreventExitStatus"] == ["2"]


def test_journald_dropin_bounds_the_journal() -> None:
    dropin = parse_unit((DEPLOY / "systemd" / "journald-gia.conf").read_text())
    journal = dropin["Journal"]
    assert re.fullmatch(r"\d+[KMG]", journal["SystemMaxUse"][0])
    assert journal["RuntimeMaxUse"]


def test_unit_gives_the_agent_descriptors_beyond_its_connection_limits() -> None:
    """`LimitNOFILE=` (the sandbox refuses setrlimit) must hold the default HTTP and proxy limits plus the
    reserve for devices and the ledger, or the agent lowers its limits at start (issue #15, finding 2)."""
    from drivers.config import ModbusDeviceConfig
    from gateway.runtime.fdbudget import listener_budget
    from gateway.settings import HttpConfig

    service = parse_unit(UNIT.read_text())["Service"]
    assert "LimitNOFILE" in service, "without LimitNOFILE= the agent gets the distribution's 1024"
    nofile = int(service["LimitNOFILE"][0])
    proxy = ModbusDeviceConfig.model_fields["proxy_max_clients"].default
    budget = listener_budget(
        soft_limit=nofile, devices=50, http_wanted=HttpConfig().max_connections, proxies=4, proxy_wanted=proxy
    )
    assert not budget.lowered, budget.lowered
