"""Time as the agent sees it, injected so the demo and soak tests can run simulated time faster.

`WallClock` is the real clock. `ScaledClock` runs `speed` times faster than the wall from a given
origin: the simulator serves values for that time and the agent stamps readings with it, so an
accelerated month is internally consistent (energy registers advance with the power served).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, UTC-aware."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Sleep until `when` on this clock (returns at once if it has passed)."""
        ...


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


class ScaledClock:
    """Simulated time: `origin + (monotonic elapsed) * speed`. Monotonic, so a wall-clock jump is ignored."""

    def __init__(self, *, speed: float, origin: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._origin = origin or datetime.now(UTC)
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self._origin + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds() / self.speed
        if delay > 0:
            await asyncio.sleep(delay)


def next_aligned(now: datetime, interval_s: float) -> datetime:
    """The next wall-clock-aligned instant (10 s polls land on :00, :10, ...), strictly after `now`."""
    step_us = max(1, round(interval_s * 1_000_000))
    epoch_us = (now - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    nxt = (epoch_us // step_us + 1) * step_us
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nxt)
