"""Fuzzing MQTT device payload parsing (drivers/mqtt/payload.py): anyone on the broker can publish.

Property: for any bytes and any field spec, `parse_json` returns a value or None and `field_value`
returns a finite float or None: never an exception (an exception in the hub's receive loop stops every
MQTT device; in a driver's read it takes the device offline for as long as the payload is retained).

Regressions found by this file (fixed in payload.py): nesting deeper than the recursion limit raised
RecursionError; an integer of a few hundred digits raised OverflowError in float(); a list index
written with a non-ASCII digit ('²') passed isdigit() and raised in int().
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.mqtt.payload import PROFILES, FieldSpec, extract, field_value, parse_json
from tests.support.fuzz_budget import examples

pytestmark = [pytest.mark.fuzz]

SPECS = [FieldSpec.parse(f) for profile in PROFILES.values() for f in profile.values()]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats()
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


def _keys_for(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Documents that follow a profile's path and put anything at its end (the interesting cases)."""

    def build(leaf: Any) -> Any:
        obj = leaf
        for step in reversed(spec.path):
            obj = [obj] if step.isdigit() else {step: obj}
        return obj

    return json_values.map(build)


def _check(obj: Any, spec: FieldSpec) -> None:
    v, why = field_value(obj, spec)
    assert (v is None and why) or (isinstance(v, float) and math.isfinite(v) and why is None)


@examples(300)
@given(st.binary(max_size=400))
def test_any_bytes(payload: bytes) -> None:
    obj = parse_json(payload)
    for spec in SPECS:
        _check(obj, spec)


@examples(300)
@given(st.sampled_from(SPECS).flatmap(lambda s: st.tuples(st.just(s), _keys_for(s))))
def test_any_document_along_a_profile_path(case: tuple[FieldSpec, Any]) -> None:
    spec, doc = case
    try:
        text = json.dumps(doc)
    except ValueError:  # integers beyond Python's str limit
        return
    _check(parse_json(text.encode()), spec)
    _check(doc, spec)


@examples(200)
@given(st.text(max_size=40))
def test_field_spec_parse_raises_only_value_error(text: str) -> None:
    try:
        spec = FieldSpec.parse(text)
    except ValueError:
        return
    _check({"a": [1, 2, {"b": 3}]}, spec)
    assert extract(None, spec.path) is None or True


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"[" * 100_000, "SML.Power_curr"),  # RecursionError
        (b'{"SML": {"Power_curr": ' + b"9" * 400 + b"}}", "SML.Power_curr"),  # OverflowError
        (b'{"SML": {"Power_curr": -' + b"9" * 4000 + b"}}", "SML.Power_curr"),  # int str limit
        (b'{"a": [5, 6]}', "a.\u00b2"),  # '2'-like digit that int() refuses
        (b'{"SML": {"Power_curr": "1e400"}}', "SML.Power_curr"),
        (b'{"SML": {"Power_curr": NaN}}', "SML.Power_curr"),
        (b" " * 300_000, "SML.Power_curr"),
    ],
)
def test_regressions(payload: bytes, field: str) -> None:
    _check(parse_json(payload), FieldSpec.parse(field))
