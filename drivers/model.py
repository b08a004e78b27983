"""The one data model every layer shares: `Sample`, `Quality` and the quantity table.

It lives in `drivers/` because drivers are the lowest layer (they produce samples) and must not import
`gateway/`; the gateway, the sinks, forecasting and certification all read the same type.

Units and signs are written once, here:

* Power is in W. At a grid meter, positive power means *importing* from the grid (OpenEMS convention:
  "positive: buy from grid"); a generator's power is positive when producing; a battery's `power_w` is
  positive when *discharging* (it then acts like a generator).
* Energy registers (`energy_import_wh`, `energy_export_wh`) are cumulative counters in integer Wh. A
  monthly total is the advance of such a register between two boundary readings, never an integral of
  power (see gateway/certification).
* Timestamps are timezone-aware UTC datetimes; every interface prints them ISO 8601 with `Z`.
* Every value carries a `Quality`. A value that could not be read sensibly is kept as `invalid` with
  `value=None`, never silently replaced by a plausible number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

#: What a device is: the InfluxDB measurement, the page's icon, the default of its forecasts.
DeviceClass = Literal["meter", "inverter", "wind_turbine", "battery"]
DEVICE_CLASSES: Final[tuple[DeviceClass, ...]] = ("meter", "inverter", "wind_turbine", "battery")


class Quality(StrEnum):
    """How far a value can be trusted, ordered from best to worst."""

    GOOD = "good"
    ESTIMATED = "estimated"
    STALE = "stale"
    INVALID = "invalid"

    @property
    def rank(self) -> int:
        return _QUALITY_RANK[self]

    @staticmethod
    def worst(qualities: list[Quality] | tuple[Quality, ...]) -> Quality:
        """The least trustworthy of several qualities (a device state is as good as its worst value)."""
        if not qualities:
            return Quality.GOOD
        return max(qualities, key=lambda q: q.rank)


_QUALITY_RANK: Final = {Quality.GOOD: 0, Quality.ESTIMATED: 1, Quality.STALE: 2, Quality.INVALID: 3}


class QuantityKind(StrEnum):
    """What a quantity is, which decides how it is stored, retained and aggregated."""

    INSTANT = "instant"  # a sampled value: power, voltage, wind speed
    COUNTER = "counter"  # a cumulative register (integer Wh): kept for certification
    STATE = "state"  # an enumerated status code


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    """Everything written about a quantity, once: its SI unit and kind, a description, the label people
    read (the page, Home Assistant), and its sensor class (Home Assistant's `device_class`: power,
    energy, voltage, ...; None where no class fits)."""

    name: str
    unit: str
    kind: QuantityKind
    description: str
    label: str
    sensor_class: str | None = None

    @property
    def display_unit(self) -> str | None:
        """The unit as dashboards spell it (degC -> °C, deg -> °); None for unitless values."""
        return _DISPLAY_UNITS.get(self.unit, self.unit) or None


_DISPLAY_UNITS: Final = {"degC": "°C", "deg": "°", "1": "", "": ""}


def _q(name: str, unit: str, kind: QuantityKind, label: str, sensor: str | None, description: str) -> QuantitySpec:
    return QuantitySpec(name=name, unit=unit, kind=kind, description=description, label=label, sensor_class=sensor)


_I, _C, _S = QuantityKind.INSTANT, QuantityKind.COUNTER, QuantityKind.STATE

#: Canonical quantities. Add new names in the same style (`<what>[_<phase>]_<unit>`) when a device needs
#: them; the unit suffix is the SI unit the value is in.
QUANTITIES: Final[dict[str, QuantitySpec]] = {
    q.name: q
    for q in [
        _q("power_w", "W", _I, "Power", "power", "total active power; grid meter: + import; battery: + discharge"),
        _q("power_l1_w", "W", _I, "Power L1", "power", "active power phase L1"),
        _q("power_l2_w", "W", _I, "Power L2", "power", "active power phase L2"),
        _q("power_l3_w", "W", _I, "Power L3", "power", "active power phase L3"),
        _q("voltage_l1_v", "V", _I, "Voltage L1", "voltage", "phase-to-neutral voltage L1"),
        _q("voltage_l2_v", "V", _I, "Voltage L2", "voltage", "phase-to-neutral voltage L2"),
        _q("voltage_l3_v", "V", _I, "Voltage L3", "voltage", "phase-to-neutral voltage L3"),
        _q("current_l1_a", "A", _I, "Current L1", "current", "current L1"),
        _q("current_l2_a", "A", _I, "Current L2", "current", "current L2"),
        _q("current_l3_a", "A", _I, "Current L3", "current", "current L3"),
        _q("frequency_hz", "Hz", _I, "Frequency", "frequency", "grid frequency"),
        _q("reactive_power_var", "var", _I, "Reactive power", "reactive_power", "total reactive power"),
        _q("apparent_power_va", "VA", _I, "Apparent power", "apparent_power", "total apparent power"),
        _q("power_factor", "1", _I, "Power factor", "power_factor", "total power factor"),
        _q(
            "energy_import_wh",
            "Wh",
            _C,
            "Energy imported",
            "energy",
            "cumulative imported (grid meter) or consumed energy",
        ),
        _q("energy_export_wh", "Wh", _C, "Energy exported", "energy", "cumulative exported or produced energy"),
        _q("dc_power_w", "W", _I, "DC power", "power", "DC power (inverter input)"),
        _q("wind_speed_ms", "m/s", _I, "Wind speed", "wind_speed", "wind speed at hub height"),
        _q("wind_direction_deg", "deg", _I, "Wind direction", None, "wind direction, degrees from north"),
        _q("rotor_speed_rpm", "rpm", _I, "Rotor speed", None, "rotor speed"),
        _q("soc_pct", "%", _I, "State of charge", "battery", "battery state of charge"),
        _q("temperature_c", "degC", _I, "Temperature", "temperature", "temperature"),
        _q("status", "", _S, "Status code", None, "device operating state code"),
        # Heat and cooling meters (M-Bus): thermal energy is kept apart from electrical energy.
        _q("heat_energy_wh", "Wh", _C, "Heat energy", "energy", "cumulative thermal energy of a heat or cooling meter"),
        _q("heat_power_w", "W", _I, "Heat power", "power", "thermal power of a heat or cooling meter"),
        _q(
            "flow_temperature_c",
            "degC",
            _I,
            "Flow temperature",
            "temperature",
            "supply (flow) temperature of a heat meter",
        ),
        _q(
            "return_temperature_c",
            "degC",
            _I,
            "Return temperature",
            "temperature",
            "return temperature of a heat meter",
        ),
        # EV chargers (OCPP): the charging session in progress, or the last one.
        _q(
            "session_energy_wh",
            "Wh",
            _I,
            "Session energy",
            "energy",
            "energy delivered in the charging session (resets per session)",
        ),
        _q(
            "serial_number",
            "",
            _S,
            "Serial number",
            None,
            "the device's serial number, where its map can read it (reports record it)",
        ),
    ]
}


def quantity(name: str) -> QuantitySpec:
    """Look a quantity up; unknown names are a configuration error, not a silent new series."""
    try:
        return QUANTITIES[name]
    except KeyError:
        raise KeyError(f"unknown quantity {name!r}; known: {', '.join(sorted(QUANTITIES))}") from None


def is_counter(name: str) -> bool:
    spec = QUANTITIES.get(name)
    return spec is not None and spec.kind is QuantityKind.COUNTER


Value = float | int | None

#: Largest integer that every JSON consumer (and RFC 8785 canonical JSON) represents exactly.
MAX_SAFE_INT: Final = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one quantity of one device at one instant.

    `value` is an int for counters (Wh) and status codes, a float otherwise, and `None` only when the
    quality is `invalid`. `ts` is timezone-aware UTC.
    """

    device: str
    quantity: str
    value: Value
    unit: str
    ts: datetime
    quality: Quality = Quality.GOOD
    #: why an `invalid` value was refused (the validity rule it broke); health and logs show it, the
    #: ledger stores the quality. Not part of equality: two readings of the same value are the same.
    reason: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None or self.ts.utcoffset() != UTC.utcoffset(None):
            raise ValueError(f"Sample.ts must be UTC-aware, got {self.ts!r}")
        if self.value is None and self.quality is not Quality.INVALID:
            raise ValueError("a Sample without a value must be marked invalid")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError("non-finite values must be stored as value=None, quality=invalid")
        if isinstance(self.value, int) and not -MAX_SAFE_INT <= self.value <= MAX_SAFE_INT:
            # Beyond 2**53 JSON consumers (and RFC 8785, which signs the ledger) lose integer exactness.
            raise ValueError(f"integer {self.value} is outside the exact JSON range; flag it invalid")

    @property
    def ts_ms(self) -> int:
        return to_ms(self.ts)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(ts: datetime) -> int:
    """Milliseconds since the epoch (exact integer arithmetic): the ledger's and the sinks' time unit."""
    return (ts - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


def iso_utc(ts: datetime) -> str:
    """ISO 8601 UTC with a `Z`, milliseconds only when present, as every interface prints time."""
    ts = ts.astimezone(UTC)
    if ts.microsecond:
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


#: The one table of per-quantity validity rules, applied by every driver that reads values from a device
#: (Modbus after its map's own `range`, MQTT, P1/SML, M-Bus, OCPP) through `checked_sample`: [min, max]
#: in the quantity's SI unit. These are physical limits (a voltage is never negative, a power factor
#: lies in [-1, 1], an energy register never counts below zero), not a product's ratings: a map's
#: `range` narrows them per device. A quantity not listed only has to be finite and, as an integer,
#: within the exact JSON range.
VALID_RANGES: Final[dict[str, tuple[float, float]]] = {
    **{f"voltage_l{i}_v": (0.0, 1e6) for i in (1, 2, 3)},
    "frequency_hz": (0.0, 100.0),
    "power_factor": (-1.0, 1.0),
    "soc_pct": (0.0, 100.0),
    "wind_speed_ms": (0.0, 150.0),
    "wind_direction_deg": (0.0, 360.0),
    "rotor_speed_rpm": (0.0, 1e5),
    "temperature_c": (-273.15, 2000.0),
    "flow_temperature_c": (-273.15, 2000.0),
    "return_temperature_c": (-273.15, 2000.0),
    **{name: (0.0, float(MAX_SAFE_INT)) for name in ("energy_import_wh", "energy_export_wh", "heat_energy_wh")},
    "session_energy_wh": (0.0, float(MAX_SAFE_INT)),
}


def refusal(quantity_name: str, value: Value) -> str | None:
    """Why `value` is not a valid reading of `quantity_name` under `VALID_RANGES` (None: it is).

    Also refuses what `Sample` cannot hold at all: a non-finite float, an integer beyond 2**53."""
    if value is None:
        return "no value"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value!r} is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if abs(value) > MAX_SAFE_INT:
        return f"{value:g} is beyond the exact range (2**53) of a stored value"
    bounds = VALID_RANGES.get(quantity_name)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return f"{value:g} is outside [{bounds[0]:g}, {bounds[1]:g}] for {quantity_name}"
    return None


def _storable(value: Value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) <= MAX_SAFE_INT
    return value is None or -MAX_SAFE_INT <= value <= MAX_SAFE_INT


def checked_sample(
    device: str,
    quantity_name: str,
    value: Value,
    ts: datetime,
    quality: Quality = Quality.GOOD,
    reason: str | None = None,
) -> Sample:
    """A sample of `value` that never raises: a device is hostile input, and one register of 2**60 or
    a published `1e13` kWh must cost that one value, not the poll (before issue 15 the `ValueError`
    from `Sample` killed the device's poller, which restarted in a loop).

    A value the rule table refuses is kept `invalid` with the reason; one that cannot be stored at all
    (not finite, beyond 2**53) becomes `value=None`. A value given as `invalid` already keeps it."""
    unit = QUANTITIES[quantity_name].unit
    why = refusal(quantity_name, value)
    if why is not None:
        quality = Quality.INVALID
        reason = reason or why
    if not _storable(value):
        value = None
    if value is None:
        quality = Quality.INVALID
    return Sample(device, quantity_name, value, unit, ts, quality, reason)


def invalid(device: str, quantity_name: str, ts: datetime) -> Sample:
    """A placeholder for a value that was not readable: kept so gaps are visible, never a number."""
    return Sample(device, quantity_name, None, quantity(quantity_name).unit, ts, Quality.INVALID)
