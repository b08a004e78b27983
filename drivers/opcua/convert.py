"""Server values to canonical values: a pure function of a node's spec and what the server sent.

No I/O and no asyncua types beyond what arrives as plain Python (numbers, bool, str, None, lists, or a
LocalizedText-like object with `.Text`), so it is tested with hypothesis over any input. A value that
cannot be believed is returned as `(None, invalid, reason)`: a string where a number belongs, NaN or
infinity, an array, an unmapped status, a negative or oversized counter. A value outside the map's
plausible range keeps its number but is flagged invalid, as the Modbus driver does.

OPC UA status codes (10000-4, 7.39) decide first: Good passes, Uncertain becomes `estimated` (the server
itself doubts it: a substituted or last usable value), Bad becomes `invalid` with the code's name as the
reason (Bad_NodeIdUnknown for a node the server deleted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from drivers.model import MAX_SAFE_INT, QUANTITIES, Quality, QuantityKind, Value
from drivers.opcua.nodemap import NodeSpec

Converted = tuple[Value, Quality, str]
Converter = Callable[[object], Converted]

#: Severity bits of a status code (10000-4, 7.39.2): 00 Good, 01 Uncertain, 10/11 Bad.
_SEVERITY_MASK: Final = 0xC0000000
_UNCERTAIN: Final = 0x40000000


def severity(status: int) -> Quality:
    """GOOD, ESTIMATED (Uncertain) or INVALID (Bad) for an OPC UA status code value."""
    sev = status & _SEVERITY_MASK
    if sev == 0:
        return Quality.GOOD
    if sev == _UNCERTAIN:
        return Quality.ESTIMATED
    return Quality.INVALID


def _status_key(raw: object) -> int | str | None:
    """The key a status_map is looked up with: an integer code, or text (LocalizedText's .Text)."""
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return int(raw)
    text = getattr(raw, "Text", raw)
    if isinstance(text, str):
        return text.strip()
    return None


def _describe(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def compile_node(spec: NodeSpec) -> Converter:
    """The map's whole arithmetic for one node, prepared once: raw -> (value, quality, reason)."""
    kind = QUANTITIES[spec.quantity].kind
    counter, state = kind is QuantityKind.COUNTER, kind is QuantityKind.STATE
    scale, offset, invert, rng = spec.scale, spec.offset, spec.invert, spec.range
    status_map = {(str(k).strip() if isinstance(k, str) else k): v for k, v in (spec.status_map or {}).items()}
    # YAML keys may come as text for numbers ("2": 1); accept both spellings of a numeric code.
    for k, v in list(status_map.items()):
        if isinstance(k, str) and k.lstrip("-").isdigit():
            status_map.setdefault(int(k), v)

    def convert(raw: object) -> Converted:
        if raw is None:
            return None, Quality.INVALID, "no value"
        if state and status_map:
            key = _status_key(raw)
            if key is None or key not in status_map:
                return None, Quality.INVALID, f"state {_describe(raw)} is not in the map's status_map"
            return status_map[key], Quality.GOOD, ""
        if isinstance(raw, bool):
            if not state:
                return None, Quality.INVALID, "a boolean where a number belongs"
            return int(raw), Quality.GOOD, ""
        if not isinstance(raw, int | float):
            return None, Quality.INVALID, f"not a number: {type(raw).__name__} {_describe(raw)}"
        if isinstance(raw, int) and abs(raw) > 2**64:
            return None, Quality.INVALID, f"{raw} is beyond a 64-bit register"
        value = float(raw)
        if scale is not None:
            value *= scale
        if offset is not None:
            value += offset
        if invert:
            value = -value
        if not math.isfinite(value):
            return None, Quality.INVALID, f"not finite: {_describe(raw)}"
        if counter or state:
            number = round(value)
            if abs(number) > MAX_SAFE_INT:
                return None, Quality.INVALID, f"{number} is outside the exact JSON integer range"
            if counter and number < 0:
                return None, Quality.INVALID, f"negative energy counter {number}"
            if rng is not None and not rng[0] <= number <= rng[1]:
                return number, Quality.INVALID, f"{number} outside the map's range {list(rng)}"
            return number, Quality.GOOD, ""
        if rng is not None and not rng[0] <= value <= rng[1]:
            return value, Quality.INVALID, f"{value:g} outside the map's range {list(rng)}"
        return value, Quality.GOOD, ""

    return convert


def convert_value(spec: NodeSpec, raw: object, status: int = 0) -> Converted:
    """Convert one server value with its status code (see `compile_node`)."""
    return apply_status(compile_node(spec)(raw), status)


def apply_status(converted: Converted, status: int, status_name: str = "") -> Converted:
    """Combine a conversion with the server's status code: the worse of the two wins."""
    quality = severity(status)
    if quality is Quality.GOOD:
        return converted
    name = status_name or f"0x{status:08X}"
    if quality is Quality.INVALID:
        return None, Quality.INVALID, f"server status {name}"
    value, q, _ = converted
    if q is Quality.INVALID:
        return converted
    return value, Quality.ESTIMATED, f"server status {name} (uncertain)"
