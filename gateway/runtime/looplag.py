"""How late the event loop wakes a task: the figure that says whether the agent's one thread keeps up.

Every poll, commit hand-off, sink batch and HTTP answer of the agent runs on one asyncio loop. When a
callback holds it (a large JSON answer, a garbage collection, the GIL held by another thread), every
timer fires late; the ledger's commit cadence and the devices' poll spacing degrade together. A task that
asks to sleep `period_s` and measures how much longer it slept gives the loop's lag directly, in the same
histogram form as the ledger's commit figures (`health["runtime"]["loop_lag"]`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.ledger.writer import Durations


class LoopLag:
    """Samples the loop's wake-up lateness every `period_s` (`run` is a supervised part)."""

    def __init__(self, period_s: float = 0.25, *, mono: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.lag = Durations()
        self._mono = mono

    async def run(self) -> None:
        while True:
            start = self._mono()
            await asyncio.sleep(self.period_s)
            self.lag.add(max(0.0, self._mono() - start - self.period_s))
