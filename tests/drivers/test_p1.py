"""P1/HAN: DSMR 5 and Swedish/Finnish HAN telegrams decode to hand-computed quantities; CRC errors and
truncated telegrams are counted, never stored; the driver over a real pty pair; offline and back."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import TransientError
from drivers.config import DEVICE_MODELS
from drivers.links import parse_link
from drivers.model import Quality
from drivers.p1.config import P1DeviceConfig, link_of
from drivers.p1.decode import P1Decoder
from drivers.p1.driver import P1Driver, p1_framer
from drivers.p1.sim import crc16_arc, dsmr5_telegram, p1_sim, seal
from drivers.pushed import ChecksumError, DecodeError, Truncated
from tests.drivers.ports import polled, pty_pair, wait_until

TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Own content in the DSMR 5.0.2 P1 Companion Standard layout (§6.12), CRC computed by seal().
DSMR5 = [
    "/KFM5KAIFA-METER",
    "",
    "1-3:0.2.8(50)",
    "0-0:1.0.0(250301120000W)",
    "0-0:96.1.1(4530303236303030303234343934333135)",
    "1-0:1.8.1(004321.098*kWh)",
    "1-0:1.8.2(001234.567*kWh)",
    "1-0:2.8.1(000100.001*kWh)",
    "1-0:2.8.2(000050.500*kWh)",
    "0-0:96.14.0(0001)",
    "1-0:1.7.0(00.000*kW)",
    "1-0:2.7.0(02.345*kW)",
    "0-0:96.7.21(00004)",
    "0-0:96.7.9(00002)",
    "1-0:99.97.0(0)(0-0:96.7.19)",
    "1-0:32.32.0(00000)",
    "1-0:32.36.0(00000)",
    "0-0:96.13.0()",
    "1-0:32.7.0(229.0*V)",
    "1-0:52.7.0(230.5*V)",
    "1-0:72.7.0(231.1*V)",
    "1-0:31.7.0(004*A)",
    "1-0:51.7.0(003*A)",
    "1-0:71.7.0(003*A)",
    "1-0:21.7.0(00.000*kW)",
    "1-0:41.7.0(00.120*kW)",
    "1-0:61.7.0(00.000*kW)",
    "1-0:22.7.0(00.955*kW)",
    "1-0:42.7.0(00.000*kW)",
    "1-0:62.7.0(01.510*kW)",
    "0-1:24.1.0(003)",
    "0-1:96.1.0(4730303339303031363532303530323136)",
    "0-1:24.2.1(250301115500W)(00872.234*m3)",
]
DSMR5_EXPECTED = {
    "energy_import_wh": 4_321_098 + 1_234_567,  # tariff 1 + tariff 2, kWh x 1000
    "energy_export_wh": 100_001 + 50_500,
    "power_w": 0.0 - 2345.0,  # 1.7.0 - 2.7.0: exporting 2.345 kW
    "power_l1_w": 0.0 - 955.0,
    "power_l2_w": 120.0 - 0.0,
    "power_l3_w": 0.0 - 1510.0,
    "voltage_l1_v": 229.0,
    "voltage_l2_v": 230.5,
    "voltage_l3_v": 231.1,
    "current_l1_a": 4.0,
    "current_l2_a": 3.0,
    "current_l3_a": 3.0,
}

# Own content in the layout of Energiföretagen's "lokalt kundgränssnitt" v2.0 (§5), also SESKO SK 13-1.
HAN = [
    "/ELL5\\253833635_A",
    "",
    "0-0:1.0.0(250301120000W)",
    "1-0:1.8.0(00012345.678*kWh)",
    "1-0:2.8.0(00000321.009*kWh)",
    "1-0:3.8.0(00000021.000*kvarh)",
    "1-0:4.8.0(00001020.500*kvarh)",
    "1-0:1.7.0(0003.210*kW)",
    "1-0:2.7.0(0000.000*kW)",
    "1-0:3.7.0(0000.000*kvar)",
    "1-0:4.7.0(0000.310*kvar)",
    "1-0:21.7.0(0001.100*kW)",
    "1-0:41.7.0(0000.900*kW)",
    "1-0:61.7.0(0001.210*kW)",
    "1-0:22.7.0(0000.000*kW)",
    "1-0:42.7.0(0000.000*kW)",
    "1-0:62.7.0(0000.000*kW)",
    "1-0:23.7.0(0000.000*kvar)",
    "1-0:24.7.0(0000.100*kvar)",
    "1-0:32.7.0(232.1*V)",
    "1-0:52.7.0(231.4*V)",
    "1-0:72.7.0(233.0*V)",
    "1-0:31.7.0(004.8*A)",
    "1-0:51.7.0(003.9*A)",
    "1-0:71.7.0(005.2*A)",
]
HAN_EXPECTED = {
    "energy_import_wh": 12_345_678,
    "energy_export_wh": 321_009,
    "power_w": 3210.0,
    "power_l1_w": 1100.0,
    "power_l2_w": 900.0,
    "power_l3_w": 1210.0,
    "voltage_l1_v": 232.1,
    "voltage_l2_v": 231.4,
    "voltage_l3_v": 233.0,
    "current_l1_a": 4.8,
    "current_l2_a": 3.9,
    "current_l3_a": 5.2,
}


def test_crc16_matches_the_standard_check_value() -> None:
    # CRC-16/ARC check value over "123456789" (the catalogue's published check): 0xBB3D.
    assert crc16_arc(b"123456789") == 0xBB3D


def test_dsmr5_telegram_decodes_to_hand_computed_quantities() -> None:
    assert dict(P1Decoder("dsmr5")(seal(DSMR5))) == DSMR5_EXPECTED


@pytest.mark.parametrize("variant", ["sweden", "finland"])
def test_swedish_and_finnish_han_telegrams_decode_to_hand_computed_quantities(variant: str) -> None:
    assert dict(P1Decoder(variant)(seal(HAN))) == HAN_EXPECTED  # type: ignore[arg-type]


def test_belgian_and_dsmr4_variants_read_the_tariff_registers() -> None:
    for variant in ("belgium", "dsmr4"):
        out = P1Decoder(variant)(seal(DSMR5))  # type: ignore[arg-type]
        assert out["energy_import_wh"] == DSMR5_EXPECTED["energy_import_wh"]
        assert out["power_w"] == -2345.0


def test_a_unit_the_standard_does_not_name_is_invalid_not_scaled() -> None:
    lines = [ln.replace("1-0:1.8.2(001234.567*kWh)", "1-0:1.8.2(001234.567*MWh)") for ln in DSMR5]
    out = P1Decoder("dsmr5")(seal(lines))
    assert out["energy_import_wh"] is None
    assert out["energy_export_wh"] == 150_501


def test_a_bad_crc_is_a_checksum_error() -> None:
    telegram = seal(DSMR5).replace(b"004321.098", b"004321.099")
    with pytest.raises(ChecksumError):
        P1Decoder("dsmr5")(telegram)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_no_single_byte_change_decodes(data: st.DataObject) -> None:
    """CRC16 catches every single-byte change: a mutated telegram never yields numbers."""
    telegram = seal(DSMR5)
    i = data.draw(st.integers(1, len(telegram) - 8))  # the body between '/' and '!'
    b = data.draw(st.integers(0, 255).filter(lambda b: b != telegram[i]))
    with pytest.raises(DecodeError):
        P1Decoder("dsmr5")(telegram[:i] + bytes([b]) + telegram[i + 1 :])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40))
def test_framing_does_not_depend_on_how_the_bytes_arrive(cuts: list[int]) -> None:
    stream = b"tail of a telegram!1234\r\n" + seal(DSMR5) + seal(HAN) + seal(DSMR5)
    framer, frames, pos = p1_framer(), [], 0
    for n in cuts * 50:
        if pos >= len(stream):
            break
        frames += framer.feed(stream[pos : pos + n])
        pos += n
    frames += framer.feed(stream[pos:])
    assert frames == [seal(DSMR5), seal(HAN), seal(DSMR5)]


def test_truncations_are_noticed() -> None:
    framer = p1_framer()
    good = seal(DSMR5)
    out = framer.feed(good + good[:300] + good + good[-200:] + good[:100])
    assert [type(x) for x in out] == [bytes, Truncated, bytes, Truncated]  # cut tail; headless end
    assert isinstance(framer.flush(), Truncated)  # the line went quiet mid-telegram


def test_config_defaults_and_errors() -> None:
    assert DEVICE_MODELS["p1"] is P1DeviceConfig
    cfg = P1DeviceConfig(id="grid", driver="p1", connection="serial:///dev/ttyUSB0", variant="dsmr4")
    assert (link_of(cfg.connection, cfg.variant).bytesize, link_of(cfg.connection, cfg.variant).parity) == (7, "E")
    assert parse_link("serial:///dev/ttyUSB0").baud == 115200
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        P1DeviceConfig(id="grid", driver="p1", connection="tcp://10.0.0.5")


@pytest.mark.serial
async def test_driver_over_a_pty_stores_only_checked_telegrams() -> None:
    values = {"energy_import_wh": 5_000_000, "energy_export_wh": 1000, "power_w": 1500.0, "power_l1_w": 1500.0}
    async with pty_pair() as pair:
        sim = await p1_sim(pair.b, variant="dsmr5", values=lambda: values, period_s=0.05).start()
        try:
            link = parse_link(f"serial://{pair.a}?baud=115200")
            async with P1Driver(device_id="grid", link=link, variant="dsmr5", poll_interval_s=1.0) as drv:
                await wait_until(lambda: drv.stats.good >= 2, 5, "two good telegrams")
                sim.inject("crc", 2)
                sim.inject("truncate", 2)
                await wait_until(lambda: drv.stats.good >= 6 and sim.stats.truncated == 2, 5, "faults sent")
                samples = {s.quantity: s for s in await drv.read(TS)}
        finally:
            await sim.stop()
    assert drv.stats.crc_errors == 2
    assert drv.stats.truncated == 2  # each cut telegram was followed by a new start
    assert samples["energy_import_wh"].value == 5_000_000  # never the corrupted digit
    assert samples["power_w"].value == 1500.0
    assert all(s.quality is Quality.GOOD for s in samples.values())


@pytest.mark.serial
async def test_a_meter_that_stops_talking_goes_offline_once_and_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.devices.poller")
    values = {"energy_import_wh": 1_000, "power_w": 10.0}
    async with pty_pair() as pair:
        sim = await p1_sim(pair.b, variant="sweden", values=lambda: values, period_s=0.05).start()
        link = parse_link(f"serial://{pair.a}")

        def factory() -> P1Driver:
            return P1Driver(device_id="dev", link=link, variant="sweden", poll_interval_s=0.2, stale_after_intervals=5)

        try:
            async with polled(factory) as p:
                await wait_until(lambda: p.online is True, 5, "online")
                sim.pause()
                await wait_until(lambda: p.online is False, 5, "offline after the stale window")
                stored_while_down = len(p.stored)
                await asyncio.sleep(0.5)
                assert len(p.stored) == stored_while_down  # nothing stored while the meter is silent
                sim.resume()
                await wait_until(lambda: p.online is True, 10, "back online")
        finally:
            await sim.stop()
    assert {s.value for s in p.stored if s.quantity == "energy_import_wh"} == {1_000}
    assert caplog.text.count("device dev is offline") == 1
    assert caplog.text.count("device dev is online") == 2


@pytest.mark.serial
async def test_a_meter_that_talks_late_after_a_start_is_never_called_offline(caplog: pytest.LogCaptureFixture) -> None:
    """The first telegram may come several polls after the port opens (DSMR 4 talks every 10 s): within the
    stale window that is warming up, not an outage. (Before: 'device dev is offline' at every start.)"""
    caplog.set_level(logging.INFO, logger="gateway.devices.poller")
    values = {"energy_import_wh": 1_000, "power_w": 10.0}
    async with pty_pair() as pair:
        link = parse_link(f"serial://{pair.a}")

        def factory() -> P1Driver:
            return P1Driver(device_id="dev", link=link, variant="sweden", poll_interval_s=0.2, stale_after_intervals=10)

        sim = None
        try:
            async with polled(factory) as p:
                await asyncio.sleep(0.7)  # three polls, and not a telegram yet
                assert p.online is None, "not offline while warming up"
                sim = await p1_sim(pair.b, variant="sweden", values=lambda: values, period_s=0.05).start()
                await wait_until(lambda: p.online is True, 10, "online")
        finally:
            if sim is not None:
                await sim.stop()
    assert "device dev is offline" not in caplog.text


@pytest.mark.serial
async def test_a_port_that_cannot_be_opened_is_a_transient_error() -> None:
    drv = P1Driver(device_id="x", link=parse_link("serial:///dev/does-not-exist"), variant="dsmr5", poll_interval_s=1)
    with pytest.raises(TransientError, match="cannot open serial port"):
        await drv.__aenter__()


def test_dsmr5_sim_telegram_round_trips() -> None:
    v = {"energy_import_wh": 123_457, "energy_export_wh": 3, "power_w": -700.0, "voltage_l2_v": 229.9}
    out = P1Decoder("dsmr5")(dsmr5_telegram(v))
    assert out["energy_import_wh"] == 123_457 and out["energy_export_wh"] == 3
    assert out["power_w"] == -700.0 and out["voltage_l2_v"] == 229.9
