"""Decoders are pure functions over register words: round trips for every type and word order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.decode import (
    DataType,
    WordOrder,
    compile_decoder,
    decode,
    encode,
    encode_sentinel,
    int_range,
    is_not_implemented,
    word_count,
)

INT_TYPES = [DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64]
ORDERS = list(WordOrder)


@given(data=st.data(), dt=st.sampled_from(INT_TYPES), order=st.sampled_from(ORDERS))
def test_integer_round_trip(data: st.DataObject, dt: DataType, order: WordOrder) -> None:
    lo, hi = int_range(dt)
    value = data.draw(st.integers(lo, hi))
    words = encode(value, dt, order)
    assert len(words) == word_count(dt)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, dt, order) == value


@given(value=st.floats(allow_nan=False, allow_infinity=False, width=32), order=st.sampled_from(ORDERS))
def test_float32_round_trip(value: float, order: WordOrder) -> None:
    assert decode(encode(value, DataType.FLOAT32, order), DataType.FLOAT32, order) == value


@given(value=st.floats(allow_nan=False, allow_infinity=False), order=st.sampled_from(ORDERS))
def test_float64_round_trip(value: float, order: WordOrder) -> None:
    assert decode(encode(value, DataType.FLOAT64, order), DataType.FLOAT64, order) == value


@given(text=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20))
def test_string_round_trip(text: str) -> None:
    words = encode(text, DataType.STRING, length=10)
    assert decode(words, DataType.STRING) == text[:20]


def test_word_orders_match_the_manuals() -> None:
    # 0x11223344 as the four orders put it on the wire
    assert encode(0x11223344, DataType.UINT32, WordOrder.ABCD) == [0x1122, 0x3344]
    assert encode(0x11223344, DataType.UINT32, WordOrder.CDAB) == [0x3344, 0x1122]
    assert encode(0x11223344, DataType.UINT32, WordOrder.BADC) == [0x2211, 0x4433]
    assert encode(0x11223344, DataType.UINT32, WordOrder.DCBA) == [0x4433, 0x2211]
    # an Eastron float: 230.0 V is 0x43660000
    assert decode([0x4366, 0x0000], DataType.FLOAT32) == 230.0


SENTINEL_CASES = [
    (dt, order)
    for dt in [*INT_TYPES, DataType.FLOAT32, DataType.FLOAT64, DataType.ENUM]
    for order in ORDERS
    if word_count(dt) > 1 or order in (WordOrder.ABCD, WordOrder.BADC)  # one word: no word order
]


@pytest.mark.parametrize(("dt", "order"), SENTINEL_CASES)
def test_sentinels_are_recognised(dt: DataType, order: WordOrder) -> None:
    assert is_not_implemented(encode_sentinel(dt, order), dt, order)
    assert not is_not_implemented(encode(1, dt, order), dt, order)


def test_nan_float_is_not_implemented() -> None:
    assert is_not_implemented(encode(math.inf, DataType.FLOAT32), DataType.FLOAT32)
    assert is_not_implemented([0x7FC0, 0x0000], DataType.FLOAT32)


NUMERIC = [*INT_TYPES, DataType.FLOAT32, DataType.FLOAT64, DataType.ENUM]


@given(data=st.data(), dt=st.sampled_from(NUMERIC), order=st.sampled_from(ORDERS))
def test_compiled_decoder_agrees_with_the_reference(data: st.DataObject, dt: DataType, order: WordOrder) -> None:
    if word_count(dt) == 1 and order in (WordOrder.CDAB, WordOrder.DCBA):
        order = WordOrder.ABCD
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=word_count(dt), max_size=word_count(dt)))
    value, missing = compile_decoder(dt, order)(words)
    assert missing == is_not_implemented(words, dt, order)
    ref = decode(words, dt, order)
    assert value == ref or (isinstance(ref, float) and math.isnan(ref) and math.isnan(value))
