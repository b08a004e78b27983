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
from drivers.opcua.config import OpcuaDeviceConfig
from drivers.opcua.nodemap import NodeMap, load_node_map
from drivers.services import DriverServices, create_port_driver

#: what a device's knowledge is loaded from: a Modbus register map or an OPC UA node map
DeviceMap = RegisterMap | NodeMap


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


def device_map(cfg: DeviceConfig, *, base_dir: Path) -> DeviceMap | None:
    """The device's map, loaded: a Modbus `map:` or an OPC UA node map; None for devices without one."""
    try:
        if isinstance(cfg, OpcuaDeviceConfig):
            return load_node_map(cfg.map, base_dir=base_dir)
        if isinstance(cfg, ModbusDeviceConfig) and cfg.map is not None:
            return load_map(cfg.map, base_dir=base_dir)
    except MapError as exc:
        raise PermanentError(f"{cfg.id}: {exc}") from None
    return None


def device_class_of(cfg: DeviceConfig, loaded: DeviceMap | None) -> DeviceClass:
    """meter, inverter, wind_turbine or battery: configured, else from the map (SunSpec: inverter)."""
    if cfg.device_class is not None:
        return cfg.device_class
    if loaded is not None:
        return loaded.device_class
    return "inverter"  # a Modbus device without a map is a SunSpec device


def create_driver(cfg: DeviceConfig, *, device_map: DeviceMap | None, services: DriverServices) -> Driver:
    """A ready-to-enter driver for one configured device (raises PermanentError on bad config).

    Devices share the connections in `services` (entered by the caller): Modbus buses, the MQTT device
    hub, OPC UA sessions, M-Bus lines, OCPP central systems. `device_map` is the device's map, loaded
    once per start (`device_map()`); a poller restart builds a new driver from the same object.
    """
    port_driver = create_port_driver(cfg, services)
    if port_driver is not None:
        return port_driver
    if isinstance(cfg, OpcuaDeviceConfig):
        from drivers.opcua.driver import driver_from_config

        node_map = device_map if isinstance(device_map, NodeMap) else None
        return driver_from_config(cfg, base_dir=services.base_dir, pool=services.opcua, node_map=node_map)
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
    if not isinstance(device_map, RegisterMap):
        raise PermanentError(f"{cfg.id}: set 'map' or 'sunspec: true'")
    quirks = device_quirks(device_map, cfg.options)
    bus = pool.bus(conn, timeout_s=cfg.timeout_s, options=quirks.model_dump())
    return ModbusDriver(device_id=cfg.id, register_map=device_map, bus=bus, unit_id=cfg.unit_id, quirks=quirks)
