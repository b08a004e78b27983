"""SunSpec: find the 'SunS' marker, walk the model chain, and read the models as a generated map.

A SunSpec device describes itself: after the marker (at 40000, 0 or 50000) comes a chain of models,
each `ID, L, <L registers>`, ended by ID 0xFFFF. The layouts of the models GIA reads (common 1,
inverters 101-103/111-113, nameplate/settings/status/controls/storage 120-124, MPPT 160 with its
repeating module group, meters 201-204/211-214, battery 802) come from the SunSpec Alliance's model
definitions, bundled as data in sunspec_models.json (see gen_sunspec_models.py).

Reading is not special-cased: `sunspec_register_map` turns the discovered models into an ordinary
`RegisterMap` (each value tied to its scale-factor register by absolute address), and the generic
`ModbusDriver` reads it with the planner, which keeps each value in the same request as its scale
factor. `decode_model` decodes a whole model (every point, repeating groups included) for `gia scan`
and for the cross-check against pysunspec2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from drivers.base import PermanentError, SharedConnection
from drivers.modbus.bus import DeviceException, ModbusBus
from drivers.modbus.decode import DataType, decode, is_not_implemented
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.registermap import (
    BatteryControl,
    Control,
    Defaults,
    Product,
    Quirks,
    Register,
    RegisterMap,
    ScaleFactor,
    WritableRegister,
)
from drivers.model import DeviceClass, Sample

SUNSPEC_BASES: Final = (40000, 0, 50000)
SUNS_MARKER: Final = (0x5375, 0x6E53)  # "SunS"
END_MODEL: Final = 0xFFFF
_MAX_MODELS: Final = 64

#: SunSpec point type -> (decoder type, not-implemented applies, is text)
_TYPES: Final[dict[str, DataType]] = {
    "int16": DataType.INT16,
    "uint16": DataType.UINT16,
    "count": DataType.UINT16,
    "acc16": DataType.UINT16,
    "enum16": DataType.UINT16,
    "bitfield16": DataType.UINT16,
    "sunssf": DataType.INT16,
    "int32": DataType.INT32,
    "uint32": DataType.UINT32,
    "acc32": DataType.UINT32,
    "enum32": DataType.UINT32,
    "bitfield32": DataType.UINT32,
    "ipaddr": DataType.UINT32,
    "int64": DataType.INT64,
    "uint64": DataType.UINT64,
    "acc64": DataType.UINT64,
    "float32": DataType.FLOAT32,
    "float64": DataType.FLOAT64,
    "string": DataType.STRING,
}

#: Canonical quantities per model family: (point, quantity, extra scale). PF is in percent in SunSpec.
_INVERTER: Final = (
    ("W", "power_w", None),
    ("AphA", "current_l1_a", None),
    ("AphB", "current_l2_a", None),
    ("AphC", "current_l3_a", None),
    ("PhVphA", "voltage_l1_v", None),
    ("PhVphB", "voltage_l2_v", None),
    ("PhVphC", "voltage_l3_v", None),
    ("Hz", "frequency_hz", None),
    ("VA", "apparent_power_va", None),
    ("VAr", "reactive_power_var", None),
    ("PF", "power_factor", 0.01),
    ("WH", "energy_export_wh", None),
    ("DCW", "dc_power_w", None),
    ("TmpCab", "temperature_c", None),
    ("St", "status", None),
)
_METER: Final = (
    ("W", "power_w", None),
    ("WphA", "power_l1_w", None),
    ("WphB", "power_l2_w", None),
    ("WphC", "power_l3_w", None),
    ("AphA", "current_l1_a", None),
    ("AphB", "current_l2_a", None),
    ("AphC", "current_l3_a", None),
    ("PhVphA", "voltage_l1_v", None),
    ("PhVphB", "voltage_l2_v", None),
    ("PhVphC", "voltage_l3_v", None),
    ("Hz", "frequency_hz", None),
    ("VA", "apparent_power_va", None),
    ("VAR", "reactive_power_var", None),
    ("PF", "power_factor", 0.01),
    ("TotWhImp", "energy_import_wh", None),
    ("TotWhExp", "energy_export_wh", None),
)
QUANTITY_POINTS: Final[dict[int, tuple[tuple[str, str, float | None], ...]]] = {
    **{m: _INVERTER for m in (101, 102, 103, 111, 112, 113)},
    **{m: _METER for m in (201, 202, 203, 204, 211, 212, 213, 214)},
    124: (("ChaState", "soc_pct", None),),
    802: (("SoC", "soc_pct", None), ("W", "power_w", None)),
}


@dataclass(frozen=True, slots=True)
class PointDef:
    name: str
    type: str
    size: int
    sf: str | None
    units: str | None
    offset: int  # registers from the model's ID register (or from the group instance start)


@dataclass(frozen=True, slots=True)
class GroupDef:
    name: str
    count: int | str
    points: tuple[PointDef, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.points)


@dataclass(frozen=True, slots=True)
class ModelDef:
    id: int
    name: str
    label: str
    points: tuple[PointDef, ...]  # fixed block, including ID and L
    group: GroupDef | None

    @property
    def fixed_size(self) -> int:
        return sum(p.size for p in self.points)

    def point(self, name: str) -> PointDef:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)


def _points(raw: Sequence[Sequence[Any]]) -> tuple[PointDef, ...]:
    out, offset = [], 0
    for name, typ, size, sf, units in raw:
        out.append(PointDef(name, typ, int(size), sf, units, offset))
        offset += int(size)
    return tuple(out)


def load_models(path: Path | None = None) -> dict[int, ModelDef]:
    """The bundled SunSpec model layouts (a ~40 kB file; parse once and keep the result)."""
    doc = json.loads((path or Path(__file__).with_name("sunspec_models.json")).read_text())
    models: dict[int, ModelDef] = {}
    for mid, m in doc["models"].items():
        groups = [GroupDef(g["name"], g["count"], _points(g["points"])) for g in m["groups"]]
        models[int(mid)] = ModelDef(
            int(mid), m["name"], m["label"], _points(m["points"]), groups[0] if groups else None
        )
    return models


@dataclass(frozen=True, slots=True)
class FoundModel:
    id: int
    address: int  # protocol address of the model's ID register
    length: int  # L: registers after ID and L
    definition: ModelDef | None  # None: a model GIA does not know (skipped, still listed)


def point_value(words: Sequence[int], point: PointDef) -> int | float | str | None:
    """Raw (unscaled) value of a point; None when the device says 'not implemented'."""
    dt = _TYPES.get(point.type)
    if dt is None:  # pad, eui48 and other types GIA does not interpret
        return None
    if dt is DataType.STRING:
        return decode(words[: point.size], dt) if any(words[: point.size]) else None
    if point.type.startswith("acc"):
        value = decode(words, dt)
        return None if value == 0 else value  # SunSpec: an accumulator of 0 is 'not accumulated'
    if is_not_implemented(words, dt):
        return None
    return decode(words, dt)


def _scaled(raw: int | float | str | None, sf: int | float | str | None) -> int | float | str | None:
    """raw x 10^sf; a value whose scale factor is 'not implemented' is unusable (None)."""
    if raw is None or isinstance(raw, str):
        return raw
    if not isinstance(sf, int):
        return None
    return raw * 10.0**sf if sf else raw


def decode_model(definition: ModelDef, words: Sequence[int]) -> dict[str, Any]:
    """Every point of a model (scale factors applied), repeating groups as a list of dicts.

    `words` starts at the model's ID register and holds ID, L and L more registers.
    """
    length = words[1]
    raw: dict[str, Any] = {p.name: point_value(words[p.offset : p.offset + p.size], p) for p in definition.points}
    out: dict[str, Any] = {}
    for p in definition.points:
        if p.type == "sunssf" or p.type == "pad":
            continue
        out[p.name] = _scaled(raw[p.name], raw.get(p.sf)) if p.sf else raw[p.name]
    if definition.group is not None:
        g = definition.group
        fixed = definition.fixed_size
        count = (length + 2 - fixed) // g.size if g.size else 0
        instances = []
        for i in range(count):
            base = fixed + i * g.size
            inst: dict[str, Any] = {}
            for p in g.points:
                v = point_value(words[base + p.offset : base + p.offset + p.size], p)
                if p.type in ("sunssf", "pad"):
                    continue
                sf = raw.get(p.sf) if p.sf else None  # group points use the fixed block's scale factors
                inst[p.name] = _scaled(v, sf) if p.sf else v
            instances.append(inst)
        out[g.name] = instances
    return out


async def find_base(bus: ModbusBus, unit: int, *, bases: Sequence[int] = SUNSPEC_BASES) -> int | None:
    """The address of the 'SunS' marker, or None when the device has none at the standard places."""
    for base in bases:
        try:
            words = await bus.read("holding", base, 2, unit=unit)
        except DeviceException:
            continue
        if tuple(words) == SUNS_MARKER:
            return base
    return None


async def walk_models(
    bus: ModbusBus, unit: int, base: int, models: dict[int, ModelDef] | None = None
) -> list[FoundModel]:
    """Follow the model chain from the marker to the end model."""
    defs = models if models is not None else load_models()
    found: list[FoundModel] = []
    addr = base + 2
    for _ in range(_MAX_MODELS):
        try:
            mid, length = await bus.read("holding", addr, 2, unit=unit)
        except DeviceException:
            break  # some devices end the chain without an end model
        if mid == END_MODEL or mid == 0:
            break
        found.append(FoundModel(mid, addr, length, defs.get(mid)))
        addr += 2 + length
        if addr > 0xFFFF:
            break
    return found


async def read_model(bus: ModbusBus, unit: int, model: FoundModel, *, max_registers: int = 125) -> list[int]:
    """All registers of one model (ID, L and body), in as few requests as the limit allows."""
    total = model.length + 2
    words: list[int] = []
    while len(words) < total:
        n = min(max_registers, total - len(words))
        words += await bus.read("holding", model.address + len(words), n, unit=unit)
    return words


def device_class_for(models: Sequence[FoundModel]) -> DeviceClass:
    ids = {m.id for m in models}
    if ids & {802, 124} and not ids & {101, 102, 103, 111, 112, 113}:
        return "battery"
    if ids & {101, 102, 103, 111, 112, 113}:
        return "inverter"
    if ids & {201, 202, 203, 204, 211, 212, 213, 214}:
        return "meter"
    return "inverter"


@dataclass(frozen=True, slots=True)
class StorageRating:
    """What model 124's rate registers are relative to: WChaMax in W and the InOutWRte scale factor."""

    w_cha_max: float
    rate_sf: int


def storage_controls(m: FoundModel, rating: StorageRating) -> tuple[list[WritableRegister], Control]:
    """Model 124 (storage) as writable registers and a battery rule (SunSpec: storage controls).

    InWRte/OutWRte are percentages of WChaMax (x 10^InOutWRte_SF); written as a window [P, P] with both
    limits active (StorCtl_Mod = 3) they force a rate, which is how SunSpec inverters (Fronius, SolarEdge)
    take a battery setpoint. InOutWRte_RvrtTms is the device's own watchdog in seconds: after it the rates
    revert and the battery returns to its own mode; StorCtl_Mod = 0 hands it back at once.
    """
    assert m.definition is not None
    d = m.definition
    w_per_raw = rating.w_cha_max / 100.0 * 10.0**rating.rate_sf
    span = min(rating.w_cha_max, 32767 * w_per_raw)

    def at(point: str) -> int:
        return m.address + d.point(point).offset

    writable = [
        WritableRegister(
            name="storctl_mod",
            address=at("StorCtl_Mod"),
            data_type=DataType.ENUM,
            enum={0: "none", 1: "charge", 2: "discharge", 3: "charge_and_discharge"},
            range=(0, 3),
        ),
        WritableRegister(
            name="in_w_rte_w", address=at("InWRte"), data_type=DataType.INT16, scale=w_per_raw, unit="W",
            range=(-span, span),
        ),
        WritableRegister(
            name="out_w_rte_w", address=at("OutWRte"), data_type=DataType.INT16, scale=w_per_raw, unit="W",
            range=(-span, span),
        ),
        WritableRegister(name="rvrt_tms_s", address=at("InOutWRte_RvrtTms"), unit="s", range=(1, 65534)),
    ]  # fmt: skip
    rule = BatteryControl(
        strategy="split",
        window=True,
        mode="storctl_mod",
        modes={"charge": 3, "discharge": 3},
        charge="in_w_rte_w",
        discharge="out_w_rte_w",
        timeout="rvrt_tms_s",
        release={"storctl_mod": 0},
    )
    return writable, Control(battery=rule)


def sunspec_register_map(
    models: Sequence[FoundModel],
    *,
    common: dict[str, Any] | None = None,
    name: str = "sunspec",
    storage: StorageRating | None = None,
) -> RegisterMap:
    """A register map for the discovered models: the first model providing a quantity wins."""
    registers: list[Register] = []
    scale_factors: dict[str, ScaleFactor] = {}
    seen: set[str] = set()
    for m in models:
        mapping = QUANTITY_POINTS.get(m.id)
        if mapping is None or m.definition is None:
            continue
        for point_name, quantity, extra in mapping:
            if quantity in seen:
                continue
            try:
                p = m.definition.point(point_name)
            except KeyError:
                continue
            dt = _TYPES[p.type]
            if p.type.startswith(("enum", "bitfield")):
                dt = DataType.ENUM if p.size == 1 else DataType.UINT32
            sf_name = None
            if p.sf:
                sf_point = m.definition.point(p.sf)
                sf_name = f"m{m.id}_{m.address}_{p.sf}"
                scale_factors[sf_name] = ScaleFactor(name=sf_name, address=m.address + sf_point.offset)
            registers.append(
                Register(
                    quantity=quantity,
                    address=m.address + p.offset,
                    type="holding",
                    data_type=dt,
                    scale_factor=sf_name,
                    scale=extra,
                    # an accumulator of 0 means 'not accumulated' in SunSpec, not 'not implemented'
                    sentinel=False if p.type.startswith("acc") else None,
                )
            )
            seen.add(quantity)
    if not registers:
        raise PermanentError(
            f"SunSpec models {[m.id for m in models]} contain nothing GIA reads;"
            " use a register map (map:) for this device"
        )
    info = common or {}
    product = Product(
        brand=str(info.get("Mn") or "SunSpec device"),
        model=str(info.get("Md") or "unknown model"),
        firmware=str(info["Vr"]) if info.get("Vr") else None,
        manual="SunSpec information models " + ", ".join(str(m.id) for m in models),
    )
    writable: list[WritableRegister] = []
    control: Control | None = None
    m124 = next((m for m in models if m.id == 124 and m.definition is not None), None)
    if m124 is not None and storage is not None and storage.w_cha_max > 0:
        writable, control = storage_controls(m124, storage)
    return RegisterMap(
        name=name,
        device_class=device_class_for(models),
        product=product,
        defaults=Defaults(type="holding"),
        scale_factors=list(scale_factors.values()),
        registers=registers,
        writable=writable,
        control=control,
    )


@dataclass
class SunSpecDevice:
    base: int
    models: list[FoundModel]
    common: dict[str, Any]
    register_map: RegisterMap


async def discover(bus: ModbusBus, unit: int, *, models: dict[int, ModelDef] | None = None) -> SunSpecDevice:
    """Find the marker, walk the chain, read the common model: raises PermanentError if not SunSpec."""
    defs = models if models is not None else load_models()
    base = await find_base(bus, unit)
    if base is None:
        raise PermanentError(
            f"unit {unit} has no SunSpec marker 'SunS' at {', '.join(map(str, SUNSPEC_BASES))};"
            " use a register map (map:) instead of sunspec: true"
        )
    found = await walk_models(bus, unit, base, defs)
    common: dict[str, Any] = {}
    for m in found:
        if m.id == 1 and m.definition is not None:
            common = decode_model(m.definition, await read_model(bus, unit, m))
            break
    storage: StorageRating | None = None
    for m in found:
        if m.id == 124 and m.definition is not None:
            words = await read_model(bus, unit, m)
            values = decode_model(m.definition, words)
            sf_point = m.definition.point("InOutWRte_SF")
            sf = point_value(words[sf_point.offset : sf_point.offset + 1], sf_point)
            if isinstance(values.get("WChaMax"), int | float) and isinstance(sf, int):
                storage = StorageRating(float(values["WChaMax"]), sf)
            break
    return SunSpecDevice(base, found, common, sunspec_register_map(found, common=common, storage=storage))


class SunSpecDriver(SharedConnection):
    """A SunSpec device: discovers its models on first read, then reads them like any mapped device."""

    def __init__(self, *, device_id: str, bus: ModbusBus, unit_id: int, quirks: Quirks | None = None) -> None:
        self.device_id = device_id
        self.bus = bus
        self.unit_id = unit_id
        self.quirks = quirks or Quirks()
        self.device: SunSpecDevice | None = None
        self._inner: ModbusDriver | None = None

    async def read(self, ts: datetime) -> Sequence[Sample]:
        if self._inner is None:
            self.device = await discover(self.bus, self.unit_id)
            self._inner = ModbusDriver(
                device_id=self.device_id,
                register_map=self.device.register_map,
                bus=self.bus,
                unit_id=self.unit_id,
                quirks=self.quirks,
            )
        return await self._inner.read(ts)


class SunSpecBattery(SharedConnection):
    """A `BatteryActuator` for a SunSpec device: model 124 found by discovery on first use.

    Until discovery the limits are the ones given (the site's configuration); the device's own (WChaMax)
    are enforced by the discovered map's ranges, so a command beyond them is still refused before sending.
    """

    device_timeout_s: float = 65534.0  # InOutWRte_RvrtTms' largest value

    def __init__(
        self, *, device_id: str, bus: ModbusBus, unit_id: int, max_charge_w: float, max_discharge_w: float
    ) -> None:
        self.device_id = device_id
        self.bus = bus
        self.unit_id = unit_id
        self.max_charge_w = max_charge_w
        self.max_discharge_w = max_discharge_w
        self._inner: Any = None

    async def _battery(self) -> Any:
        if self._inner is None:
            from drivers.modbus.write import ModbusBattery, ModbusWriter

            device = await discover(self.bus, self.unit_id)
            writer = ModbusWriter(
                device_id=self.device_id, register_map=device.register_map, bus=self.bus, unit_id=self.unit_id
            )
            self._inner = ModbusBattery.from_map(writer)
        return self._inner

    async def set_power(self, power_w: float, *, watchdog_s: float) -> None:
        await (await self._battery()).set_power(power_w, watchdog_s=watchdog_s)

    async def read_back(self) -> float | None:
        value: float | None = await (await self._battery()).read_back()
        return value

    async def release(self) -> None:
        if self._inner is not None:
            await self._inner.release()
