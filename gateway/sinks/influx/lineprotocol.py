"""InfluxDB line protocol, formatted by hand: pure functions, no I/O, no client library.

Why by hand: the agent writes thousands of points per second on a Raspberry Pi, and pre-formatted
strings are about 4x faster through influxdb-client than its `Point` objects; the same strings serve
the InfluxDB 1.x `/write` endpoint, so one formatter covers both flavours.

    measurement,tag1=v1,tag2=v2 field1=1.5,field2=42i,field3="text" 1700000000000

Escaping (identical in InfluxDB 1.x and 2.x/3.x):

* measurement: comma and space are escaped with a backslash;
* tag keys, tag values, field keys: comma, equals sign and space;
* string field values: wrapped in double quotes; double quote and backslash escaped.

What the protocol cannot carry is refused with `ValueError` instead of being written wrongly: a
newline or carriage return anywhere (it ends the line), a backslash in a name (the 1.x and 2.x
parsers disagree on `\\\\`, and a trailing backslash would escape the separator), empty names or tag
values, a measurement starting with `#` (a comment line), non-finite floats and integers outside
int64. Gateway names are lowercase slugs, so none of this is hit in practice; it guards the edges.

Number formatting: floats use `repr`, the shortest string that parses back to the same double
(`0.1` stays `0.1`, never `0.10000000000000001`), and are never written as integers (an `i` suffix
would make the field an integer field and conflict with earlier points); integers get the `i` suffix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final

FieldValue = float | int | bool | str

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_MEASUREMENT_ESCAPES: Final = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})
_NEVER: Final = ("\n", "\r")


def _check_name(s: str, what: str) -> None:
    if not s:
        raise ValueError(f"line protocol: empty {what}")
    if "\\" in s or "\n" in s or "\r" in s:
        raise ValueError(f"line protocol: {what} {s!r} contains a backslash or a line break")


def escape_measurement(name: str) -> str:
    _check_name(name, "measurement")
    if name.startswith("#"):
        raise ValueError(f"line protocol: measurement {name!r} starts with '#' (a comment line)")
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_key(name: str, what: str = "tag key, tag value or field key") -> str:
    """Escape a tag key, a tag value or a field key."""
    _check_name(name, what)
    return name.translate(_KEY_ESCAPES)


def format_string(value: str) -> str:
    """A string field value, quoted."""
    if any(c in value for c in _NEVER):
        raise ValueError(f"line protocol: string field {value!r} contains a line break")
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def format_float(value: float) -> str:
    """The shortest representation that round-trips (`repr`), e.g. `1.5`, `1500.0`, `1e-07`."""
    if not math.isfinite(value):
        raise ValueError(f"line protocol: non-finite float {value!r}")
    return repr(float(value))


def format_int(value: int) -> str:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"line protocol: integer {value} outside int64")
    return f"{int(value)}i"


def format_field_value(value: FieldValue) -> str:
    """By Python type: bool -> true/false, int -> 42i, float -> 1.5, str -> "quoted"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return format_int(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return format_string(value)
    raise TypeError(f"line protocol: unsupported field value {value!r}")


def format_tags(tags: Mapping[str, str]) -> str:
    """`,k=v,k2=v2` sorted by key (what InfluxDB stores, so it indexes faster), or ''."""
    return "".join(
        f",{escape_key(k, 'tag key')}={escape_key(v, f'value of tag {k!r}')}" for k, v in sorted(tags.items())
    )


def format_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue] | Iterable[tuple[str, FieldValue]],
    timestamp: int | None = None,
) -> str:
    """One line (no trailing newline). `timestamp` is in the write's precision (ms for the gateway)."""
    items = fields.items() if isinstance(fields, Mapping) else fields
    field_part = ",".join(f"{escape_key(k, 'field key')}={format_field_value(v)}" for k, v in items)
    if not field_part:
        raise ValueError(f"line protocol: a point of {measurement!r} needs at least one field")
    line = f"{escape_measurement(measurement)}{format_tags(tags)} {field_part}"
    if timestamp is not None:
        line += f" {int(timestamp)}"
    return line
