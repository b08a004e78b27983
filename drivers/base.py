"""The driver protocol: what every device driver implements, and nothing more.

A driver is an async context manager (connect on enter, release on exit) with one method, `read`,
that returns the device's current samples. Writing setpoints is a separate capability so that a
read-only meter never exposes a write path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from drivers.errors import GiaError
from drivers.model import Sample


@runtime_checkable
class Driver(Protocol):
    """Reads one device. `read` raises a `DriverError` subclass on failure, never returns garbage."""

    device_id: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def read(self, ts: datetime) -> Sequence[Sample]:
        """Read the device now and stamp every sample with `ts` (UTC, the poll's scheduled instant)."""
        ...


class SharedConnection:
    """Base of drivers whose connection belongs to someone else (a Modbus bus from the pool, the MQTT
    hub): entering and leaving hold nothing of their own, so both do nothing unless overridden."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class DriverError(GiaError):
    """Base of driver failures.

    DriverError
     ├── TransientError      retry on the next poll (timeout, connection lost, garbled frame)
     │    └── BusyError       the device asked us to wait: retry without reconnecting
     └── PermanentError      configuration or device mismatch: fail fast, the message names the fix
    """


class TransientError(DriverError):
    pass


class BusyError(TransientError):
    pass


class PermanentError(DriverError):
    exit_code = 2
