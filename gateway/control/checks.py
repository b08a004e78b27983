"""Cross-checks of the `control:` section against the rest of the configuration (`gia check-config`).

A battery actuator must name a Modbus device whose map says how to command it (`control.battery`), a
relay needs the site's MQTT broker, and every actuator must follow a flexibility asset of its kind.
`gateway.settings` is imported lazily: settings imports our config module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from drivers.base import PermanentError
from drivers.config import ModbusDeviceConfig
from drivers.factory import device_map
from drivers.modbus.registermap import RegisterMap
from gateway.control.config import BatteryActuatorConfig

if TYPE_CHECKING:
    from gateway.settings import Problem, Settings


def check_control(settings: Settings, base_dir: Path) -> list[Problem]:
    from gateway.settings import Problem

    ctl = settings.control
    problems: list[Problem] = []
    if not ctl.actuators and ctl.s2 is None:
        return problems
    devices = {d.id: d for d in settings.devices}
    assets = {a.id: a.kind for a in settings.flexibility.assets}
    for i, act in enumerate(ctl.actuators):
        base = f"control.actuators[{i}]"
        want = "battery" if isinstance(act, BatteryActuatorConfig) else "shiftable"
        if assets.get(act.id) != want:
            problems.append(
                Problem(
                    f"{base}.id",
                    f"{act.id!r} is not a {want} asset under flexibility.assets",
                    f"give the id of the {want} asset whose plan this actuator follows",
                )
            )
        if isinstance(act, BatteryActuatorConfig):
            dev = devices.get(act.device)
            if isinstance(dev, ModbusDeviceConfig) and dev.sunspec:
                continue  # storage controls come from model 124, found when the device is first commanded
            if not isinstance(dev, ModbusDeviceConfig) or dev.map is None:
                problems.append(
                    Problem(
                        f"{base}.device",
                        f"{act.device!r} is not a Modbus device with a map",
                        "name a Modbus device with a map that has control.battery, or a SunSpec device (model 124)",
                    )
                )
                continue
            try:
                m = device_map(dev, base_dir=base_dir)
            except PermanentError:
                continue  # the map's own problem is reported on the device
            if not isinstance(m, RegisterMap) or m.control is None or m.control.battery is None:
                problems.append(
                    Problem(
                        f"{base}.device",
                        f"the map of {act.device!r} ({dev.map}) says nothing about battery control",
                        "use a map with writable registers and control.battery (huawei-luna2000, victron-gx-vebus)",
                    )
                )
        elif settings.mqtt is None:
            problems.append(Problem(base, "a relay is switched over MQTT, but mqtt: is not configured", "add mqtt:"))
    return problems
