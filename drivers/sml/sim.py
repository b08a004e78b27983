"""A simulated SML info interface: OpenResponse, GetListResponse, CloseResponse in one transport frame.

The encoder below writes SML 1.04 (FNN "SML - Smart Message Language" v1.04 §6-8) type-length fields,
the per-message CRC16 and the transport frame (escape sequences, padding to 4 bytes, CRC16/X-25 over
the whole frame, low byte first) with its own CRC code, independent of smllib, so the driver's check
is tested against a second implementation. The message layout is that of an eHZ/EDL21 meter's push
data set (server id, 1.8.0/2.8.0 in 0.1 Wh, 16.7.0 and per-phase values). Never imported by the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from drivers.sim.pushed import PushSim

ESC: Final = b"\x1b\x1b\x1b\x1b"
Values = Callable[[], Mapping[str, float | int]]


def crc16_x25(data: bytes) -> int:
    """CRC-16/X-25 (reflected 0x8408, init 0xFFFF, final XOR 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


# -- type-length-value ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Opt:
    """An optional field left out (encoded 0x01)."""


NONE: Final = Opt()


@dataclass(frozen=True)
class U:
    value: int
    size: int = 4


@dataclass(frozen=True)
class I:  # noqa: E742 (SML's own name for a signed integer)
    value: int
    size: int = 4


Node = bytes | U | I | Opt | Sequence["Node"]


def _tl(kind: int, total: int) -> bytes:
    if total <= 0x0F:
        return bytes([kind | total])
    total += 1  # a second TL byte
    return bytes([0x80 | kind | (total >> 4), total & 0x0F])


def encode(node: Node) -> bytes:
    if isinstance(node, Opt):
        return b"\x01"
    if isinstance(node, U):
        return bytes([0x60 | (node.size + 1)]) + node.value.to_bytes(node.size, "big", signed=False)
    if isinstance(node, I):
        return bytes([0x50 | (node.size + 1)]) + node.value.to_bytes(node.size, "big", signed=True)
    if isinstance(node, bytes):
        return _tl(0x00, len(node) + 1) + node
    items = list(node)
    if len(items) > 15:
        raise ValueError("lists of more than 15 elements need a long TL; not used here")
    return bytes([0x70 | len(items)]) + b"".join(encode(i) for i in items)


def message(transaction: bytes, tag: int, body: Node) -> bytes:
    """An SML message: its fields, the CRC16 over them (as unsigned16), end-of-message 0x00."""
    head = bytes([0x76]) + encode(transaction) + encode(U(0, 1)) + encode(U(0, 1)) + encode([U(tag, 4), body])
    crc = crc16_x25(head)
    return head + encode(U(crc, 2)) + b"\x00"


def transport(payload: bytes) -> bytes:
    """Escape ESC in the payload, pad to a multiple of 4, append the end sequence and the frame CRC."""
    escaped = payload.replace(ESC, ESC + ESC)
    pad = (-len(escaped)) % 4
    body = ESC + b"\x01\x01\x01\x01" + escaped + b"\x00" * pad + ESC + bytes([0x1A, pad])
    crc = crc16_x25(body)
    return body + bytes([crc & 0xFF, crc >> 8])


def obis(c: int, d: int, e: int) -> bytes:
    return bytes([1, 0, c, d, e, 0xFF])


def entry(code: bytes, unit: int | None, scaler: int | None, value: Node) -> Node:
    return [
        code,
        NONE,  # status
        NONE,  # valTime
        U(unit, 1) if unit is not None else NONE,
        I(scaler, 1) if scaler is not None else NONE,
        value,
        NONE,  # valueSignature
    ]


SERVER_ID: Final = bytes.fromhex("0a01454d48000072b8e4")  # the format of an EMH meter's server id


def sml_frame(v: Mapping[str, float | int], *, entries: Sequence[Node] | None = None, seq: int = 0) -> bytes:
    """One push: OpenResponse, GetListResponse with the values, CloseResponse, in a transport frame."""
    if entries is None:
        entries = [
            entry(bytes([0x81, 0x81, 0xC7, 0x82, 0x03, 0xFF]), None, None, b"EMH"),  # manufacturer
            entry(bytes([1, 0, 0, 0, 9, 0xFF]), None, None, SERVER_ID),  # device id
            entry(obis(1, 8, 0), 30, -1, U(round(v.get("energy_import_wh", 0) * 10), 8)),
            entry(obis(2, 8, 0), 30, -1, U(round(v.get("energy_export_wh", 0) * 10), 8)),
            entry(obis(16, 7, 0), 27, 0, I(round(v.get("power_w", 0)), 4)),
            entry(obis(36, 7, 0), 27, 0, I(round(v.get("power_l1_w", 0)), 4)),
            entry(obis(56, 7, 0), 27, 0, I(round(v.get("power_l2_w", 0)), 4)),
            entry(obis(76, 7, 0), 27, 0, I(round(v.get("power_l3_w", 0)), 4)),
            entry(obis(32, 7, 0), 35, -1, U(round(v.get("voltage_l1_v", 230) * 10), 2)),
        ]
    t = seq.to_bytes(4, "big")
    open_body: Node = [NONE, NONE, t, SERVER_ID, NONE, NONE]
    list_body: Node = [NONE, SERVER_ID, NONE, NONE, list(entries), NONE, NONE]
    close_body: Node = [NONE]
    payload = (
        message(t + b"\x01", 0x0101, open_body)
        + message(t + b"\x02", 0x0701, list_body)
        + message(t + b"\x03", 0x0201, close_body)
    )
    return transport(payload)


def corrupt(frame: bytes) -> bytes:
    """Flip one bit of the 1.8.0 value after the CRC was computed (line noise on the optical link)."""
    i = frame.index(obis(1, 8, 0)) + 12
    return frame[:i] + bytes([frame[i] ^ 0x01]) + frame[i + 1 :]


def sml_sim(path: str, *, values: Values, period_s: float = 1.0) -> PushSim:
    """A meter writing `values()` as SML frames to the pty end `path` every `period_s`."""
    counter = iter(range(1 << 31))
    return PushSim(path, frame=lambda: sml_frame(values(), seq=next(counter)), corrupt=corrupt, period_s=period_s)
