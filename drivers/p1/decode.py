"""P1/HAN telegrams to quantities: dsmr-parser checks the CRC and parses the lines; this module only maps.

Variants and the dsmr-parser specification each one uses (dsmr-parser 1.11 names them so):

| variant   | dsmr-parser spec   | document                                                              |
| --------- | ------------------ | --------------------------------------------------------------------- |
| `dsmr4`   | `V4`               | Netbeheer Nederland, P1 Companion Standard DSMR 4.0.7 / 4.2.2          |
| `dsmr5`   | `V5`               | Netbeheer Nederland, P1 Companion Standard DSMR 5.0.2 (2016-02-26)      |
| `belgium` | `BELGIUM_FLUVIUS`  | Fluvius/e-MUCS P1 (DSMR 5 based, Belgium)                              |
| `sweden`  | `SWEDEN`           | Energiföretagen, Branschrekommendation lokalt kundgränssnitt v2.0 (2019)|
| `finland` | `SWEDEN`           | SESKO SK 13-1:2022 H1 customer interface: the Swedish data set over the |
|           |                    | DSMR 5.0.2 physical port, so the Swedish spec parses it                |

Every supported variant carries a CRC16 (polynomial 0xA001, over '/' up to and including '!'),
which dsmr-parser verifies before anything is read. Quantities (grid meter, OpenEMS sign: + import):

* `energy_import_wh` = 1.8.0 when the meter sends a total, else the sum of the tariff registers
  1.8.1..1.8.4 (DSMR: tariff 1 + tariff 2); `energy_export_wh` likewise from 2.8.x. Integer Wh, exact
  (the kWh values have three decimals and are converted with decimal arithmetic).
* `power_w` = 1.7.0 − 2.7.0 (delivered to − received from the client), in W.
* `power_lN_w` = 21/41/61.7.0 − 22/42/62.7.0, `voltage_lN_v` (32/52/72.7.0), `current_lN_a`
  (31/51/71.7.0) when the meter sends them.

A value whose unit is not the one the standard names (kWh/Wh, kW/W, V, A) is returned as None (the
driver stores it `invalid`) instead of a number off by a factor of 1000.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.exceptions import InvalidChecksumError, ParseError
from dsmr_parser.parsers import TelegramParser

from drivers.model import Value
from drivers.p1.config import Variant
from drivers.pushed import ChecksumError, ContentError

SPEC_OF: Final[dict[str, str]] = {
    "dsmr4": "V4",
    "dsmr5": "V5",
    "belgium": "BELGIUM_FLUVIUS",
    "sweden": "SWEDEN",
    "finland": "SWEDEN",
}

_TARIFFS_IN: Final = tuple(f"ELECTRICITY_USED_TARIFF_{i}" for i in range(1, 5))
_TARIFFS_OUT: Final = tuple(f"ELECTRICITY_DELIVERED_TARIFF_{i}" for i in range(1, 5))
_PHASE_LINES: Final = {
    **{f"INSTANTANEOUS_VOLTAGE_L{n}": (f"voltage_l{n}_v", "V") for n in (1, 2, 3)},
    **{f"INSTANTANEOUS_CURRENT_L{n}": (f"current_l{n}_a", "A") for n in (1, 2, 3)},
}
_NEEDED: Final = frozenset(
    {
        "ELECTRICITY_IMPORTED_TOTAL",
        "ELECTRICITY_EXPORTED_TOTAL",
        "CURRENT_ELECTRICITY_USAGE",
        "CURRENT_ELECTRICITY_DELIVERY",
        *_TARIFFS_IN,
        *_TARIFFS_OUT,
        *_PHASE_LINES,
        *(f"INSTANTANEOUS_ACTIVE_POWER_L{n}_{d}" for n in (1, 2, 3) for d in ("POSITIVE", "NEGATIVE")),
    }
)
_ENERGY_WH: Final = {"kWh": Decimal(1000), "Wh": Decimal(1)}
_POWER_W: Final = {"kW": Decimal(1000), "W": Decimal(1)}


def _spec(variant: str) -> dict[str, Any]:
    """The variant's dsmr-parser spec reduced to the lines we map (fewer regexes per telegram, and a
    line we do not use, such as a gas meter's, can never make a telegram fail)."""
    spec: dict[str, Any] = getattr(specs, SPEC_OF[variant])
    if not spec.get("checksum_support") or spec.get("general_global_cipher"):
        raise ValueError(f"P1 variant {variant!r} has no plain CRC-checked telegrams")
    objects = [o for o in spec["objects"] if o["value_name"] in _NEEDED]
    return {"checksum_support": True, "objects": objects}


class P1Decoder:
    """Decode one telegram (bytes from '/' to the CRC line) into canonical quantities."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self._parser = TelegramParser(_spec(variant), apply_checksum_validation=True)

    def __call__(self, frame: bytes) -> Mapping[str, Value]:
        # latin-1 maps every byte to one character, so line noise reaches the CRC check unchanged.
        text = frame.decode("latin-1")
        try:
            telegram = self._parser.parse(text, throw_ex=True)
        except InvalidChecksumError as exc:
            raise ChecksumError(str(exc)) from None
        except ParseError as exc:
            raise ContentError(str(exc)) from None
        except (InvalidOperation, ValueError, IndexError, TypeError) as exc:  # a malformed number
            raise ContentError(f"{type(exc).__name__}: {exc}") from None
        return quantities({name: obj for name, obj in telegram})


def _line(t: Mapping[str, Any], name: str) -> tuple[Decimal, str | None] | None:
    obj = t.get(name)
    if obj is None:
        return None
    value = obj.value
    if not isinstance(value, Decimal) or not value.is_finite():
        return Decimal("NaN"), None
    return value, obj.unit


def _scaled(line: tuple[Decimal, str | None], units: Mapping[str, Decimal]) -> Decimal | None:
    value, unit = line
    factor = units.get(unit or "")
    if factor is None or not value.is_finite():
        return None
    return value * factor


def _energy(t: Mapping[str, Any], total: str, tariffs: tuple[str, ...]) -> tuple[bool, Value]:
    """(present, integer Wh or None): the total register if sent, else the sum of the tariffs sent."""
    lines = [ln for name in ((total,) if total in t else tariffs) if (ln := _line(t, name)) is not None]
    if not lines:
        return False, None
    wh = Decimal(0)
    for ln in lines:
        v = _scaled(ln, _ENERGY_WH)
        if v is None or v < 0:
            return True, None
        wh += v
    return True, int(wh.to_integral_value(rounding=ROUND_HALF_EVEN))


def _net(t: Mapping[str, Any], plus: str, minus: str) -> tuple[bool, Value]:
    p, m = _line(t, plus), _line(t, minus)
    if p is None and m is None:
        return False, None
    total = Decimal(0)
    for ln, sign in ((p, 1), (m, -1)):
        if ln is None:
            continue
        v = _scaled(ln, _POWER_W)
        if v is None:
            return True, None
        total += sign * v
    return True, float(total)


def quantities(t: Mapping[str, Any]) -> dict[str, Value]:
    """The mapping itself, over dsmr-parser's parsed lines keyed by value name."""
    out: dict[str, Value] = {}
    for quantity, total, tariffs in (
        ("energy_import_wh", "ELECTRICITY_IMPORTED_TOTAL", _TARIFFS_IN),
        ("energy_export_wh", "ELECTRICITY_EXPORTED_TOTAL", _TARIFFS_OUT),
    ):
        present, value = _energy(t, total, tariffs)
        if present:
            out[quantity] = value
    present, value = _net(t, "CURRENT_ELECTRICITY_USAGE", "CURRENT_ELECTRICITY_DELIVERY")
    if present:
        out["power_w"] = value
    for n in (1, 2, 3):
        present, value = _net(
            t, f"INSTANTANEOUS_ACTIVE_POWER_L{n}_POSITIVE", f"INSTANTANEOUS_ACTIVE_POWER_L{n}_NEGATIVE"
        )
        if present:
            out[f"power_l{n}_w"] = value
    for name, (quantity, unit) in _PHASE_LINES.items():
        ln = _line(t, name)
        if ln is not None:
            v = _scaled(ln, {unit: Decimal(1)})
            out[quantity] = None if v is None else float(v)
    return out
