"""Helpers for the meter-port tests (P1, SML, M-Bus): socat pty pairs and the poller's offline/back cycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from drivers.base import Driver
from drivers.model import Sample
from drivers.sim.serial import PtyPair
from gateway.devices.poller import DevicePoller
from gateway.runtime.clock import WallClock
from gateway.runtime.live import LiveState


def require_socat() -> None:
    if shutil.which("socat") is None:
        msg = "socat not found; install it: apt-get install -y socat"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@contextlib.asynccontextmanager
async def pty_pair() -> AsyncIterator[PtyPair]:
    """A socat pty pair: the driver opens `a`, the simulated meter writes to `b`."""
    require_socat()
    pair = await asyncio.to_thread(PtyPair().start)
    try:
        yield pair
    finally:
        await asyncio.to_thread(pair.stop)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")
        await asyncio.sleep(0.02)


@dataclass
class Polled:
    """A device polled by the agent's own DevicePoller, its live state and every sample it stored."""

    live: LiveState
    stored: list[Sample] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def online(self) -> bool | None:
        return self.live.devices["dev"].online


@contextlib.asynccontextmanager
async def polled(
    factory: Callable[[], Driver], *, interval_s: float = 0.2, timeout_s: float = 1.0
) -> AsyncIterator[Polled]:
    live = LiveState.for_devices({"dev": "meter"})
    p = Polled(live)

    async def sink(samples: Sequence[Sample]) -> None:
        p.stored.extend(samples)

    poller = DevicePoller(
        device_id="dev",
        driver_factory=factory,
        interval_s=interval_s,
        timeout_s=timeout_s,
        clock=WallClock(),
        live=live,
        on_samples=sink,
    )
    p.task = asyncio.create_task(poller.run(), name="test poller")
    try:
        yield p
    finally:
        p.task.cancel()
        await asyncio.gather(p.task, return_exceptions=True)
