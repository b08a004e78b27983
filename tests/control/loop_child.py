"""The control loop in a process of its own, so a test can kill it with SIGKILL mid-plan (no cleanup runs).

Usage: python -m tests.control.loop_child URL MAP UNIT PLAN_W WATCHDOG_S
Prints "commanding" once the device has taken a command, then runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

from drivers.modbus.bus import BusPool
from tests.control.helpers import Recorded, SimBatteryDevice, battery_controller


async def main() -> None:
    url, map_name, unit, plan_w, watchdog_s = sys.argv[1:6]
    dev = SimBatteryDevice(server=None, battery=None, url=url, unit=int(unit))  # type: ignore[arg-type]
    record = Recorded()
    async with BusPool() as pool:
        controller, _act = battery_controller(
            pool, dev, map_name, plan_w=float(plan_w), record=record, watchdog_s=float(watchdog_s), timeout_s=1.0
        )
        announced = False
        while True:
            await controller.round()
            if not announced and "control.command" in record.kinds():
                print("commanding", flush=True)
                announced = True
            await asyncio.sleep(controller.config.interval_s)


if __name__ == "__main__":
    asyncio.run(main())
