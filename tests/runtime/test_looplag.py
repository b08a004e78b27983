"""The loop-lag figure sees a held event loop (what slows every timer of the agent at once)."""

from __future__ import annotations

import asyncio
import time

from gateway.runtime.looplag import LoopLag


async def test_a_held_loop_shows_as_lag() -> None:
    lag = LoopLag(period_s=0.05)
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(0.3)
        quiet_max = lag.lag.max_s
        time.sleep(0.6)  # a callback holding the loop
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    figures = lag.lag.as_json("lag")
    assert figures["lag_max_s"] >= 0.5 > quiet_max, figures
    assert lag.lag.count >= 4
