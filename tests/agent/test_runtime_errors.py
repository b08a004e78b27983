"""Issue #21 finding 7: runtime errors as good as the CLI's. A device configured with the wrong unit id
(the usual first mistake on a shared RS-485 bus or a Modbus TCP gateway) is reported offline with its
address, its unit and the likely cause, in the log and in `/api/v1/devices`; no pymodbus text leaks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

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
    text = caplog.text.lower()
    assert "pymodbus" not in error.lower() and "modbus error" not in text and "traceback" not in text
