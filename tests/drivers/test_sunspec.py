"""SunSpec discovery and reading, cross-checked against pysunspec2 (an independent implementation).

The device image is built with pysunspec2's own model encoder, served by a real pymodbus server, then
read twice: by pysunspec2's socket client and by GIA's discovery + generic driver.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from drivers.base import PermanentError
from drivers.config import parse_connection
from drivers.modbus.bus import BusPool
from drivers.modbus.sunspec import SunSpecDriver, decode_model, discover, load_models, read_model
from drivers.model import Quality
from drivers.sim.server import SimServer, free_tcp_port

sunspec2_device = pytest.importorskip("sunspec2.device")
sunspec2_client = pytest.importorskip("sunspec2.modbus.client")

pytestmark = pytest.mark.modbus
TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

MODELS: list[dict[str, Any]] = [
    {"ID": 1, "L": 66, "Mn": "GIA Test", "Md": "SimInverter 100", "Vr": "1.2.3", "SN": "SN0042", "DA": 1},
    {
        "ID": 103,
        "L": 50,
        "A": 1452,
        "AphA": 484,
        "AphB": 483,
        "AphC": 485,
        "A_SF": -1,
        "PhVphA": 2301,
        "PhVphB": 2299,
        "PhVphC": 2310,
        "V_SF": -1,
        "W": 9876,
        "W_SF": 1,
        "Hz": 5002,
        "Hz_SF": -2,
        "VA": 9900,
        "VA_SF": 1,
        "VAr": -120,
        "VAr_SF": 1,
        "PF": 9950,
        "PF_SF": -2,
        "WH": 1234567,
        "WH_SF": 2,
        "DCW": 10100,
        "DCW_SF": 1,
        "TmpCab": 412,
        "Tmp_SF": -1,
        "St": 4,
    },
    {"ID": 120, "L": 26, "DERTyp": 4, "WRtg": 1000, "WRtg_SF": 2},
    {"ID": 122, "L": 44, "PVConn": 7, "ActWh": 123456789, "WAval": 950, "WAval_SF": 2, "TmSrc": "RTC"},
    {"ID": 124, "L": 24, "WChaMax": 1000, "WChaMax_SF": 2, "ChaState": 655, "ChaState_SF": -1, "ChaSt": 3},
    {
        "ID": 160,
        "L": 48,
        "DCA_SF": -2,
        "DCV_SF": -1,
        "DCW_SF": 1,
        "DCWH_SF": 0,
        "N": 2,
        "module": [
            {"ID": 1, "IDStr": "string A", "DCW": 5000, "DCV": 6500, "DCA": 770},
            {"ID": 2, "IDStr": "string B", "DCW": 5100, "DCV": 6480, "DCA": 790},
        ],
    },
    {
        "ID": 203,
        "L": 105,
        "W": -4200,
        "WphA": -1400,
        "WphB": -1400,
        "WphC": -1400,
        "W_SF": 0,
        "Hz": 4999,
        "Hz_SF": -2,
        "PF": -9800,
        "PF_SF": -2,
        "TotWhImp": 98765,
        "TotWhExp": 43210,
        "TotWh_SF": 1,
    },
    {"ID": 802, "L": 62, "SoC": 655, "SoC_SF": -1, "W": 2500, "W_SF": 0, "AHRtg": 400, "AHRtg_SF": 0},
]


def sunspec_image(models: list[dict[str, Any]], base: int = 40000) -> dict[int, int]:
    """Registers of a SunSpec device: 'SunS', each model as pysunspec2 encodes it, the end model."""
    words = [0x5375, 0x6E53]
    for data in models:
        raw = sunspec2_device.Model(model_id=data["ID"], data=data).get_mb()
        words += [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    words += [0xFFFF, 0]
    return {base + i: w for i, w in enumerate(words)}


@pytest.fixture
async def sunspec_server() -> Any:
    server = SimServer(
        None, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(1,), static={"holding": sunspec_image(MODELS)}
    )
    await server.start()
    yield server
    await server.stop()


def pysunspec2_scan(port: int) -> dict[int, dict[str, Any]]:
    dev = sunspec2_client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        dev.scan()
        out: dict[int, dict[str, Any]] = {}
        for mid, insts in dev.models.items():
            if not isinstance(mid, int):
                continue
            m = insts[0]
            values = {name: p.cvalue for name, p in m.points.items()}
            for gname, groups in m.groups.items():
                values[gname] = [{n: p.cvalue for n, p in g.points.items()} for g in groups]
            out[mid] = values
        return out
    finally:
        dev.close()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


async def test_discovery_matches_pysunspec2(sunspec_server: SimServer) -> None:
    port = int(sunspec_server.listen.rsplit(":", 1)[1])
    theirs = await asyncio.to_thread(pysunspec2_scan, port)
    async with BusPool() as pool:
        bus = pool.bus(parse_connection(sunspec_server.listen), timeout_s=1.0, options={})
        device = await discover(bus, 1)
        assert device.base == 40000
        assert [m.id for m in device.models] == [1, 103, 120, 122, 124, 160, 203, 802]
        assert device.common["Mn"] == "GIA Test" and device.common["SN"] == "SN0042"
        assert device.register_map.device_class == "inverter"
        compared = 0
        for found in device.models:
            assert found.definition is not None
            ours = decode_model(found.definition, await read_model(bus, 1, found))
            for name, value in ours.items():
                if name in ("ID", "L"):
                    continue
                if isinstance(value, list):  # repeating group
                    assert len(value) == len(theirs[found.id][name])
                    for mine, other in zip(value, theirs[found.id][name], strict=True):
                        for k, v in mine.items():
                            assert same(v, other[k]), (found.id, name, k, v, other[k])
                            compared += 1
                    continue
                assert same(value, theirs[found.id][name]), (found.id, name, value, theirs[found.id][name])
                compared += 1
        assert compared > 150  # every point of every model, both implementations agree
    assert theirs[160]["module"][1]["DCW"] == 51000


async def test_sunspec_driver_reads_canonical_quantities(sunspec_server: SimServer) -> None:
    async with BusPool() as pool:
        bus = pool.bus(parse_connection(sunspec_server.listen), timeout_s=1.0, options={})
        drv = SunSpecDriver(device_id="inv", bus=bus, unit_id=1)
        samples = {s.quantity: s for s in await drv.read(TS)}
        requests_first = bus.stats.requests
        await drv.read(TS)
        per_poll = bus.stats.requests - requests_first
    assert samples["power_w"].value == pytest.approx(98760.0)
    assert samples["frequency_hz"].value == pytest.approx(50.02)
    assert samples["power_factor"].value == pytest.approx(0.995)
    assert samples["energy_export_wh"].value == 123456700
    assert samples["voltage_l1_v"].value == pytest.approx(230.1)
    assert samples["dc_power_w"].value == pytest.approx(101000.0)
    assert samples["temperature_c"].value == pytest.approx(41.2)
    assert samples["status"].value == 4
    # the meter model (203) provides what the inverter model does not: energy import
    assert samples["energy_import_wh"].value == 987650
    assert samples["soc_pct"].value == pytest.approx(65.5)
    # a point the image leaves unset (0xFFFF / 0x8000) is invalid, not a number
    assert samples["reactive_power_var"].value == pytest.approx(-1200.0)
    assert all(s.quality is Quality.GOOD for q, s in samples.items() if q != "current_l1_a")
    assert per_poll <= 4  # one merged read per model block, scale factors inside


async def test_not_sunspec_is_a_permanent_error() -> None:
    server = SimServer(None, listen=f"tcp://127.0.0.1:{free_tcp_port()}", static={"holding": {0: 1, 1: 2}})
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(server.listen), timeout_s=0.5, options={})
            with pytest.raises(PermanentError, match="no SunSpec marker"):
                await SunSpecDriver(device_id="x", bus=bus, unit_id=1).read(TS)
    finally:
        await server.stop()


def test_bundled_models_cover_the_required_list() -> None:
    models = load_models()
    for mid in (1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 160, 201, 202, 203, 204, 802):
        assert mid in models
    assert models[160].group is not None and models[160].group.size == 20
