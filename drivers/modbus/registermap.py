"""Register maps: a device described as data (YAML), validated before any I/O.

A map says where each canonical quantity lives (register type, address, data type, word order) and how
to turn the raw number into SI units (scale, SunSpec-style scale-factor register, offset, sign flip).
Whether an option is legal depends on the data type; the table `LEGAL_OPTIONS` says which, so that a
typo such as `scale` on a string or `word_order` on a coil is an error at load time, not a wrong
number at 3 a.m.

Addresses are written as the manual prints them: `address_base: 0` (the default) when the manual
gives protocol addresses (hex 0x0000...), `address_base: 1` when it numbers registers from 1
(register 1 = protocol address 0). Modicon prefixes (30001, 40001) are not used: give `type` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.modbus.decode import FLOATS, DataType, WordOrder, int_range, word_count
from drivers.model import QUANTITIES, DeviceClass, QuantityKind

RegisterType = Literal["holding", "input", "coil", "discrete"]
INTEGERS: Final = (
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.INT64,
    DataType.UINT64,
)

PollClass = Literal["fast", "slow", "static"]

#: Which per-register options each data type allows (beyond address/type/quantity/poll/unit).
LEGAL_OPTIONS: Final[dict[DataType, frozenset[str]]] = {
    **{
        t: frozenset(
            {"word_order", "scale", "scale_factor", "offset", "invert", "sentinel", "range", "modulus", "parts"}
        )
        for t in (DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32)
    },
    **{
        t: frozenset(
            {"word_order", "scale", "scale_factor", "offset", "invert", "sentinel", "range", "modulus", "parts"}
        )
        for t in (DataType.INT64, DataType.UINT64)
    },
    **{t: frozenset({"word_order", "scale", "offset", "invert", "sentinel", "range", "parts"}) for t in FLOATS},
    DataType.STRING: frozenset({"word_order", "length"}),
    DataType.BITFIELD: frozenset({"word_order", "sentinel", "mask"}),
    DataType.ENUM: frozenset({"word_order", "sentinel", "enum"}),
    DataType.BOOL: frozenset(),
}

#: The options a register may set at all; LEGAL_OPTIONS narrows them per data type.
_OPTIONAL_FIELDS: Final = (
    "word_order",
    "scale",
    "scale_factor",
    "offset",
    "invert",
    "sentinel",
    "range",
    "modulus",
    "length",
    "mask",
    "enum",
    "parts",
)

Address = Annotated[int, Field(ge=0, le=65535, description="register address as the manual prints it")]


class Product(BaseModel):
    """What the map describes and where its register table comes from (cite the document)."""

    model_config = ConfigDict(extra="forbid")

    brand: str
    model: str
    firmware: str | None = Field(default=None, description="firmware versions the map was checked against")
    manual: str = Field(description="title and version of the manufacturer's register documentation")
    url: str | None = Field(default=None, description="where that document is published")
    notes: str | None = None


class Quirks(BaseModel):
    """Device quirks as named switches (never vendor branches in code).

    A map sets the ones its device needs; a site's `options:` overrides them per device.
    """

    model_config = ConfigDict(extra="forbid")

    max_registers_per_read: int = Field(
        default=125, ge=1, le=125, description="largest read request the device accepts (registers)"
    )
    max_gap_registers: int = Field(
        default=8, ge=0, le=124, description="unused registers a merged read may span to save a request"
    )
    one_request_per_field: bool = Field(
        default=False, description="read every value on its own (devices that reject merged reads)"
    )
    inter_frame_delay_s: float = Field(
        default=0.0, ge=0, le=5, description="extra silence between two requests on the bus"
    )
    pause_after_connect_s: float = Field(
        default=0.0, ge=0, le=30, description="wait after connecting before the first request"
    )
    address_offset: int = Field(
        default=0, ge=-1, le=1, description="added to every address (-1 fixes off-by-one gateways)"
    )
    unit_id_zero: bool = Field(
        default=False, description="address the device as unit 0 (dongles that answer only there)"
    )
    slow_every: int = Field(default=6, ge=1, le=1000, description="read 'slow' registers every N polls")
    busy_retries: int = Field(default=3, ge=0, le=20, description="retries when the device answers busy")
    busy_delay_s: float = Field(default=0.2, ge=0, le=10, description="wait before retrying a busy device")


class ScaleFactor(BaseModel):
    """A SunSpec-style scale-factor register: value = raw x 10^sf."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    address: Address
    type: RegisterType = "holding"
    sim_value: int = Field(default=0, ge=-10, le=10, description="the exponent the simulator serves")


IdentityLabel = Literal["model", "serial", "firmware", "manufacturer"]


class Identity(BaseModel):
    """A register whose content identifies the product (used by `gia scan`).

    An entry with a test (`equals`, `one_of`, `startswith`) must hold for the map to match; an entry
    with only a `label` is not a test but is read and shown (model name, serial number, firmware), so
    `gia scan` can tell an operator *which* meter answered at a unit id.
    """

    model_config = ConfigDict(extra="forbid")

    address: Address
    type: RegisterType = "holding"
    data_type: DataType = DataType.UINT16
    length: int | None = Field(default=None, ge=1, le=64)
    word_order: WordOrder = WordOrder.ABCD
    equals: int | None = Field(default=None, description="the device holds exactly this number")
    one_of: list[int] | None = Field(default=None, description="the device holds one of these numbers")
    startswith: str | None = Field(default=None, description="the string begins with this text")
    label: IdentityLabel | None = Field(default=None, description="what the register holds, shown by gia scan")
    sim_value: int | str | None = Field(default=None, description="what the simulator serves")

    @model_validator(mode="after")
    def _one_test(self) -> Identity:
        tests = [self.equals is not None, self.one_of is not None, self.startswith is not None]
        if sum(tests) > 1 or (sum(tests) == 0 and self.label is None):
            raise ValueError(
                "an identity register needs exactly one of equals, one_of or startswith"
                " (or only a label: model, serial, firmware, manufacturer)"
            )
        if self.startswith is not None and self.data_type is not DataType.STRING:
            raise ValueError("'startswith' needs data_type: string")
        if self.data_type is DataType.STRING and not self.length:
            raise ValueError("a string identity register needs 'length' (words)")
        return self

    @property
    def words(self) -> int:
        return word_count(self.data_type, self.length)

    @property
    def is_test(self) -> bool:
        """True when the entry must hold for the map to match (a label alone is only shown)."""
        return self.equals is not None or self.one_of is not None or self.startswith is not None


class Part(BaseModel):
    """Another register whose value adds to a register's own (a counter split over several registers).

    Heat pump controllers and some meters keep one counter in pieces: kWh 0..999 in one register and
    MWh in the next, or the heating and hot-water consumption in separate counters that together are
    the electrical energy the appliance used. The quantity is `raw x scale + sum(part raw x part
    scale)`, read in the same request so that a carry between the pieces is never seen half done.
    A part has the register's type, data type and word order.
    """

    model_config = ConfigDict(extra="forbid")

    address: Address
    scale: float = Field(default=1.0, description="multiply this part's raw value (in the quantity's unit)")

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale 0 would erase the part")
        return v


class Register(BaseModel):
    """One value of the device, mapped to a canonical quantity."""

    model_config = ConfigDict(extra="forbid")

    quantity: str = Field(description="a canonical quantity name, e.g. power_w or energy_import_wh")
    address: Address
    type: RegisterType | None = None
    data_type: DataType | None = None
    word_order: WordOrder | None = None
    length: int | None = Field(default=None, ge=1, le=64, description="string length in registers")
    scale: float | None = Field(
        default=None, description="multiply the raw value (e.g. 0.1, 1000 for kWh->Wh); after a scale factor"
    )
    scale_factor: str | None = Field(default=None, description="name of a scale-factor register (10^sf)")
    offset: float | None = Field(default=None, description="added after scaling")
    invert: bool | None = Field(default=None, description="flip the sign (device's sign convention differs)")
    sentinel: bool | int | None = Field(
        default=None,
        description=(
            "true (default): 0x8000/0xFFFF.../NaN mean 'not implemented'; false: no such value; a number:"
            " this raw bit pattern means 'not available' instead (e.g. 0x7FFFFFFF for ABB's signed values)"
        ),
    )
    range: tuple[float, float] | None = Field(
        default=None, description="plausible [min, max] after scaling; outside -> quality invalid"
    )
    modulus: int | None = Field(default=None, gt=0, description="a counter wraps at this value (after scaling)")
    mask: int | None = Field(default=None, ge=1, le=0xFFFF, description="bits of a bitfield to keep")
    enum: dict[int, str] | None = Field(default=None, description="meaning of each status code")
    parts: list[Part] | None = Field(
        default=None, min_length=1, max_length=8, description="registers whose values add to this one"
    )
    unit: str | None = Field(default=None, description="unit after scaling; must equal the quantity's unit")
    poll: PollClass | None = None
    example: float | None = Field(default=None, description="a typical value (simulator default, docs)")

    @field_validator("quantity")
    @classmethod
    def _known_quantity(cls, v: str) -> str:
        if v not in QUANTITIES:
            raise ValueError(f"unknown quantity {v!r}; use one of {', '.join(sorted(QUANTITIES))}")
        return v

    # Filled in by RegisterMap after defaults are applied; these are what the driver uses.
    @property
    def dt(self) -> DataType:
        assert self.data_type is not None
        return self.data_type

    @property
    def order(self) -> WordOrder:
        return self.word_order or WordOrder.ABCD

    @property
    def words(self) -> int:
        return word_count(self.dt, self.length)

    @property
    def rtype(self) -> RegisterType:
        return self.type or "holding"

    @property
    def sentinel_bits(self) -> int | None:
        """The raw pattern a map declared as 'not available' (None: the data type's own, if any)."""
        return self.sentinel if type(self.sentinel) is int else None


WriteFunction = Literal[5, 6, 15, 16]
#: data types a setpoint register may hold (strings, bitfields and 64-bit values are not setpoints)
WRITABLE_TYPES: Final = (
    DataType.INT16,
    DataType.UINT16,
    DataType.INT32,
    DataType.UINT32,
    DataType.FLOAT32,
    DataType.ENUM,
    DataType.BOOL,
)


class WritableRegister(BaseModel):
    """A register the agent may write (a setpoint, a mode, a device-side timeout), described as data.

    `range` is required: it is the device's own limit in engineering units (after `scale`), checked
    *before* anything is sent, so an out-of-range command never reaches the wire. The value written is
    `value / scale` (with `invert` flipping the sign first), rounded to the register's integer type.
    `function` is the Modbus write function the device accepts: 6 (write single register) for
    one-register values, 16 (write multiple registers) for wider ones or devices that accept only 16,
    5 (write single coil) for a coil. `unit_id` names another unit when the register is served there
    (a Victron GX serves each D-Bus service at its own unit id).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="what the register sets, e.g. charge_power_w")
    address: Address
    type: Literal["holding", "coil"] = "holding"
    data_type: DataType = DataType.UINT16
    word_order: WordOrder = WordOrder.ABCD
    scale: float = Field(default=1.0, description="engineering value = raw x scale")
    invert: bool = Field(default=False, description="the device's sign is the opposite of the value's")
    unit: str | None = Field(default=None, description="unit of the value (W, %, s, min), None for codes")
    range: tuple[float, float] = Field(description="[min, max] the device accepts, in engineering units")
    enum: dict[int, str] | None = Field(default=None, description="meaning of each code (modes)")
    function: WriteFunction | None = Field(default=None, description="Modbus write function: 5, 6, 15 or 16")
    unit_id: int | None = Field(default=None, ge=0, le=255, description="unit id when not the device's own")
    readback: bool = Field(default=True, description="the register reads back what was written")
    sim_value: float | None = Field(default=None, description="what the simulator holds before any write")

    @model_validator(mode="after")
    def _check(self) -> WritableRegister:
        dt = self.data_type
        if dt not in WRITABLE_TYPES:
            raise ValueError(f"data_type {dt} cannot be written as a setpoint; use {', '.join(WRITABLE_TYPES)}")
        if (self.type == "coil") != (dt is DataType.BOOL):
            raise ValueError("a coil holds data_type bool, and bool is only for coils")
        if self.scale == 0:
            raise ValueError("scale 0 would erase the value")
        lo, hi = self.range
        if lo > hi:
            raise ValueError("range must be [min, max] with min <= max")
        if self.function is None:
            self.function = 5 if self.type == "coil" else (6 if self.words == 1 else 16)
        if self.type == "coil" and self.function not in (5, 15):
            raise ValueError("a coil is written with function 5 or 15")
        if self.type == "holding" and self.function not in (6, 16):
            raise ValueError("a holding register is written with function 6 or 16")
        if self.function == 6 and self.words != 1:
            raise ValueError(f"function 6 writes one register; a {dt} needs {self.words}: use 16")
        if dt not in FLOATS and dt is not DataType.BOOL:
            sign = -1 if self.invert else 1
            raw_lo, raw_hi = sorted((sign * lo / self.scale, sign * hi / self.scale))
            t_lo, t_hi = int_range(DataType.UINT16 if dt is DataType.ENUM else dt)
            if raw_lo < t_lo or raw_hi > t_hi:
                raise ValueError(f"range [{lo:g}, {hi:g}] does not fit a {dt} at scale {self.scale:g}")
        if self.enum is not None and any(not lo <= k <= hi for k in self.enum):
            raise ValueError("every enum code must lie within range")
        return self

    @property
    def words(self) -> int:
        return word_count(self.data_type)


ControlWriteValue = float


class BatteryControl(BaseModel):
    """How a battery power setpoint (W, + discharge, the sign of drivers/model.py) becomes register writes.

    Two rules cover the devices bundled here (data, not vendor branches):

    * `signed` — one register holds the power (`power`); its `invert` gives the device's sign
      (Victron ESS mode 3: the AC-input setpoint is + when taking power from the grid, i.e. charging).
    * `split` — a mode register (`mode` with `modes` codes for charge and discharge) plus a charge and
      a discharge power register (Huawei forcible charge/discharge). 0 W is commanded as charging at
      0 W (hold), never as the mode that hands control back. With `window: true` both rate registers
      are written as a window [P, P] — the other one gets -P — which is how SunSpec model 124's
      InWRte/OutWRte force a rate (both limits active in StorCtl_Mod).

    The device's own watchdog: `timeout` names a register the agent sets to its watchdog (the device
    returns to its own mode when no command refreshes it: Huawei's forcible period in minutes,
    SunSpec's InOutWRte_RvrtTms in seconds; `timeout_unit_s` converts), or `fixed_timeout_s` says the
    firmware's own, unchangeable one (Victron ESS mode 3: 60 s). `take` is written before the first
    command (enter remote control); `release` hands the device back to its autonomous mode.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["signed", "split"]
    power: str | None = None
    mode: str | None = None
    modes: dict[Literal["charge", "discharge"], int] | None = None
    charge: str | None = None
    discharge: str | None = None
    window: bool = Field(default=False, description="write both rate registers as a window [P, P]")
    timeout: str | None = None
    timeout_unit_s: float = Field(default=1.0, gt=0)
    fixed_timeout_s: float | None = Field(default=None, gt=0)
    take: dict[str, ControlWriteValue] = Field(default_factory=dict)
    release: dict[str, ControlWriteValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> BatteryControl:
        if self.strategy == "signed" and self.power is None:
            raise ValueError("strategy signed needs 'power' (the register holding the setpoint)")
        if self.strategy == "split" and (
            self.mode is None or self.charge is None or self.discharge is None or self.modes is None
        ):
            raise ValueError("strategy split needs 'mode', 'modes' (charge/discharge), 'charge' and 'discharge'")
        if self.modes is not None and set(self.modes) != {"charge", "discharge"}:
            raise ValueError("modes needs the codes of charge and discharge")
        if self.timeout is None and self.fixed_timeout_s is None:
            raise ValueError(
                "a battery that can be commanded needs a watchdog: 'timeout' (a register) or 'fixed_timeout_s'"
            )
        return self

    def names(self) -> list[str]:
        """Every writable this rule uses (validated against the map's `writable:`)."""
        used = [self.power, self.mode, self.charge, self.discharge, self.timeout]
        return [n for n in used if n is not None] + list(self.take) + list(self.release)


class Control(BaseModel):
    """What the agent may command on this device."""

    model_config = ConfigDict(extra="forbid")

    battery: BatteryControl | None = None


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: RegisterType = "holding"
    data_type: DataType = DataType.UINT16
    word_order: WordOrder = WordOrder.ABCD
    poll: PollClass = "fast"


class RegisterMap(BaseModel):
    """A whole device map. Build it with `drivers.maps.load_map`, which adds file/line to errors."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", description="map name (the file name without .yaml)")
    device_class: DeviceClass
    product: Product
    address_base: Literal[0, 1] = Field(default=0, description="0: protocol addresses; 1: numbered from 1")
    default_unit_id: int = Field(default=1, ge=0, le=255)
    defaults: Defaults = Field(default_factory=Defaults)
    options: Quirks = Field(default_factory=Quirks)
    scale_factors: list[ScaleFactor] = Field(default_factory=list)
    identity: list[Identity] = Field(default_factory=list)
    registers: list[Register] = Field(min_length=1)
    writable: list[WritableRegister] = Field(
        default_factory=list, description="registers the agent may write (setpoints, modes, timeouts)"
    )
    control: Control | None = Field(default=None, description="how a setpoint becomes writes (see BatteryControl)")

    @model_validator(mode="after")
    def _apply_defaults_and_check(self) -> RegisterMap:
        sf_names = {sf.name for sf in self.scale_factors}
        if len(sf_names) != len(self.scale_factors):
            raise ValueError("scale_factors: two entries share a name")
        seen: set[str] = set()
        for i, reg in enumerate(self.registers):
            where = f"registers[{i}] ({reg.quantity})"
            if reg.quantity in seen:
                raise ValueError(f"{where}: quantity {reg.quantity!r} appears twice")
            seen.add(reg.quantity)
            if reg.type is None:
                reg.type = self.defaults.type
            if reg.poll is None:
                reg.poll = self.defaults.poll
            if reg.data_type is None:
                reg.data_type = DataType.BOOL if reg.type in ("coil", "discrete") else self.defaults.data_type
            dt = reg.data_type
            allowed = LEGAL_OPTIONS[dt]
            for opt in _OPTIONAL_FIELDS:
                if getattr(reg, opt) is not None and opt not in allowed:
                    raise ValueError(
                        f"{where}: option {opt!r} is not allowed for data_type {dt}"
                        f" (allowed: {', '.join(sorted(allowed)) or 'none'})"
                    )
            if reg.word_order is None and "word_order" in allowed:
                # A word swap means nothing for a one-register value: the default applies to wide ones.
                wide = dt is DataType.STRING or word_count(dt) > 1
                reg.word_order = self.defaults.word_order if wide else WordOrder.ABCD
            if reg.type in ("coil", "discrete") and dt is not DataType.BOOL:
                raise ValueError(f"{where}: a {reg.type} holds one bit; use data_type: bool")
            if dt is DataType.BOOL and reg.type not in ("coil", "discrete"):
                raise ValueError(f"{where}: data_type bool is only for coil or discrete registers")
            if dt is DataType.STRING:
                raise ValueError(f"{where}: strings are not quantities; list them under 'identity'")
            if reg.words == 1 and reg.word_order in (WordOrder.CDAB, WordOrder.DCBA):
                raise ValueError(f"{where}: a one-register value has no word order; use ABCD or BADC")
            spec = QUANTITIES[reg.quantity]
            if dt in (DataType.ENUM, DataType.BITFIELD, DataType.BOOL) and spec.kind is not QuantityKind.STATE:
                raise ValueError(f"{where}: data_type {dt} can only hold a status quantity")
            if reg.unit is not None and reg.unit != spec.unit:
                raise ValueError(
                    f"{where}: unit {reg.unit!r} differs from {reg.quantity}'s unit {spec.unit!r};"
                    " convert with 'scale' (e.g. 1000 for kWh -> Wh)"
                )
            if reg.modulus is not None and spec.kind is not QuantityKind.COUNTER:
                raise ValueError(f"{where}: 'modulus' is only for energy counters")
            if reg.scale_factor is not None and reg.scale_factor not in sf_names:
                raise ValueError(f"{where}: scale_factor {reg.scale_factor!r} is not in scale_factors")
            if type(reg.sentinel) is int:
                if dt not in (*INTEGERS, DataType.ENUM, DataType.BITFIELD):
                    raise ValueError(f"{where}: a sentinel number is only for integer data types")
                if not 0 <= reg.sentinel < 1 << (16 * word_count(dt)):
                    raise ValueError(f"{where}: sentinel {reg.sentinel:#x} does not fit a {dt} (give the raw bits)")
            if reg.parts is not None and reg.scale_factor is not None:
                raise ValueError(f"{where}: 'parts' and 'scale_factor' cannot be combined")
            if reg.parts is not None:
                starts = [reg.address, *(p.address for p in reg.parts)]
                span = max(starts) + reg.words - min(starts)
                if span > self.options.max_registers_per_read:
                    raise ValueError(
                        f"{where}: the register and its parts span {span} registers; one request reads"
                        f" at most {self.options.max_registers_per_read}"
                    )
            if reg.scale == 0:
                raise ValueError(f"{where}: scale 0 would erase the value")
            if reg.range is not None and reg.range[0] >= reg.range[1]:
                raise ValueError(f"{where}: range must be [min, max] with min < max")
            if self.address_base == 1 and (reg.address == 0 or any(p.address == 0 for p in reg.parts or ())):
                raise ValueError(f"{where}: with address_base 1 the first register is 1, not 0")
        for i, ident in enumerate(self.identity):
            if self.address_base == 1 and ident.address == 0:
                raise ValueError(f"identity[{i}]: with address_base 1 the first register is 1, not 0")
        names = [w.name for w in self.writable]
        if len(set(names)) != len(names):
            raise ValueError("writable: two entries share a name")
        for i, w in enumerate(self.writable):
            if self.address_base == 1 and w.address == 0:
                raise ValueError(f"writable[{i}]: with address_base 1 the first register is 1, not 0")
        if self.control is not None and self.control.battery is not None:
            for name in self.control.battery.names():
                if name not in names:
                    raise ValueError(f"control.battery names {name!r}, which is not under writable:")
            modes = self.control.battery.modes or {}
            mode = self.control.battery.mode
            if mode is not None:
                lo, hi = self.writable_register(mode).range
                if any(not lo <= code <= hi for code in modes.values()):
                    raise ValueError(f"control.battery.modes: a code lies outside {mode}'s range")
        return self

    def writable_register(self, name: str) -> WritableRegister:
        for w in self.writable:
            if w.name == name:
                return w
        raise KeyError(name)

    # -- helpers the driver, planner and simulator share -------------------------------------------------
    def protocol_address(self, address: int, *, offset: int = 0) -> int:
        """Address on the wire: the manual's numbering minus its base, plus a quirk offset."""
        return address - self.address_base + offset

    def scale_factor(self, name: str) -> ScaleFactor:
        for sf in self.scale_factors:
            if sf.name == name:
                return sf
        raise KeyError(name)

    def register(self, quantity: str) -> Register:
        for reg in self.registers:
            if reg.quantity == quantity:
                return reg
        raise KeyError(quantity)

    def quantities(self) -> list[str]:
        return [r.quantity for r in self.registers]

    @property
    def identity_tests(self) -> list[Identity]:
        """The identity entries that must hold for `gia scan` to name this map (labels excluded)."""
        return [i for i in self.identity if i.is_test]

    def by_poll(self, *classes: PollClass) -> Iterator[Register]:
        return (r for r in self.registers if r.poll in classes)
