"""The SML driver: the meter's latest CRC-checked SML frame, read from its optical info interface.

See drivers/pushed.py for the model (a reader task keeps the latest good frame; bad, truncated and
undecodable frames are counted, never stored) and drivers/sml/decode.py for the mapping.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from drivers.links import LinkSettings
from drivers.pushed import DelimitedFramer, PushedMeter
from drivers.sml.config import SmlDeviceConfig, link_of
from drivers.sml.decode import SmlDecoder

ESC: Final = b"\x1b\x1b\x1b\x1b"
#: SML transport v1 (BSI TR-03109-1 Anlage IV / FNN SML 1.04 §8): a frame opens with ESC + 01010101
#: and closes with ESC + 1A + pad count + CRC16 (two bytes). ESC inside the payload is doubled.
SML_START: Final = ESC + b"\x01\x01\x01\x01"
SML_END: Final = re.compile(re.escape(ESC) + rb"\x1a[\x00-\x03][\x00-\xff]{2}")
SML_MAX_BYTES: Final = 8 * 1024


def sml_escaped(buf: bytes | bytearray, i: int) -> bool:
    """True when the escape sequence at `i` is the second half of a doubled ESC (payload, not a marker):
    it follows a run of 0x1B bytes whose length is 4 modulo 8."""
    run = 0
    while i - run - 1 >= 0 and buf[i - run - 1] == 0x1B:
        run += 1
    return run % 8 == 4


def sml_framer() -> DelimitedFramer:
    return DelimitedFramer(start=SML_START, end=SML_END, max_len=SML_MAX_BYTES, escaped=sml_escaped)


class SmlDriver(PushedMeter):
    """An SML info interface."""

    kind = "SML frame"

    def __init__(
        self,
        *,
        device_id: str,
        link: LinkSettings,
        poll_interval_s: float,
        crc: Literal["x25", "kermit"] = "x25",
        stale_after_intervals: int = 3,
        open_timeout_s: float = 3.0,
    ) -> None:
        super().__init__(
            device_id=device_id,
            link=link,
            framer=sml_framer,
            decoder=SmlDecoder(crc),
            poll_interval_s=poll_interval_s,
            stale_after_intervals=stale_after_intervals,
            open_timeout_s=open_timeout_s,
        )

    @classmethod
    def from_config(cls, cfg: SmlDeviceConfig) -> SmlDriver:
        return cls(
            device_id=cfg.id,
            link=link_of(cfg.connection),
            poll_interval_s=cfg.poll_interval_s,
            crc=cfg.crc,
            stale_after_intervals=cfg.stale_after_intervals,
            open_timeout_s=cfg.timeout_s,
        )
