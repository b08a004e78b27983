"""`gia scan` on a mixed site (issue #20, done-when 5): a Modbus meter, an OPC UA wind turbine and the
utility meter's P1 port, all simulated by the same code `gia sim` runs, scanned in ONE call; the one
config it prints passes `gia check-config` and names each device with its driver, map or variant.

Also the P1 scan's own rules: the variant told from the telegram (DSMR 4/5, Belgian e-MUCS, Nordic
HAN), a 7E1 line recognised from the parity bit, and a silent port reported, not waited on forever.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from drivers.maps import load_map
from drivers.opcua.nodemap import load_node_map
from drivers.opcua.sim import OpcuaSimServer
from drivers.p1.decode import P1Decoder
from drivers.p1.scan import P1ScanError, detect_variant, listen
from drivers.p1.sim import p1_sim, seal
from drivers.sim.generators import simulated_device
from drivers.sim.pushed import PushSim
from drivers.sim.server import free_tcp_port
from gateway.cli import build_app
from gateway.settings import load_settings
from tests.drivers.ports import pty_pair
from tests.drivers.test_p1 import DSMR5, HAN

pytestmark = [pytest.mark.modbus, pytest.mark.opcua, pytest.mark.serial]


async def test_one_scan_of_a_mixed_site_gives_one_config_check_config_accepts(tmp_path: Path) -> None:
    meter = simulated_device(
        load_map("carlo-gavazzi-em24"),
        listen=f"tcp://127.0.0.1:{free_tcp_port()}",
        unit_ids=(1,),
        now=lambda: datetime.now(UTC),
    )
    opcua_url = f"opc.tcp://127.0.0.1:{free_tcp_port()}"
    turbine = OpcuaSimServer(
        load_node_map("iec61400-25-wind-turbine"), listen=opcua_url, roots=("WTG01",), update_interval_s=0.5
    )
    await meter.start()
    await turbine.start()
    try:
        async with pty_pair() as pair:
            values = {"energy_import_wh": 4_200_000, "energy_export_wh": 1_000, "power_w": 1500.0}
            p1 = await p1_sim(pair.b, variant="dsmr5", values=lambda: values, period_s=0.2).start()
            try:
                args = ["scan", meter.listen, opcua_url, "--p1-port", f"serial://{pair.a}", "--units", "1"]
                result = await asyncio.to_thread(CliRunner().invoke, build_app(), [*args, "--timeout", "1"])
            finally:
                await p1.stop()
    finally:
        await turbine.stop()
        await meter.stop()
    assert result.exit_code == 0, result.output
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(result.stdout)
    check = CliRunner().invoke(build_app(), ["check-config", "--config", str(cfg)])
    assert check.exit_code == 0, check.output + result.stdout

    doc = yaml.safe_load(result.stdout)
    assert set(doc) == {"site", "data_dir", "devices", "http"}  # one site, one http: not three snippets
    devices = {d.driver: d for d in load_settings(cfg).devices}
    assert set(devices) == {"modbus", "opcua", "p1"}, result.stdout
    modbus, opcua, p1_dev = devices["modbus"], devices["opcua"], devices["p1"]
    assert (getattr(modbus, "map", None), getattr(modbus, "unit_id", None)) == ("carlo-gavazzi-em24", 1)
    assert (getattr(opcua, "map", None), getattr(opcua, "root", None)) == ("iec61400-25-wind-turbine", "WTG01")
    assert getattr(p1_dev, "variant", None) == "dsmr5"
    assert getattr(p1_dev, "connection", None) == f"serial://{pair.a}"
    roles = {d.driver: {(c.role, c.quantity) for c in d.channels} for d in devices.values()}
    assert roles["p1"] == {("grid_import", "energy_import_wh"), ("grid_export", "energy_export_wh")}
    assert roles["opcua"] == {("generation", "energy_export_wh")}
    assert roles["modbus"] == {("consumption", "energy_import_wh")}


def test_the_variant_is_told_from_the_telegram() -> None:
    dsmr4 = [("1-3:0.2.8(42)" if ln == "1-3:0.2.8(50)" else ln) for ln in DSMR5]
    belgian = [*DSMR5[:3], "0-0:96.1.4(50217)", *DSMR5[3:]]
    assert detect_variant(seal(DSMR5)) == "dsmr5"
    assert detect_variant(seal(dsmr4)) == "dsmr4"
    assert detect_variant(seal(belgian)) == "belgium"
    assert detect_variant(seal(HAN)) == "sweden"
    with pytest.raises(ValueError, match="DSMR version 30"):
        detect_variant(seal([("1-3:0.2.8(30)" if ln == "1-3:0.2.8(50)" else ln) for ln in DSMR5]))
    for lines, variant in ((dsmr4, "dsmr4"), (belgian, "belgium")):
        assert P1Decoder(variant)(seal(lines))["energy_import_wh"] == 5_555_665  # type: ignore[arg-type]


def _as_7e1(telegram: bytes) -> bytes:
    """What a port opened at 8N1 receives from a 7E1 meter: each character with its even parity in bit 7."""
    return bytes(b | (0x80 if bin(b).count("1") % 2 else 0) for b in telegram)


@pytest.mark.parametrize(
    ("lines", "variant", "options"),
    [
        ([("1-3:0.2.8(42)" if ln == "1-3:0.2.8(50)" else ln) for ln in DSMR5], "dsmr4", ""),  # 7E1 is its default
        (DSMR5, "dsmr5", "?parity=E&bytesize=7"),  # a DSMR 5 meter on a 7E1 line: the config must say so
    ],
)
async def test_a_7e1_line_is_read_and_named(lines: list[str], variant: str, options: str) -> None:
    telegram = _as_7e1(seal(lines))
    assert any(b & 0x80 for b in telegram)
    async with pty_pair() as pair:
        sim = await PushSim(pair.b, frame=lambda: telegram, corrupt=lambda t: t, period_s=0.2).start()
        try:
            found = await listen(f"serial://{pair.a}", timeout_s=10)
        finally:
            await sim.stop()
    assert (found.variant, found.seven_bit, found.connection) == (variant, True, f"serial://{pair.a}{options}")
    assert found.header == "KFM5KAIFA-METER" and found.serial == "E0026000024494315"


async def test_a_silent_port_is_reported_within_the_timeout() -> None:
    async with pty_pair() as pair:
        with pytest.raises(P1ScanError, match="no byte arrived"):
            await listen(f"serial://{pair.a}", timeout_s=0.5)
        args = ["scan", "--p1-port", f"serial://{pair.a}", "--p1-timeout", "0.5"]
        result = await asyncio.to_thread(CliRunner().invoke, build_app(), args)
    assert result.exit_code == 1 and "no P1 telegram within 0.5 s" in result.output, result.output
    bad = CliRunner().invoke(build_app(), ["scan", "--p1-port", "serial://", "--p1-variant", "dsmr5"])
    assert bad.exit_code == 2 and "--p1-port" in bad.output
    variant = CliRunner().invoke(build_app(), ["scan", "--p1-port", "serial:///dev/null", "--p1-variant", "dsmr9"])
    assert variant.exit_code == 2 and "--p1-variant must be one of" in variant.output
    twice = CliRunner().invoke(build_app(), ["scan", "tcp://127.0.0.1:1", "tcp://127.0.0.1:1"])
    assert twice.exit_code == 2 and "given twice" in twice.output


async def test_a_source_that_fails_is_named_and_the_others_still_proposed() -> None:
    refused = f"tcp://127.0.0.1:{free_tcp_port()}"  # nothing listens there
    async with pty_pair() as pair:
        values = {"energy_import_wh": 12_000, "energy_export_wh": 0, "power_w": 0.0}
        sim = await p1_sim(pair.b, variant="sweden", values=lambda: values, period_s=0.2).start()
        try:
            args = ["scan", refused, "--p1-port", f"serial://{pair.a}", "--units", "1", "--timeout", "0.5"]
            result = await asyncio.to_thread(CliRunner().invoke, build_app(), args)
        finally:
            await sim.stop()
    assert result.exit_code == 1, result.output
    assert f"error: {refused}: cannot connect" in result.output
    assert f"# {refused}: NOT SCANNED: cannot connect" in result.stdout
    (device,) = yaml.safe_load(result.stdout)["devices"]
    assert (device["driver"], device["variant"]) == ("p1", "sweden")
