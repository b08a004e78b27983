"""One bus object per physical Modbus connection; the only module that calls the pymodbus client.

pymodbus changes its API between minor versions (3.16 renamed `slave=` to `device_id=`), so every
client call lives here, behind `ModbusBus.read`, and the version is pinned in pyproject.toml.

Why a bus object and not a client per device: an RS485 line (or a TCP gateway in front of one) carries
many unit ids but only one request at a time, and a serial port can be opened once. A `ModbusBus` owns
the connection and an `asyncio.Lock`; every device on that line shares it (`BusPool.bus` returns the same
object for the same `Connection.bus_key`). The bus enforces the silent interval between frames (3.5
characters on RTU, plus any configured `inter_frame_delay_s`) and the device's `pause_after_connect_s`.

Failure policy (the driver's exception tree, see drivers/base.py):

* device busy (exception 6): wait `busy_delay_s` and retry on the same connection, up to
  `busy_retries`, then `BusyError`;
* no response (timeout) or garbled/truncated frame: `TransientError`; the connection is kept (on RTU a
  silent unit says nothing about its neighbours) unless several requests in a row failed;
* connection refused/closed: `TransientError`, the connection is dropped and re-opened on a later read
  after a capped, jittered, exponential backoff (so a dead gateway is not hammered);
* illegal function/address/value (exceptions 1-3): `DeviceException` (a `PermanentError`): the map does
  not fit the device; the driver decides whether that is fatal or just one missing value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.backoff import Backoff
from drivers.base import BusyError, PermanentError, TransientError
from drivers.config import Connection
from drivers.modbus.registermap import RegisterType

log = logging.getLogger(__name__)

ILLEGAL_FUNCTION: Final = 1
ILLEGAL_ADDRESS: Final = 2
ILLEGAL_VALUE: Final = 3
DEVICE_FAILURE: Final = 4
DEVICE_BUSY: Final = 6
GATEWAY_NO_RESPONSE: Final = 11

_EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}

#: Consecutive failed requests after which a TCP connection is presumed dead and re-opened.
_MAX_SILENT_REQUESTS: Final = 3


class DeviceException(PermanentError):
    """The device answered with a Modbus exception that retrying cannot fix (codes 1-3)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass
class BusOptions:
    """The bus-level quirks (the strictest value wins when several devices share a bus)."""

    inter_frame_delay_s: float = 0.0
    pause_after_connect_s: float = 0.0
    busy_retries: int = 3
    busy_delay_s: float = 0.2

    def merge(self, options: Mapping[str, float | int | bool]) -> None:
        self.inter_frame_delay_s = max(self.inter_frame_delay_s, float(options.get("inter_frame_delay_s", 0)))
        self.pause_after_connect_s = max(self.pause_after_connect_s, float(options.get("pause_after_connect_s", 0)))
        self.busy_retries = max(self.busy_retries, int(options.get("busy_retries", 0)))
        self.busy_delay_s = max(self.busy_delay_s, float(options.get("busy_delay_s", 0)))


@dataclass
class BusStats:
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    busy: int = 0
    reconnects: int = 0
    registers: int = 0


def rtu_char_time_s(baud: int, bits_per_char: int = 11) -> float:
    return bits_per_char / baud


class ModbusBus:
    """A Modbus connection shared by every unit id behind it. Use through `BusPool.bus`."""

    def __init__(self, conn: Connection, *, timeout_s: float, options: BusOptions | None = None) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self.options = options or BusOptions()
        self.stats = BusStats()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._backoff = Backoff(initial_s=0.5, max_s=30.0)
        self._not_before = 0.0  # monotonic time before which no reconnect is attempted
        self._last_frame_end = 0.0
        self._silent = 0
        # RTU: 3.5 character times of silence between frames (1.75 ms minimum above 19200 baud).
        self._min_gap = max(3.5 * rtu_char_time_s(conn.baud), 0.00175) if conn.scheme in ("rtu", "rtu+tcp") else 0.0
        #: (unit, register type, protocol address) -> (word, monotonic time read): what the Modbus proxy
        #: re-serves to other local clients (drivers/modbus/proxy.py). Bounded by the registers polled.
        self.cache: dict[tuple[int, RegisterType, int], tuple[int, float]] = {}

    @property
    def key(self) -> str:
        return self.conn.bus_key

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # retries=0 and reconnect_delay=0: retrying and reconnecting are this class's policy.
        c = self.conn
        if c.scheme == "rtu":
            assert c.device is not None
            return AsyncModbusSerialClient(
                c.device,
                framer=FramerType.RTU,
                baudrate=c.baud,
                bytesize=c.bytesize,
                parity=c.parity,
                stopbits=c.stopbits,
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0,
                reconnect_delay_max=0,
            )
        assert c.host is not None and c.port is not None
        return AsyncModbusTcpClient(
            c.host,
            port=c.port,
            framer=FramerType.RTU if c.scheme == "rtu+tcp" else FramerType.SOCKET,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            reconnect_delay_max=0,
        )

    async def _ensure_connected(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        wait = self._not_before - time.monotonic()
        if wait > 0:
            raise TransientError(
                f"{self.key}: cannot connect (check address, port, cable and power); next attempt in {wait:.1f} s"
            )
        client = self._make_client()
        try:
            async with asyncio.timeout(self.timeout_s + 1):
                ok = await client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            ok = False
            log.debug("connect %s failed: %s", self.key, exc)
        if not ok:
            client.close()
            self._not_before = time.monotonic() + self._backoff.next_delay()
            raise TransientError(f"{self.key}: cannot connect (check address, port, cable and power)")
        self.stats.reconnects += 1
        self._backoff.reset()
        self._client = client
        self._silent = 0
        if self.options.pause_after_connect_s:
            await asyncio.sleep(self.options.pause_after_connect_s)
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def _pace(self) -> None:
        gap = max(self._min_gap, self.options.inter_frame_delay_s)
        if gap:
            wait = self._last_frame_end + gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def read(self, rtype: RegisterType, address: int, count: int, *, unit: int) -> list[int]:
        """Read `count` registers (or bits, as 0/1) starting at protocol `address` from `unit`."""
        async with self._lock:
            attempt = 0
            while True:
                try:
                    words = await self._read_once(rtype, address, count, unit)
                    stamp = time.monotonic()
                    for i, w in enumerate(words):
                        self.cache[(unit, rtype, address + i)] = (w, stamp)
                    return words
                except BusyError:
                    self.stats.busy += 1
                    if attempt >= self.options.busy_retries:
                        raise
                    attempt += 1
                    await asyncio.sleep(self.options.busy_delay_s * attempt)

    async def write(self, rtype: RegisterType, address: int, words: list[int], *, unit: int, function: int) -> None:
        """Write `words` (or bits, as 0/1) at protocol `address` of `unit` with Modbus `function` 5, 6, 15 or 16.

        A write is never retried on a timeout (the device may have acted on it: the caller reads back);
        a busy device is retried like a read. The device's refusal (illegal function/address/value) is a
        `DeviceException` naming the exception, so the caller can say the device refused the command.
        """
        async with self._lock:
            attempt = 0
            while True:
                try:
                    await self._write_once(rtype, address, words, unit, function)
                    stamp = time.monotonic()
                    for i, w in enumerate(words):
                        self.cache[(unit, rtype, address + i)] = (w, stamp)
                    return
                except BusyError:
                    self.stats.busy += 1
                    if attempt >= self.options.busy_retries:
                        raise
                    attempt += 1
                    await asyncio.sleep(self.options.busy_delay_s * attempt)

    async def _write_once(self, rtype: RegisterType, address: int, words: list[int], unit: int, function: int) -> None:
        client = await self._ensure_connected()
        await self._pace()
        self.stats.requests += 1
        what = f"{self.key} unit {unit} write fc{function} {rtype} {address}+{len(words)}"
        try:
            if function == 6:
                rr: Any = await client.write_register(address, words[0], device_id=unit)
            elif function == 16:
                rr = await client.write_registers(address, list(words), device_id=unit)
            elif function == 5:
                rr = await client.write_coil(address, bool(words[0]), device_id=unit)
            elif function == 15:
                rr = await client.write_coils(address, [bool(w) for w in words], device_id=unit)
            else:
                raise PermanentError(f"{what}: unknown write function {function}")
        except ModbusIOException as exc:
            self._failed(timeout=True)
            raise TransientError(f"{what}: no valid response within {self.timeout_s:g} s ({exc})") from None
        except (ConnectionException, OSError) as exc:
            self._failed(timeout=False)
            raise TransientError(f"{what}: connection lost ({exc})") from None
        except ModbusException as exc:
            self._failed(timeout=True)
            raise TransientError(f"{what}: {exc}") from None
        except asyncio.CancelledError:
            self._failed(timeout=True)
            raise
        finally:
            self._last_frame_end = time.monotonic()
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            self.stats.errors += 1
            self._silent = 0
            name = _EXCEPTION_NAMES.get(code, f"exception {code}")
            if code == DEVICE_BUSY:
                raise BusyError(f"{what}: device busy")
            if code in (ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE, DEVICE_FAILURE):
                raise DeviceException(code, f"{what}: the device refused the write ({name})")
            raise TransientError(f"{what}: {name}")
        self._silent = 0

    async def _read_once(self, rtype: RegisterType, address: int, count: int, unit: int) -> list[int]:
        client = await self._ensure_connected()
        await self._pace()
        self.stats.requests += 1
        try:
            if rtype == "holding":
                rr: Any = await client.read_holding_registers(address, count=count, device_id=unit)
            elif rtype == "input":
                rr = await client.read_input_registers(address, count=count, device_id=unit)
            elif rtype == "coil":
                rr = await client.read_coils(address, count=count, device_id=unit)
            else:
                rr = await client.read_discrete_inputs(address, count=count, device_id=unit)
        # pymodbus's own texts ("Modbus Error: [Input/Output] ...") stay in the debug log: the message
        # says what happened in the operator's words and names the likely cause.
        except ModbusIOException as exc:
            self._failed(timeout=True)
            what = self._what(rtype, address, count, unit)
            log.debug("%s: %s", what, exc)
            hint = (
                "wrong unit id, or the device is off" if self.conn.scheme == "tcp" else "wrong unit id, wiring or baud"
            )
            raise TransientError(f"{what}: no answer within {self.timeout_s:g} s ({hint})") from None
        except (ConnectionException, OSError) as exc:
            self._failed(timeout=False)
            what = self._what(rtype, address, count, unit)
            log.debug("%s: %s", what, exc)
            raise TransientError(f"{what}: connection lost (device restarted, cable or network)") from None
        except ModbusException as exc:
            self._failed(timeout=True)
            what = self._what(rtype, address, count, unit)
            log.debug("%s: %s", what, exc)
            raise TransientError(f"{what}: garbled or incomplete answer") from None
        except asyncio.CancelledError:
            # The caller's deadline (the poller's timeout_s, as long as ours) ended the request before
            # pymodbus's own timeout fired: it went unanswered all the same. Count it, or a half-open
            # TCP connection (device rebooted without FIN) would be reused forever.
            self._failed(timeout=True)
            raise
        finally:
            self._last_frame_end = time.monotonic()
        if rr.isError():
            what = self._what(rtype, address, count, unit)
            code = int(getattr(rr, "exception_code", 0) or 0)
            self.stats.errors += 1
            self._silent = 0
            name = _EXCEPTION_NAMES.get(code, f"exception {code}")
            if code == DEVICE_BUSY:
                raise BusyError(f"{what}: device busy")
            if code in (ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE):
                raise DeviceException(code, f"{what}: {name} (the register map does not fit this device)")
            if code in (10, GATEWAY_NO_RESPONSE):
                raise TransientError(f"{what}: {name} (no device with unit id {unit} behind the gateway?)")
            raise TransientError(f"{what}: {name}")
        self._silent = 0
        if rtype in ("coil", "discrete"):
            bits = [1 if b else 0 for b in rr.bits[:count]]
            if len(bits) < count:
                raise TransientError(f"{self._what(rtype, address, count, unit)}: short response ({len(bits)} bits)")
            return bits
        regs = list(rr.registers)
        if len(regs) != count:
            self.stats.errors += 1
            raise TransientError(
                f"{self._what(rtype, address, count, unit)}: truncated response ({len(regs)} of {count} registers)"
            )
        self.stats.registers += count
        return regs

    def _what(self, rtype: RegisterType, address: int, count: int, unit: int) -> str:
        return f"{self.key} unit {unit} {rtype} {address}+{count}"

    def _failed(self, *, timeout: bool) -> None:
        self.stats.errors += 1
        if timeout:
            self.stats.timeouts += 1
            self._silent += 1
            # On TCP a run of timeouts means a half-open connection; on RTU only that unit is silent.
            if self.conn.scheme != "rtu" and self._silent >= _MAX_SILENT_REQUESTS:
                self._drop()
                self._silent = 0
            return
        self._drop()
        self._not_before = time.monotonic() + self._backoff.next_delay()

    async def close(self) -> None:
        async with self._lock:
            self._drop()


class BusPool:
    """All buses of one agent, keyed by physical connection; closes them all on exit."""

    def __init__(self) -> None:
        self._buses: dict[str, ModbusBus] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def bus(self, conn: Connection, *, timeout_s: float, options: Mapping[str, float | int | bool]) -> ModbusBus:
        """The bus for `conn` (created on first use; later devices on it tighten its options)."""
        bus = self._buses.get(conn.bus_key)
        if bus is None:
            bus = ModbusBus(conn, timeout_s=timeout_s, options=BusOptions())
            self._buses[conn.bus_key] = bus
        else:
            bus.timeout_s = max(bus.timeout_s, timeout_s)
        bus.options.merge(options)
        return bus

    def get(self, bus_key: str) -> ModbusBus | None:
        """The bus of a connection if a driver has opened it (the proxy looks its cache up here)."""
        return self._buses.get(bus_key)

    @property
    def buses(self) -> list[ModbusBus]:
        return list(self._buses.values())

    async def aclose(self) -> None:
        for bus in self._buses.values():
            await bus.close()
        self._buses.clear()
