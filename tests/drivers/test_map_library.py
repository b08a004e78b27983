"""The bundled map library as an operator meets it: `gia sim MAP` serves it, the driver reads it over
Modbus TCP, `gia scan` names it, and the map-format features the library needs behave.

One simulator per map, started with the same factory `gia sim` uses (drivers.sim.generators.
simulated_device), read back by the real ModbusDriver through a real pymodbus client, then scanned
with every bundled map loaded, as `gia scan` does. The maker-named SunSpec maps (SolarEdge, Fronius)
are also read from their case images by SunSpec discovery: both paths must agree register by register.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from drivers.config import parse_connection
from drivers.maps import MapError, bundled_maps, load_map, parse_map
from drivers.maps.gen_table import supported_devices_table
from drivers.modbus.bus import BusPool
from drivers.modbus.driver import ModbusDriver, compile_register
from drivers.modbus.registermap import RegisterMap
from drivers.modbus.scan import config_snippet, describe, scan
from drivers.modbus.sunspec import SunSpecDriver
from drivers.model import QUANTITIES, Quality, QuantityKind
from drivers.sim.generators import simulated_device
from drivers.sim.server import SimServer, build_image, encode_parts, encode_register, free_tcp_port

TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CASES = Path(__file__).with_name("cases")
ALL_MAPS: dict[str, RegisterMap] = {name: load_map(name) for name in bundled_maps()}


def test_the_library_has_forty_maps_each_citing_its_document() -> None:
    assert len(ALL_MAPS) >= 40
    for name, m in ALL_MAPS.items():
        # a document title, not a placeholder: long enough to carry a name and what was used
        assert len(m.product.manual) >= 30, name
        for reg in m.registers:
            assert reg.unit in (None, QUANTITIES[reg.quantity].unit), (name, reg.quantity)


def _resolution(m: RegisterMap, quantity: str) -> float:
    """The smallest step the register can express in the quantity's unit (for read-back tolerance)."""
    reg = m.register(quantity)
    steps = [abs(reg.scale or 1.0), *(abs(p.scale) for p in reg.parts or ())]
    if reg.scale_factor is not None:
        steps = [s * 10.0 ** m.scale_factor(reg.scale_factor).sim_value for s in steps]
    return min(steps)


@pytest.mark.modbus
@pytest.mark.parametrize("name", sorted(ALL_MAPS))
async def test_gia_sim_serves_the_map_and_scan_names_it(name: str) -> None:
    m = ALL_MAPS[name]
    unit = m.default_unit_id
    fixed = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)  # midday: the profile is at its peak
    server = simulated_device(m, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(unit,), now=lambda: fixed)
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(server.listen), timeout_s=1.0, options={})
            quirks = m.options.model_copy(update={"pause_after_connect_s": 0.0, "inter_frame_delay_s": 0.0})
            drv = ModbusDriver(device_id=name, register_map=m, bus=bus, unit_id=unit, quirks=quirks)
            samples = {s.quantity: s for s in await drv.read(TS)}
            hits = await scan(bus, [unit], ALL_MAPS)
    finally:
        await server.stop()

    assert set(samples) == set(m.quantities())
    for reg in m.registers:
        s = samples[reg.quantity]
        assert s.quality is Quality.GOOD, (reg.quantity, s)
        assert s.value is not None
        example = reg.example or 0.0
        kind = QUANTITIES[reg.quantity].kind
        if kind is QuantityKind.COUNTER:
            # the simulator starts counters at the example and integrates power over milliseconds
            assert abs(s.value - example) <= _resolution(m, reg.quantity) + 1, (reg.quantity, s.value, example)
        elif kind is QuantityKind.STATE:
            assert s.value == example, (reg.quantity, s.value)
        else:
            # profiled values: 0.2..1.0 of the example with 2 % noise; others +-0.2 %
            assert abs(s.value) <= abs(example) * 1.05 + _resolution(m, reg.quantity) + 0.01, (reg.quantity, s)
            assert math.copysign(1, s.value) == math.copysign(1, example) or abs(s.value) < 1e-9

    (hit,) = hits
    if m.identity_tests:
        # named by its identity registers, and no other map's identity claims this device
        assert name in hit.maps or name in hit.companions, describe(hit)
        assert not hit.plausible, describe(hit)
        for ident in m.identity:
            if ident.label is not None and ident.sim_value is not None and name in hit.maps[:1]:
                assert hit.details[ident.label] == str(ident.sim_value).strip(), describe(hit)
        snippet = yaml.safe_load(config_snippet(server.listen, hits).split("\n", 1)[1])
        assert any(d.get("map") == name for d in snippet["devices"]), snippet
    else:
        # no identity register: offered as a labelled guess (maps whose registers span the same
        # addresses, e.g. SDM120 and SDM630, are indistinguishable by plausible values alone)
        assert hit.plausible and hit.maps, describe(hit)
        assert "confirm with: gia read" in config_snippet(server.listen, hits)


@pytest.mark.modbus
async def test_scan_adds_the_battery_behind_a_hybrid_inverter_as_its_own_device() -> None:
    """A Sungrow SH answers both the inverter's and its battery's identity: two devices, one unit."""
    inverter, battery = ALL_MAPS["sungrow-sh"], ALL_MAPS["sungrow-sh-battery"]
    static = build_image(battery, {})
    server = SimServer(inverter, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(1,), static=static)
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(server.listen), timeout_s=1.0, options={})
            (hit,) = await scan(bus, [1], ALL_MAPS)
    finally:
        await server.stop()
    assert hit.maps == ["sungrow-sh"] and hit.companions == ["sungrow-sh-battery"], describe(hit)
    doc = yaml.safe_load(config_snippet("tcp://192.0.2.1:502", [hit]).split("\n", 1)[1])
    assert [(d["map"], d["unit_id"]) for d in doc["devices"]] == [("sungrow-sh", 1), ("sungrow-sh-battery", 1)]
    assert len({d["id"] for d in doc["devices"]}) == 2


@pytest.mark.modbus
@pytest.mark.parametrize("name", ["solaredge-inverter", "fronius-inverter"])
async def test_maker_sunspec_maps_agree_with_sunspec_discovery(name: str) -> None:
    """The case image is the maker's documented SunSpec layout: discovery and the fixed map read it alike."""
    m = ALL_MAPS[name]
    doc: dict[str, Any] = yaml.safe_load((CASES / name / "image.yaml").read_text())
    static = {rtype: {int(a): int(str(w), 0) for a, w in regs.items()} for rtype, regs in doc["registers"].items()}
    server = SimServer(None, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(1,), static=static)
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(server.listen), timeout_s=1.0, options={})
            fixed = {
                s.quantity: s for s in await ModbusDriver(device_id=name, register_map=m, bus=bus, unit_id=1).read(TS)
            }
            discovering = SunSpecDriver(device_id=name, bus=bus, unit_id=1)
            found = {s.quantity: s for s in await discovering.read(TS)}
            hits = await scan(bus, [1], ALL_MAPS)
    finally:
        await server.stop()
    assert discovering.device is not None
    assert discovering.device.register_map.product.brand.startswith(m.product.brand.split()[0])
    same_register = [
        r.quantity
        for r in discovering.device.register_map.registers
        if r.quantity in fixed and m.protocol_address(m.register(r.quantity).address) == r.address
    ]
    assert len(same_register) >= 10, same_register
    for q in same_register:
        assert (fixed[q].value, fixed[q].quality) == (found[q].value, found[q].quality), q
    (hit,) = hits
    assert hit.maps == [name] and hit.sunspec_models, describe(hit)


# -- the map-format features the library needs ------------------------------------------------------

SPLIT = """\
device_class: meter
product: {brand: X, model: Y, manual: "X Y register list v1"}
address_base: 1
defaults: {type: input}
registers:
  - {quantity: energy_import_wh, address: 3512, scale: 1000, sentinel: 0x8000, unit: Wh,
     parts: [{address: 3513, scale: 1000000}, {address: 3515, scale: 1000}, {address: 3516, scale: 1000000}]}
"""


def test_parts_add_up_a_counter_split_over_registers() -> None:
    reg = parse_map(SPLIT, source="split.yaml").registers[0]
    convert = compile_register(reg)
    # 345 kWh + 12 MWh (heating) + 678 kWh + 3 MWh (hot water)
    assert convert([345, 12, 678, 3], None) == (16_023_000, Quality.GOOD)
    # a piece marked 'not available' makes the whole counter invalid, not a smaller number
    assert convert([345, 0x8000, 678, 3], None) == (None, Quality.INVALID)
    assert convert([345, 12, 678], None) == (None, Quality.INVALID)  # a piece missing


def test_parts_are_read_in_the_same_request_as_the_register() -> None:
    from drivers.modbus.driver import build_fields
    from drivers.modbus.plan import plan_reads

    m = parse_map(SPLIT, source="split.yaml")
    (request,) = plan_reads(build_fields(m, m.registers), one_request_per_field=True)
    assert (request.address, request.count) == (3511, 5)


@given(st.integers(min_value=0, max_value=65535 * 1_000_000))
def test_parts_round_trip_through_the_simulator_encoding(wh: int) -> None:
    m = parse_map(SPLIT, source="split.yaml")
    reg = m.registers[0]
    value = float(wh - wh % 1000)  # the pieces count whole kWh
    words = encode_register(reg, value) + [w for piece in encode_parts(reg, value) for w in piece]
    assert compile_register(reg)(words, None) == (round(value), Quality.GOOD)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("  - {quantity: energy_import_wh, address: 1, parts: [{address: 200}]}", "span"),
        ("  - {quantity: energy_import_wh, address: 1, parts: [{address: 2, scale: 0}]}", "erase"),
        ("  - {quantity: status, address: 1, data_type: enum, parts: [{address: 2}]}", "not allowed"),
        ("  - {quantity: power_w, address: 1, data_type: float32, sentinel: 0x8000}", "integer data types"),
        ("  - {quantity: power_w, address: 1, data_type: int16, sentinel: 0x18000}", "does not fit"),
    ],
)
def test_bad_parts_and_sentinels_are_rejected_with_the_line(line: str, message: str) -> None:
    text = SPLIT.split("registers:")[0] + "options: {max_registers_per_read: 100}\nregisters:\n" + line + "\n"
    with pytest.raises(MapError, match=message) as exc:
        parse_map(text, source="bad.yaml")
    assert exc.value.line == 7


def test_a_sentinel_number_replaces_the_data_types_own() -> None:
    m = parse_map(
        """\
device_class: meter
product: {brand: ABB, model: M4M, manual: "ABB M4M Modbus protocol map v1.3G"}
registers:
  - {quantity: power_w, address: 0x5B14, data_type: int32, scale: 0.01, sentinel: 0x7FFFFFFF}
""",
        source="abb.yaml",
    )
    convert = compile_register(m.registers[0])
    assert convert([0x7FFF, 0xFFFF], None) == (None, Quality.INVALID)
    assert convert([0x8000, 0x0000], None) == (-21474836.48, Quality.GOOD)  # a real value here
    assert encode_register(m.registers[0], None) == [0x7FFF, 0xFFFF]  # the simulator serves the same


def test_identity_labels_are_shown_not_tested() -> None:
    base = 'device_class: meter\nproduct: {brand: X, model: Y, manual: "X Y v1"}\n'
    regs = "registers:\n  - {quantity: power_w, address: 10}\n"
    m = parse_map(base + "identity:\n  - {address: 0, data_type: uint32, label: serial}\n" + regs)
    assert m.identity_tests == [] and m.identity[0].label == "serial"
    with pytest.raises(MapError, match="exactly one of equals"):
        parse_map(base + "identity:\n  - {address: 0, data_type: uint32}\n" + regs)
    with pytest.raises(MapError, match="exactly one of equals"):
        parse_map(base + "identity:\n  - {address: 0, equals: 1, one_of: [1]}\n" + regs)


def test_the_table_says_how_scan_recognises_each_map() -> None:
    table = supported_devices_table()
    row = next(line for line in table.splitlines() if line.startswith("| `sma-inverter`"))
    assert "identity (shows model, serial)" in row
    row = next(line for line in table.splitlines() if line.startswith("| `janitza-umg604`"))
    assert "plausible values" in row


def test_a_counter_too_large_for_json_is_invalid_not_a_crash() -> None:
    """Found by the scan test: ABB's uint64 energy at 0x5000 read from a PRO380 (floats there)."""
    m = parse_map(
        """\
device_class: meter
product: {brand: X, model: Y, manual: "X Y register list v1"}
registers:
  - {quantity: energy_import_wh, address: 0x5000, data_type: uint64, scale: 10}
  - {quantity: status, address: 0x5004, data_type: uint64}
""",
        source="big.yaml",
    )
    for reg in m.registers:
        assert compile_register(reg)([0x4366, 0x8000, 0x4366, 0x6000], None) == (None, Quality.INVALID)


@pytest.mark.parametrize("name", sorted(n for n, m in ALL_MAPS.items() if m.device_class == "inverter"))
def test_a_simulated_pv_inverter_follows_the_sun_and_stays_in_its_maps_ranges(name: str) -> None:
    """#21 finding 9: `gia sim huawei-sun2000` served 26 kW at 22:50 on a Riga December night and a power
    factor of 1.001 its own map rejects. PV now follows the sun at the pilot area; every value stays in
    the range the map declares, at any hour."""
    from drivers.sim.generators import ProfileValues

    m = ALL_MAPS[name]
    clock = {"now": datetime(2026, 12, 15, 20, 50, tzinfo=UTC)}  # 22:50 in Riga
    values = ProfileValues(m, now=lambda: clock["now"])
    night = values()
    for q in ("power_w", "dc_power_w"):
        if q in night:
            assert night[q] == 0, (q, night[q])
    clock["now"] = datetime(2026, 6, 21, 10, 0, tzinfo=UTC)  # solar noon in Riga
    day = values()
    assert float(day.get("power_w") or 0) > 0.5 * (m.register("power_w").example or 0), day
    for hour in range(0, 24, 3):
        clock["now"] = datetime(2026, 3, 20, hour, tzinfo=UTC)
        out = values()
        for reg in m.registers:
            v = out.get(reg.quantity)
            if reg.range is not None and v is not None:
                assert reg.range[0] <= float(v) <= reg.range[1], (reg.quantity, v, reg.range)
