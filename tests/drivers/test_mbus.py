"""M-Bus: hand-made answers decode (through pyMeterBus) to hand-computed quantities; checksum errors,
truncated and missing answers are counted and fail that read only; meters on one line share it, over
a real pty pair and over a TCP gateway; a meter that goes silent goes offline and comes back."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from drivers.base import PermanentError, TransientError
from drivers.mbus.bus import MbusPool
from drivers.mbus.config import MbusDeviceConfig, link_of
from drivers.mbus.decode import load_meterbus, parse_answer, quantities
from drivers.mbus.driver import MbusDriver
from drivers.mbus.frames import req_ud2, snd_nke
from drivers.mbus.sim import MbusSim, SimMeter, rsp_ud
from drivers.model import Quality
from drivers.services import DriverServices, create_port_driver
from tests.drivers.ports import polled, pty_pair, wait_until
from tests.servers import free_port

TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

ELECTRICITY = bytes.fromhex(
    "0403 15cd5b07"  # DIF 04 (int32) VIF 03 (Wh): 0x075BCD15 = 123 456 789 Wh
    "844003 e8030000"  # DIF 84 DIFE 40 (subunit 1) VIF 03: 1000 Wh exported
    "042b 18fcffff"  # DIF 04 VIF 2B (W): 0xFFFFFC18 = -1000 W
)
HEAT = bytes.fromhex(
    "0c06 78563412"  # DIF 0C (8-digit BCD) VIF 06 (kWh): 12 345 678 kWh
    "0413 39300000"  # volume, litres (not mapped)
    "042b 10270000"  # 10 000 W thermal power
    "0259 e81c"  # flow temperature, 0.01 degC: 0x1CE8 = 7400 -> 74.00
    "025d 3412"  # return temperature: 0x1234 = 4660 -> 46.60
)
HEAT_IN_JOULES = bytes.fromhex("040e e8030000")  # VIF 0E: 10^6 J units; 1000 -> 1e9 J = 277 777.8 Wh


def test_short_frames_carry_their_checksum() -> None:
    assert snd_nke(5) == bytes.fromhex("1040054516")
    assert req_ud2(5, fcb=False) == bytes.fromhex("105b056016")
    assert req_ud2(5, fcb=True) == bytes.fromhex("107b058016")


def test_electricity_answer_decodes_to_hand_computed_quantities() -> None:
    answer = parse_answer(rsp_ud(5, serial=12345678, medium=0x02, records=ELECTRICITY))
    assert (answer.medium, answer.serial, answer.manufacturer) == (0x02, "12345678", "GIA")
    assert quantities(answer, records={}) == {
        "energy_import_wh": 123_456_789,
        "energy_export_wh": 1_000,
        "power_w": -1000.0,
    }


def test_heat_answer_decodes_to_hand_computed_quantities() -> None:
    answer = parse_answer(rsp_ud(6, serial=87654321, medium=0x04, records=HEAT))
    assert quantities(answer, records={}) == {
        "heat_energy_wh": 12_345_678_000,
        "heat_power_w": 10_000.0,
        "flow_temperature_c": 74.0,
        "return_temperature_c": 46.6,
    }
    joules = parse_answer(rsp_ud(6, serial=1, medium=0x04, records=HEAT_IN_JOULES))
    assert quantities(joules, records={})["heat_energy_wh"] == 277_778  # 1e9 J / 3600, half-even


def test_configured_records_override_and_a_missing_record_is_invalid() -> None:
    answer = parse_answer(rsp_ud(6, serial=1, medium=0x07, records=HEAT))  # water: no default mapping
    assert quantities(answer, records={}) == {}
    assert quantities(answer, records={"heat_energy_wh": 0, "power_w": 9, "temperature_c": 3}) == {
        "heat_energy_wh": 12_345_678_000,
        "power_w": None,  # the meter sent 5 records
        "temperature_c": 74.0,
    }
    assert quantities(answer, records={"energy_import_wh": 3}) == {"energy_import_wh": None}  # degC is no Wh


def test_a_bad_checksum_is_refused() -> None:
    frame = bytearray(rsp_ud(5, serial=1, medium=0x02, records=ELECTRICITY))
    frame[-2] ^= 0xFF
    from drivers.mbus.decode import MbusChecksumError

    with pytest.raises(MbusChecksumError):
        parse_answer(bytes(frame))


def test_importing_pymeterbus_leaves_the_root_logger_alone() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    load_meterbus()
    assert (list(root.handlers), root.level) == before


def test_config_errors_name_the_field_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"records\.energy_wh: unknown quantity"):
        MbusDeviceConfig(id="h", driver="mbus", connection="tcp://127.0.0.1:10001", address=1,
                         records={"energy_wh": 0})  # fmt: skip
    assert link_of("serial:///dev/ttyUSB0").baud == 2400 and link_of("serial:///dev/ttyUSB0").parity == "E"
    cfg = MbusDeviceConfig(id="h", driver="mbus", connection="tcp://127.0.0.1:10001", address=1)
    with pytest.raises(PermanentError, match="shared services"):
        create_port_driver(cfg, None)


def _meters() -> MbusSim:
    return MbusSim(
        [
            SimMeter(5, 12345678, "electricity", lambda: {"energy_import_wh": 4_200_000, "power_w": 750.0}),
            SimMeter(6, 87654321, "heat", lambda: {"heat_energy_wh": 9_000_000, "flow_temperature_c": 70.5}),
        ]
    )


@pytest.mark.serial
async def test_two_meters_share_one_serial_line_and_faults_fail_one_read_each() -> None:
    async with pty_pair() as pair:
        sim = await _meters().serve_pty(pair.b)
        try:
            async with DriverServices() as services:
                url = f"serial://{pair.a}?baud=2400&parity=E"
                elec = create_port_driver(
                    MbusDeviceConfig(id="e", driver="mbus", connection=url, address=5, timeout_s=0.5), services
                )
                heat = create_port_driver(
                    MbusDeviceConfig(
                        id="h", driver="mbus", connection=url, address=6, timeout_s=0.5, serial="87654321"
                    ),
                    services,
                )
                assert isinstance(elec, MbusDriver) and isinstance(heat, MbusDriver)
                assert elec.line is heat.line
                e = {s.quantity: s for s in await elec.read(TS)}
                h = {s.quantity: s for s in await heat.read(TS)}
                assert e["energy_import_wh"].value == 4_200_000 and e["power_w"].value == 750.0
                assert h["heat_energy_wh"].value == 9_000_000 and h["flow_temperature_c"].value == 70.5
                assert all(s.quality is Quality.GOOD for s in [*e.values(), *h.values()])
                for fault in ("crc", "truncate", "silent"):
                    sim.inject(fault)  # type: ignore[arg-type]
                    with pytest.raises(TransientError):
                        await elec.read(TS)
                    assert (await heat.read(TS))[0].quality is Quality.GOOD  # the neighbour is unaffected
                stats = elec.line.stats
                assert (elec.stats.crc_errors, stats.truncated, stats.no_answer) == (1, 1, 1)
                assert (await elec.read(TS))[0].value == 4_200_000
        finally:
            await sim.stop()


async def test_a_meter_behind_a_tcp_gateway() -> None:
    port = free_port()
    sim = await _meters().serve_tcp("127.0.0.1", port)
    try:
        async with MbusPool() as pool:
            cfg = MbusDeviceConfig(id="e", driver="mbus", connection=f"tcp://127.0.0.1:{port}", address=5)
            drv = MbusDriver.from_config(cfg, pool)
            assert {s.quantity: s.value for s in await drv.read(TS)}["energy_import_wh"] == 4_200_000
            wrong = MbusDriver(device_id="w", line=drv.line, address=6, serial="11111111")
            with pytest.raises(TransientError, match="answered as meter 87654321"):
                await wrong.read(TS)
    finally:
        await sim.stop()


@pytest.mark.serial
async def test_a_silent_meter_goes_offline_once_and_comes_back() -> None:
    async with pty_pair() as pair:
        sim = await _meters().serve_pty(pair.b)
        try:
            async with DriverServices() as services:
                cfg = MbusDeviceConfig(id="dev", driver="mbus", connection=f"serial://{pair.a}", address=5,
                                       timeout_s=0.2, poll_interval_s=0.2)  # fmt: skip

                def factory() -> MbusDriver:
                    drv = create_port_driver(cfg, services)
                    assert isinstance(drv, MbusDriver)
                    return drv

                async with polled(factory, interval_s=0.3, timeout_s=1.0) as p:
                    await wait_until(lambda: p.online is True, 5, "online")
                    sim.pause()
                    await wait_until(lambda: p.online is False, 5, "offline")
                    sim.resume()
                    await wait_until(lambda: p.online is True, 10, "back online")
        finally:
            await sim.stop()
    assert {s.value for s in p.stored if s.quantity == "energy_import_wh"} == {4_200_000}
    assert p.live.devices["dev"].errors >= 1


def test_an_answer_ending_in_dif_1f_says_more_records_follow() -> None:
    """EN 13757-3: DIF 1F closes an answer that is not the meter's last. It is no record of its own,
    and the next answer's records are numbered on after this one's."""
    first = parse_answer(rsp_ud(6, serial=1, medium=0x04, records=HEAT[:12] + b"\x1f"))
    assert first.more and [r.type for r in first.records] == ["ENERGY_WH", "VOLUME"]
    last = parse_answer(rsp_ud(6, serial=1, medium=0x04, records=HEAT[12:]))
    assert not last.more
    both = first.then(last)
    assert [r.index for r in both.records] == [0, 1, 2, 3, 4] and not both.more
    assert quantities(both, records={"return_temperature_c": 4}) == quantities(
        parse_answer(rsp_ud(6, serial=1, medium=0x04, records=HEAT)), records={"return_temperature_c": 4}
    )


@pytest.mark.serial
async def test_a_multi_telegram_meter_is_read_whole_and_a_lost_answer_never_shifts_its_records() -> None:
    """A heat meter spreading its 5 records over 3 answers, over a real pty pair: one read asks three
    times (FCB toggled), record 4 is in the third answer. When the second answer is lost, the read fails;
    without a link reset the meter would answer the next read with that second answer again and every
    record index would shift (a wrong number for a configured record). The next read starts over."""
    values = {"heat_energy_wh": 9_000_000, "heat_power_w": 12_500.0, "flow_temperature_c": 70.5}
    values |= {"return_temperature_c": 41.25}
    meter = SimMeter(6, 87654321, "heat", lambda: values, telegrams=3)
    async with pty_pair() as pair:
        sim = await MbusSim([meter]).serve_pty(pair.b)
        try:
            async with MbusPool() as pool:
                cfg = MbusDeviceConfig(
                    id="h",
                    driver="mbus",
                    connection=f"serial://{pair.a}?baud=2400&parity=E",
                    address=6,
                    timeout_s=0.5,
                    records={"temperature_c": 4},
                )
                drv = MbusDriver.from_config(cfg, pool)
                expected = {**values, "temperature_c": 41.25}
                got = {s.quantity: s.value for s in await drv.read(TS)}
                assert got == expected
                assert (drv.stats.telegrams, sim.stats.answers, drv.multi_telegram) == (3, 3, True)
                sim.inject("silent", after=1)  # the read's second answer
                before = sim.stats.requests
                with pytest.raises(TransientError, match="no answer"):
                    await drv.read(TS)
                asked = sim.stats.requests - before
                for _ in range(2):
                    assert {s.quantity: s.value for s in await drv.read(TS)} == expected
                assert asked == 3  # link reset, first answer, the lost second
        finally:
            await sim.stop()
