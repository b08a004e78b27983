"""Every bundled map loads; bad maps fail with file, line and field; the legality table bites."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.maps import MapError, bundled_maps, load_map, parse_map
from drivers.model import QUANTITIES

GOOD = """\
device_class: meter
product: {brand: X, model: Y, manual: "X Y Modbus manual v1"}
registers:
  - {quantity: power_w, address: 0, data_type: int32, scale: 0.1}
"""


@pytest.mark.parametrize("name", bundled_maps())
def test_every_bundled_map_loads(name: str) -> None:
    m = load_map(name)
    assert m.name == name
    assert m.product.manual
    assert m.registers
    for reg in m.registers:
        assert reg.quantity in QUANTITIES


def test_demo_maps_are_bundled() -> None:
    for name in ("eastron-sdm630", "carlo-gavazzi-em24", "huawei-sun2000", "generic-wind-turbine", "huawei-luna2000"):
        assert name in bundled_maps()


def test_unknown_bundled_name_lists_the_known_ones() -> None:
    with pytest.raises(MapError, match="eastron-sdm630"):
        load_map("nosuch-meter")


def test_path_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "mine.yaml").write_text(GOOD)
    m = load_map("maps/mine.yaml", base_dir=tmp_path)
    assert m.name == "mine" and m.device_class == "meter"
    with pytest.raises(MapError, match="not found"):
        load_map("maps/other.yaml", base_dir=tmp_path)


@pytest.mark.parametrize(
    ("bad_line", "line", "message"),
    [
        ("  - {quantity: power_w, address: 0, data_type: string, length: 2}", 4, "strings are not quantities"),
        ("  - {quantity: power_w, address: 0, data_type: float32, scale_factor: W_SF}", 4, "not allowed"),
        ("  - {quantity: power_w, address: 0, data_type: enum}", 4, "status quantity"),
        ("  - {quantity: power_w, address: 0, type: coil}", 4, "data_type bool"),
        ("  - {quantity: power_w, address: 0, data_type: uint16, word_order: CDAB}", 4, "no word order"),
        ("  - {quantity: watts, address: 0}", 4, "unknown quantity"),
        ("  - {quantity: power_w, address: 0, unit: kW}", 4, "differs"),
        ("  - {quantity: power_w, address: 0, modulus: 100}", 4, "only for energy counters"),
        ("  - {quantity: power_w, address: 70000}", 4, "less than or equal"),
        ("  - {quantity: power_w, address: 0, colour: red}", 4, "Extra inputs"),
    ],
)
def test_bad_registers_name_file_line_and_field(bad_line: str, line: int, message: str) -> None:
    text = GOOD.rsplit("\n", 2)[0] + "\n" + bad_line + "\n"
    with pytest.raises(MapError) as exc:
        parse_map(text, source="bad.yaml")
    assert message in str(exc.value)
    assert str(exc.value).startswith(f"bad.yaml:{line}")
    assert exc.value.line == line


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(MapError, match=r"bad.yaml:3: not valid YAML"):
        parse_map("device_class: meter\nproduct: {\n  : ]\n", source="bad.yaml")


def test_duplicate_quantity_rejected() -> None:
    text = GOOD + "  - {quantity: power_w, address: 10}\n"
    with pytest.raises(MapError, match="appears twice"):
        parse_map(text, source="dup.yaml")


def test_readme_table_is_generated_from_the_maps() -> None:
    from drivers.maps import MAPS_DIR
    from drivers.maps.gen_table import BEGIN, END, supported_devices_table

    text = (MAPS_DIR / "README.md").read_text()
    table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert table == supported_devices_table(), "run: python -m drivers.maps.gen_table --write"
    for name in bundled_maps():
        assert f"`{name}`" in table
