"""The P1/HAN driver: the meter's latest CRC-checked telegram, read from its customer port.

See drivers/pushed.py for the model (a reader task keeps the latest good telegram; bad, truncated
and undecodable telegrams are counted, never stored) and drivers/p1/decode.py for the mapping.
"""

from __future__ import annotations

import re
from typing import Final

from drivers.links import LinkSettings
from drivers.p1.config import P1DeviceConfig, Variant, link_of
from drivers.p1.decode import P1Decoder
from drivers.pushed import DelimitedFramer, PushedMeter

#: '!' + CRC16 in four hex digits + CRLF closes a telegram (DSMR 5.0.2 §6.2; DSMR 4 the same).
P1_END: Final = re.compile(rb"![0-9A-Fa-f]{4}\r\n")
#: A DSMR 5 telegram with an M-Bus gas meter is about 1 kB; a stuck line must not grow the buffer.
P1_MAX_BYTES: Final = 16 * 1024


def p1_framer() -> DelimitedFramer:
    """Telegrams run from '/' to the CRC line; no '/' occurs inside one (values are digits and units)."""
    return DelimitedFramer(start=b"/", end=P1_END, max_len=P1_MAX_BYTES)


class P1Driver(PushedMeter):
    """A P1/HAN customer port."""

    kind = "P1 telegram"

    def __init__(
        self,
        *,
        device_id: str,
        link: LinkSettings,
        variant: Variant,
        poll_interval_s: float,
        stale_after_intervals: int = 3,
        open_timeout_s: float = 3.0,
    ) -> None:
        super().__init__(
            device_id=device_id,
            link=link,
            framer=p1_framer,
            decoder=P1Decoder(variant),
            poll_interval_s=poll_interval_s,
            stale_after_intervals=stale_after_intervals,
            open_timeout_s=open_timeout_s,
        )
        self.variant = variant

    @classmethod
    def from_config(cls, cfg: P1DeviceConfig) -> P1Driver:
        return cls(
            device_id=cfg.id,
            link=link_of(cfg.connection, cfg.variant),
            variant=cfg.variant,
            poll_interval_s=cfg.poll_interval_s,
            stale_after_intervals=cfg.stale_after_intervals,
            open_timeout_s=cfg.timeout_s,
        )
