"""Simulated meters that push telegrams onto a serial line (P1/HAN, SML): the other end of a pty pair.

A `PushSim` writes one frame every `period_s` to a pty (the far end of a socat pair, drivers/sim/
serial.py) or to a connected TCP client, as a meter's customer port does, and can misbehave on demand
for tests: `inject("crc", n)` sends n frames with one character changed after the CRC was computed,
`inject("truncate", n)` cuts n frames in half (the next frame then starts before the cut one ended),
`pause()` stops talking (a pulled cable) until `resume()`.

The frame content is the protocol module's business (`frame` callback); this module only paces and
corrupts. Used by the tests and `gia sim`-style demos; never by the agent.
"""

from __future__ import annotations

import asyncio
import os
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from drivers.cancel import cancel_and_wait

PushFault = Literal["crc", "truncate"]


@dataclass
class PushStats:
    frames: int = 0
    corrupted: int = 0
    truncated: int = 0


def open_pty_end(path: str) -> int:
    """Open a pty end raw and non-blocking (what a meter's UART would be)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd, termios.TCSANOW)
    return fd


async def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        view = view[n:]


class PushSim:
    """Writes `frame()` every `period_s` to a pty end; `corrupt(frame)` makes the CRC-breaking variant."""

    def __init__(
        self,
        path: str,
        *,
        frame: Callable[[], bytes],
        corrupt: Callable[[bytes], bytes],
        period_s: float = 1.0,
    ) -> None:
        self.path = path
        self.period_s = period_s
        self.stats = PushStats()
        self._frame = frame
        self._corrupt = corrupt
        self._faults: list[PushFault] = []
        self._talking = asyncio.Event()
        self._talking.set()
        self._fd = -1
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> PushSim:
        self._fd = open_pty_end(self.path)
        self._task = asyncio.create_task(self._run(), name=f"push sim {self.path}")
        return self

    def inject(self, fault: PushFault, count: int = 1) -> None:
        self._faults.extend([fault] * count)

    def pause(self) -> None:
        self._talking.clear()

    def resume(self) -> None:
        self._talking.set()

    async def send_now(self, data: bytes) -> None:
        """Write raw bytes at once (a test's hand-made telegram)."""
        await write_all(self._fd, data)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self._talking.wait()
            frame = self._frame()
            fault = self._faults.pop(0) if self._faults else None
            if fault == "crc":
                frame = self._corrupt(frame)
                self.stats.corrupted += 1
            elif fault == "truncate":
                frame = frame[: len(frame) // 2]
                self.stats.truncated += 1
            await write_all(self._fd, frame)
            self.stats.frames += 1
            next_at = max(next_at + self.period_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
