"""One M-Bus line per physical connection, shared by every meter on it (like drivers/modbus/bus.py).

An M-Bus line carries one exchange at a time: a `MbusLine` owns the link (serial port or TCP gateway)
and a lock; each read sends REQ_UD2 to a primary address and cuts the answer out of the byte stream
with a deadline. The first exchange with an address after the line opens is preceded by SND_NKE (a
link reset, so the meter's frame-count bit starts where ours does); the FCB then alternates.

Failure policy (drivers/base.py's tree): no answer within the timeout, a truncated answer, noise or a
checksum error are `TransientError` for that read and counted in `stats`; the link is kept (a silent
meter says nothing about its neighbours). A link that fails is dropped and re-opened on a later read
after a capped, jittered backoff, so a dead gateway is not hammered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Final, Self

from drivers.backoff import Backoff
from drivers.base import TransientError
from drivers.links import Link, LinkClosed, LinkSettings, open_link
from drivers.mbus.frames import ACK, FrameProblem, check_long_frame, frame_length, req_ud2, snd_nke

#: A long frame is at most 261 bytes; anything longer is noise.
MAX_FRAME: Final = 261


@dataclass
class LineStats:
    requests: int = 0
    answers: int = 0
    no_answer: int = 0
    truncated: int = 0
    bad_frames: int = 0  # noise, wrong header or stop byte
    crc_errors: int = 0  # counted by the driver, which parses the answer
    opens: int = 0
    last_error: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class MbusLine:
    """An M-Bus line; use through `MbusPool.line`."""

    def __init__(self, settings: LinkSettings, *, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.stats = LineStats()
        self._link: Link | None = None
        self._lock = asyncio.Lock()
        self._backoff = Backoff(initial_s=0.5, max_s=30.0)
        self._not_before = 0.0
        self._fcb: dict[int, bool] = {}
        # 11 bits per character; a meter may take 11..330 bit times + 50 ms to start answering.
        self._gap = 0.0 if settings.scheme == "tcp" else max(0.005, 33 * 11 / settings.baud)

    @property
    def key(self) -> str:
        return line_key(self.settings)

    async def _ensure_open(self) -> Link:
        if self._link is not None:
            return self._link
        wait = self._not_before - time.monotonic()
        if wait > 0:
            raise TransientError(f"M-Bus line {self.settings.where}: not open; next attempt in {wait:.1f} s")
        try:
            self._link = await open_link(self.settings, timeout_s=self.timeout_s)
        except TransientError:
            self._not_before = time.monotonic() + self._backoff.next_delay()
            raise
        self._backoff.reset()
        self.stats.opens += 1
        self._fcb.clear()
        return self._link

    async def _drop(self) -> None:
        if self._link is not None:
            await self._link.close()
            self._link = None
        self._not_before = time.monotonic() + self._backoff.next_delay()

    async def _receive(self, link: Link, deadline: float) -> bytes:
        """One frame out of the byte stream, or FrameProblem / TimeoutError."""
        buf = bytearray()
        while True:
            need = frame_length(buf)
            if need is not None and len(buf) >= need:
                return bytes(buf[:need])
            left = deadline - time.monotonic()
            if left <= 0:
                if buf:
                    raise FrameProblem(f"answer cut off after {len(buf)} bytes", truncated=True)
                raise TimeoutError
            chunk = await link.read(left)
            buf.extend(chunk)
            if len(buf) > MAX_FRAME + 8:
                raise FrameProblem("more bytes than any frame holds (noise or a collision)")

    async def _exchange(self, link: Link, request: bytes, address: int) -> bytes:
        link.discard_input()
        await link.write(request)
        self.stats.requests += 1
        try:
            frame = await self._receive(link, time.monotonic() + self.timeout_s)
        except TimeoutError:
            self.stats.no_answer += 1
            raise TransientError(
                f"M-Bus {self.settings.where} address {address}: no answer within {self.timeout_s:g} s"
                " (check the address, the baud rate and the bus power)"
            ) from None
        except FrameProblem as exc:
            if exc.truncated:
                self.stats.truncated += 1
            else:
                self.stats.bad_frames += 1
            # Let the rest of a garbled answer pass before the next request on this line.
            await asyncio.sleep(min(0.2, self.timeout_s))
            link.discard_input()
            raise TransientError(f"M-Bus {self.settings.where} address {address}: {exc}") from None
        finally:
            if self._gap:
                await asyncio.sleep(self._gap)
        self.stats.answers += 1
        return frame

    async def request(self, address: int, *, reset: bool = False) -> bytes:
        """REQ_UD2 to `address`; the answer's complete long frame (checksum not yet checked).

        `reset`: reset the meter's link first (SND_NKE), so its answer is its first telegram whatever
        happened before (a multi-telegram meter answers a toggled FCB with its *next* telegram)."""
        async with self._lock:
            link = await self._ensure_open()
            try:
                if reset or address not in self._fcb:
                    ack = await self._exchange(link, snd_nke(address), address)
                    if ack[0] != ACK:
                        self.stats.bad_frames += 1
                        raise TransientError(
                            f"M-Bus {self.settings.where} address {address}: answered the link reset"
                            f" with 0x{ack[0]:02x}, not E5"
                        )
                    self._fcb[address] = True
                fcb = self._fcb[address]
                frame = await self._exchange(link, req_ud2(address, fcb=fcb), address)
            except LinkClosed as exc:
                self.stats.last_error = str(exc)
                await self._drop()
                raise
            except TransientError as exc:
                self.stats.last_error = str(exc)
                raise
            if frame[0] != 0x68:
                self.stats.bad_frames += 1
                raise TransientError(
                    f"M-Bus {self.settings.where} address {address}: answered 0x{frame[0]:02x}, not a data frame"
                )
            try:
                check_long_frame(frame)
            except FrameProblem as exc:
                self.stats.bad_frames += 1
                raise TransientError(f"M-Bus {self.settings.where} address {address}: {exc}") from None
            self._fcb[address] = not fcb
            return frame

    async def close(self) -> None:
        async with self._lock:
            if self._link is not None:
                await self._link.close()
                self._link = None


def line_key(settings: LinkSettings) -> str:
    """Identity of the physical line: meters with the same key share one `MbusLine`."""
    return f"serial://{settings.device}" if settings.scheme == "serial" else f"tcp://{settings.host}:{settings.port}"


class MbusPool:
    """All M-Bus lines of one agent; closes them on exit."""

    def __init__(self) -> None:
        self._lines: dict[str, MbusLine] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def line(self, settings: LinkSettings, *, timeout_s: float) -> MbusLine:
        key = line_key(settings)
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = MbusLine(settings, timeout_s=timeout_s)
        elif line.settings != settings:
            raise ValueError(
                f"{key} is configured with different line settings by two devices"
                f" ({line.settings.baud} vs {settings.baud} baud, parity {line.settings.parity} vs"
                f" {settings.parity}); give every meter on one line the same connection URL"
            )
        else:
            line.timeout_s = max(line.timeout_s, timeout_s)
        return line

    async def aclose(self) -> None:
        for line in self._lines.values():
            await line.close()
        self._lines.clear()
