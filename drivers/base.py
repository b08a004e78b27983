"""The driver protocol: what every device driver implements, and nothing more.

A driver is an async context manager (connect on enter, release on exit) with one method, `read`,
that returns the device's current samples. Writing setpoints is a separate capability (`Writable`,
and the actuators built on it: `BatteryActuator`, `SwitchActuator`) so that a read-only meter never
exposes a write path.
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


@runtime_checkable
class Writable(Protocol):
    """A device with registers the agent may write, each named by its map (`writable:`).

    `write` checks the value against the device's own limits *before* sending (`OutOfRange`), and a
    device that answers with a refusal raises `CommandRefused`; `read_back` reads the register again
    (None when it cannot be read back) so the caller can check the device took the value.
    """

    device_id: str

    async def write(self, name: str, value: float) -> None:
        """Write `value` (engineering units: W, %, s, or a mode code) to the register named `name`."""
        ...

    async def read_back(self, name: str) -> float | None:
        """The value the register holds now, in engineering units (None: not readable)."""
        ...


class BatteryActuator(Protocol):
    """A battery the agent can command: power in W, positive when discharging (drivers/model.py)."""

    device_id: str
    #: the device's own limits in W (from its map): largest charge and discharge power
    max_charge_w: float
    max_discharge_w: float
    #: seconds after the last command the device returns to its own mode by itself (its watchdog)
    device_timeout_s: float

    async def set_power(self, power_w: float, *, watchdog_s: float) -> None:
        """Command `power_w`; `watchdog_s` is what the device's own timeout is set to (where it can be)."""
        ...

    async def read_back(self) -> float | None:
        """The setpoint the device holds now (W, + discharge), None when it is not commanded."""
        ...

    async def release(self) -> None:
        """Hand the device back to its autonomous mode (its own self-consumption controller)."""
        ...


class SwitchActuator(Protocol):
    """An on/off load (a relay): the agent switches it, the device reverts on its own timer."""

    device_id: str

    async def set_on(self, on: bool, *, watchdog_s: float) -> None: ...

    async def read_back(self) -> bool | None: ...

    async def release(self) -> None: ...


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
     │    ├── BusyError       the device asked us to wait: retry without reconnecting
     │    └── WarmingUp       no first values yet, within the grace period: availability unchanged
     └── PermanentError      configuration or device mismatch: fail fast, the message names the fix
          ├── OutOfRange      a command beyond the limits, refused before sending
          └── CommandRefused  the device refused a write
    """


class TransientError(DriverError):
    pass


class BusyError(TransientError):
    pass


class WarmingUp(TransientError):
    """The device has not delivered its first values since the connection opened, and its grace period
    (one stale window) has not run out: neither a failure nor a success, so availability stays as it is.
    A meter that pushes a telegram every 10 s is not "offline" at the first poll after a start."""


class PermanentError(DriverError):
    exit_code = 2


class OutOfRange(PermanentError):
    """A command outside the device's (or the configuration's) limits: refused before anything is sent."""

    http_status = 400
    error_code = "out_of_range"


class CommandRefused(PermanentError):
    """The device answered a write with a refusal (illegal function, address or value, device failure)."""

    http_status = 502
    error_code = "command_refused"
