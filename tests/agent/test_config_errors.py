"""`gia check-config`: realistic mistakes each give one line naming the field and the fix; no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import ConfigError, load_config

TOKEN = "3f9a1c7e5b2d4f6081a3c5e7092b4d6f"  # 128 bits of hex: the minimum a token may have

GOOD: dict[str, Any] = {
    "site": {"id": "riga-north", "name": "Riga North", "timezone": "Europe/Riga"},
    "data_dir": "data",
    "devices": [
        {
            "id": "grid",
            "driver": "modbus",
            "connection": "tcp://127.0.0.1:5020",
            "unit_id": 1,
            "map": "eastron-sdm630",
            "poll_interval_s": 5,
            "channels": [
                {"role": "grid_import", "quantity": "energy_import_wh"},
                {"role": "grid_export", "quantity": "energy_export_wh"},
            ],
        },
        {
            "id": "pv",
            "driver": "modbus",
            "connection": "tcp://127.0.0.1:5021",
            "map": "eastron-sdm630",
            "channels": [{"role": "generation", "quantity": "energy_export_wh", "source": "pv", "renewable": True}],
        },
    ],
    "influxdb": {"url": "http://127.0.0.1:8086", "api": "v2", "token": "t" * 20, "org": "gia", "bucket": "energy"},
    "mqtt": {"url": "mqtt://127.0.0.1:1883"},
    "http": {"listen": "127.0.0.1:8080", "tokens": [{"name": "ops", "token": TOKEN, "roles": ["viewer"]}]},
}


def write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "gia.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mutate(path: str, value: Any) -> dict[str, Any]:
    """A deep copy of GOOD with one dotted path set (None deletes it)."""
    cfg: dict[str, Any] = yaml.safe_load(yaml.safe_dump(GOOD))
    node: Any = cfg
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node[p]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return cfg


def test_good_config_loads(tmp_path: Path) -> None:
    s = load_config(write(tmp_path, GOOD)).settings
    assert s.site.id == "riga-north" and len(s.devices) == 2
    assert s.data_dir == tmp_path / "data"  # relative to the file, not the working directory
    assert s.influxdb is not None and s.influxdb.token_value() == "t" * 20


MISTAKES = [
    # (mutation path, value, expected field path in the message, expected words)
    ("devices.0.connection", "tcp://127.0.0.1:70000", "devices[0].connection", "port must be 1..65535"),
    ("devices.0.connection", "modbus://meter", "devices[0].connection", "scheme must be"),
    ("devices.0.poll_interval_s", 0, "devices[0].poll_interval_s", "greater than 0"),
    ("devices.0.unit_id", 300, "devices[0].unit_id", "less than or equal to 255"),
    ("devices.0.map", "no-such-meter", "devices[0].map", "no-such-meter"),
    ("devices.1.id", "grid", "devices[1].id", "duplicate device id"),
    ("devices.0.id", "Grid Meter", "devices[0].id", "pattern"),
    ("devices.0.channels.0.role", "import", "devices[0].channels[0].role", "grid_import"),
    ("devices.1.channels.0.source", None, "devices[1].channels[0]", "needs 'source'"),
    ("influxdb.token", None, "influxdb", "needs token"),
    ("influxdb.url", "localhost:8086", "influxdb.url", "not a http/https URL"),
    ("mqtt.url", "tcp://broker", "mqtt.url", "mqtt://"),
    ("mqtt.prefix", "gia/#", "mqtt.prefix", "wildcards"),
    ("site.timezone", "Riga", "site.timezone", "Europe/Riga"),
    ("site.id", None, "site.id", "required"),
    ("http.tokens.0.token", "short", "http.tokens[0]", "openssl rand -hex 32"),
    ("http.listen", "8080", "http.listen", "HOST:PORT"),
    ("devices.0.pol_interval", 5, "devices[0].pol_interval", "unknown field"),
    (
        "forecasting",
        {"enabled": True, "targets": {"wind": {"turbine_type": "E-82/230", "capacity_w": 2.3e6}}},
        "forecasting.targets.wind.turbine_type",
        "did you mean",
    ),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), MISTAKES, ids=[m[0] + "=" + str(m[1]) for m in MISTAKES])
def test_each_mistake_names_field_and_fix(tmp_path: Path, path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, mutate(path, value)))
    lines = [str(p) for p in info.value.problems]
    matching = [line for line in lines if line.startswith(field)]
    assert matching, lines
    assert any(words in line for line in matching), lines


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    cfg = mutate("devices.0.poll_interval_s", 0)
    cfg["devices"][1]["unit_id"] = -1
    cfg["mqtt"]["url"] = "nope"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, cfg))
    assert len(info.value.problems) >= 3


def test_env_overrides_file_and_secrets_stay_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = mutate("influxdb.token", None)
    monkeypatch.setenv("GIA_INFLUXDB__TOKEN", "from-env-token")
    s = load_config(write(tmp_path, cfg)).settings
    assert s.influxdb is not None and s.influxdb.token_value() == "from-env-token"
    assert "from-env-token" not in repr(s)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIA_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60
    )


def test_check_config_cli_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    ok = run_cli("check-config", "--config", str(good), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad_cfg = mutate("devices.0.connection", "tcp://127.0.0.1:70000")
    bad_cfg["devices"][1]["id"] = "grid"
    bad = write(tmp_path, bad_cfg)
    res = run_cli("check-config", "--config", str(bad), cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and all("fix:" in line for line in lines), lines


def test_broken_yaml_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gia.yaml"
    path.write_text("site:\n  id: x\n devices: [\n")
    res = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert res.returncode == 2 and "line" in res.stderr and "Traceback" not in res.stderr


def test_wrong_shapes_are_problems_not_tracebacks(tmp_path: Path) -> None:
    """Found by the config fuzzer: `channels: true` crashed the raw device checks."""
    for path, value in [("devices.0.channels", True), ("devices.0", "grid"), ("devices", {"id": "x"})]:
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, mutate(path, value)))
        assert info.value.problems


def test_check_config_speaks_the_command_lines_language(tmp_path: Path) -> None:
    """#21 finding 6: with LANG=lv_LV.UTF-8 the problems read in Latvian (the catalogue's messages for
    pydantic's error types and the unknown-field line); the path and the field's own fix stay as written."""
    cfg = mutate("devicez", [])
    cfg["ledger"] = {"commit_interval_s": -1}
    path = write(tmp_path, cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIA_", "LANG", "LC_"))}
    lv = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        cwd=tmp_path, capture_output=True, text=True, env={**env, "LANG": "lv_LV.UTF-8"}, timeout=60,
    )  # fmt: skip
    en = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert lv.returncode == en.returncode == 2
    assert "ledger.commit_interval_s: jābūt lielākam par 0 — labojums:" in lv.stderr, lv.stderr
    assert "devicez: nezināms lauks" in lv.stderr and "izdzēsiet to" in lv.stderr
    assert "Input should be greater than 0 — fix:" in en.stderr and "unknown field" in en.stderr
    assert len(lv.stderr.splitlines()) == len(en.stderr.splitlines())
