"""SML frames to quantities: smllib checks the transport CRC and parses the messages; this module maps.

Why smllib (1.7) and not pysml (0.1.9): smllib is pure Python with no dependencies, typed (py.typed),
lets us choose the CRC variant (x25 per the standard, kermit for some meters), and splits decoding
from I/O (a stream reader over bytes we hand it), so it sits behind our own link and framer. pysml
couples decoding to its own asyncio serial protocol, pulls in aiohttp, bitstring and a second serial
stack (serialx), and installs a top-level module named `sml`.

The mapping follows the OBIS codes of EN 62056-61 / the FNN "Lastenheft EDL" (info interface data
set), electricity (A = 1) on channel B = 0, with the unit codes of IEC 62056-62 (DLMS Blue Book):

| OBIS C.D.E         | quantity                     | unit      |
| ------------------ | ---------------------------- | --------- |
| 1.8.0 (or Σ 1.8.1..1.8.4) | `energy_import_wh`    | 30 = Wh   |
| 2.8.0 (or Σ 2.8.1..2.8.4) | `energy_export_wh`    | 30 = Wh   |
| 16.7.0             | `power_w` (signed, + import) | 27 = W    |
| 1.7.0 − 2.7.0      | `power_w` when 16.7.0 is absent | 27 = W |
| 36/56/76.7.0       | `power_l1_w`..`power_l3_w`   | 27 = W    |
| 32/52/72.7.0       | `voltage_l1_v`..             | 35 = V    |
| 31/51/71.7.0       | `current_l1_a`..             | 33 = A    |
| 14.7.0             | `frequency_hz`               | 44 = Hz   |

Values are `value × 10^scaler`, computed with decimal arithmetic; energy becomes integer Wh (registers
with 0.1 Wh resolution round half-even). A value with another unit, no number, or a negative energy
register is returned as None (stored `invalid`), never scaled by a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final, Literal

from smllib.errors import CrcError, SmlLibException
from smllib.reader import SmlStreamReader
from smllib.sml.list_entry import SmlListEntry
from smllib.sml.response_get_list import SmlGetListResponse

from drivers.model import Value
from drivers.pushed import ChecksumError, ContentError

WH: Final = 30
W: Final = 27
V: Final = 35
A: Final = 33
HZ: Final = 44

_INSTANT: Final[dict[tuple[int, int, int], tuple[str, int]]] = {
    (16, 7, 0): ("power_w", W),
    (36, 7, 0): ("power_l1_w", W),
    (56, 7, 0): ("power_l2_w", W),
    (76, 7, 0): ("power_l3_w", W),
    (32, 7, 0): ("voltage_l1_v", V),
    (52, 7, 0): ("voltage_l2_v", V),
    (72, 7, 0): ("voltage_l3_v", V),
    (31, 7, 0): ("current_l1_a", A),
    (51, 7, 0): ("current_l2_a", A),
    (71, 7, 0): ("current_l3_a", A),
    (14, 7, 0): ("frequency_hz", HZ),
}


def _code(entry: SmlListEntry) -> tuple[int, int, int] | None:
    """(C, D, E) of an electricity value on channel 0 (A = 1, B = 0), else None."""
    hexcode = str(entry.obis)
    if len(hexcode) != 12:
        return None
    a, b, c, d, e = (int(hexcode[i : i + 2], 16) for i in range(0, 10, 2))
    if a != 1 or b != 0:
        return None
    return c, d, e


def _scaled(entry: SmlListEntry, unit: int) -> Decimal | None:
    value = entry.value
    if entry.unit != unit or isinstance(value, bool) or not isinstance(value, int):
        return None
    return Decimal(value).scaleb(entry.scaler or 0)


def quantities(entries: Iterable[SmlListEntry]) -> dict[str, Value]:
    by_code: dict[tuple[int, int, int], SmlListEntry] = {}
    for entry in entries:
        code = _code(entry)
        if code is not None:
            by_code.setdefault(code, entry)
    out: dict[str, Value] = {}
    for quantity, c in (("energy_import_wh", 1), ("energy_export_wh", 2)):
        codes = [(c, 8, 0)] if (c, 8, 0) in by_code else [(c, 8, t) for t in (1, 2, 3, 4) if (c, 8, t) in by_code]
        if not codes:
            continue
        total: Decimal | None = Decimal(0)
        for code in codes:
            v = _scaled(by_code[code], WH)
            if v is None or v < 0 or total is None:
                total = None
                break
            total += v
        out[quantity] = None if total is None else int(total.to_integral_value(rounding=ROUND_HALF_EVEN))
    for code, (quantity, unit) in _INSTANT.items():
        if code in by_code:
            v = _scaled(by_code[code], unit)
            out[quantity] = None if v is None else float(v)
    if "power_w" not in out and ((1, 7, 0) in by_code or (2, 7, 0) in by_code):
        net: Decimal | None = Decimal(0)
        for code, sign in (((1, 7, 0), 1), ((2, 7, 0), -1)):
            if code in by_code:
                v = _scaled(by_code[code], W)
                net = None if v is None or net is None else net + sign * v
        out["power_w"] = None if net is None else float(net)
    return out


class SmlDecoder:
    """Decode one transport frame (escape sequence to escape sequence) into canonical quantities."""

    def __init__(self, crc: Literal["x25", "kermit"] = "x25") -> None:
        self._reader = SmlStreamReader(crc=crc)

    def __call__(self, frame: bytes) -> Mapping[str, Value]:
        self._reader.clear()
        self._reader.add(frame)
        try:
            parsed = self._reader.get_frame()
        except CrcError as exc:
            raise ChecksumError(f"frame CRC {exc.crc_msg:04x}, computed {exc.crc_calc:04x}") from None
        if parsed is None:
            raise ContentError("not a complete SML transport frame")
        try:
            messages = parsed.parse_frame()
        except (SmlLibException, ValueError, IndexError, KeyError, TypeError) as exc:
            raise ContentError(f"{type(exc).__name__}: {exc}") from None
        entries = [
            entry
            for m in messages
            if isinstance(m.message_body, SmlGetListResponse)
            for entry in (m.message_body.val_list or ())
        ]
        if not entries:
            raise ContentError("the frame holds no value list (GetListResponse)")
        return quantities(entries)
