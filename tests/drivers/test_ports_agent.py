"""The agent runs meter-port and charger devices from gia.yaml: a P1 port over a pty pair and an OCPP
charger share the agent's services, and their readings reach the ledger (only checked telegrams)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
import yaml
from ocpp.v16 import ChargePoint, call
from websockets.asyncio.client import connect

from drivers.model import Quality
from drivers.p1.sim import p1_sim
from gateway.agent import Agent
from gateway.ledger.store import Ledger
from gateway.settings import load_config
from tests.drivers.ports import pty_pair, wait_until
from tests.servers import free_port

PASSWORD = "a-long-enough-charger-password"


@pytest.mark.serial
@pytest.mark.ocpp
async def test_agent_stores_p1_and_charger_readings(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "cp.secret").write_text(PASSWORD)
    async with pty_pair() as pair:
        sim = await p1_sim(
            pair.b, variant="dsmr5", values=lambda: {"energy_import_wh": 2_000_000}, period_s=0.1
        ).start()
        cfg = {
            "site": {"id": "ports", "timezone": "Europe/Riga"},
            "data_dir": str(tmp_path / "data"),
            "http": {"enabled": False},
            "devices": [
                {"id": "grid", "driver": "p1", "connection": f"serial://{pair.a}", "poll_interval_s": 0.5,
                 "channels": [{"role": "grid_import", "quantity": "energy_import_wh"}]},
                {"id": "car", "driver": "ocpp", "charge_point_id": "CP-7", "listen": f"ws://127.0.0.1:{port}",
                 "password_file": str(tmp_path / "cp.secret"), "poll_interval_s": 0.5,
                 "channels": [{"role": "consumption", "quantity": "energy_import_wh"}]},
            ],
        }  # fmt: skip
        (tmp_path / "gia.yaml").write_text(yaml.safe_dump(cfg))
        agent = Agent(load_config(tmp_path / "gia.yaml"))
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.ready.wait(), 20)
            await wait_until(lambda: agent.services.live.devices["grid"].online is True, 10, "P1 meter online")
            sim.inject("crc", 3)
            auth = base64.b64encode(f"CP-7:{PASSWORD}".encode()).decode()
            ws = await connect(
                f"ws://127.0.0.1:{port}/ocpp/CP-7",
                subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                additional_headers={"Authorization": f"Basic {auth}"},
            )
            cp = ChargePoint("CP-7", ws)
            cp_task = asyncio.create_task(cp.start())
            await cp.call(call.BootNotification(charge_point_model="T", charge_point_vendor="GIA"))
            mv = [{"timestamp": "2026-03-01T12:00:00Z", "sampled_value": [{"value": "9876", "unit": "Wh"}]}]
            await cp.call(call.MeterValues(connector_id=1, meter_value=mv))
            await wait_until(lambda: agent.services.live.devices["car"].online is True, 10, "charger online")
            await asyncio.sleep(1.2)
            await ws.close()
            await asyncio.gather(cp_task, return_exceptions=True)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sim.stop()
    ledger = Ledger(agent.config.settings.ledger_path, readonly=True)
    rows = [
        (e.device, e.value) for e in ledger.iter_all() if e.quantity == "energy_import_wh" and e.quality is Quality.GOOD
    ]
    ledger.close()
    assert {d for d, _ in rows} == {"grid", "car"}
    assert {v for d, v in rows if d == "grid"} == {2_000_000}  # the corrupted telegrams never got in
    assert {v for d, v in rows if d == "car"} == {9876}
