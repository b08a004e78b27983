"""The control room in the composed agent: plugged in by the registry, acting on the plan through a real
Modbus TCP battery, its admin API served by the HTTP room, every command in the ledger's events chain."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from drivers.modbus.bus import BusPool
from drivers.sim.server import free_tcp_port
from gateway.agent import Agent
from gateway.ledger.store import Ledger
from gateway.registry import ROOMS
from gateway.rooms import Part, Room, Services
from gateway.settings import load_config
from gateway.site.resolve import Site
from tests.control.helpers import Recorded, battery_controller, plan_payload, sim_battery

pytestmark = pytest.mark.modbus


def plan_room(power_w: float) -> Room:
    """Stands in for the forecasting room's flexibility provider (a plan without training models)."""

    async def parts(site: Site, services: Services) -> Sequence[Part]:
        services.providers.flexibility = lambda: plan_payload("battery", power_w, datetime.now(UTC))
        return []

    return Room("plan", parts)


async def until(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.ready.is_set() or task.done())
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_room_follows_the_plan_and_an_admin_can_override_and_stop(tmp_path: Path) -> None:
    tokens = {"admin": secrets.token_hex(32), "viewer": secrets.token_hex(32)}
    for name, value in tokens.items():
        (tmp_path / name).write_text(value)
    port = free_tcp_port()
    async with sim_battery("huawei-luna2000") as dev:
        cfg = {
            "site": {"id": "ctl", "timezone": "Europe/Riga"},
            "data_dir": str(tmp_path / "data"),
            "http": {
                "listen": f"127.0.0.1:{port}",
                "tokens": [
                    {"name": "operator", "token_file": str(tmp_path / "admin"), "roles": ["admin"]},
                    {"name": "screen", "token_file": str(tmp_path / "viewer"), "roles": ["viewer"]},
                ],
            },
            "devices": [
                {
                    "id": "battery",
                    "driver": "modbus",
                    "connection": dev.url,
                    "unit_id": dev.unit,
                    "map": "huawei-luna2000",
                    "poll_interval_s": 0.2,
                    "timeout_s": 0.5,
                }
            ],
            "flexibility": {
                "assets": [
                    {
                        "kind": "battery",
                        "id": "battery",
                        "capacity_wh": 200000,
                        "max_charge_w": 50000,
                        "max_discharge_w": 50000,
                    }
                ]
            },
            "control": {
                "enabled": True,
                "dry_run": False,
                "interval_s": 0.1,
                "watchdog_s": 120,
                "actuators": [
                    {
                        "kind": "battery",
                        "id": "battery",
                        "device": "battery",
                        "max_charge_w": 40000,
                        "max_discharge_w": 40000,
                        "follow": "setpoint",
                        "min_dwell_s": 0,
                    }
                ],
            },
        }
        path = tmp_path / "gia.yaml"
        path.write_text(yaml.safe_dump(cfg))
        rooms = (plan_room(15_000), *ROOMS)
        agent = Agent(load_config(path), rooms=rooms)
        async with running(agent):
            await until(lambda: dev.battery.command_w() == 15_000)
            base = f"http://127.0.0.1:{port}"
            auth = {k: {"Authorization": f"Bearer {v}"} for k, v in tokens.items()}
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                await until(lambda: True)
                status = (await http.get("/api/v1/control", headers=auth["viewer"])).json()
                assert status["actuators"][0]["mode"] == "following" and status["actuators"][0]["sent"] == 15_000
                body = {"value": -5000, "duration_s": 600}
                denied = await http.put("/api/v1/control/actuators/battery/override", json=body, headers=auth["viewer"])
                assert denied.status_code == 403
                ok = await http.put("/api/v1/control/actuators/battery/override", json=body, headers=auth["admin"])
                assert ok.status_code == 200 and ok.json()["mode"] == "override"
                assert dev.battery.command_w() == -5000
                too_much = {"value": 90_000, "duration_s": 60}
                refused = await http.put(
                    "/api/v1/control/actuators/battery/override", json=too_much, headers=auth["admin"]
                )
                assert refused.status_code == 400 and refused.json()["error"] == "out_of_range"
                stopped = await http.post("/api/v1/control/stop", headers=auth["admin"])
                assert stopped.status_code == 200 and stopped.json()["stopped"] is True
                assert dev.battery.autonomous and dev.battery.held["forcible_mode"] == 0
                health = (await http.get("/healthz", headers=auth["viewer"])).json()  # detail needs a token
                assert health["control"]["stopped"] is True
            assert agent.services is not None
            events = await agent.services.writer.call(lambda led: led.events())
            chain = await agent.services.writer.call(Ledger.verify_events)
        kinds = [e.kind for e in events]
        assert "control.command" in kinds and kinds.count("control.override") == 1
        assert kinds[-2:] == ["control.stop", "control.release"]
        stop = next(e for e in events if e.kind == "control.stop")
        assert '"by":"operator"' in stop.detail
        assert chain.ok


async def test_dry_run_decides_and_records_but_writes_nothing() -> None:
    async with sim_battery("huawei-luna2000") as dev, BusPool() as pool:
        record = Recorded()
        controller, _ = battery_controller(pool, dev, "huawei-luna2000", plan_w=12_000, record=record, dry_run=True)
        for _ in range(3):
            await controller.round()
        assert dev.server.writes == [] and dev.battery.autonomous
        assert record.kinds() == ["control.dry_run"]  # recorded once, when the decision changed
        assert record.events[0][2]["power_w"] == 12_000
        assert controller.status()["actuators"][0]["mode"] == "dry_run"
