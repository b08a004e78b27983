"""Issue #21 finding 7: runtime errors as good as the CLI's. A device configured with the wrong unit id
(the usual first mistake on a shared RS-485 bus or a Modbus TCP gateway) is reported offline with its
address, its unit and the likely cause, in the log and in `/api/v1/devices`; no pymodbus text leaks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from drivers.maps import load_map
from drivers.sim.server import SimServer, free_tcp_port
from gateway.agent import Agent
from gateway.settings import load_config
from tests.agent.test_composition import running, simulated_devices, until, write_config

pytestmark = pytest.mark.modbus


async def test_a_wrong_unit_id_is_named_as_the_likely_cause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with simulated_devices() as servers:
        path = write_config(tmp_path, servers)
        cfg = yaml.safe_load(path.read_text())
        wrong = servers["grid"].unit_ids[0] + 6
        grid = next(d for d in cfg["devices"] if d["id"] == "grid")
        grid["unit_id"] = wrong  # the simulator answers only its own unit
        path.write_text(yaml.safe_dump(cfg))
        agent = Agent(load_config(path))
        with caplog.at_level(logging.INFO):
            async with running(agent):
                live = agent.services.live if agent.services else None
                assert live is not None
                await until(lambda: live.devices["hall"].online is True)
                await until(lambda: live.devices["grid"].last_error is not None)
                error = live.devices["grid"].last_error or ""
    address = servers["grid"].listen.removeprefix("tcp://")
    assert address in error and f"unit {wrong}" in error, error
    assert "unit id" in error, error  # the likely cause, not a bare timeout
    offline = [r.getMessage() for r in caplog.records if "device grid is offline" in r.getMessage()]
    assert len(offline) == 1 and "unit id" in offline[0] and address in offline[0], offline
    # #21 finding 10: the startup line names the data directory and whether the page is on
    started = [r.getMessage() for r in caplog.records if "running:" in r.getMessage()]
    assert started and f"data in {tmp_path / 'data'}" in started[0] and "web page off" in started[0], started
    text = caplog.text.lower()
    assert "pymodbus" not in error.lower() and "modbus error" not in text and "traceback" not in text


async def test_health_names_a_channel_whose_register_has_no_valid_reading(tmp_path: Path) -> None:
    """#21 finding 1: an online meter whose configured channel's register holds nothing valid (here the
    simulator serves the map's 'not available' pattern for the export register) made the balance silently
    zero; health says which channel, which quantity and which device."""
    m = load_map("eastron-sdm630")
    values = {"power_w": 1500.0, "energy_import_wh": 1_000_000, "energy_export_wh": None}
    server = SimServer(m, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(1,), values=lambda: values)
    await server.start()
    try:
        cfg = {
            "site": {"id": "silent-channel", "timezone": "Europe/Riga"},
            "data_dir": str(tmp_path / "data"),
            "http": {"enabled": False},
            "devices": [
                {"id": "grid", "driver": "modbus", "connection": server.listen, "unit_id": 1, "map": m.name,
                 "poll_interval_s": 0.2, "timeout_s": 0.5,
                 "channels": [{"role": "grid_import", "quantity": "energy_import_wh"},
                              {"role": "grid_export", "quantity": "energy_export_wh"}]},
            ],
        }  # fmt: skip
        path = tmp_path / "gia.yaml"
        path.write_text(yaml.safe_dump(cfg))
        agent = Agent(load_config(path))
        async with running(agent):
            live = agent.services.live if agent.services else None
            assert live is not None
            await until(lambda: live.devices["grid"].online is True)
            await until(lambda: any("energy_export_wh" in r for r in agent.health()["reasons"]))
            health = agent.health()
    finally:
        await server.stop()
    assert health["status"] == "degraded"
    assert len(health["reasons"]) == 1, health["reasons"]
    reason = health["reasons"][0]
    assert "energy_export_wh" in reason and "device grid" in reason and "invalid reading" in reason, reason
