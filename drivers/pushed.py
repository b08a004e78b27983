"""Meters that push telegrams on their own (P1/HAN every 1-10 s, SML every 1-4 s): read the latest.

A customer port is not polled: the meter talks whenever it likes. `PushedMeter` therefore owns its
link and a named background task that frames the byte stream, checks and decodes every telegram and
keeps only the *latest* good one (so nothing piles up); `read()` turns it into samples stamped with the
poll's instant. This is the MQTT hub's model (drivers/mqtt/driver.py) with the device's own port.

What reaches the ledger is only what passed the checksum and decoded: a telegram with a bad CRC, a
truncated one (a new start marker before its end, the line going quiet mid-telegram, or the tail of
one whose head was lost) or one that does not decode is *counted* in `stats` and dropped. Nothing is
ever repaired or guessed.

Availability follows the Modbus rules through the poller: no good telegram within `stale_after_s`
(a meter that stopped talking, a cable pulled) makes `read()` raise `TransientError`, so the device is
reported offline once and the poller re-opens the port with its capped, jittered backoff; the first
good telegram brings it back. A port that fails (adapter unplugged) ends the task; the next `read()`
raises, and the poller re-creates the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

from drivers.base import TransientError, WarmingUp
from drivers.cancel import cancel_and_wait, raise_if_cancelling
from drivers.links import Link, LinkSettings, open_link
from drivers.model import Sample, Value, checked_sample

__all__ = ["checked_sample"]  # re-exported: M-Bus and OCPP import it from here

log = logging.getLogger(__name__)


class DecodeError(TransientError):
    """A complete frame that must not be stored."""


class ChecksumError(DecodeError):
    """The frame's CRC does not match its content (line noise, a collision on the bus)."""


class ContentError(DecodeError):
    """The checksum is right but the content is not what the format says (an unknown dialect)."""


@dataclass(frozen=True, slots=True)
class Truncated:
    """A frame that was cut off; `why` says how it was noticed."""

    why: str


Decoded = Mapping[str, Value]  # quantity -> value in its canonical unit; None -> invalid
Decoder = Callable[[bytes], Decoded]


class Framer(Protocol):
    def feed(self, data: bytes) -> list[bytes | Truncated]:
        """Complete frames (start marker to end marker) and the truncations noticed, in stream order."""
        ...

    def flush(self) -> Truncated | None:
        """The line went quiet: a frame that started and did not end is truncated."""
        ...


class DelimitedFramer:
    """Frames between a start marker and an end pattern (P1: '/' .. '!CRC\\r\\n'; SML: escape sequences).

    `escaped(buf, i)` says whether a marker found at `i` is really data (SML doubles escape sequences
    inside the payload). A frame longer than `max_len` without its end is truncated (a stuck line must
    not grow the buffer). Bytes before the first start marker after opening the port are the tail of a
    telegram already under way: dropped silently; once in step, such a headless tail is a truncation.
    """

    def __init__(
        self,
        *,
        start: bytes,
        end: re.Pattern[bytes],
        max_len: int,
        escaped: Callable[[bytes | bytearray, int], bool] | None = None,
    ) -> None:
        self._start = start
        self._end = end
        self._max = max_len
        self._escaped = escaped or (lambda _buf, _i: False)
        self._buf = bytearray()
        self._synced = False

    def _find_start(self, pos: int) -> int:
        while True:
            i = self._buf.find(self._start, pos)
            if i < 0 or not self._escaped(self._buf, i):
                return i
            pos = i + 1

    def _find_end(self, pos: int) -> re.Match[bytes] | None:
        while True:
            m = self._end.search(self._buf, pos)
            if m is None or not self._escaped(self._buf, m.start()):
                return m
            pos = m.start() + 1

    def feed(self, data: bytes) -> list[bytes | Truncated]:
        self._buf.extend(data)
        out: list[bytes | Truncated] = []
        while self._buf:
            s = self._find_start(0)
            if s < 0:
                keep = len(self._start) - 1  # a start marker may be split across reads
                junk = bytes(self._buf[: max(0, len(self._buf) - keep)])
                if self._synced and self._end.search(junk):
                    out.append(Truncated("the end of a frame whose start was lost"))
                del self._buf[: len(junk)]
                break
            if s > 0:
                if self._synced and self._end.search(self._buf, 0, s):
                    out.append(Truncated("the end of a frame whose start was lost"))
                del self._buf[:s]
            nxt = self._find_start(len(self._start))
            m = self._find_end(len(self._start))
            if m is not None and (nxt < 0 or m.end() <= nxt):
                out.append(bytes(self._buf[: m.end()]))
                del self._buf[: m.end()]
                self._synced = True
                continue
            if nxt >= 0:
                out.append(Truncated("a new frame started before this one ended"))
                del self._buf[:nxt]
                self._synced = True
                continue
            if len(self._buf) > self._max:
                out.append(Truncated(f"no end marker within {self._max} bytes"))
                self._buf.clear()
            break
        return out

    def flush(self) -> Truncated | None:
        started = self._buf.startswith(self._start)
        self._buf.clear()
        if started:
            self._synced = True
            return Truncated("the line went quiet in the middle of a frame")
        return None


@dataclass
class FrameStats:
    """What the port delivered since the driver was created (visible in health; never stored)."""

    frames: int = 0  # complete frames (good or not)
    good: int = 0  # decoded and kept
    crc_errors: int = 0
    truncated: int = 0
    undecodable: int = 0  # checksum right, content not understood
    opens: int = 0
    last_error: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rejected(self) -> int:
        return self.crc_errors + self.truncated + self.undecodable


class PushedMeter:
    """Base of the P1 and SML drivers: a port, a framer, a decoder, the latest good telegram."""

    #: what the protocol is called in messages ("P1 telegram", "SML frame")
    kind = "telegram"

    def __init__(
        self,
        *,
        device_id: str,
        link: LinkSettings,
        framer: Callable[[], Framer],
        decoder: Decoder,
        poll_interval_s: float,
        stale_after_intervals: int = 3,
        idle_s: float = 2.0,
        open_timeout_s: float = 5.0,
    ) -> None:
        self.device_id = device_id
        self.link_settings = link
        self.stats = FrameStats()
        self.stale_after_s = poll_interval_s * stale_after_intervals
        self._framer_factory = framer
        self._decode = decoder
        self._idle_s = idle_s
        self._open_timeout_s = open_timeout_s
        self._link: Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._latest: Decoded | None = None
        self._received = 0.0  # monotonic time of the latest good frame
        self._opened = 0.0
        self._failure: str | None = None
        self._got_one = asyncio.Event()

    async def wait_for_telegram(self, timeout_s: float) -> bool:
        """Wait until a good telegram has arrived (for one-shot reads such as `gia read`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._got_one.wait()
        return self._got_one.is_set()

    async def __aenter__(self) -> Self:
        self._link = await open_link(self.link_settings, timeout_s=self._open_timeout_s)
        self.stats.opens += 1
        self._opened = time.monotonic()
        self._failure = None
        self._task = asyncio.create_task(self._run(self._link), name=f"{self.kind} reader {self.device_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._link is not None:
            await self._link.close()
            self._link = None

    async def _run(self, link: Link) -> None:
        framer = self._framer_factory()
        try:
            while True:
                raise_if_cancelling()  # a library's wait_for may swallow __aexit__'s cancel (drivers/cancel.py)
                data = await link.read(self._idle_s)
                if data:
                    for item in framer.feed(data):
                        self._take(item)
                else:
                    cut = framer.flush()
                    if cut is not None:
                        self._take(cut)
        except TransientError as exc:
            self._failure = str(exc)
            self.stats.last_error = str(exc)

    def _take(self, item: bytes | Truncated) -> None:
        if isinstance(item, Truncated):
            self.stats.truncated += 1
            self.stats.last_error = f"truncated {self.kind}: {item.why}"
            log.debug("%s: %s", self.device_id, self.stats.last_error)
            return
        self.stats.frames += 1
        try:
            values = self._decode(item)
        except ChecksumError as exc:
            self.stats.crc_errors += 1
            self.stats.last_error = f"{self.kind} with a bad checksum: {exc}"
        except DecodeError as exc:
            self.stats.undecodable += 1
            self.stats.last_error = f"{self.kind} not understood: {exc}"
        else:
            self.stats.good += 1
            self._latest = values
            self._received = time.monotonic()
            self._got_one.set()
            return
        log.debug("%s: %s", self.device_id, self.stats.last_error)

    def _counts(self) -> str:
        s = self.stats
        return f"{s.good} good, {s.crc_errors} CRC errors, {s.truncated} truncated, {s.undecodable} not understood"

    async def read(self, ts: datetime) -> Sequence[Sample]:
        if self._failure is not None:
            raise TransientError(f"{self.device_id}: {self._failure}")
        now = time.monotonic()
        if self._latest is None and now - self._opened <= self.stale_after_s:
            raise WarmingUp(f"{self.device_id}: waiting for the first {self.kind}")
        if self._latest is None or now - self._received > self.stale_after_s:
            waited = now - (self._received if self._latest is not None else self._opened)
            what = "no valid" if self._latest is None else "no new valid"
            raise TransientError(
                f"{self.device_id}: {what} {self.kind} from {self.link_settings.where} for {waited:.0f} s"
                f" ({self._counts()}); check the cable, the port settings and that the port is enabled"
            )
        return [checked_sample(self.device_id, q, v, ts) for q, v in self._latest.items()]
