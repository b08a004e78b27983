"""A cancellation swallowed inside a library must still stop the agent's loops (drivers/cancel.py).

Python 3.11's `asyncio.wait_for`, which pymodbus and aiomqtt use, returns the inner result when the
task's cancellation arrives in the same loop iteration: the task goes on although it was cancelled. The
driver and sink below do the same on purpose; the poller and the forwarder must stop all the same (a
poller that carried on kept `gia demo` alive past its shutdown bound under load).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from drivers.base import SharedConnection
from drivers.model import Sample
from gateway.devices.poller import DevicePoller
from gateway.ledger.reader import LedgerReader
from gateway.ledger.store import Ledger, Poll
from gateway.ledger.writer import LedgerWriter
from gateway.runtime.clock import WallClock
from gateway.runtime.live import LiveState
from gateway.sinks.forwarder import Forwarder

SWALLOW = {"on": True}  # switched off to end a loop that did not stop, so a failing test ends too


async def _swallow_cancellation(seconds: float) -> None:
    if not SWALLOW["on"]:
        await asyncio.sleep(seconds)
        return
    # what 3.11's wait_for does when the awaited result arrives with the cancellation
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(seconds)


async def stopped(task: asyncio.Task[None]) -> bool:
    """True when the cancelled task ended within 2 s; otherwise end it for good and say False."""
    await asyncio.wait({task}, timeout=2.0)
    ok = task.done() and task.cancelled()
    SWALLOW["on"] = False
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    SWALLOW["on"] = True
    return ok


class SwallowingDriver(SharedConnection):
    device_id = "m1"

    def __init__(self) -> None:
        self.reads = 0
        self.in_read = asyncio.Event()

    async def read(self, ts: datetime) -> Sequence[Sample]:
        self.reads += 1
        self.in_read.set()
        await _swallow_cancellation(0.05)
        return [Sample("m1", "power_w", 1.0, "W", ts)]


async def test_poller_stops_although_its_driver_swallowed_the_cancellation() -> None:
    driver = SwallowingDriver()

    async def nothing(_samples: Sequence[Sample]) -> None:
        return None

    poller = DevicePoller(
        device_id="m1",
        driver_factory=lambda: driver,
        interval_s=0.1,
        timeout_s=1.0,
        clock=WallClock(),
        live=LiveState.for_devices({"m1": "meter"}),
        on_samples=nothing,
    )
    task = asyncio.create_task(poller.run())
    await driver.in_read.wait()
    task.cancel()
    assert await stopped(task), f"the poller went on polling ({driver.reads} reads)"
    assert driver.reads == 1


class SwallowingSink(SharedConnection):  # nothing to open or close, as a driver on a shared bus
    name = "swallow"
    batch_size = 10

    def __init__(self) -> None:
        self.sent = 0
        self.in_send = asyncio.Event()

    async def send(self, polls: Sequence[Poll]) -> None:
        self.sent += 1
        self.in_send.set()
        await _swallow_cancellation(0.05)


async def test_forwarder_stops_although_its_sink_swallowed_the_cancellation(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.append(
        [Sample("m1", "power_w", float(i), "W", datetime(2025, 1, 1, 0, 0, i, tzinfo=UTC)) for i in range(50)]
    )
    writer = LedgerWriter(ledger, commit_interval_s=0.05, max_batch=100, max_queue=100)
    sink = SwallowingSink()
    reader = LedgerReader(tmp_path / "ledger.db")
    fw = Forwarder(sink_factory=lambda: sink, name="swallow", writer=writer, reader=reader, clock=WallClock())
    writer_task = asyncio.create_task(writer.run())
    task = asyncio.create_task(fw.run())
    try:
        await sink.in_send.wait()
        task.cancel()
        assert await stopped(task), f"the forwarder went on forwarding ({sink.sent} batches)"
        assert sink.sent == 1
    finally:
        writer_task.cancel()
        await asyncio.gather(writer_task, return_exceptions=True)
        reader.close()
        writer.close()


async def test_control_loop_stops_although_a_command_swallowed_the_cancellation() -> None:
    """Seen in CI: a demo's control loop went on sleeping after SIGINT (its round's Modbus command had
    swallowed the cancellation) until the agent's 10-s shutdown bound killed the process."""
    from gateway.control.config import ControlConfig
    from gateway.control.loop import Controller

    class SwallowingController(Controller):
        in_round = asyncio.Event()

        async def round(self) -> None:
            self.in_round.set()
            await _swallow_cancellation(0.05)

    async def record(*_a: object) -> None:
        return None

    controller = SwallowingController(
        ControlConfig(enabled=True, dry_run=False, interval_s=0.1, watchdog_s=1.0), batteries=[], relays=[],
        plan=lambda: None, reading=lambda _d, _q: None, record=record, now=lambda: datetime.now(UTC),
    )  # fmt: skip
    task = asyncio.create_task(controller.run())
    await controller.in_round.wait()
    task.cancel()
    assert await stopped(task), "the control loop went on after its cancellation"
