"""The generic Modbus driver against a real pymodbus server (the simulator), faults included."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.base import BusyError, Driver, PermanentError, TransientError
from drivers.config import ModbusDeviceConfig, parse_connection
from drivers.factory import create_driver, device_class_of, device_map
from drivers.maps import bundled_maps, load_map, parse_map
from drivers.modbus.bus import BusPool
from drivers.modbus.driver import ModbusDriver
from drivers.model import Quality
from drivers.services import DriverServices
from drivers.sim.server import Fault
from tests.drivers.conftest import SimFactory

pytestmark = pytest.mark.modbus
TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def driver_for(server: object, pool: BusPool, name: str, **quirks: object) -> ModbusDriver:
    from drivers.sim.server import SimServer

    assert isinstance(server, SimServer)
    m = server.map
    assert m is not None
    q = m.options.model_copy(update={"pause_after_connect_s": 0.0, "inter_frame_delay_s": 0.0, **quirks})
    bus = pool.bus(parse_connection(server.listen), timeout_s=0.4, options={"busy_delay_s": 0.01})
    return ModbusDriver(device_id=name, register_map=m, bus=bus, unit_id=server.unit_ids[0], quirks=q)


@pytest.mark.parametrize("name", bundled_maps())
async def test_every_map_reads_back_what_the_simulator_serves(name: str, sim_factory: SimFactory) -> None:
    m = load_map(name)
    served = {r.quantity: r.example for r in m.registers if r.example is not None}
    server = await sim_factory(m, values=lambda: served)
    async with BusPool() as pool:
        drv = driver_for(server, pool, "dev")
        assert isinstance(drv, Driver)
        async with drv:
            samples = await drv.read(TS)
    got = {s.quantity: s for s in samples}
    assert set(got) == {r.quantity for r in m.registers}
    for q, want in served.items():
        s = got[q]
        assert s.quality is Quality.GOOD, (q, s)
        assert s.ts == TS and s.device == "dev"
        assert s.value is not None
        assert math.isclose(float(s.value), want, rel_tol=1e-4, abs_tol=0.051), (q, s.value, want)


async def test_not_implemented_and_out_of_range_are_invalid(sim_factory: SimFactory) -> None:
    server = await sim_factory("eastron-sdm630", values=lambda: {"power_w": None, "voltage_l1_v": 900.0})
    async with BusPool() as pool:
        samples = {s.quantity: s for s in await driver_for(server, pool, "m").read(TS)}
    assert samples["power_w"].value is None and samples["power_w"].quality is Quality.INVALID
    assert samples["voltage_l1_v"].quality is Quality.INVALID
    assert samples["voltage_l2_v"].quality is Quality.GOOD


async def test_planner_reads_a_meter_in_few_requests(sim_factory: SimFactory) -> None:
    server = await sim_factory("eastron-sdm630")
    async with BusPool() as pool:
        drv = driver_for(server, pool, "m")
        await drv.read(TS)
        merged = drv.bus.stats.requests
        naive = driver_for(server, pool, "n", one_request_per_field=True)
        await naive.read(TS)
        assert naive.bus.stats.requests - merged == len(server.map.registers)
    assert merged <= 2


async def test_paused_device_times_out_then_recovers(sim_factory: SimFactory) -> None:
    server = await sim_factory("carlo-gavazzi-em24")
    async with BusPool() as pool:
        drv = driver_for(server, pool, "m")
        await drv.read(TS)
        server.pause()
        with pytest.raises(TransientError, match="no answer within"):
            await drv.read(TS)
        server.resume()
        assert len(await drv.read(TS)) == len(server.map.registers)


async def test_busy_is_retried_without_reconnect(sim_factory: SimFactory) -> None:
    server = await sim_factory("carlo-gavazzi-em24")
    async with BusPool() as pool:
        drv = driver_for(server, pool, "m")
        await drv.read(TS)
        reconnects = drv.bus.stats.reconnects
        server.inject("busy", 2)
        assert len(await drv.read(TS)) == len(server.map.registers)
        assert drv.bus.stats.busy == 2 and drv.bus.stats.reconnects == reconnects
        server.inject("busy", 10)
        with pytest.raises(BusyError):
            await drv.read(TS)


@pytest.mark.parametrize("fault", ["garbled", "truncated", "device_failure", "close"])
async def test_broken_responses_are_transient_and_recover(fault: Fault, sim_factory: SimFactory) -> None:
    server = await sim_factory("eastron-sdm630")
    async with BusPool() as pool:
        drv = driver_for(server, pool, "m")
        await drv.read(TS)
        server.inject(fault)
        with pytest.raises(TransientError):
            await drv.read(TS)
        for _ in range(20):  # after a closed connection the bus reconnects after a short backoff
            try:
                samples = await drv.read(TS)
                break
            except TransientError:
                import asyncio

                await asyncio.sleep(0.1)
        assert len(samples) == len(server.map.registers)


async def test_illegal_address_splits_then_marks_missing_values(sim_factory: SimFactory) -> None:
    text = """
device_class: meter
product: {brand: T, model: Hole, manual: test}
defaults: {type: holding, data_type: uint16}
registers:
  - {quantity: power_w, address: 0}
  - {quantity: voltage_l1_v, address: 1}
"""
    served = parse_map(text, source="t")
    # the device knows only address 0..1; the map we read with also asks for address 3
    asked = parse_map(text + "  - {quantity: frequency_hz, address: 3, scale: 0.01}\n", source="t2")
    server = await sim_factory(served, values=lambda: {"power_w": 7, "voltage_l1_v": 230})
    async with BusPool() as pool:
        bus = pool.bus(parse_connection(server.listen), timeout_s=0.4, options={})
        drv = ModbusDriver(device_id="m", register_map=asked, bus=bus, unit_id=1)
        for _ in range(2):
            samples = {s.quantity: s for s in await drv.read(TS)}
            assert samples["power_w"].value == 7
            assert samples["frequency_hz"].quality is Quality.INVALID
        assert drv.stats.unsupported == {"frequency_hz"}


async def test_wrong_map_for_every_register_is_permanent(sim_factory: SimFactory) -> None:
    server = await sim_factory("carlo-gavazzi-em24")
    wrong = load_map("huawei-sun2000")
    async with BusPool() as pool:
        bus = pool.bus(parse_connection(server.listen), timeout_s=0.4, options={})
        q = wrong.options.model_copy(update={"pause_after_connect_s": 0.0})
        drv = ModbusDriver(device_id="m", register_map=wrong, bus=bus, unit_id=1, quirks=q)
        with pytest.raises(PermanentError, match="illegal data address"):
            await drv.read(TS)


async def test_connection_refused_is_transient_with_backoff() -> None:
    from drivers.sim.server import free_tcp_port

    async with BusPool() as pool:
        bus = pool.bus(parse_connection(f"tcp://127.0.0.1:{free_tcp_port()}"), timeout_s=0.3, options={})
        drv = ModbusDriver(device_id="m", register_map=load_map("eastron-sdm630"), bus=bus, unit_id=1)
        with pytest.raises(TransientError, match="cannot connect"):
            await drv.read(TS)
        with pytest.raises(TransientError, match=r"cannot connect .* next attempt in"):
            await drv.read(TS)


async def test_many_units_share_one_bus(sim_factory: SimFactory, tmp_path: Path) -> None:
    server = await sim_factory("eastron-sdm630", unit_ids=(1, 2, 3))
    async with DriverServices() as services:
        drivers = []
        for unit in (1, 2, 3):
            cfg = ModbusDeviceConfig(id=f"m{unit}", connection=server.listen, unit_id=unit, map="eastron-sdm630")
            rmap = device_map(cfg, base_dir=tmp_path)
            drivers.append(create_driver(cfg, device_map=rmap, services=services))
            assert device_class_of(cfg, rmap) == "meter"
        assert len(services.pool.buses) == 1
        for d in drivers:
            assert len(await d.read(TS)) == 16


def test_factory_rejects_unknown_options_and_mqtt(tmp_path: Path) -> None:
    from drivers.config import MqttDeviceConfig

    cfg = ModbusDeviceConfig(id="m", connection="tcp://127.0.0.1:1502", map="eastron-sdm630", options={"colour": 1})
    with pytest.raises(PermanentError, match=r"options\.colour"):
        create_driver(cfg, device_map=device_map(cfg, base_dir=tmp_path), services=DriverServices())
    mq = MqttDeviceConfig(id="q", driver="mqtt", topic="tele/x/SENSOR", profile="tasmota-sml")
    with pytest.raises(PermanentError, match="MQTT devices need a broker"):
        create_driver(mq, device_map=None, services=DriverServices())
    bad = ModbusDeviceConfig(id="m", connection="tcp://127.0.0.1:1502", map="nosuch")
    with pytest.raises(PermanentError, match="no bundled map"):
        device_map(bad, base_dir=tmp_path)


async def test_counter_rollover_is_reported_not_hidden(sim_factory: SimFactory) -> None:
    served: dict[str, float | int | None] = {"energy_export_wh": 6_553_400}
    server = await sim_factory("victron-gx", values=lambda: served)
    async with BusPool() as pool:
        drv = driver_for(server, pool, "bat")
        first = {s.quantity: s for s in await drv.read(TS)}
        served["energy_export_wh"] = 6_553_700  # past the 16-bit register's 6553.6 kWh
        second = {s.quantity: s for s in await drv.read(TS)}
    assert first["energy_export_wh"].value == 6_553_400
    assert second["energy_export_wh"].value == 100  # the register wrapped, as the real one does
    assert second["energy_export_wh"].quality is Quality.GOOD
    assert drv.stats.counter_decreases == 0  # a declared modulus: downstream unwraps it

    served2: dict[str, float | int | None] = {"energy_export_wh": 42_949_672_900}
    server2 = await sim_factory("huawei-sun2000", values=lambda: served2)
    async with BusPool() as pool:
        drv2 = driver_for(server2, pool, "inv")
        await drv2.read(TS)
        served2["energy_export_wh"] = 42_949_673_000  # beyond uint32 x 10 Wh: wraps without a modulus
        wrapped = {s.quantity: s for s in await drv2.read(TS)}
    assert wrapped["energy_export_wh"].value == 40  # 4_294_967_300 - 2**32 = 4 (x 10 Wh)
    assert drv2.stats.counter_decreases == 1  # counted, so the operator sees it


async def test_quirks_unit_zero_address_offset_and_pauses(sim_factory: SimFactory) -> None:
    import time

    served = parse_map(
        """
device_class: meter
product: {brand: T, model: Quirky, manual: test}
defaults: {type: holding, data_type: uint16}
registers:
  - {quantity: power_w, address: 10}
  - {quantity: voltage_l1_v, address: 11, scale: 0.1}
""",
        source="served",
    )
    # The device answers only as unit 0 and its gateway numbers registers one higher than the manual.
    server = await sim_factory(served, values=lambda: {"power_w": 42, "voltage_l1_v": 230.0}, unit_ids=(0,))
    documented = parse_map(
        """
device_class: meter
product: {brand: T, model: Quirky, manual: test}
defaults: {type: holding, data_type: uint16}
options: {unit_id_zero: true, address_offset: 1, pause_after_connect_s: 0.3, inter_frame_delay_s: 0.1,
          one_request_per_field: true}
registers:
  - {quantity: power_w, address: 9}
  - {quantity: voltage_l1_v, address: 10, scale: 0.1}
""",
        source="documented",
    )
    async with BusPool() as pool:
        bus = pool.bus(parse_connection(server.listen), timeout_s=0.5, options=documented.options.model_dump())
        drv = ModbusDriver(device_id="q", register_map=documented, bus=bus, unit_id=5)
        t0 = time.monotonic()
        samples = {s.quantity: s.value for s in await drv.read(TS)}
        elapsed = time.monotonic() - t0
    assert samples == {"power_w": 42, "voltage_l1_v": 230.0}
    assert drv.unit_id == 0  # (pymodbus's unit 0 answers every id, so the server cannot prove it)
    assert bus.stats.requests == 2  # one request per field
    assert elapsed >= 0.3 + 0.1  # pause after connect, then the inter-frame delay before the 2nd request


async def test_rtu_over_tcp_gateway(sim_factory: SimFactory) -> None:
    server = await sim_factory("eastron-sdm630", scheme="rtu+tcp", values=lambda: {"power_w": 777.0})
    async with BusPool() as pool:
        drv = driver_for(server, pool, "m")
        samples = {s.quantity: s.value for s in await drv.read(TS)}
    assert samples["power_w"] == 777.0


async def test_poll_classes_fast_slow_static(sim_factory: SimFactory) -> None:
    m = parse_map(
        """
device_class: meter
product: {brand: T, model: Classes, manual: test}
defaults: {type: holding, data_type: uint16}
options: {slow_every: 2}
registers:
  - {quantity: power_w, address: 0}
  - {quantity: temperature_c, address: 1, poll: slow}
  - {quantity: status, address: 2, data_type: enum, poll: static}
""",
        source="classes",
    )
    server = await sim_factory(m, values=lambda: {"power_w": 1, "temperature_c": 20, "status": 3})
    async with BusPool() as pool:
        bus = pool.bus(parse_connection(server.listen), timeout_s=0.5, options={})
        drv = ModbusDriver(device_id="c", register_map=m, bus=bus, unit_id=1)
        seen = [sorted(s.quantity for s in await drv.read(TS)) for _ in range(4)]
    assert seen == [
        ["power_w", "status", "temperature_c"],
        ["power_w"],
        ["power_w", "temperature_c"],
        ["power_w"],
    ]
