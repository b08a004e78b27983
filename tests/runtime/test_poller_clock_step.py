"""A wall clock stepped back between the poller choosing its next slot and sleeping until it.

Seen intermittently in tests/runtime/test_clock_forward.py (a real agent under libfaketime): after a
one-hour step back the device's part sat in `sleep_until(slot)` with a slot an hour ahead, so no reading
was taken (none held, none stored) for the rest of the test. On a real gateway an NTP step landing in
that instant would silence the device for an hour. Here the clock steps back by an hour on exactly the
reading the poller takes after choosing a slot, every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from drivers.base import SharedConnection
from drivers.model import Sample
from gateway.devices.poller import DevicePoller
from gateway.runtime.live import LiveState


class SteppingClock:
    """The real clock, stepped back one hour once, `step_on`-th call of `now()` onwards."""

    def __init__(self, step_on: int) -> None:
        self.calls = 0
        self.step_on = step_on
        self.offset = timedelta(0)

    def now(self) -> datetime:
        self.calls += 1
        if self.calls == self.step_on:
            self.offset = timedelta(hours=-1)
        return datetime.now(UTC) + self.offset

    async def sleep_until(self, when: datetime) -> None:
        delay = (when - self.now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


class CountingDriver(SharedConnection):
    device_id = "m1"

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, ts: datetime) -> Sequence[Sample]:
        self.reads += 1
        return [Sample("m1", "power_w", 1.0, "W", ts)]


async def test_a_step_back_after_the_slot_was_chosen_does_not_stop_polling() -> None:
    driver = CountingDriver()
    stored: list[Sample] = []

    async def keep(samples: Sequence[Sample]) -> None:
        stored.extend(samples)

    # Call 1 chooses the first slot; the step lands on the poller's next reading of the clock, i.e.
    # after the slot 0.1 s ahead was chosen with the old time.
    clock = SteppingClock(step_on=2)
    poller = DevicePoller(
        device_id="m1",
        driver_factory=lambda: driver,
        interval_s=0.1,
        timeout_s=1.0,
        clock=clock,
        live=LiveState.for_devices({"m1": "meter"}),
        on_samples=keep,
    )
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(1.0)  # ten slots' worth; before the fix: no read at all (an hour's sleep)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert clock.offset == timedelta(hours=-1), "the step must have happened for the test to mean anything"
    assert driver.reads >= 3, f"{driver.reads} reads in 1 s at a 0.1-s interval after the clock stepped back"
