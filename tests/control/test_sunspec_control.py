"""SunSpec storage controls (model 124) as a battery setpoint: discovered, written and read back over Modbus
TCP against an image encoded by pysunspec2 (the independent SunSpec implementation)."""

from __future__ import annotations

import pytest
import sunspec2.mdef  # noqa: F401  (pysunspec2: the image is its encoding, not ours)

from drivers.base import OutOfRange
from drivers.config import parse_connection
from drivers.modbus.bus import BusPool
from drivers.modbus.sunspec import discover
from drivers.modbus.write import ModbusBattery, ModbusWriter
from drivers.sim.server import SimServer, free_tcp_port
from tests.drivers.test_sunspec import sunspec_image

pytestmark = pytest.mark.modbus

MODELS = [
    {"ID": 1, "L": 66, "Mn": "SunSpec test", "Md": "hybrid inverter"},
    # WChaMax 1000 x 10^1 = 10 kW; rates in 0.01 % (InOutWRte_SF -2): 1 raw = 1 W
    {"ID": 124, "L": 24, "WChaMax": 1000, "WChaMax_SF": 1, "InOutWRte_SF": -2, "ChaState": 500, "ChaState_SF": -1},
]


async def test_model_124_commands_a_rate_window_with_its_revert_timer() -> None:
    image = sunspec_image(MODELS)
    server = SimServer(None, listen=f"tcp://127.0.0.1:{free_tcp_port()}", static={"holding": image})
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(server.listen), timeout_s=1.0, options={})
            device = await discover(bus, 1)
            rmap = device.register_map
            assert rmap.control is not None and rmap.control.battery is not None
            server.map = rmap  # the simulator now accepts writes to the registers discovery found writable
            battery = ModbusBattery.from_map(ModbusWriter(device_id="hybrid", register_map=rmap, bus=bus, unit_id=1))
            assert (battery.max_charge_w, battery.max_discharge_w) == (10_000, 10_000)
            await battery.set_power(-4_000, watchdog_s=90)  # charge 4 kW
            assert dict(server.writes) == {
                "rvrt_tms_s": 90,
                "in_w_rte_w": 4_000,
                "out_w_rte_w": -4_000,
                "storctl_mod": 3,
            }
            m124 = next(m for m in device.models if m.id == 124)
            assert m124.definition is not None
            in_w_rte = m124.address + m124.definition.point("InWRte").offset
            assert server._image({})["holding"][in_w_rte] == 4_000  # 40.00 % of 10 kW, as the register holds it
            assert await battery.read_back() == -4_000
            await battery.set_power(2_500, watchdog_s=90)
            assert await battery.read_back() == 2_500
            with pytest.raises(OutOfRange):
                await battery.set_power(12_000, watchdog_s=90)  # beyond WChaMax: refused before sending
            await battery.release()
            assert server.held["storctl_mod"] == 0
    finally:
        await server.stop()
