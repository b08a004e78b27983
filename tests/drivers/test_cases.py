"""Regression cases as data: tests/drivers/cases/<map>/ holds a register image and the expected samples.

Adding a meter needs no code: a map YAML in drivers/maps/ and a case folder here (image.yaml with the
registers as the device holds them, expected.yaml with what must be read). Every bundled map must
have a case folder, so CI exercises each map against a real pymodbus server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.config import parse_connection
from drivers.maps import bundled_maps, load_map
from drivers.modbus.bus import BusPool
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.registermap import RegisterType
from drivers.sim.server import SimServer, free_tcp_port

CASES = Path(__file__).with_name("cases")
TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_every_bundled_map_has_a_case_folder() -> None:
    missing = [m for m in bundled_maps() if not (CASES / m / "expected.yaml").is_file()]
    assert not missing, f"add tests/drivers/cases/<map>/ for: {missing}"


@pytest.mark.modbus
@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
async def test_case(case: str) -> None:
    folder = CASES / case
    register_map = load_map(case)
    image_doc: dict[str, Any] = yaml.safe_load((folder / "image.yaml").read_text())
    expected: dict[str, dict[str, Any]] = yaml.safe_load((folder / "expected.yaml").read_text())
    static: dict[RegisterType, dict[int, int]] = {
        rtype: {int(a): int(str(w), 0) for a, w in regs.items()} for rtype, regs in image_doc["registers"].items()
    }
    unit = int(image_doc.get("unit_id", register_map.default_unit_id))
    server = SimServer(None, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(unit,), static=static)
    await server.start()
    try:
        async with BusPool() as pool:
            bus = pool.bus(parse_connection(server.listen), timeout_s=1.0, options={})
            quirks = register_map.options.model_copy(update={"pause_after_connect_s": 0.0, "inter_frame_delay_s": 0.0})
            drv = ModbusDriver(device_id=case, register_map=register_map, bus=bus, unit_id=unit, quirks=quirks)
            samples = {s.quantity: s for s in await drv.read(TS)}
    finally:
        await server.stop()
    for quantity, want in expected.items():
        got = samples[quantity]
        assert str(got.quality) == want["quality"], (quantity, got)
        if want["value"] is None:
            assert got.value is None, (quantity, got)
        else:
            assert got.value == pytest.approx(want["value"], rel=1e-6), (quantity, got)
            assert type(got.value) is type(want["value"]) or isinstance(got.value, float), (quantity, got)
