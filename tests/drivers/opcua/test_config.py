"""An OPC UA device in gia.yaml: accepted when right; every mistake one line naming the field and the fix."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.base import PermanentError
from drivers.factory import create_driver, device_class_of, device_map
from drivers.opcua.config import OpcuaDeviceConfig
from drivers.opcua.driver import OpcuaDriver
from drivers.services import DriverServices
from gateway.runtime.logs import setup_logging
from gateway.settings import ConfigError, load_settings


def device(**kw: Any) -> dict[str, Any]:
    return {
        "id": "wtg01",
        "driver": "opcua",
        "endpoint": "opc.tcp://192.0.2.20:4840",
        "map": "iec61400-25-wind-turbine",
        "root": "WTG01",
        "channels": [{"role": "generation", "quantity": "energy_export_wh", "source": "wind", "renewable": True}],
        **kw,
    }


def secure(tmp_path: Path) -> dict[str, Any]:
    for name in ("gw.pem", "gw.key", "server.pem"):
        (tmp_path / name).write_text("-\n")
    (tmp_path / "password").write_text("s3cret-pw\n")
    return {
        "security": {"certificate": "gw.pem", "private_key": "gw.key", "server_certificate": "server.pem"},
        "username": "gia",
        "password_file": "password",
    }


def problems(tmp_path: Path, *devices: dict[str, Any]) -> list[str]:
    path = tmp_path / "gia.yaml"
    path.write_text(yaml.safe_dump({"site": {"id": "s"}, "devices": list(devices), "http": {"enabled": False}}))
    try:
        load_settings(path)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_a_good_device_loads_and_builds_a_driver(tmp_path: Path) -> None:
    assert problems(tmp_path, device(), device(id="wtg02", root="WTG02", **secure(tmp_path))) == []
    settings = load_settings(tmp_path / "gia.yaml")
    cfg = settings.devices[1]
    assert isinstance(cfg, OpcuaDeviceConfig) and cfg.mode == "subscription"
    loaded = device_map(cfg, base_dir=tmp_path)
    assert device_class_of(cfg, loaded) == "wind_turbine"
    driver = create_driver(cfg, device_map=loaded, services=DriverServices(base_dir=tmp_path))
    assert isinstance(driver, OpcuaDriver)
    assert driver.endpoint.password == "s3cret-pw" and "s3cret" not in repr(driver.endpoint)  # never printed
    assert driver.endpoint.security is not None and driver.endpoint.security.certificate == tmp_path / "gw.pem"


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"endpoint": "opc.tcp://gia:secret@192.0.2.20:4840"}, "devices[0].endpoint", "holds credentials"),
        ({"endpoint": "tcp://192.0.2.20:4840"}, "devices[0].endpoint", "not an OPC UA endpoint"),
        ({"endpoint": "opc.tcp://192.0.2.20:99999"}, "devices[0].endpoint", "port must be 1..65535"),
        ({"username": "gia", "password_file": "pw"}, "devices[0]", "password may cross the network readable"),
        ({"username": "gia"}, "devices[0]", "set both 'username' and 'password_file'"),
        ({"mode": "push"}, "devices[0].mode", "'subscription' or 'polling'"),
        ({"root": "ns=2;q=1"}, "devices[0].root", "not an OPC UA node id"),
        ({"poll_interval_s": 0}, "devices[0].poll_interval_s", "greater than 0"),
        ({"map": "eastron-sdm630"}, "devices[0].map", "no bundled OPC UA node map named 'eastron-sdm630'"),
        ({"security": {"certificate": "a.pem", "private_key": "a.key"}}, "devices[0].security.server_certificate", ""),
        ({"colour": "red"}, "devices[0].colour", "unknown field"),
    ],
)
def test_each_mistake_names_the_field_and_the_fix(
    tmp_path: Path, change: dict[str, Any], path: str, message: str
) -> None:
    found = problems(tmp_path, device(**change))
    assert any(p.startswith(f"{path}:") and message in p for p in found), found
    assert all("fix:" in p for p in found), found


def test_missing_files_are_named(tmp_path: Path) -> None:
    cfg = device(**secure(tmp_path))
    (tmp_path / "server.pem").unlink()
    (tmp_path / "password").unlink()
    found = problems(tmp_path, cfg)
    # relative paths are resolved against the config file's folder; the message names the file
    assert any(
        p.startswith("devices[0].security.server_certificate: file '") and "server.pem' does not exist" in p
        for p in found
    ), found
    assert any(p.startswith("devices[0].password_file: file '") and "password' does not exist" in p for p in found)


def test_a_bad_node_map_file_is_reported_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "device_class: meter\nproduct: {brand: X, model: Y, manual: Z}\nnodes:\n  - {quantity: watts, node: 'i=1'}\n"
    )
    found = problems(tmp_path, device(map="mine.yaml"))
    assert any(p.startswith("devices[0].map:") and "mine.yaml:4: nodes[0].quantity" in p for p in found), found


def test_an_empty_password_file_is_a_permanent_error_at_start(tmp_path: Path) -> None:
    cfg = OpcuaDeviceConfig.model_validate(device(**secure(tmp_path)))
    (tmp_path / "password").write_text("\n")
    with pytest.raises(PermanentError, match=r"password_file: .* is empty"):
        create_driver(cfg, device_map=None, services=DriverServices(base_dir=tmp_path))


def test_check_config_prints_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "gia.yaml"
    bad = device(endpoint="opc.tcp://u:p@h:4840", map="nosuch")
    path.write_text(yaml.safe_dump({"site": {"id": "s"}, "devices": [bad], "http": {"enabled": False}}))
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines and all(line.startswith("devices[0].") for line in lines), out.stderr
    assert "Traceback" not in out.stderr and "p@h" not in out.stderr


def test_the_agent_keeps_asyncua_quiet_whatever_the_log_level() -> None:
    """asyncua logs every request at DEBUG, the UserName token with its password included."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(level="debug")
        assert not logging.getLogger("asyncua.client.ua_client").isEnabledFor(logging.ERROR)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name in ("asyncua", "pymodbus", "uvicorn.error", "asyncio"):
            logging.getLogger(name).setLevel(logging.NOTSET)
