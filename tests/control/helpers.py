"""Shared plumbing of the control tests: a simulated battery on a real Modbus TCP server, a plan, a loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.config import parse_connection
from drivers.maps import load_map
from drivers.modbus.bus import BusPool
from drivers.modbus.write import ModbusBattery, ModbusWriter
from drivers.sim.battery import BatteryModel, SimBattery
from drivers.sim.server import SimServer, free_tcp_port
from gateway.control.config import BatteryActuatorConfig, ControlConfig
from gateway.control.loop import Controller

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def accelerated(speed: float) -> Callable[[], datetime]:
    """Device time running `speed` times faster than the wall clock (a 1-minute timeout in 1/speed min)."""
    m0 = time.monotonic()
    return lambda: T0 + timedelta(seconds=(time.monotonic() - m0) * speed)


@dataclass
class SimBatteryDevice:
    server: SimServer
    battery: SimBattery
    url: str
    unit: int


@contextlib.asynccontextmanager
async def sim_battery(
    map_name: str, *, speed: float = 1.0, surplus_w: float = 20_000.0
) -> AsyncIterator[SimBatteryDevice]:
    m = load_map(map_name)
    now = accelerated(speed)
    battery = SimBattery(m, BatteryModel(200_000, 100_000, 100_000), now, site_surplus_w=lambda _t: surplus_w)
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    server = SimServer(m, listen=url, unit_ids=[m.default_unit_id], values=battery.values, on_write=battery.on_write)
    server.held = battery.held  # one dict: writes read back, and the device's own revert shows
    await server.start()
    try:
        yield SimBatteryDevice(server, battery, url, m.default_unit_id)
    finally:
        await server.stop()


def plan_payload(asset: str, power_w: float, now: datetime | None = None) -> dict[str, Any]:
    """A flexibility signal payload whose plan holds `power_w` for `asset` in the current hour."""
    now = now or datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0)
    iso = lambda t: t.isoformat().replace("+00:00", "Z")  # noqa: E731
    return {
        "status": "ok",
        "reason": "",
        "generated_at": iso(now),
        "intervals": [
            {"start": iso(start + timedelta(hours=h)), "end": iso(start + timedelta(hours=h + 1))} for h in range(2)
        ],
        "plan": {"status": "optimal", "assets": {asset: {"kind": "battery", "power_w": [power_w, power_w]}}},
    }


@dataclass
class Recorded:
    events: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, kind: str, device: str | None, detail: dict[str, Any]) -> None:
        self.events.append((kind, device, detail))

    def kinds(self) -> list[str]:
        return [k for k, _d, _x in self.events]


def battery_controller(
    pool: BusPool,
    dev: SimBatteryDevice,
    map_name: str,
    *,
    plan_w: float,
    record: Recorded,
    timeout_s: float = 0.5,
    **overrides: Any,
) -> tuple[Controller, ModbusBattery]:
    m = load_map(map_name)
    bus = pool.bus(parse_connection(dev.url), timeout_s=timeout_s, options={})
    actuator = ModbusBattery.from_map(ModbusWriter(device_id="battery", register_map=m, bus=bus, unit_id=dev.unit))
    act_cfg = BatteryActuatorConfig(
        id="battery",
        device="battery",
        max_charge_w=50_000,
        max_discharge_w=50_000,
        follow="setpoint",
        min_dwell_s=0,
        deadband_w=0,
    )
    cfg = ControlConfig.model_validate(
        {"enabled": True, "dry_run": False, "interval_s": 0.05, "watchdog_s": 120, **overrides}
    )
    controller = Controller(
        cfg,
        batteries=[(act_cfg, actuator)],
        relays=[],
        plan=lambda: plan_payload("battery", plan_w),
        reading=lambda _d, q: 50.0 if q == "soc_pct" else None,
        record=record,
        now=lambda: datetime.now(UTC),
    )
    return controller, actuator
