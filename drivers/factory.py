"""Build a driver from a device's configuration: the one place that knows which class reads what.

Errors here are configuration errors, raised as `PermanentError` with a message that names the fix,
so the agent refuses a bad device at start instead of failing on every poll.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from drivers.base import Driver, PermanentError
from drivers.config import DeviceConfig, ModbusDeviceConfig, MqttDeviceConfig, parse_connection
from drivers.maps import MapError, load_map
from drivers.modbus.bus import BusPool
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.registermap import Quirks, RegisterMap
from drivers.modbus.sunspec import SunSpecDriver
from drivers.mqtt.driver import MqttDriver, MqttHub, device_fields
from drivers.opcua.config import OpcuaDeviceConfig

if TYPE_CHECKING:  # asyncua is imported only when a site has OPC UA devices
    from drivers.opcua.session import OpcuaPool


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


def _map_of(cfg: ModbusDeviceConfig, base_dir: Path) -> RegisterMap:
    if cfg.map is None:
        raise PermanentError(f"{cfg.id}: set 'map' or 'sunspec: true'")
    try:
        return load_map(cfg.map, base_dir=base_dir)
    except MapError as exc:
        raise PermanentError(f"{cfg.id}: {exc}") from None


def device_class_of(cfg: DeviceConfig, *, base_dir: Path) -> str:
    """meter, inverter, wind_turbine or battery: configured, else from the map (SunSpec: inverter)."""
    if cfg.device_class is not None:
        return cfg.device_class
    if isinstance(cfg, OpcuaDeviceConfig):
        from drivers.opcua.nodemap import load_node_map

        try:
            return load_node_map(cfg.map, base_dir=base_dir).device_class
        except MapError as exc:
            raise PermanentError(f"{cfg.id}: {exc}") from None
    assert isinstance(cfg, ModbusDeviceConfig)  # MQTT devices always have a class (default meter)
    if cfg.sunspec:
        return "inverter"
    return _map_of(cfg, base_dir).device_class


def create_driver(
    cfg: DeviceConfig,
    *,
    pool: BusPool,
    base_dir: Path,
    mqtt: MqttHub | None = None,
    opcua: OpcuaPool | None = None,
) -> Driver:
    """A ready-to-enter driver for one configured device (raises PermanentError on bad config).

    Modbus devices share the pool's buses; MQTT devices share `mqtt` (one `MqttHub` per broker,
    entered by the caller); OPC UA devices on one server share a session from `opcua` (without a
    pool each driver holds its own).
    """
    if isinstance(cfg, OpcuaDeviceConfig):
        from drivers.opcua.driver import driver_from_config

        return driver_from_config(cfg, base_dir=base_dir, pool=opcua)
    if isinstance(cfg, MqttDeviceConfig):
        fields = device_fields(cfg)
        if mqtt is None:
            raise PermanentError(
                f"{cfg.id}: MQTT devices need a broker; configure the mqtt: section (url, credentials)"
            )
        return MqttDriver(
            device_id=cfg.id,
            hub=mqtt,
            topic=cfg.topic,
            fields=fields,
            poll_interval_s=cfg.poll_interval_s,
            stale_after_intervals=cfg.stale_after_intervals,
        )
    conn = parse_connection(cfg.connection)
    if cfg.sunspec:
        quirks = device_quirks(None, cfg.options)
        bus = pool.bus(conn, timeout_s=cfg.timeout_s, options=quirks.model_dump())
        return SunSpecDriver(device_id=cfg.id, bus=bus, unit_id=cfg.unit_id, quirks=quirks)
    register_map = _map_of(cfg, base_dir)
    quirks = device_quirks(register_map, cfg.options)
    bus = pool.bus(conn, timeout_s=cfg.timeout_s, options=quirks.model_dump())
    return ModbusDriver(device_id=cfg.id, register_map=register_map, bus=bus, unit_id=cfg.unit_id, quirks=quirks)
