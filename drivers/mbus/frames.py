"""M-Bus link layer (EN 13757-2 §5, FT1.2 frames): build the master's short frames, cut the answer.

The master sends short frames (10 C A CS 16); a meter answers a single character E5 (acknowledge)
or a long frame (68 L L 68 C A CI data CS 16) whose checksum is the arithmetic sum of C..data modulo
256. Building five bytes is simpler than going through pyMeterBus's frame objects; decoding the
answer's records (DIF/VIF tables) is where the library earns its place (drivers/mbus/decode.py).
"""

from __future__ import annotations

from typing import Final

from drivers.base import TransientError

ACK: Final = 0xE5
SHORT_START: Final = 0x10
LONG_START: Final = 0x68
STOP: Final = 0x16

SND_NKE: Final = 0x40  # reset the meter's link layer (its FCB)
REQ_UD2: Final = 0x5B  # request class 2 data, FCV set; | FCB toggles between requests
FCB: Final = 0x20


def short_frame(control: int, address: int) -> bytes:
    if not 0 <= address <= 255:
        raise ValueError(f"M-Bus address {address} is outside 0..255")
    return bytes([SHORT_START, control, address, (control + address) & 0xFF, STOP])


def snd_nke(address: int) -> bytes:
    return short_frame(SND_NKE, address)


def req_ud2(address: int, *, fcb: bool) -> bytes:
    return short_frame(REQ_UD2 | (FCB if fcb else 0), address)


class FrameProblem(TransientError):
    """The answer is not a well-formed frame (`truncated` says whether it was cut short)."""

    def __init__(self, message: str, *, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


def frame_length(buf: bytes | bytearray) -> int | None:
    """Bytes the frame at the start of `buf` needs in all, or None while the header is incomplete.

    Raises FrameProblem when the bytes cannot start a frame (noise, a collision).
    """
    if not buf:
        return None
    first = buf[0]
    if first == ACK:
        return 1
    if first == SHORT_START:
        return 5
    if first != LONG_START:
        raise FrameProblem(f"answer starts with 0x{first:02x}, not a frame start (E5, 10 or 68)")
    if len(buf) < 4:
        return None
    length = buf[1]
    if buf[2] != length or buf[3] != LONG_START:
        raise FrameProblem(f"bad long-frame header {bytes(buf[:4]).hex()} (L fields differ or no second 68)")
    if length < 3:
        raise FrameProblem(f"long frame with L = {length} (at least 3: C, A, CI)")
    return length + 6


def check_long_frame(frame: bytes) -> None:
    """Stop byte and checksum of a complete long frame (raises FrameProblem; the CRC itself is checked
    again by pyMeterBus when it parses, which is the check that counts)."""
    if frame[-1] != STOP:
        raise FrameProblem(f"long frame ends with 0x{frame[-1]:02x}, not the stop byte 16")
