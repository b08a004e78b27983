"""`resolve_site`: the settings turned once into the site every part reads.

Before this object existed each device map was loaded about six times per start (settings checks,
the agent, certification, the live balance, Home Assistant discovery) and again on every poller
restart. Now `resolve_site` loads each device's map exactly once, derives its device class and the
metering channels (with register moduli from the maps), and everything else — pollers, certification,
the live balance, forecasting history, the InfluxDB sink, Home Assistant discovery — reads the result.
A map that cannot be loaded is a `ConfigError` naming the device and the fix, like any config mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.base import PermanentError
from drivers.config import DeviceConfig, ModbusDeviceConfig, MqttDeviceConfig
from drivers.factory import DeviceMap, device_class_of, device_map
from drivers.modbus.registermap import RegisterMap
from drivers.model import DeviceClass
from gateway.site.channels import ChannelSpec, channel_specs

if TYPE_CHECKING:
    from gateway.settings import Location, Problem, Settings


@dataclass(frozen=True, slots=True)
class SiteDevice:
    """One configured device with what was derived from it at start."""

    config: DeviceConfig
    device_class: DeviceClass
    #: the loaded map (a Modbus register map or an OPC UA node map), None for devices without one
    device_map: DeviceMap | None
    channels: tuple[ChannelSpec, ...]

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def register_map(self) -> RegisterMap | None:
        return self.device_map if isinstance(self.device_map, RegisterMap) else None

    @property
    def quantities(self) -> tuple[str, ...]:
        """The quantities this device is known to deliver (from its map; empty when not known ahead)."""
        if isinstance(self.device_map, RegisterMap):
            return tuple(dict.fromkeys(r.quantity for r in self.device_map.registers))
        if self.device_map is not None:
            return tuple(dict.fromkeys(n.quantity for n in self.device_map.nodes))
        return ()


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    name: str
    area: str | None
    timezone: str
    location: Location | None
    devices: tuple[SiteDevice, ...]
    channels: tuple[ChannelSpec, ...]
    _by_id: dict[str, SiteDevice] = field(default_factory=dict, repr=False, compare=False)

    def device(self, device_id: str) -> SiteDevice:
        return self._by_id[device_id]

    @property
    def device_classes(self) -> Mapping[str, DeviceClass]:
        return {d.id: d.device_class for d in self.devices}

    def has_generation(self, source: str) -> bool:
        return any(c.role == "generation" and c.source == source for c in self.channels)


def resolve_site(settings: Settings, *, base_dir: Path) -> Site:
    """Load every device's map once and derive classes and channels; raise ConfigError on a bad map."""
    from gateway.settings import ConfigError, Problem

    problems: list[Problem] = []
    resolved: list[SiteDevice] = []
    for i, cfg in enumerate(settings.devices):
        try:
            rmap = device_map(cfg, base_dir=base_dir)
        except PermanentError as exc:
            problems.append(
                Problem(
                    f"devices[{i}].map",
                    str(exc).removeprefix(f"{cfg.id}: "),
                    "use a bundled map name (see 'gia sim --list') or a valid map file",
                )
            )
            continue
        registers = rmap.registers if isinstance(rmap, RegisterMap) else ()
        moduli = {(cfg.id, r.quantity): int(r.modulus) for r in registers if r.modulus}
        resolved.append(
            SiteDevice(
                config=cfg,
                device_class=device_class_of(cfg, rmap),
                device_map=rmap,
                channels=tuple(channel_specs([cfg], moduli)),
            )
        )
        problems += _channel_problems(i, cfg, rmap)
    if problems:
        raise ConfigError(problems)
    s = settings.site
    return Site(
        id=s.id,
        name=s.name,
        area=s.area,
        timezone=s.timezone,
        location=s.location,
        devices=tuple(resolved),
        channels=tuple(c for d in resolved for c in d.channels),
        _by_id={d.id: d for d in resolved},
    )


def provided_quantities(cfg: DeviceConfig, loaded: DeviceMap | None) -> set[str] | None:
    """What a device can deliver, known before it is read: its map's quantities (register or node map)
    or its MQTT profile and fields; None when only the device itself can tell (SunSpec discovery)."""
    if isinstance(loaded, RegisterMap):
        return {r.quantity for r in loaded.registers}
    if loaded is not None:
        return {n.quantity for n in loaded.nodes}
    if isinstance(cfg, MqttDeviceConfig):
        from drivers.mqtt.payload import PROFILES

        return set(PROFILES.get(cfg.profile or "", {})) | set(cfg.fields)
    return None


def _channel_problems(index: int, cfg: DeviceConfig, loaded: DeviceMap | None) -> list[Problem]:
    """A channel must name a quantity its device delivers: `energy_import_wh` on a map that has only
    `energy_export_wh` passed check-config, read nothing, and the page showed 0 % renewable beside 26 kW."""
    from gateway.settings import Problem

    provided = provided_quantities(cfg, loaded)
    if provided is None:
        return []
    map_name = getattr(cfg, "map", None)
    source = f"map {map_name!r}" if map_name else "its payload profile/fields"
    out = []
    for j, ch in enumerate(getattr(cfg, "channels", [])):
        if ch.quantity not in provided:
            energy = sorted(q for q in provided if q.startswith("energy_"))
            out.append(
                Problem(
                    f"devices[{index}].channels[{j}].quantity",
                    f"{cfg.id} cannot supply {ch.quantity!r}: {source} does not read it",
                    f"use one of {', '.join(energy)}"
                    if energy
                    else "this device has no energy register: remove the channel",
                )
            )
    return out


def modbus_devices(site: Site) -> list[tuple[ModbusDeviceConfig, SiteDevice]]:
    """The site's Modbus devices with their configs typed as such (the proxy and scan need them)."""
    return [(d.config, d) for d in site.devices if isinstance(d.config, ModbusDeviceConfig)]
