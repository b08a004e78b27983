"""M-Bus answers (RSP_UD long frames) to quantities: pyMeterBus parses the records, this module maps.

Why pyMeterBus (0.8.5): it implements the EN 13757-3 data-record tables (DIF/DIFE storage, tariff
and subunit; the VIF/VIFE unit and multiplier table; BCD, integer and real encodings) and checks the
frame checksum: the part we would otherwise hand-write and get subtly wrong. Its serial helpers are
blocking, so the I/O is ours (drivers/mbus/bus.py).

`meterbus` calls `logging.basicConfig(level=INFO)` when imported, which would attach a handler to the
agent's root logger; `load_meterbus()` imports it and undoes that, so importing it changes nothing.

Default mapping by the medium in the fixed header (EN 13757-3 Table 3), from the first instantaneous
record of storage 0, tariff 0 with the given unit type:

* electricity (02): energy (Wh or J) subunit 0 -> `energy_import_wh`, subunit 1 -> `energy_export_wh`;
  power (W) -> `power_w`.
* heat (04, 0C), cooling (0A, 0B), heat/cooling (0D): energy -> `heat_energy_wh`, power ->
  `heat_power_w`, flow temperature -> `flow_temperature_c`, return temperature ->
  `return_temperature_c`.

`records: {quantity: index}` in the device config names a record by its position instead (meters that
put their export register elsewhere, or media without a default). Energy is integer Wh (J / 3600);
a record whose unit does not fit its quantity, or that holds no number, gives None (stored invalid).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from types import ModuleType
from typing import Any, Final, Literal

from drivers.base import TransientError
from drivers.model import QUANTITIES, QuantityKind, Value

Medium = Literal["auto", "electricity", "heat"]

ELECTRICITY: Final = frozenset({0x02})
HEAT: Final = frozenset({0x04, 0x0A, 0x0B, 0x0C, 0x0D})


def load_meterbus() -> ModuleType:
    """Import pyMeterBus without its import-time `logging.basicConfig` reaching the root logger."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import meterbus

    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    module: ModuleType = meterbus
    return module


class MbusChecksumError(TransientError):
    pass


class MbusContentError(TransientError):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    """One data record as the mapping sees it (and `gia read` lists it)."""

    index: int
    type: str  # pyMeterBus VIFUnit name: ENERGY_WH, POWER_W, FLOW_TEMPERATURE, ...
    unit: str  # Wh, J, W, C, m^3, ...
    value: Any
    function: str  # INSTANTANEOUS_VALUE, MAXIMUM_VALUE, ...
    storage: int
    tariff: int
    subunit: int


@dataclass(frozen=True, slots=True)
class Answer:
    medium: int
    manufacturer: str
    serial: str
    records: tuple[Record, ...]
    #: the answer ended with DIF 1F: the meter has more records, in its next answer (multi-telegram)
    more: bool = False

    def then(self, nxt: Answer) -> Answer:
        """This answer and the meter's next one as one: records numbered on across both."""
        start = len(self.records)
        records = (*self.records, *(dataclasses.replace(r, index=start + r.index) for r in nxt.records))
        return dataclasses.replace(self, records=records, more=nxt.more)


def parse_answer(frame: bytes) -> Answer:
    """Parse a complete RSP_UD long frame (raises MbusChecksumError / MbusContentError)."""
    mb = load_meterbus()
    try:
        telegram = mb.load(frame)
    except mb.MBusFrameCRCError as exc:
        raise MbusChecksumError(f"checksum 0x{exc.expected:02x}, computed 0x{exc.computed:02x}") from None
    except (mb.MBusError, ValueError, IndexError, KeyError, TypeError) as exc:
        raise MbusContentError(f"not a variable-data answer ({type(exc).__name__})") from None
    if not isinstance(telegram, mb.TelegramLong):
        raise MbusContentError(f"expected a long frame with data, got {type(telegram).__name__}")
    try:
        header = telegram.body.bodyHeader
        medium = int(header.measure_medium_field.parts[0])
        serial = "".join(f"{b:02X}" for b in reversed(header.id_nr_field.parts))
        manufacturer = str(header.manufacturer_field.decodeManufacturer)
        records = []
        # DIF 0F/1F end the records (manufacturer data, "more records follow"): not values, not numbered
        data = [rec for rec in telegram.records if not rec.dib.is_eoud]
        more = bool(telegram.more_records_follow)
        for i, rec in enumerate(data):
            info = rec.interpreted
            records.append(
                Record(
                    index=i,
                    type=str(info.get("type", "")).removeprefix("VIFUnit.").removeprefix("VIFUnitExt."),
                    unit=str(rec.unit or ""),
                    value=info.get("value"),
                    function=str(info.get("function", "")).removeprefix("FunctionType."),
                    storage=int(info.get("storage_number") or 0),
                    tariff=int(info.get("tariff") or 0),
                    subunit=int(info.get("device") or 0),
                )
            )
    except (mb.MBusError, ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise MbusContentError(f"records not understood ({type(exc).__name__}: {exc})") from None
    return Answer(medium=medium, manufacturer=manufacturer, serial=serial, records=tuple(records), more=more)


#: quantity -> (record type, subunit) for the default mappings
_DEFAULTS: Final[dict[str, dict[str, tuple[frozenset[str], int]]]] = {
    "electricity": {
        "energy_import_wh": (frozenset({"ENERGY_WH", "ENERGY_J"}), 0),
        "energy_export_wh": (frozenset({"ENERGY_WH", "ENERGY_J"}), 1),
        "power_w": (frozenset({"POWER_W", "POWER_J_H"}), 0),
    },
    "heat": {
        "heat_energy_wh": (frozenset({"ENERGY_WH", "ENERGY_J"}), 0),
        "heat_power_w": (frozenset({"POWER_W", "POWER_J_H"}), 0),
        "flow_temperature_c": (frozenset({"FLOW_TEMPERATURE"}), 0),
        "return_temperature_c": (frozenset({"RETURN_TEMPERATURE"}), 0),
    },
}

#: record unit -> factor to the quantity's unit
_TO_WH: Final = {"Wh": Decimal(1), "J": Decimal(1) / Decimal(3600)}
_TO_W: Final = {"W": Decimal(1), "J/h": Decimal(1) / Decimal(3600)}
_TO_C: Final = {"C": Decimal(1)}
_UNITS_FOR: Final[dict[str, dict[str, Decimal]]] = {"Wh": _TO_WH, "W": _TO_W, "degC": _TO_C}


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, Decimal)):
        d = Decimal(value)
    elif isinstance(value, float):
        d = Decimal(repr(value))
    else:
        return None
    return d if d.is_finite() else None


def record_value(rec: Record, quantity: str) -> Value:
    """The record's value in the quantity's unit, or None when the unit does not fit or it is no number."""
    spec = QUANTITIES[quantity]
    factors = _UNITS_FOR.get(spec.unit)
    number = _number(rec.value)
    if number is None:
        return None
    if factors is not None:
        factor = factors.get(rec.unit)
        if factor is None:
            return None
        number *= factor
    if spec.kind is QuantityKind.COUNTER:
        if number < 0:
            return None
        try:
            return int(number.to_integral_value(rounding=ROUND_HALF_EVEN))
        except InvalidOperation:
            return None
    # pyMeterBus scales with a float multiplier (65.43 arrives as 65.43000000000000682...): 15
    # significant digits keep every digit an M-Bus record can carry and drop the float noise.
    return float(f"{float(number):.15g}")


def medium_kind(medium: int, configured: Medium) -> str | None:
    if configured != "auto":
        return configured
    if medium in ELECTRICITY:
        return "electricity"
    if medium in HEAT:
        return "heat"
    return None


def quantities(answer: Answer, *, records: Mapping[str, int], medium: Medium = "auto") -> dict[str, Value]:
    """Map the answer's records: configured indexes first, the medium's defaults for the rest."""
    out: dict[str, Value] = {}
    kind = medium_kind(answer.medium, medium)
    for quantity, (types, subunit) in _DEFAULTS.get(kind or "", {}).items():
        if quantity in records:
            continue
        for rec in answer.records:
            if (
                rec.type in types
                and rec.subunit == subunit
                and rec.storage == 0
                and rec.tariff == 0
                and rec.function == "INSTANTANEOUS_VALUE"
            ):
                out[quantity] = record_value(rec, quantity)
                break
    for quantity, index in records.items():
        if index >= len(answer.records):
            out[quantity] = None  # the meter sent fewer records than configured: visible, not invented
            continue
        out[quantity] = record_value(answer.records[index], quantity)
    return out
