"""The control room (section `control`): the agent acts on the flexibility plan.

Off by default; `dry_run` by default once enabled. Its parts: `control` (the loop, gateway/control/loop.py)
and, when configured, `control:s2` (the agent as S2 CEM, gateway/control/s2cem.py). It reads the plan
through the provider the forecasting room sets (`Providers.flexibility`), the live readings from the
snapshot, writes through the shared Modbus buses and records every command in the events chain through
the ledger writer. Its routes go to the HTTP room through `Providers.routes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from drivers.base import BatteryActuator, PermanentError, SwitchActuator
from drivers.config import ModbusDeviceConfig, parse_connection
from drivers.factory import device_quirks
from drivers.modbus.registermap import RegisterMap
from drivers.modbus.sunspec import SunSpecBattery
from drivers.modbus.write import ModbusBattery, ModbusWriter
from drivers.model import Quality, to_ms
from gateway.control.api import control_routes
from gateway.control.config import BatteryActuatorConfig, ControlConfig, RelayActuatorConfig
from gateway.control.loop import Controller, event_detail
from gateway.ledger.store import Ledger
from gateway.rooms import Part, Room, Services
from gateway.site.resolve import Site


def modbus_battery(site: Site, services: Services, act: BatteryActuatorConfig) -> BatteryActuator:
    """The battery actuator of a Modbus device (its map's rule, or SunSpec model 124), on the bus its
    poller shares."""
    dev = site.device(act.device)
    cfg, rmap = dev.config, dev.register_map
    if isinstance(cfg, ModbusDeviceConfig) and cfg.sunspec:
        quirks = device_quirks(None, cfg.options)
        conn = parse_connection(cfg.connection)
        bus = services.drivers.pool.bus(conn, timeout_s=cfg.timeout_s, options=quirks.model_dump())
        return SunSpecBattery(
            device_id=act.device,
            bus=bus,
            unit_id=cfg.unit_id,
            max_charge_w=act.max_charge_w,
            max_discharge_w=act.max_discharge_w,
        )
    if not isinstance(cfg, ModbusDeviceConfig) or not isinstance(rmap, RegisterMap):
        raise PermanentError(f"control: {act.device} is not a Modbus device with a map")
    device_id = act.device
    quirks = device_quirks(rmap, cfg.options)
    bus = services.drivers.pool.bus(
        parse_connection(cfg.connection), timeout_s=cfg.timeout_s, options=quirks.model_dump()
    )
    unit = 0 if quirks.unit_id_zero else cfg.unit_id
    return ModbusBattery.from_map(ModbusWriter(device_id=device_id, register_map=rmap, bus=bus, unit_id=unit))


async def parts(site: Site, services: Services) -> Sequence[Part]:
    cfg: ControlConfig = services.settings.control
    if not cfg.enabled:
        return []
    batteries: list[tuple[BatteryActuatorConfig, BatteryActuator]] = []
    relays: list[tuple[RelayActuatorConfig, SwitchActuator, float]] = []
    asset_power = {a.id: float(getattr(a, "power_w", 0.0)) for a in services.settings.flexibility.assets}
    hub: Any = None
    for act in cfg.actuators:
        if isinstance(act, BatteryActuatorConfig):
            batteries.append((act, modbus_battery(site, services, act)))
        else:
            from drivers.mqtt.relay import relay_for

            hub = hub or await _relay_hub(services)
            relays.append((act, relay_for(hub, act.protocol, act.topic, act.switch_id), asset_power.get(act.id, 0.0)))

    async def record(kind: str, device: str | None, detail: dict[str, Any]) -> None:
        ts = to_ms(services.clock.now())
        await services.writer.call(
            partial(Ledger.record_event, kind=kind, detail=event_detail(detail), ts_ms=ts, device=device)
        )

    def reading(device: str, quantity: str) -> float | None:
        s = services.live.values.get((device, quantity))
        if s is None or s.value is None or s.quality not in (Quality.GOOD, Quality.ESTIMATED):
            return None
        return float(s.value)

    controller = Controller(
        cfg,
        batteries=batteries,
        relays=relays,
        plan=lambda: services.providers.flexibility(),
        reading=reading,
        record=record,
        now=services.clock.now,
        # the site's clock, not the wall's: in an accelerated demo, dwell and ramp run in site time
        monotonic=lambda: services.clock.now().timestamp(),
    )
    clock = services.clock

    async def sleep(seconds: float) -> None:
        await clock.sleep_until(clock.now() + timedelta(seconds=seconds))

    services.health.add("control", controller.status)
    services.providers.routes.append(control_routes(controller))
    out = [Part("control", lambda: controller.run(sleep), reasons=controller.reasons, max_backoff_s=10.0)]
    if cfg.s2 is not None:
        from gateway.control.s2cem import S2Cem

        cem = S2Cem(cfg.s2, plan=lambda: services.providers.flexibility(), record=record, site=site.id)
        services.health.add("s2", cem.status)
        out.append(Part("control:s2", cem.serve))
    return out


async def _relay_hub(services: Services) -> Any:
    """One MQTT connection for every relay (opened once, kept for the agent's life)."""
    from drivers.mqtt.relay import RelayHub

    m = services.settings.mqtt
    if m is None:
        raise PermanentError("control: relays need the mqtt: section (the broker they listen on)")
    from drivers.mqtt.driver import Broker

    tls = m.tls
    hub = RelayHub(
        Broker(
            url=m.url,
            username=m.username,
            password=m.password_value(),
            client_id=f"{m.client_id or 'gia-' + services.site.id}-control",
            timeout_s=m.timeout_s,
            tls=m.tls_enabled,
            ca_file=tls.ca_file if tls else None,
            cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None,
            insecure=tls.insecure if tls else False,
        )
    )
    await services.stack.enter_async_context(hub)
    return hub


ROOM = Room("control", parts, section="control", config=ControlConfig)
