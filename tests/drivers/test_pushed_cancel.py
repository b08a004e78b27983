"""A port's data and a shutdown arriving together must still shut the reader down.

Python 3.11's `asyncio.wait_for` returns the inner result when the waiting task is cancelled in the same
loop iteration as that result arrives (drivers/cancel.py). The serial link waited for data that way, so
a meter's reader task that was cancelled just as bytes came in went on reading, and the driver's
`__aexit__`, awaiting that task, never returned: the device poller hung at shutdown (CI: the SML
"goes dark" test, 2 runs in 40 on a busy machine). Both tests make the coincidence deterministic by
signalling "data arrived" in the same step as the cancellation.
"""

from __future__ import annotations

import asyncio

import pytest

from drivers.cancel import cancel_and_wait
from drivers.links import SerialLink, open_link, parse_link
from drivers.sml.driver import SmlDriver
from drivers.sml.sim import sml_sim
from tests.drivers.ports import pty_pair, wait_until


async def test_a_read_cancelled_as_data_arrives_is_cancelled() -> None:
    async with pty_pair() as pair:
        link = await open_link(parse_link(f"serial://{pair.a}"), timeout_s=3)
        assert isinstance(link, SerialLink)
        try:
            reader = asyncio.create_task(link.read(10.0))
            await asyncio.sleep(0.05)  # the read is waiting for the port
            link._readable.set()  # what the port's reader callback does when bytes arrive
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
        finally:
            await link.close()


async def test_a_meter_closed_as_a_telegram_arrives_closes() -> None:
    async with pty_pair() as pair:
        sim = await sml_sim(pair.b, values=lambda: {"energy_import_wh": 7}, period_s=0.05).start()
        try:
            driver = SmlDriver(device_id="dev", link=parse_link(f"serial://{pair.a}"), poll_interval_s=0.2)
            await driver.__aenter__()
            await wait_until(lambda: driver.stats.good > 0, 5, "a telegram")
            sim.pause()
            await asyncio.sleep(0.2)  # the reader has taken what came and waits for the port
            assert driver._link is not None and driver._task is not None
            reader = driver._task
            driver._link._readable.set()  # type: ignore[attr-defined]  # bytes arrive as __aexit__ cancels
            async with asyncio.timeout(5):
                await driver.__aexit__(None, None, None)
            assert reader.done(), "the meter's reader task outlived the driver"
        finally:
            await sim.stop()


async def test_closing_what_we_own_does_not_swallow_the_callers_deadline() -> None:
    """A task that takes a moment to stop (it closes a port): the caller's own deadline still fires.
    With `suppress(CancelledError): await task` the deadline's cancellation was absorbed with the task's
    and the caller carried on past its deadline as if the close had finished in time."""

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.shield(asyncio.sleep(0.5))

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await cancel_and_wait(task)
    assert task.done()


async def test_closing_what_we_own_absorbs_only_its_cancellation() -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    await cancel_and_wait(task)  # no CancelledError for the caller
    assert task.cancelled()
