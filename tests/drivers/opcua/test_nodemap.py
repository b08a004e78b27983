"""Node maps load and fail like register maps (file, line, field); conversion never crashes nor guesses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.maps import MapError
from drivers.model import MAX_SAFE_INT, QUANTITIES, Quality, QuantityKind, Sample
from drivers.opcua.convert import compile_node, convert_value, severity
from drivers.opcua.nodemap import (
    NodeSpec,
    bundled_node_maps,
    check_node_id,
    load_node_map,
    parse_node_map,
    split_path,
)
from drivers.opcua.sim import raw_value

GOOD = """\
device_class: meter
product: {brand: X, model: Y, manual: "X Y OPC UA interface description v1"}
namespace: urn:x:y
nodes:
  - {quantity: power_w, path: Meter/P, scale: 1000}
"""

BAD_NODE_ID = 0x80340000  # Bad_NodeIdUnknown
UNCERTAIN = 0x408F0000  # Uncertain_LastUsableValue


@pytest.mark.parametrize("name", bundled_node_maps())
def test_every_bundled_node_map_loads_and_cites_its_source(name: str) -> None:
    m = load_node_map(name)
    assert m.name == name and m.product.manual and m.nodes
    for spec in m.nodes:
        assert spec.quantity in QUANTITIES


def test_the_iec_61400_25_map_reads_what_the_issue_asks() -> None:
    m = load_node_map("iec61400-25-wind-turbine")
    assert m.device_class == "wind_turbine"
    assert set(m.quantities()) >= {
        "power_w",
        "energy_export_wh",
        "wind_speed_ms",
        "wind_direction_deg",
        "rotor_speed_rpm",
        "status",
    }
    assert {p.split("/")[0] for p in (n.path or "" for n in m.nodes)} == {"WTUR", "WROT", "WMET"}
    assert m.node("energy_export_wh").path == "WTUR/TotWh" and m.node("wind_speed_ms").path == "WMET/HorWdSpd"


def test_unknown_name_lists_the_bundled_ones_and_a_modbus_map_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MapError, match="iec61400-25-wind-turbine"):
        load_node_map("nosuch-turbine")
    modbus = tmp_path / "m.yaml"
    modbus.write_text("device_class: meter\nproduct: {brand: X, model: Y, manual: Z}\nregisters: []\n")
    with pytest.raises(MapError, match="Modbus register map"):
        load_node_map(str(modbus))


@pytest.mark.parametrize(
    ("bad_line", "line", "field", "message"),
    [
        ("  - {quantity: watts, path: Meter/P}", 5, "nodes[0].quantity", "unknown quantity"),
        ("  - {quantity: power_w, node: 'ns=2;x=7'}", 5, "nodes[0].node", "not an OPC UA node id"),
        ("  - {quantity: power_w, path: Meter//P}", 5, "nodes[0].path", "empty element"),
        ("  - {quantity: power_w}", 5, "nodes[0]", "exactly one of 'node'"),
        ("  - {quantity: power_w, path: Meter/P, unit: kW}", 5, "nodes[0]", "convert with 'scale'"),
        ("  - {quantity: power_w, path: Meter/P, status_map: {1: 2}}", 5, "nodes[0]", "only for status"),
        ("  - {quantity: power_w, path: Meter/P, range: [5, 1]}", 5, "nodes[0]", "min < max"),
        ("  - {quantity: power_w, path: Meter/P, colour: red}", 5, "nodes[0].colour", "Extra inputs"),
    ],
)
def test_bad_nodes_name_file_line_and_field(bad_line: str, line: int, field: str, message: str) -> None:
    text = GOOD.rsplit("\n", 2)[0] + "\n" + bad_line + "\n"
    with pytest.raises(MapError) as exc:
        parse_node_map(text, source="bad.yaml")
    assert message in str(exc.value)
    assert exc.value.line == line and exc.value.field == field
    assert str(exc.value).startswith(f"bad.yaml:{line}: {field}")


def test_browse_names_need_a_namespace_and_quantities_appear_once() -> None:
    no_ns = GOOD.replace("namespace: urn:x:y\n", "")
    with pytest.raises(MapError, match="set the map's 'namespace:'"):
        parse_node_map(no_ns)
    parse_node_map(no_ns.replace("Meter/P", "2:Meter/2:P"))  # explicit indexes need none
    with pytest.raises(MapError, match="appears twice"):
        parse_node_map(GOOD + "  - {quantity: power_w, node: 'ns=2;s=P'}\n")


@pytest.mark.parametrize(
    "good",
    [
        "ns=2;s=WTG01.WTUR.W",
        "i=2258",
        "nsu=urn:a:b;s=X;Y",
        "ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a",
        "ns=1;b=M/RbKBsRVkePCePcx24oRA==",
    ],
)
def test_node_id_forms(good: str) -> None:
    assert check_node_id(good) == good


def test_browse_path_elements() -> None:
    assert split_path("WTG01/WTUR/TotWh") == [(None, "WTG01"), (None, "WTUR"), (None, "TotWh")]
    assert split_path("/3:Park/2:WTG01/") == [(3, "Park"), (2, "WTG01")]


def spec(**kw: object) -> NodeSpec:
    return NodeSpec.model_validate({"path": "X", **kw})


def test_the_map_arithmetic() -> None:
    assert convert_value(spec(quantity="power_w", scale=1000), 850.5) == (850500.0, Quality.GOOD, "")
    assert convert_value(spec(quantity="power_w", invert=True, offset=1), 2) == (-3.0, Quality.GOOD, "")
    assert convert_value(spec(quantity="energy_export_wh", scale=1000), 3500000.1234) == (3500000123, Quality.GOOD, "")
    value, quality, reason = convert_value(spec(quantity="wind_speed_ms", range=[0, 80]), 200.0)
    assert (value, quality) == (200.0, Quality.INVALID) and "outside the map's range" in reason
    assert convert_value(spec(quantity="status", status_map={"Run": 2, 5: 6}), "Run")[:2] == (2, Quality.GOOD)
    assert convert_value(spec(quantity="status", status_map={"Run": 2, 5: 6}), 5)[:2] == (6, Quality.GOOD)
    assert "not in the map's status_map" in convert_value(spec(quantity="status", status_map={"Run": 2}), "Stop")[2]
    assert convert_value(spec(quantity="status"), True)[:2] == (1, Quality.GOOD)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (float("nan"), "not finite"),
        (float("inf"), "not finite"),
        ("230.1", "not a number"),
        ([1.0, 2.0], "not a number"),
        (None, "no value"),
        (True, "a boolean"),
        (10**30, "beyond a 64-bit register"),
    ],
)
def test_values_that_cannot_be_believed_are_invalid_with_a_reason(raw: object, reason: str) -> None:
    value, quality, why = convert_value(spec(quantity="power_w"), raw)
    assert (value, quality) == (None, Quality.INVALID) and reason in why


def test_counters_refuse_negative_and_inexact_numbers() -> None:
    assert "negative" in convert_value(spec(quantity="energy_import_wh"), -5)[2]
    assert "exact JSON integer range" in convert_value(spec(quantity="energy_import_wh"), 2**60)[2]


def test_server_status_decides_first() -> None:
    s = spec(quantity="power_w")
    assert severity(0) is Quality.GOOD and severity(UNCERTAIN) is Quality.ESTIMATED
    assert convert_value(s, 5.0, BAD_NODE_ID) == (None, Quality.INVALID, "server status 0x80340000")
    assert convert_value(s, 5.0, UNCERTAIN)[:2] == (5.0, Quality.ESTIMATED)


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.floats(), max_size=3),
    st.binary(max_size=4),
)
specs = st.builds(
    lambda q, scale, offset, invert: NodeSpec(quantity=q, path="X", scale=scale, offset=offset, invert=invert),
    st.sampled_from(sorted(QUANTITIES)),
    st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1e6)),
    st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6)),
    st.booleans(),
)


@given(specs, anything, st.sampled_from([0, BAD_NODE_ID, UNCERTAIN]))
def test_any_server_value_becomes_a_valid_sample_or_an_invalid_one(s: NodeSpec, raw: object, status: int) -> None:
    from datetime import UTC, datetime

    value, quality, reason = convert_value(s, raw, status)
    sample = Sample("d", s.quantity, value, QUANTITIES[s.quantity].unit, datetime(2026, 1, 1, tzinfo=UTC), quality)
    if quality is not Quality.GOOD:
        assert reason
    if value is not None and QUANTITIES[s.quantity].kind is not QuantityKind.INSTANT:
        assert isinstance(value, int) and abs(value) <= MAX_SAFE_INT
    if isinstance(value, float):
        assert math.isfinite(value)
    assert sample.quality is quality


@given(st.floats(min_value=0, max_value=1e7), st.sampled_from([None, 0.1, 1000.0]), st.sampled_from([None, -5.0]))
def test_the_simulator_encodes_what_the_driver_decodes(value: float, scale: float | None, offset: float | None) -> None:
    s = NodeSpec(quantity="power_w", path="X", scale=scale, offset=offset)
    decoded, quality, _ = compile_node(s)(raw_value(s, value))
    assert quality is Quality.GOOD and decoded == pytest.approx(value, rel=1e-9, abs=1e-6)


def test_the_node_maps_readme_lists_every_bundled_map() -> None:
    from drivers.opcua.nodemap import NODE_MAPS_DIR

    readme = (NODE_MAPS_DIR / "README.md").read_text()
    for name in bundled_node_maps():
        assert f"| `{name}` |" in readme, name
