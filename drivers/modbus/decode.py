"""Decoding register words into numbers: pure functions, no I/O, so they are tested exhaustively.

A Modbus register is a 16-bit word. Devices put wider values in several words in one of four orders,
named by where the bytes of the big-endian value `A B C D` end up on the wire:

* ``ABCD`` big-endian words, big-endian bytes (Modbus' own convention; Eastron, Huawei, SunSpec)
* ``CDAB`` little-endian words, big-endian bytes ("word swap"; Carlo Gavazzi, many PLCs)
* ``BADC`` big-endian words, bytes swapped in each word
* ``DCBA`` fully little-endian

For 64-bit values the same rule applies to four words (``CDAB`` reverses the word order).

`encode` is the exact inverse of `decode` (the simulator and the round-trip tests use it).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Final


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    BITFIELD = "bitfield"  # uint16/uint32 whose bits are flags; served as an integer status code
    ENUM = "enum"  # uint16 code with a documented meaning table
    BOOL = "bool"  # one coil or discrete input


class WordOrder(StrEnum):
    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


#: (struct format of the big-endian value, number of 16-bit words); string/bool have no fixed width.
_STRUCT: Final[dict[DataType, tuple[str, int]]] = {
    DataType.INT16: (">h", 1),
    DataType.UINT16: (">H", 1),
    DataType.INT32: (">i", 2),
    DataType.UINT32: (">I", 2),
    DataType.INT64: (">q", 4),
    DataType.UINT64: (">Q", 4),
    DataType.FLOAT32: (">f", 2),
    DataType.FLOAT64: (">d", 4),
    DataType.BITFIELD: (">H", 1),
    DataType.ENUM: (">H", 1),
}

#: Values that devices (and SunSpec) use to say "not implemented / not available".
NOT_IMPLEMENTED: Final[dict[DataType, int]] = {
    DataType.INT16: 0x8000,
    DataType.UINT16: 0xFFFF,
    DataType.INT32: 0x80000000,
    DataType.UINT32: 0xFFFFFFFF,
    DataType.INT64: 0x8000000000000000,
    DataType.UINT64: 0xFFFFFFFFFFFFFFFF,
    DataType.ENUM: 0xFFFF,
    DataType.BITFIELD: 0xFFFF,
}

NUMERIC: Final = frozenset(_STRUCT) - {DataType.BITFIELD, DataType.ENUM}
FLOATS: Final = frozenset({DataType.FLOAT32, DataType.FLOAT64})
SIGNED: Final = frozenset({DataType.INT16, DataType.INT32, DataType.INT64})


def word_count(data_type: DataType, length: int | None = None) -> int:
    """Registers a value occupies; strings give their length in words, bits occupy one coil."""
    if data_type is DataType.STRING:
        if not length or length < 1:
            raise ValueError("a string register needs 'length' (in 16-bit words)")
        return length
    if data_type is DataType.BOOL:
        return 1
    return _STRUCT[data_type][1]


def _reorder(words: Sequence[int], order: WordOrder) -> list[int]:
    """Bring words from wire order to big-endian order (the operation is its own inverse)."""
    out = list(words)
    if order in (WordOrder.CDAB, WordOrder.DCBA):
        out.reverse()
    if order in (WordOrder.BADC, WordOrder.DCBA):
        out = [((w & 0xFF) << 8) | (w >> 8) for w in out]
    return out


def _to_bytes(words: Sequence[int]) -> bytes:
    return b"".join(w.to_bytes(2, "big") for w in words)


def raw_int(words: Sequence[int], data_type: DataType, order: WordOrder = WordOrder.ABCD) -> int:
    """The unsigned bit pattern of an integer value in big-endian order (for sentinel checks)."""
    n = word_count(data_type)
    return int.from_bytes(_to_bytes(_reorder(words[:n], order)), "big")


def decode(words: Sequence[int], data_type: DataType, order: WordOrder = WordOrder.ABCD) -> int | float | str:
    """Decode one value from its registers (exactly `word_count` of them are used).

    Strings are read big-endian per word (two ASCII/UTF-8 bytes per register, the universal
    convention) with trailing NULs and spaces stripped; `order` only swaps bytes for BADC/DCBA.
    """
    if data_type is DataType.STRING:
        swapped = _reorder(words, WordOrder.BADC) if order in (WordOrder.BADC, WordOrder.DCBA) else words
        return _to_bytes(swapped).split(b"\x00", 1)[0].decode("utf-8", "replace").rstrip()
    if data_type is DataType.BOOL:
        return int(bool(words[0]))
    fmt, n = _STRUCT[data_type]
    if len(words) < n:
        raise ValueError(f"{data_type} needs {n} registers, got {len(words)}")
    value: int | float = struct.unpack(fmt, _to_bytes(_reorder(words[:n], order)))[0]
    return value


def encode(
    value: int | float | str,
    data_type: DataType,
    order: WordOrder = WordOrder.ABCD,
    *,
    length: int | None = None,
) -> list[int]:
    """The registers a device would hold for `value` (inverse of `decode`)."""
    if data_type is DataType.STRING:
        n = word_count(data_type, length)
        raw = str(value).encode("utf-8")[: 2 * n].ljust(2 * n, b"\x00")
        words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * n, 2)]
        return _reorder(words, WordOrder.BADC) if order in (WordOrder.BADC, WordOrder.DCBA) else words
    if data_type is DataType.BOOL:
        return [1 if value else 0]
    fmt, n = _STRUCT[data_type]
    packed = struct.pack(fmt, float(value) if data_type in FLOATS else int(value))
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 2 * n, 2)]
    return _reorder(words, order)


def encode_sentinel(data_type: DataType, order: WordOrder = WordOrder.ABCD) -> list[int]:
    """The 'not implemented' registers for a type (NaN for floats)."""
    if data_type in FLOATS:
        return encode(math.nan, data_type, order)
    n = word_count(data_type)
    pattern = NOT_IMPLEMENTED[data_type]
    words = [(pattern >> (16 * (n - 1 - i))) & 0xFFFF for i in range(n)]
    return _reorder(words, order)


def is_not_implemented(words: Sequence[int], data_type: DataType, order: WordOrder = WordOrder.ABCD) -> bool:
    """True when the registers hold the type's 'not implemented' sentinel (or a non-finite float)."""
    if data_type in FLOATS:
        v = decode(words, data_type, order)
        return isinstance(v, float) and not math.isfinite(v)
    sentinel = NOT_IMPLEMENTED.get(data_type)
    return sentinel is not None and raw_int(words, data_type, order) == sentinel


def compile_decoder(
    data_type: DataType, order: WordOrder = WordOrder.ABCD
) -> Callable[[Sequence[int]], tuple[int | float, bool]]:
    """A fast decoder for one numeric type and order: words -> (value, is_not_implemented).

    The same results as `decode` + `is_not_implemented` (tests check this with hypothesis), with the
    struct format, the word permutation and the sentinel pattern worked out once instead of per value:
    the driver decodes every register of every poll through these.
    """
    fmt, n = _STRUCT[data_type]
    unpack = struct.Struct(fmt).unpack
    pack_words = struct.Struct(f">{n}H").pack
    reverse = order in (WordOrder.CDAB, WordOrder.DCBA)
    swap = order in (WordOrder.BADC, WordOrder.DCBA)
    is_float = data_type in FLOATS
    sentinel = NOT_IMPLEMENTED.get(data_type)
    sentinel_words = tuple(encode_sentinel(data_type, order)) if sentinel is not None else None

    def run(words: Sequence[int]) -> tuple[int | float, bool]:
        w = words[:n]
        if reverse:
            w = w[::-1]
        if swap:
            w = [((x & 0xFF) << 8) | (x >> 8) for x in w]
        value: int | float = unpack(pack_words(*w))[0]
        if is_float:
            return value, not math.isfinite(value)
        return value, sentinel_words is not None and tuple(words[:n]) == sentinel_words

    return run


def int_range(data_type: DataType) -> tuple[int, int]:
    """Smallest and largest integer a type holds."""
    bits = 16 * word_count(data_type)
    if data_type in SIGNED:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1
