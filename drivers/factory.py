"""Build a driver from a device's configuration: the one place that knows which class reads what.

Errors here are configuration errors, raised as `PermanentError` with a message that names the fix,
so the agent refuses a bad device at start instead of failing on every poll. Maps are loaded by the
caller once per start (`gateway.site.resolve`) and passed in: a poller restart never re-reads them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from drivers.base import Driver, PermanentError
from drivers.config import DeviceConfig, ModbusDeviceConfig, MqttDeviceConfig, parse_connection
from drivers.maps import MapError, load_map
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.registermap import Quirks, RegisterMap
from drivers.modbus.sunspec import SunSpecDriver
from drivers.model import DeviceClass
from drivers.mqtt.driver import MqttDriver, device_fields
from drivers.services import DriverServices, create_port_driver


def device_quirks(register_map: RegisterMap | None, options: dict[str, float | int | bool]) -> Quirks:
    """The map's quirks overridden by the site's per-device `options:` (unknown names rejected)."""
    base = register_map.options.model_dump() if register_map is not None else {}
    try:
        return Quirks.model_validate({**base, **options})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        known = ", ".join(sorted(Quirks.model_fields))
        raise PermanentError(f"options.{where}: {err['msg']} (known options: {known})") from None


def device_map(cfg: DeviceConfig, *, base_dir: Path) -> RegisterMap | None:
    """The device's register map (Modbus devices with `map:`), None for devices that have none."""
    if not isinstance(cfg, ModbusDeviceConfig) or cfg.map is None:
        return None
    try:
        return load_map(cfg.map, base_dir=base_dir)
    except MapError as exc:
        raise PermanentError(f"{cfg.id}: {exc}") from None


def device_class_of(cfg: DeviceConfig, register_map: RegisterMap | None) -> DeviceClass:
    """meter, inverter, wind_turbine or battery: configured, else from the map (SunSpec: inverter)."""
    if cfg.device_class is not None:
        return cfg.device_class
    if register_map is not None:
        return register_map.device_class
    return "inverter"  # a Modbus device without a map is a SunSpec device


def create_driver(cfg: DeviceConfig, *, register_map: RegisterMap | None, services: DriverServices) -> Driver:
    """A ready-to-enter driver for one configured device (raises PermanentError on bad config).

    Devices share the connections in `services` (entered by the caller): Modbus buses, the MQTT device
    hub, M-Bus lines, OCPP central systems. `register_map` is the device's loaded map (`device_map`).
    """
    port_driver = create_port_driver(cfg, services)
    if port_driver is not None:
        return port_driver
    if isinstance(cfg, MqttDeviceConfig):
        fields = device_fields(cfg)
        if services.mqtt is None:
            raise PermanentError(
                f"{cfg.id}: MQTT devices need a broker; configure the mqtt: section (url, credentials)"
            )
        return MqttDriver(
            device_id=cfg.id,
            hub=services.mqtt,
            topic=cfg.topic,
            fields=fields,
            poll_interval_s=cfg.poll_interval_s,
            stale_after_intervals=cfg.stale_after_intervals,
        )
    assert isinstance(cfg, ModbusDeviceConfig)
    conn = parse_connection(cfg.connection)
    pool = services.pool
    if cfg.sunspec:
        quirks = device_quirks(None, cfg.options)
        bus = pool.bus(conn, timeout_s=cfg.timeout_s, options=quirks.model_dump())
        return SunSpecDriver(device_id=cfg.id, bus=bus, unit_id=cfg.unit_id, quirks=quirks)
    if register_map is None:
        raise PermanentError(f"{cfg.id}: set 'map' or 'sunspec: true'")
    quirks = device_quirks(register_map, cfg.options)
    bus = pool.bus(conn, timeout_s=cfg.timeout_s, options=quirks.model_dump())
    return ModbusDriver(device_id=cfg.id, register_map=register_map, bus=bus, unit_id=cfg.unit_id, quirks=quirks)
