"""The `flexibility:` section: clear messages for wrong assets and limits, cross-checked device ids."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.flexibility.assets import ShiftableLoad, parse_window, window_fraction
from gateway.flexibility.checks import check_flexibility
from gateway.flexibility.config import FlexibilityConfig
from gateway.settings import ConfigError, load_settings

BATTERY: dict[str, Any] = {
    "kind": "battery",
    "id": "battery",
    "capacity_wh": 200_000,
    "max_charge_w": 100_000,
    "max_discharge_w": 100_000,
    "soc": {"device": "battery", "quantity": "soc_pct"},
}

SETTINGS: dict[str, Any] = {
    "site": {"id": "demo", "timezone": "Europe/Riga"},
    "data_dir": "data",
    "devices": [
        {
            "id": "battery",
            "driver": "modbus",
            "connection": "tcp://127.0.0.1:5020",
            "map": "victron-gx",
            "unit_id": 225,
        },
    ],
    "http": {"enabled": False},
    "forecasting": {"enabled": True, "targets": {"load": {}, "wind": {}, "pv": {}}},
    "flexibility": {"enabled": True, "assets": [BATTERY]},
}


def messages(cfg: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        FlexibilityConfig.model_validate(cfg)
    return str(info.value)


def test_a_good_config_loads() -> None:
    cfg = FlexibilityConfig.model_validate({"enabled": True, "assets": [BATTERY]})
    assert cfg.batteries[0].min_wh == 20_000 and cfg.batteries[0].max_wh == 190_000


@pytest.mark.parametrize(
    ("asset", "expected"),
    [
        ({**BATTERY, "min_soc_pct": 90, "max_soc_pct": 20}, "min_soc_pct (90) must be below max_soc_pct (20)"),
        ({**BATTERY, "charge_efficiency": 1.2}, "less than or equal to 1"),
        ({**BATTERY, "capacity_wh": 0}, "greater than 0"),
        (
            {"kind": "shiftable", "id": "p", "power_w": 10, "energy_wh_per_day": 500, "windows": ["6-22"]},
            "write a window as 'HH:MM-HH:MM'",
        ),
        (
            {"kind": "shiftable", "id": "p", "power_w": 10, "energy_wh_per_day": 500, "windows": ["06:00-08:00"]},
            "does not fit: 10 W over 2 h of windows gives at most 20 Wh",
        ),
        (
            {
                "kind": "shiftable",
                "id": "p",
                "power_w": 10,
                "energy_wh_per_day": 5,
                "windows": ["06:00-08:00", "07:00-09:00"],
            },
            "windows overlap",
        ),
        (
            {"kind": "thermal", "id": "hp", "max_power_w": 10, "capacity_wh": 100, "demand_w": 20},
            "demand_w 20 W exceeds max_power_w 10 W",
        ),
        (
            {"kind": "battery", "id": "Bad Id", "capacity_wh": 1, "max_charge_w": 1, "max_discharge_w": 1},
            "String should match pattern",
        ),
        ({"kind": "flywheel", "id": "x"}, "does not match any of the expected tags"),
    ],
)
def test_asset_mistakes_are_named(asset: dict[str, Any], expected: str) -> None:
    assert expected in messages({"assets": [asset]})


def test_duplicate_ids_and_limits_and_sources() -> None:
    assert "duplicate asset id 'battery'" in messages({"assets": [BATTERY, BATTERY]})
    assert "contract cannot exceed the connection" in messages(
        {"limits": {"grid_connection_w": 100, "contracted_peak_w": 200}}
    )
    assert "add 'pv' to flexibility.generation" in messages(
        {"generation": ["wind"], "assets": [{"kind": "curtailable", "id": "c", "source": "pv", "max_curtail_w": 5}]}
    )
    assert "must not exceed absorb_above_w" in messages({"thresholds": {"absorb_above_w": 0, "reduce_below_w": 10}})


def test_windows_wrap_midnight_and_fractions() -> None:
    w = parse_window("22:00-06:00")
    assert w.minutes() == [(1320, 1440), (0, 360)] and w.length_min == 480
    assert parse_window("00:00-24:00").length_min == 1440
    load = ShiftableLoad(kind="shiftable", id="p", power_w=1, energy_wh_per_day=1, windows=["06:30-08:00"])
    assert window_fraction(load, 6 * 60, 60) == 0.5
    assert window_fraction(load, 7 * 60, 60) == 1.0
    assert window_fraction(load, 8 * 60, 60) == 0.0
    night = ShiftableLoad(kind="shiftable", id="n", power_w=1, energy_wh_per_day=1, windows=["23:30-00:30"])
    assert window_fraction(night, 23 * 60, 60) == 0.5  # the interval 23:00-24:00 of a wrapping window


def write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "gia.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cross_check_accepts_known_devices(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, SETTINGS), extra_checks=[check_flexibility])
    assert settings.flexibility.batteries[0].soc is not None


def test_cross_check_names_unknown_devices_quantities_and_forecasts(tmp_path: Path) -> None:
    cfg = copy.deepcopy(SETTINGS)
    cfg["flexibility"]["assets"] = [
        {**BATTERY, "soc": {"device": "batt", "quantity": "charge_level"}},
        {"kind": "curtailable", "id": "cut", "source": "wind", "max_curtail_w": 1000, "device": "turbine"},
    ]
    cfg["forecasting"]["targets"] = {"load": {}}
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, cfg), extra_checks=[check_flexibility])
    lines = [str(p) for p in info.value.problems]
    assert any(
        s.startswith("flexibility.assets[0].soc.device: unknown device 'batt' (devices: battery)") for s in lines
    )
    assert any(s.startswith("flexibility.assets[0].soc.quantity: unknown quantity 'charge_level'") for s in lines)
    assert any(s.startswith("flexibility.assets[1].device: unknown device 'turbine'") for s in lines)
    assert any(s.startswith("flexibility.generation: no forecasting target for wind, pv") for s in lines)


def test_schema_errors_reach_check_config_with_their_path(tmp_path: Path) -> None:
    cfg = copy.deepcopy(SETTINGS)
    cfg["flexibility"]["assets"] = [{**BATTERY, "min_soc_pct": 99}]
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, cfg))
    assert any(
        p.path.startswith("flexibility.assets[0]") and "min_soc_pct (99)" in p.message for p in info.value.problems
    )
