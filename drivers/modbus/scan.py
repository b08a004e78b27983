"""`gia scan`: which unit ids answer on a connection, which speak SunSpec, which match a bundled map.

A unit counts as present when it answers at all, even with an exception (a meter that rejects
register 0 is still there); a timeout or a gateway exception (10/11) means nobody is home. Known maps
are recognised by their identity registers (model codes, model-name strings); identity entries with
only a `label` (model, serial, firmware, manufacturer) are read once a map matched and printed, so the
operator sees which meter answered. Maps whose products have
no identity register (Eastron's SDM meters, a battery behind an inverter) are tried by *plausibility*:
every register of the map must answer (no exception response) and every value must be physically
possible; among several such maps the one explaining the most registers wins. A plausible match is
labelled as such, in the output and in the config snippet, to be confirmed with `gia read`. The result
prints as a complete minimal gia.yaml that `gia check-config` accepts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from drivers.base import PermanentError, TransientError
from drivers.modbus.bus import DeviceException, ModbusBus
from drivers.modbus.decode import decode
from drivers.modbus.registermap import Identity, RegisterMap
from drivers.modbus.sunspec import discover
from drivers.proposal import ROLES_NOTE, default_channels, site_document


@dataclass
class ScanHit:
    unit: int
    maps: list[str] = field(default_factory=list)
    sunspec_base: int | None = None
    sunspec_models: list[int] = field(default_factory=list)
    product: str = ""
    plausible: bool = False  # matched by plausible values, not by an identity register
    details: dict[str, str] = field(default_factory=dict)  # label -> value (model, serial, ...)
    #: maps of further devices behind the same unit id, matched by identity with a device class other
    #: than the first map's (the battery behind a hybrid inverter): each becomes its own device
    companions: list[str] = field(default_factory=list)


def parse_units(spec: str) -> list[int]:
    """'1-10,100,225' -> [1..10, 100, 225] (0..255)."""
    units: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if not 0 <= a <= b <= 255:
            raise ValueError(f"unit range {part!r} must be within 0..255")
        units.extend(range(a, b + 1))
    return sorted(set(units))


async def _present(bus: ModbusBus, unit: int) -> bool:
    try:
        await bus.read("holding", 0, 1, unit=unit)
    except DeviceException:
        return True
    except TransientError:
        return False
    return True


async def _identity_value(
    bus: ModbusBus, unit: int, register_map: RegisterMap, ident: Identity
) -> int | float | str | None:
    try:
        words = await bus.read(ident.type, register_map.protocol_address(ident.address), ident.words, unit=unit)
    except (DeviceException, TransientError):
        return None
    return decode(words, ident.data_type, ident.word_order)


async def _identity_matches(bus: ModbusBus, unit: int, register_map: RegisterMap, ident: Identity) -> bool:
    value = await _identity_value(bus, unit, register_map, ident)
    if value is None:
        return False
    if ident.startswith is not None:
        return isinstance(value, str) and value.startswith(ident.startswith)
    if ident.equals is not None:
        return value == ident.equals
    return ident.one_of is not None and value in ident.one_of


async def scan_unit(bus: ModbusBus, unit: int, maps: dict[str, RegisterMap]) -> ScanHit | None:
    if not await _present(bus, unit):
        return None
    hit = ScanHit(unit)
    try:
        dev = await discover(bus, unit)
        hit.sunspec_base = dev.base
        hit.sunspec_models = [m.id for m in dev.models]
        hit.product = f"{dev.register_map.product.brand} {dev.register_map.product.model}".strip()
    except (PermanentError, TransientError):
        pass  # not SunSpec, or nothing in its models GIA reads: maps may still match
    for name, m in maps.items():
        tests = m.identity_tests
        if tests and all([await _identity_matches(bus, unit, m, i) for i in tests]):
            if hit.maps and m.device_class != maps[hit.maps[0]].device_class:
                hit.companions.append(name)
                continue
            hit.maps.append(name)
            hit.product = hit.product or f"{m.product.brand} {m.product.model}"
    if hit.maps:
        m = maps[hit.maps[0]]
        for ident in m.identity:
            if ident.label is not None and ident.label not in hit.details:
                value = await _identity_value(bus, unit, m, ident)
                if value not in (None, ""):
                    # device text goes into a YAML comment and a terminal: printable ASCII, bounded
                    hit.details[ident.label] = re.sub(r"[^\x20-\x7e]", "?", str(value))[:40]
    if not hit.maps and not hit.sunspec_models:
        scored = [
            (n, name)
            for name, m in maps.items()
            if not m.identity_tests and (n := await _plausible_values(bus, unit, m)) > 0
        ]
        if scored:
            best = max(n for n, _ in scored)
            hit.maps = [name for n, name in sorted(scored, key=lambda x: (-x[0], x[1])) if n == best]
            hit.plausible = True
            m = maps[hit.maps[0]]
            hit.product = f"{m.product.brand} {m.product.model}"
    return hit


#: Physically possible ranges for the quantities a plausibility match checks (others: any finite value).
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "voltage_l1_v": (0.0, 1000.0), "voltage_l2_v": (0.0, 1000.0), "voltage_l3_v": (0.0, 1000.0),
    "frequency_hz": (0.0, 70.0), "power_factor": (-1.0, 1.0), "soc_pct": (0.0, 100.0),
    "energy_import_wh": (0.0, 1e15), "energy_export_wh": (0.0, 1e15),
    "wind_speed_ms": (0.0, 100.0), "wind_direction_deg": (0.0, 360.0),
}  # fmt: skip


async def _plausible_values(bus: ModbusBus, unit: int, register_map: RegisterMap) -> int:
    """How many of the map's values read back plausibly at `unit` (0: the map does not fit)."""
    from datetime import UTC, datetime

    from drivers.modbus.driver import ModbusDriver

    if len(register_map.registers) < 3:
        return 0
    driver = ModbusDriver(device_id="scan", register_map=register_map, bus=bus, unit_id=unit)
    try:
        samples = await driver.read(datetime.now(UTC))
    except (PermanentError, TransientError):
        return 0  # an exception response (illegal address...) or no answer: not this product
    good = 0
    for s in samples:
        if s.value is None:
            continue
        lo, hi = PLAUSIBLE.get(s.quantity, (-1e12, 1e12))
        if not lo <= float(s.value) <= hi:
            return 0
        good += 1
    return good if good >= 3 else 0


async def scan(bus: ModbusBus, units: Sequence[int], maps: dict[str, RegisterMap]) -> list[ScanHit]:
    hits = []
    for unit in units:
        hit = await scan_unit(bus, unit, maps)
        if hit is not None:
            hits.append(hit)
    return hits


def _device_id(hit: ScanHit, used: set[str], stem: str | None = None) -> str:
    stem = stem or (hit.maps[0] if hit.maps else ("sunspec" if hit.sunspec_models else "device"))
    base = re.sub(r"[^a-z0-9_-]", "-", f"{stem}-{hit.unit}".lower())[:60]
    name, n = base, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name


def _default_channels(register_map: RegisterMap | None) -> list[dict[str, Any]]:
    if register_map is None:
        return []
    return default_channels(str(register_map.device_class), (r.quantity for r in register_map.registers))


def proposed_devices(
    connection: str,
    hits: Sequence[ScanHit],
    *,
    used: set[str],
    maps_by_name: dict[str, RegisterMap] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The `devices:` entries for the units found on `connection`, and comment lines for the operator.

    `used` holds the device ids taken so far (a scan of a whole site shares it across connections)."""
    devices: list[dict[str, Any]] = []
    notes: list[str] = []
    for hit in hits:
        dev: dict[str, Any] = {
            "id": _device_id(hit, used),
            "driver": "modbus",
            "connection": connection,
            "unit_id": hit.unit,
        }
        if hit.maps:
            dev["map"] = hit.maps[0]
            if hit.details:
                shown = ", ".join(f"{k} {v}" for k, v in hit.details.items())
                notes.append(f"# unit {hit.unit}: {hit.product} ({shown})")
            if hit.plausible:
                notes.append(
                    f"# unit {hit.unit}: {hit.maps[0]} matched by plausible values (no identity register);"
                    f" confirm with: gia read {connection} --unit {hit.unit} --map {hit.maps[0]}"
                    + (f" (also plausible: {', '.join(hit.maps[1:])})" if len(hit.maps) > 1 else "")
                )
        elif hit.sunspec_models:
            dev["sunspec"] = True
        else:
            notes.append(f"# unit {hit.unit} answers but matches no bundled map: write a map (drivers/maps/README.md)")
            continue
        devices.append(dev)
        for companion in hit.companions:
            devices.append(
                {
                    "id": _device_id(hit, used, companion),
                    "driver": "modbus",
                    "connection": connection,
                    "unit_id": hit.unit,
                    "map": companion,
                }
            )
    for dev in devices:
        roles = _default_channels(maps_by_name.get(dev.get("map", ""))) if maps_by_name else []
        if roles:
            dev["channels"] = roles
    return devices, notes


def config_snippet(
    connection: str,
    hits: Sequence[ScanHit],
    *,
    site_id: str = "my-site",
    maps_by_name: dict[str, RegisterMap] | None = None,
) -> str:
    """A minimal, valid gia.yaml for the devices found: channel roles (a first guess per device class,
    from the quantities its map provides), the data directory and a page on loopback."""
    devices, notes = proposed_devices(connection, hits, used=set(), maps_by_name=maps_by_name)
    if any("channels" in d for d in devices):
        notes.append(ROLES_NOTE)
    header = [f"# gia scan {connection}: {len(hits)} unit(s) answered", *notes]
    return "\n".join(header) + "\n" + yaml.safe_dump(site_document(site_id, devices), sort_keys=False)


def describe(hit: ScanHit) -> str:
    parts = [f"unit {hit.unit}:"]
    if hit.product:
        parts.append(hit.product)
    if hit.details:
        parts.append("(" + ", ".join(f"{k} {v}" for k, v in hit.details.items()) + ")")
    if hit.sunspec_models:
        parts.append(f"SunSpec at {hit.sunspec_base}, models {', '.join(map(str, hit.sunspec_models))}")
    if hit.maps:
        parts.append(("probably map " if hit.plausible else "map ") + ", ".join(hit.maps))
    if hit.companions:
        parts.append("and behind it " + ", ".join(hit.companions))
    if len(parts) == 1:
        parts.append("answers, no known map")
    return " ".join(parts)
