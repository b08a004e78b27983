"""Home Assistant MQTT discovery: pure functions that build the retained config messages (opt-in).

With `mqtt.homeassistant_discovery: true` the MQTT sink publishes, for every quantity of every device,
one retained sensor config on `<discovery_prefix>/sensor/gia_<site>_<device>/<quantity>/config`. Home
Assistant then shows one HA device per gateway device, with one sensor per quantity that reads its value
out of the device's retained state JSON (`gia/{site}/{device}/state`) and its availability from
`gia/{site}/{device}/availability`. Nothing here does I/O: the sink publishes what these functions
return (retained, QoS 1), so the messages are testable without a broker or a Home Assistant.

Why these choices:

* `unique_id` = `gia_<site>_<device>_<quantity>`: stable across restarts and config reorderings, so a
  user's renamed entities and long-term statistics survive; it never contains a map name, which may
  change when a meter is replaced by another model.
* energy registers get `state_class: total_increasing` (HA's energy dashboard and statistics treat a
  decrease as a meter reset), every measured quantity `measurement`; `status` is an enumerated code:
  it gets no state class and no unit, since statistics (mean/min/max) of a code mean nothing.
* units are HA's spelling of ours (`degC` -> `°C`; `power_factor` has unit `1` here and none in HA).
* removal: HA deletes a discovered entity when its config topic receives an empty retained payload.
  `removal_messages(previous, current)` yields exactly those for devices (or quantities) that left the
  config; the previous set can be rebuilt from the broker's retained config topics with
  `sensor_from_topic`, so no local state file is needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from drivers.model import QUANTITIES, QuantityKind
from gateway.sinks.mqtt.topics import Topics

_ID_RE: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
_CONFIG_TOPIC_RE: Final = re.compile(
    r"^(?P<prefix>.+)/sensor/gia_(?P<node>[a-zA-Z0-9_-]+)/(?P<quantity>[a-z0-9_]+)/config$"
)


@dataclass(frozen=True, slots=True)
class DiscoveryDevice:
    """One gateway device as HA should see it: its quantities and what the device map says it is."""

    id: str
    quantities: tuple[str, ...]
    manufacturer: str | None = None
    model: str | None = None
    name: str | None = None  # default: the device id
    device_class: str | None = None  # meter, inverter, wind_turbine, battery (HA's device model_id)


@dataclass(frozen=True, slots=True)
class DiscoveryMessage:
    """What the sink publishes: always retained; an empty payload removes the sensor from HA."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1

    @property
    def is_removal(self) -> bool:
        return self.payload == b""


@dataclass(frozen=True, slots=True)
class DiscoveryContext:
    """Per-site constants of every message."""

    site: str
    topics: Topics
    discovery_prefix: str = "homeassistant"
    sw_version: str = ""
    support_url: str | None = None
    #: quantity -> suggested_display_precision overrides (HA rounds only the display).
    precision: Mapping[str, int] = field(default_factory=dict)


def _slug(value: str, what: str) -> str:
    if not _ID_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r}: HA discovery ids allow only letters, digits, '_' and '-'")
    return value


def node_id(site: str, device: str) -> str:
    return f"gia_{_slug(site, 'site id')}_{_slug(device, 'device id')}"


def unique_id(site: str, device: str, quantity: str) -> str:
    return f"{node_id(site, device)}_{_slug(quantity, 'quantity')}"


def config_topic(discovery_prefix: str, site: str, device: str, quantity: str) -> str:
    if not discovery_prefix or any(c in discovery_prefix for c in "#+") or discovery_prefix.endswith("/"):
        raise ValueError(f"discovery prefix {discovery_prefix!r}: no wildcards and no trailing '/'")
    return f"{discovery_prefix}/sensor/{node_id(site, device)}/{_slug(quantity, 'quantity')}/config"


def state_class(quantity: str) -> str | None:
    """`total_increasing` for energy registers, `measurement` for measured values, None for codes."""
    spec = QUANTITIES.get(quantity)
    if spec is None:
        return "measurement"
    if spec.kind is QuantityKind.COUNTER:
        return "total_increasing"
    if spec.kind is QuantityKind.STATE:
        return None
    return "measurement"


def _default_precision(quantity: str) -> int | None:
    unit = QUANTITIES[quantity].unit if quantity in QUANTITIES else ""
    return {"W": 0, "Wh": 0, "V": 1, "A": 2, "Hz": 2, "var": 0, "VA": 0, "1": 2, "m/s": 1, "%": 1}.get(unit)


def sensor_config(ctx: DiscoveryContext, device: DiscoveryDevice, quantity: str) -> dict[str, Any]:
    """The discovery config JSON of one sensor (one quantity of one device)."""
    spec = QUANTITIES.get(quantity)
    ha_class = spec.sensor_class if spec is not None else None
    unit = spec.display_unit if spec is not None else None
    cfg: dict[str, Any] = {
        "name": spec.label if spec is not None else quantity,
        "unique_id": unique_id(ctx.site, device.id, quantity),
        # The entity id HA proposes (`default_entity_id` replaced `object_id` in HA 2025.10).
        "default_entity_id": f"sensor.{unique_id(ctx.site, device.id, quantity)}",
        "state_topic": ctx.topics.state(device.id),
        # An invalid reading is `null` in the state JSON and renders "None": HA shows "unknown", never a
        # made-up number. A state without this quantity (a register polled less often) renders "", which
        # HA ignores for numeric sensors: the sensor keeps its last value instead of flapping.
        "value_template": f"{{% if '{quantity}' in value_json %}}{{{{ value_json.{quantity} }}}}{{% endif %}}",
        "availability_topic": ctx.topics.availability(device.id),
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "device": _device_block(ctx, device),
        "origin": {"name": "GIA Gateway", **({"sw_version": ctx.sw_version} if ctx.sw_version else {})},
    }
    if ctx.support_url:
        cfg["origin"]["support_url"] = ctx.support_url
    if ha_class is not None:
        cfg["device_class"] = ha_class
    if unit is not None:
        cfg["unit_of_measurement"] = unit
    sc = state_class(quantity)
    if sc is not None:
        cfg["state_class"] = sc
    precision = ctx.precision.get(quantity, _default_precision(quantity))
    if precision is not None:
        cfg["suggested_display_precision"] = precision
    if quantity in ("status", "serial_number"):
        cfg["entity_category"] = "diagnostic"
    return cfg


def _device_block(ctx: DiscoveryContext, device: DiscoveryDevice) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [node_id(ctx.site, device.id)],
        "name": device.name or device.id,
    }
    if device.manufacturer:
        block["manufacturer"] = device.manufacturer
    if device.model:
        block["model"] = device.model
    if device.device_class:
        block["model_id"] = device.device_class
    if ctx.sw_version:
        block["sw_version"] = ctx.sw_version
    return block


def discovery_messages(ctx: DiscoveryContext, devices: Sequence[DiscoveryDevice]) -> list[DiscoveryMessage]:
    """One retained config message per quantity of every device, in a stable order."""
    out = []
    for dev in devices:
        for q in sorted(set(dev.quantities)):
            body = json.dumps(sensor_config(ctx, dev, q), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
            out.append(DiscoveryMessage(config_topic(ctx.discovery_prefix, ctx.site, dev.id, q), body.encode()))
    return out


def _sensors(devices: Iterable[DiscoveryDevice]) -> set[tuple[str, str]]:
    return {(d.id, q) for d in devices for q in d.quantities}


def removal_messages(
    ctx: DiscoveryContext,
    previous: Iterable[DiscoveryDevice | tuple[str, str]],
    current: Iterable[DiscoveryDevice],
) -> list[DiscoveryMessage]:
    """Empty retained payloads for every sensor published before and absent now (device or quantity gone).

    `previous` is the device list of the previous configuration, or the (device, quantity) pairs seen
    as retained config topics on the broker (see `sensor_from_topic`).
    """
    prev_list = list(previous)
    before: set[tuple[str, str]] = set()
    for item in prev_list:
        if isinstance(item, DiscoveryDevice):
            before |= _sensors([item])
        else:
            before.add((item[0], item[1]))
    gone = sorted(before - _sensors(current))
    return [DiscoveryMessage(config_topic(ctx.discovery_prefix, ctx.site, d, q), b"") for d, q in gone]


def sensor_from_topic(topic: str, *, site: str, discovery_prefix: str = "homeassistant") -> tuple[str, str] | None:
    """(device, quantity) of one of *this site's* config topics, else None (other sites, other tools)."""
    m = _CONFIG_TOPIC_RE.fullmatch(topic)
    if m is None or m["prefix"] != discovery_prefix:
        return None
    head = f"{site}_"
    node = m["node"]
    if not node.startswith(head) or len(node) == len(head):
        return None
    return node[len(head) :], m["quantity"]


def subscription_topic(discovery_prefix: str, site: str) -> str:
    """The wildcard a sink subscribes to on connect to learn which sensors it published before."""
    return f"{discovery_prefix}/sensor/+/+/config"


def device_from_map(
    device_id: str, register_map: Any, *, name: str | None = None, device_class: str | None = None
) -> DiscoveryDevice:
    """A DiscoveryDevice from a loaded `drivers.modbus.registermap.RegisterMap` (quantities, brand, model)."""
    quantities = tuple(dict.fromkeys(r.quantity for r in register_map.registers))
    return DiscoveryDevice(
        id=device_id,
        quantities=quantities,
        manufacturer=register_map.product.brand,
        model=register_map.product.model,
        name=name,
        device_class=device_class or register_map.device_class,
    )


__all__ = [
    "DiscoveryContext",
    "DiscoveryDevice",
    "DiscoveryMessage",
    "config_topic",
    "device_from_map",
    "discovery_messages",
    "node_id",
    "removal_messages",
    "sensor_config",
    "sensor_from_topic",
    "state_class",
    "subscription_topic",
    "unique_id",
]
