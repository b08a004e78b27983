"""Line protocol formatting: examples, round trips through an independent parser, and a real server."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sinks.influx.lineprotocol import (
    FieldValue,
    escape_key,
    escape_measurement,
    format_field_value,
    format_float,
    format_int,
    format_line,
    format_string,
)
from tests.servers import InfluxDB1

# -- an independent parser, written from the InfluxDB line protocol reference ---------------------


def _read_until(s: str, i: int, stops: str) -> tuple[str, int]:
    """Read an escaped token up to an unescaped char of `stops`; a backslash escapes any stop char."""
    out: list[str] = []
    while i < len(s) and s[i] not in stops:
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in ", =":
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out), i


def _read_value(s: str, i: int) -> tuple[FieldValue, int]:
    if s[i] == '"':
        i += 1
        out: list[str] = []
        while s[i] != '"':
            if s[i] == "\\" and s[i + 1] in '"\\':
                out.append(s[i + 1])
                i += 2
            else:
                out.append(s[i])
                i += 1
        return "".join(out), i + 1
    raw, i = _read_until(s, i, ", ")
    if raw in ("true", "false"):
        return raw == "true", i
    if raw.endswith("i"):
        return int(raw[:-1]), i
    return float(raw), i


def parse_line(s: str) -> tuple[str, dict[str, str], dict[str, FieldValue], int | None]:
    assert "\n" not in s
    measurement, i = _read_until(s, 0, ", ")
    tags: dict[str, str] = {}
    while s[i] == ",":
        k, i = _read_until(s, i + 1, "=")
        v, i = _read_until(s, i + 1, ", ")
        tags[k] = v
    assert s[i] == " "
    i += 1
    fields: dict[str, FieldValue] = {}
    while True:
        k, i = _read_until(s, i, "=")
        fv, i = _read_value(s, i + 1)
        fields[k] = fv
        if i >= len(s) or s[i] == " ":
            break
        assert s[i] == ","
        i += 1
    ts = int(s[i + 1 :]) if i < len(s) else None
    return measurement, tags, fields, ts


# -- examples --------------------------------------------------------------------------------------


def test_examples_from_the_reference() -> None:
    assert escape_measurement("my measurement,x") == "my\\ measurement\\,x"
    assert escape_key("a b,c=d") == "a\\ b\\,c\\=d"
    assert format_string('say "hi" \\ there') == '"say \\"hi\\" \\\\ there"'
    assert format_int(123) == "123i"
    assert format_float(0.1) == "0.1"
    assert format_float(1500.0) == "1500.0"
    assert format_float(1e-7) == "1e-07"
    assert format_field_value(True) == "true"
    fields: dict[str, FieldValue] = {"power_w": 1.5, "n": 3, "q": "good"}
    line = format_line("meter", {"site": "s 1", "device": "d"}, fields, 17)
    assert line == 'meter,device=d,site=s\\ 1 power_w=1.5,n=3i,q="good" 17'


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (escape_measurement, ""),
        (escape_measurement, "#comment"),
        (escape_measurement, "a\nb"),
        (escape_key, "a\\"),
        (escape_key, "a\rb"),
        (format_string, "line\nbreak"),
        (format_float, math.inf),
        (format_float, math.nan),
        (format_int, 2**63),
    ],
)
def test_unwritable_input_is_refused(call: object, arg: object) -> None:
    with pytest.raises(ValueError, match="line protocol"):
        call(arg)  # type: ignore[operator]


def test_a_point_needs_a_field() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        format_line("m", {}, {})


def test_empty_tag_value_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        format_line("m", {"site": ""}, {"v": 1.0})


# -- properties ------------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=12).filter(lambda s: not any(c in s for c in "\\\n\r"))
measurements = names.filter(lambda s: not s.startswith("#"))
strings = st.text(max_size=20).filter(lambda s: "\n" not in s and "\r" not in s)
values: st.SearchStrategy[FieldValue] = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    strings,
)


@given(
    measurement=measurements,
    tags=st.dictionaries(names, names, max_size=4),
    fields=st.dictionaries(names, values, min_size=1, max_size=4),
    ts=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
)
def test_round_trip_through_an_independent_parser(
    measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], ts: int | None
) -> None:
    line = format_line(measurement, tags, fields, ts)
    assert "\n" not in line
    assert "\r" not in line
    m, t, f, parsed_ts = parse_line(line)
    assert (m, t, parsed_ts) == (measurement, tags, ts)
    assert f.keys() == fields.keys()
    for k, v in fields.items():
        assert type(f[k]) is type(v)
        assert f[k] == v


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_and_never_look_like_integers(x: float) -> None:
    s = format_float(x)
    assert float(s) == x
    assert math.copysign(1.0, float(s)) == math.copysign(1.0, x)
    assert not s.endswith("i")
    assert any(c in s for c in ".e")


@given(st.text())
def test_no_raw_line_break_ever_appears(s: str) -> None:
    """Whatever the input, the output either carries no line break or formatting refuses it."""
    for fn in (escape_measurement, escape_key, format_string):
        try:
            out = fn(s)
        except ValueError:
            continue
        assert "\n" not in out
        assert "\r" not in out


# -- against the real parser ------------------------------------------------------------------------

tag_values = names.filter(lambda s: s.strip() == s and s.isprintable())


_example = iter(range(1_700_000_000_000, 1_800_000_000_000))


@pytest.mark.influxdb
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tag=tag_values,
    text=strings.filter(lambda s: s.isprintable()),
    x=st.floats(allow_nan=False, allow_infinity=False, width=64),
    n=st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1),
)
def test_influxdb_parses_what_we_format(influxdb: InfluxDB1, tag: str, text: str, x: float, n: int) -> None:
    db = "lineprotocol"
    influxdb.create_db(db)  # idempotent in InfluxDB 1.x
    ts = next(_example)  # one point per example, told apart by its time
    fields: dict[str, FieldValue] = {"s": text, "x": x, "n": n}
    influxdb.write(format_line("m", {"t": tag}, fields, ts), db=db)
    [point] = influxdb.points("m", db=db, where=f"time = {ts}ms")
    # InfluxDB's JSON prints a large float like 3.2e16 as digits, which json reads as an int: compare
    # it as the double it stands for.
    assert {**point, "x": float(point["x"])} == {"time": ts, "t": tag, "s": text, "x": x, "n": n}
