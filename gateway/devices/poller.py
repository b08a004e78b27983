"""One poller per device: wall-clock-aligned reads, a deadline per read, availability on transitions.

Each device has its own task, so a slow or dead device never delays another (devices on one serial
line still take turns on the bus lock, as the wire requires). A device going down is logged once as
an error and its recovery once as info, not on every failed poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from drivers.backoff import Backoff
from drivers.base import BusyError, Driver, DriverError, PermanentError, WarmingUp
from drivers.cancel import raise_if_cancelling
from drivers.model import Sample
from gateway.runtime.clock import Clock, next_aligned
from gateway.runtime.live import LiveState

log = logging.getLogger(__name__)

SampleSink = Callable[[Sequence[Sample]], Awaitable[None]]


class DevicePoller:
    def __init__(
        self,
        *,
        device_id: str,
        driver_factory: Callable[[], Driver],
        interval_s: float,
        timeout_s: float,
        clock: Clock,
        live: LiveState,
        on_samples: SampleSink,
        reconnect_after_failures: int = 3,
        where: str = "",
    ) -> None:
        self.device_id = device_id
        #: the device's address for messages, e.g. "tcp://10.0.0.5:502 unit 3"
        self._where = where
        self._driver_factory = driver_factory
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._live = live
        self._on_samples = on_samples
        self._reconnect_after = reconnect_after_failures
        self._backoff = Backoff(initial_s=min(1.0, interval_s), max_s=max(60.0, interval_s))

    def _failed(self, exc: BaseException) -> None:
        raise_if_cancelling()  # a device failure during shutdown is a cancellation, not a failure
        status = self._live.devices[self.device_id]
        status.errors += 1
        status.consecutive_failures += 1
        status.last_error = self.explain(exc)
        if self._live.set_online(self.device_id, False):
            log.error("device %s is offline: %s", self.device_id, status.last_error)

    def explain(self, exc: BaseException) -> str:
        """What went wrong, where (address and unit) and the likely cause — never a bare 'TimeoutError'.

        The poller's own deadline ends a read with an empty TimeoutError; drivers' errors already name
        the address and unit (drivers/modbus/bus.py) and get `where` only when they do not."""
        text = str(exc)
        if isinstance(exc, TimeoutError) and not text:
            return (
                f"{self._where or self.device_id}: no answer within {self._timeout_s:g} s"
                " (device off or unplugged, wrong address or unit id, or the bus is overloaded)"
            )
        if not text:
            text = type(exc).__name__
        address = self._where.split(" unit")[0]
        if self._where and " unit " not in text:
            text = text.replace(address, self._where, 1) if address in text else f"{self._where}: {text}"
        return text

    def _succeeded(self) -> None:
        status = self._live.devices[self.device_id]
        status.consecutive_failures = 0
        status.readings += 1
        status.last_ok = self._clock.now()
        if self._live.set_online(self.device_id, True):
            log.info("device %s is online", self.device_id)

    async def run(self) -> None:
        """Poll until cancelled. Connection problems back off; read problems wait for the next slot."""
        while True:
            try:
                async with self._driver_factory() as driver:
                    await self._poll_loop(driver)
            except PermanentError as exc:
                # Misconfiguration: keep reporting it, but retry rarely (the operator may fix the device).
                self._failed(exc)
                await asyncio.sleep(self._backoff.max_s)
            except (DriverError, OSError, TimeoutError) as exc:
                self._failed(exc)
                await asyncio.sleep(self._backoff.next_delay())

    async def _poll_loop(self, driver: Driver) -> None:
        status = self._live.devices[self.device_id]
        slot = next_aligned(self._clock.now(), self._interval_s)
        while True:
            raise_if_cancelling()  # a read that swallowed the shutdown's cancellation (drivers/cancel.py)
            if (slot - self._clock.now()).total_seconds() > self._interval_s:
                # The wall clock stepped back since this slot was chosen (an NTP step between the two
                # readings of it): without this a 1-s poller slept for the hour the clock went back,
                # and its readings were missing for that hour (tests/runtime/test_clock_forward.py).
                slot = next_aligned(self._clock.now(), self._interval_s)
            await self._clock.sleep_until(slot)
            ts = self._clock.now()
            status.polls += 1
            try:
                async with asyncio.timeout(self._timeout_s):
                    samples = await driver.read(ts)
            except WarmingUp:
                pass  # no first values yet, within the device's grace period: not offline, not online
            except BusyError as exc:
                self._failed(exc)  # the device asked to wait: no reconnect
            except (DriverError, OSError, TimeoutError) as exc:
                self._failed(exc)
                if status.consecutive_failures >= self._reconnect_after:
                    raise
            else:
                self._live.update(self.device_id, samples)
                await self._on_samples(samples)
                self._succeeded()
                self._backoff.reset()
            nxt = next_aligned(self._clock.now(), self._interval_s)
            if (nxt - slot).total_seconds() > self._interval_s * 1.5:
                status.overruns += 1  # the read took longer than the interval: skip missed slots
            slot = nxt
