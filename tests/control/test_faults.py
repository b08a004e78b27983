"""Faults of the control loop against a simulated battery over real Modbus TCP (pymodbus server).

The battery (drivers/sim/battery.py) obeys its map's control rule and runs its own watchdog in device
time; `speed` accelerates that time so a 2-minute device timeout passes in two seconds. Each row is one
fault of issue #19: a device refusing a write, a write out of range (refused before sending), the agent
killed mid-plan (the device back in its autonomous mode within its own watchdog), comms loss.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.base import OutOfRange
from drivers.modbus.bus import BusPool
from tests.control.helpers import Recorded, battery_controller, plan_payload, sim_battery

pytestmark = [pytest.mark.modbus, pytest.mark.fault]
ROOT = Path(__file__).resolve().parents[2]


async def until(condition: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("map_name", ["huawei-luna2000", "victron-gx-vebus"])
async def test_a_plan_is_written_read_back_and_recorded(map_name: str) -> None:
    async with sim_battery(map_name) as dev, BusPool() as pool:
        record = Recorded()
        controller, actuator = battery_controller(pool, dev, map_name, plan_w=-30_000, record=record)
        await controller.round()
        assert dev.battery.command_w() == pytest.approx(-30_000)
        kind, device, detail = record.events[-1]
        assert (kind, device) == ("control.command", "battery")
        assert detail["read_back_ok"] is True and detail["power_w"] == -30_000 and detail["plan_w"] == -30_000
        # the plan asks more than the limits: the envelope holds it at the tighter of the configured 50 kW
        # and the device map's (Victron: int16 W, 32 kW), and says so
        controller.plan = lambda: plan_payload("battery", 90_000)
        await controller.round()
        assert dev.battery.command_w() == pytest.approx(min(50_000, actuator.max_discharge_w))
        assert "limited" in record.events[-1][2]["reasons"][0]


async def test_a_write_out_of_range_is_refused_before_anything_is_sent() -> None:
    async with sim_battery("huawei-luna2000") as dev, BusPool() as pool:
        record = Recorded()
        controller, actuator = battery_controller(pool, dev, "huawei-luna2000", plan_w=0, record=record)
        before = dev.server.stats.requests
        with pytest.raises(OutOfRange, match="outside the device's limits"):
            await actuator.set_power(250_000, watchdog_s=120)  # the map's range is 100 kW
        with pytest.raises(OutOfRange, match="outside the device's range"):
            await actuator.writer.write("forcible_period_min", 5000)  # the device takes at most 1440 min
        assert dev.server.stats.requests == before, "nothing reached the wire"
        assert dev.server.writes == []
        with pytest.raises(OutOfRange, match="configured limits"):
            await controller.set_override("battery", -80_000, 60, "operator")  # beyond the 50 kW configured
        assert dev.server.writes == [] and "control.override" not in record.kinds()


async def test_a_device_refusing_writes_is_recorded_reported_lost_and_recovers() -> None:
    async with sim_battery("huawei-luna2000") as dev, BusPool() as pool:
        record = Recorded()
        controller, _ = battery_controller(pool, dev, "huawei-luna2000", plan_w=20_000, record=record)
        dev.server.refuse_writes = True  # e.g. remote control switched off at the inverter
        for _ in range(3):
            await controller.round()
        assert record.kinds() == ["control.refused"] * 3 + ["control.lost"]
        assert "refused the write (illegal function)" in record.events[0][2]["error"]
        assert controller.reasons() and "lost" in controller.reasons()[0]
        assert dev.battery.autonomous and dev.battery.command_w() is None
        dev.server.refuse_writes = False
        await controller.round()
        assert record.kinds()[-2:] == ["control.command", "control.recovered"]
        assert controller.reasons() == [] and dev.battery.command_w() == pytest.approx(20_000)


async def test_comms_loss_is_reported_and_the_device_reverts_by_its_own_watchdog() -> None:
    async with sim_battery("huawei-luna2000", speed=120.0) as dev, BusPool() as pool:
        record = Recorded()
        controller, _ = battery_controller(pool, dev, "huawei-luna2000", plan_w=40_000, record=record, timeout_s=0.2)
        await controller.round()
        assert dev.battery.command_w() == pytest.approx(40_000)
        dev.server.pause()  # the cable is pulled: requests time out
        for _ in range(3):
            await controller.round()
        assert record.kinds()[1:] == ["control.failed"] * 3 + ["control.lost"]
        assert "no valid response" in record.events[1][2]["error"]
        # 120 s watchdog = 2 min forcible period; at 120x device time that is a second of wall time
        await until(lambda: dev.battery.autonomous)
        assert dev.battery.reverts == 1 and dev.battery.held["forcible_mode"] == 0
        dev.server.resume()
        await until(lambda: not dev.server.paused)
        for _ in range(20):  # the bus reconnects after its backoff; the next good round recovers
            await controller.round()
            if "control.recovered" in record.kinds():
                break
            await asyncio.sleep(0.1)
        assert "control.recovered" in record.kinds()
        assert dev.battery.command_w() == pytest.approx(40_000)


@pytest.mark.parametrize(("map_name", "watchdog_s"), [("huawei-luna2000", 120.0), ("victron-gx-vebus", 120.0)])
async def test_killed_mid_plan_the_device_returns_to_its_own_mode_within_its_watchdog(
    map_name: str, watchdog_s: float
) -> None:
    async with sim_battery(map_name, speed=60.0) as dev:
        child = subprocess.Popen(  # noqa: ASYNC220 (started once; killed with SIGKILL below)
            [
                sys.executable,
                "-m",
                "tests.control.loop_child",
                dev.url,
                map_name,
                str(dev.unit),
                "-25000",
                str(watchdog_s),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), timeout=30)
            assert line.strip() == b"commanding", child.stderr.read() if child.stderr else b""
            assert dev.battery.command_w() == pytest.approx(-25_000)
            child.send_signal(signal.SIGKILL)  # no finally, no release: only the device's watchdog is left
            child.wait(timeout=10)
            last_write = dev.battery.now()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            for pipe in (child.stdout, child.stderr):
                if pipe is not None:
                    pipe.close()
        await until(lambda: dev.battery.autonomous, timeout=30)
        reverted = dev.battery.now()
        device_timeout = dev.battery.timeout_s  # Huawei: the period the agent set (2 min); Victron: fixed 60 s
        assert device_timeout <= watchdog_s
        # back in its own mode within its watchdog of the last command (plus the poll that noticed it)
        assert (reverted - last_write).total_seconds() <= device_timeout + 10
        assert dev.battery.reverts == 1
        await asyncio.sleep(0.1)
        assert dev.battery.power_w < 0, "autonomous self-consumption charges from the 20 kW surplus"


async def test_a_graceful_stop_hands_the_device_back_at_once() -> None:
    async with sim_battery("victron-gx-vebus") as dev, BusPool() as pool:
        record = Recorded()
        controller, _ = battery_controller(pool, dev, "victron-gx-vebus", plan_w=10_000, record=record)
        task = asyncio.create_task(controller.run())
        await until(lambda: dev.battery.command_w() == pytest.approx(10_000))
        assert dev.battery.held["ess_mode"] == 3  # external control taken
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert dev.battery.autonomous and dev.battery.held["ess_mode"] == 1
        assert record.kinds()[-1] == "control.release"
