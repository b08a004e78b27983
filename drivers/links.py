"""Byte links for the meter-port drivers (P1, SML, M-Bus): a serial port or a TCP serial server.

Why not pymodbus's or the libraries' own I/O: dsmr-parser, smllib and pyMeterBus decode bytes, and
their serial helpers are blocking (pyMeterBus) or pull in a second serial stack (dsmr-parser's
serialx). One small async link serves all three: a serial port (pyserial configures the line, the fd
is read non-blocking from the event loop) or a TCP connection to a serial server (ser2net, a WiFi P1
dongle, an M-Bus TCP gateway), which is the same byte stream over a socket.

Connection URLs, in the style of the Modbus ones:

* ``serial:///dev/ttyUSB0?baud=115200&parity=N&bytesize=8&stopbits=1``
* ``tcp://HOST:PORT``

Errors are `TransientError` (the poller retries with backoff); a malformed URL is a `ValueError`
whose message says what a good one looks like (config validation turns it into a field error).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Final, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

from drivers.base import TransientError
from drivers.cancel import cancel_and_wait

STANDARD_BAUDS: Final = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


class LinkClosed(TransientError):
    """The other end went away (serial adapter unplugged, TCP peer closed)."""


@dataclass(frozen=True, slots=True)
class LinkSettings:
    scheme: Literal["serial", "tcp"]
    device: str | None = None
    host: str | None = None
    port: int | None = None
    baud: int = 115200
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1

    @property
    def where(self) -> str:
        """Where the bytes come from, for messages (never carries credentials: links have none)."""
        if self.scheme == "serial":
            return self.device or ""
        return f"{self.host}:{self.port}"


def parse_link(
    url: str, *, default_baud: int = 115200, default_parity: str = "N", default_bytesize: int = 8
) -> LinkSettings:
    """Parse ``serial:///dev/X?baud=..`` or ``tcp://HOST:PORT`` with a message naming the fix."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "tcp":
        if not parts.hostname:
            raise ValueError(f"{url!r} has no host; write tcp://192.0.2.10:2001")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: port must be 1..65535") from None
        if port is None or not 1 <= port <= 65535:
            raise ValueError(f"{url!r}: give the port, 1..65535 (tcp://HOST:PORT)")
        return LinkSettings(scheme="tcp", host=parts.hostname, port=port)
    if scheme == "serial":
        if not parts.path or parts.path == "/":
            raise ValueError(f"{url!r} has no serial device; write serial:///dev/ttyUSB0?baud={default_baud}")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(q) - {"baud", "parity", "stopbits", "bytesize"}
        if unknown:
            raise ValueError(
                f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}; use baud, parity, bytesize, stopbits"
            )
        try:
            baud = int(q.get("baud", str(default_baud)))
            stopbits = int(q.get("stopbits", "1"))
            bytesize = int(q.get("bytesize", str(default_bytesize)))
        except ValueError:
            raise ValueError(f"{url!r}: baud, bytesize and stopbits must be integers") from None
        if baud not in STANDARD_BAUDS:
            raise ValueError(f"{url!r}: baud {baud} is not a standard rate (2400, 9600, 115200...)")
        parities: dict[str, Literal["N", "E", "O"]] = {"N": "N", "E": "E", "O": "O"}
        parity = parities.get(q.get("parity", default_parity).upper())
        if parity is None:
            raise ValueError(f"{url!r}: parity must be N, E or O")
        if bytesize not in (7, 8) or stopbits not in (1, 2):
            raise ValueError(f"{url!r}: bytesize must be 7 or 8 and stopbits 1 or 2")
        return LinkSettings(
            scheme="serial", device=parts.path, baud=baud, parity=parity, bytesize=bytesize, stopbits=stopbits
        )
    raise ValueError(f"{url!r}: scheme must be serial:// (a serial port) or tcp:// (a serial server)")


class Link(Protocol):
    """A bidirectional byte stream: `read` returns what arrived (b"" after `timeout_s` of silence)."""

    async def read(self, timeout_s: float) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    def discard_input(self) -> None: ...

    async def close(self) -> None: ...


class SerialLink:
    """A serial port read from the event loop (pyserial sets baud/parity; the fd is non-blocking)."""

    def __init__(self, settings: LinkSettings) -> None:
        assert settings.device is not None
        self.settings = settings
        self._port: object | None = None
        self._fd = -1
        self._buf = bytearray()
        self._readable = asyncio.Event()
        self._error: str | None = None

    async def open(self, timeout_s: float) -> SerialLink:
        import serial  # pyserial: imported here so a config check does not load it

        s = self.settings

        def _open() -> object:
            return serial.Serial(
                s.device,
                baudrate=s.baud,
                bytesize=serial.SEVENBITS if s.bytesize == 7 else serial.EIGHTBITS,
                parity={"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}[s.parity],
                stopbits=serial.STOPBITS_TWO if s.stopbits == 2 else serial.STOPBITS_ONE,
                timeout=0,
                write_timeout=0,
                exclusive=True,  # two readers on one port would each get half of every telegram
            )

        try:
            # Opening a tty can block (modem control lines); keep it off the loop, bounded.
            async with asyncio.timeout(timeout_s):
                port = await asyncio.to_thread(_open)
        except (OSError, TimeoutError, ValueError) as exc:
            raise TransientError(
                f"cannot open serial port {s.device} ({exc}); check the device path, cable and permissions"
            ) from None
        self._port = port
        self._fd = port.fileno()  # type: ignore[attr-defined]
        os.set_blocking(self._fd, False)
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        return self

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the adapter was unplugged or the pty's other end closed
            self._fail(f"serial port {self.settings.device}: {exc.strerror or exc}")
            return
        if not data:
            self._fail(f"serial port {self.settings.device} closed")
            return
        self._buf.extend(data)
        self._readable.set()

    def _fail(self, why: str) -> None:
        self._error = why
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._fd)
        self._readable.set()

    async def read(self, timeout_s: float) -> bytes:
        if not self._buf and self._error is None:
            self._readable.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._readable.wait()
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            return data
        if self._error is not None:
            raise LinkClosed(self._error)
        return b""

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise LinkClosed(self._error)
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            except OSError as exc:
                self._fail(f"serial port {self.settings.device}: {exc.strerror or exc}")
                raise LinkClosed(self._error or "write failed") from None
            view = view[n:]

    def discard_input(self) -> None:
        self._buf.clear()

    async def close(self) -> None:
        if self._port is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(OSError):
                self._port.close()  # type: ignore[attr-defined]
            self._port = None


class TcpLink:
    """A TCP connection to a serial server: the same byte stream as the port behind it."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: asyncio.Task[bytes] | None = None

    async def open(self, timeout_s: float) -> TcpLink:
        s = self.settings
        try:
            async with asyncio.timeout(timeout_s):
                self._reader, self._writer = await asyncio.open_connection(s.host, s.port)
        except (OSError, TimeoutError) as exc:
            raise TransientError(f"cannot connect to {s.where} ({exc}); check address, port and power") from None
        return self

    async def read(self, timeout_s: float) -> bytes:
        assert self._reader is not None
        # One read in flight, kept across timeouts: cancelling StreamReader.read loses nothing, but
        # keeping it avoids a cancel/re-arm per idle period.
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._reader.read(4096))
        done, _ = await asyncio.wait({self._pending}, timeout=timeout_s)
        if not done:
            return b""
        task, self._pending = self._pending, None
        try:
            data = task.result()
        except OSError as exc:
            raise LinkClosed(f"{self.settings.where}: {exc}") from None
        if not data:
            raise LinkClosed(f"{self.settings.where} closed the connection")
        return data

    async def write(self, data: bytes) -> None:
        assert self._writer is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise LinkClosed(f"{self.settings.where}: {exc}") from None

    def discard_input(self) -> None:
        return None  # bytes already read were handed out; nothing is buffered here

    async def close(self) -> None:
        if self._pending is not None:
            with contextlib.suppress(OSError):
                await cancel_and_wait(self._pending)
            self._pending = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                async with asyncio.timeout(1.0):
                    await self._writer.wait_closed()
            self._writer = None


async def open_link(settings: LinkSettings, *, timeout_s: float) -> SerialLink | TcpLink:
    """Open the link (raises TransientError with the reason and what to check)."""
    if settings.scheme == "serial":
        return await SerialLink(settings).open(timeout_s)
    return await TcpLink(settings).open(timeout_s)
