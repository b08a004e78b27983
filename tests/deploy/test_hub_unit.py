"""deploy/systemd/gia-hub.service: accepted by `systemd-analyze verify`, sandboxed at least as tightly as
gia.service (and without its serial devices: the hub needs none), consistent with hub.example.yaml and
with `gia hub run` (exit 2 on a bad config is not restarted). As tests/deploy/test_unit.py, verify must
print nothing at all, and a misspelt directive proves the test would notice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, analyze_verify, parse_unit, sandbox_exposure, verify_root

HUB_UNIT = DEPLOY / "systemd" / "gia-hub.service"

HARDENING = {
    "Type": "exec",
    "User": "gia-hub",
    "Group": "gia-hub",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "CapabilityBoundingSet": "",
    "ReadWritePaths": "/var/lib/gia-hub",
    "StateDirectoryMode": "0700",
    "UMask": "0077",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
}


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return analyze_verify(root, "gia-hub.service")


def _install(text: str, root: Path) -> None:
    unit = verify_root(text, root)  # the scratch root (host units, a stub /opt/gia/venv/bin/gia)
    unit.rename(unit.with_name("gia-hub.service"))


def test_hub_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    _install(HUB_UNIT.read_text(), tmp_path)
    result = _verify(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", "systemd-analyze verify warned:\n" + result.stderr


@pytest.mark.parametrize(
    ("directive", "broken"),
    [("ProtectSystem=strict", "ProtectSytem=strict"), ("Type=exec", "Type=exce")],
)
def test_verify_catches_a_broken_hub_unit(tmp_path: Path, directive: str, broken: str) -> None:
    text = HUB_UNIT.read_text()
    assert directive in text
    _install(text.replace(directive, broken), tmp_path)
    assert _verify(tmp_path).stdout + _verify(tmp_path).stderr != ""


def test_hub_unit_has_the_hardening_directives() -> None:
    service = parse_unit(HUB_UNIT.read_text())["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{key}= should be {value!r}, is {service.get(key)}"
    assert "SupplementaryGroups" not in service, "the hub reads no serial adapters: no dialout"
    assert "DeviceAllow" not in service
    assert "AmbientCapabilities" not in service or service["AmbientCapabilities"] == [""]


def test_hub_unit_sandbox_exposure_is_no_worse_than_the_agents(tmp_path: Path) -> None:
    """`systemd-analyze security` scores 0 (locked) .. 10 (exposed): the hub at most the agent's 2.0."""
    assert sandbox_exposure(tmp_path, HUB_UNIT.read_text(), "gia-hub.service") <= 2.0


def test_hub_unit_paths_match_the_example_config() -> None:
    service = parse_unit(HUB_UNIT.read_text())["Service"]
    exec_start = service["ExecStart"][0].split()
    assert exec_start[:3] == ["/opt/gia/venv/bin/gia", "hub", "run"]
    assert exec_start[exec_start.index("--config") + 1] == "/etc/gia/hub.yaml"
    example = yaml.safe_load((DEPLOY / "hub.example.yaml").read_text())
    assert example["hub"]["data_dir"] == "/var/lib/gia-hub" == service["ReadWritePaths"][0]
    assert service["StateDirectory"] == ["gia-hub"]
    assert service["WorkingDirectory"] == ["/var/lib/gia-hub"]


def test_a_bad_hub_config_exits_2_which_the_unit_does_not_restart(tmp_path: Path) -> None:
    """RestartPreventExitStatus=2 only helps if `gia hub run` really exits 2 on an invalid config."""
    bad = tmp_path / "hub.yaml"
    bad.write_text("hub:\n  max_report_bytes: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "hub", "run", "--config", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "max_report_bytes" in result.stderr
