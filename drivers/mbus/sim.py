"""Simulated M-Bus meters on a line: answer SND_NKE with E5 and REQ_UD2 with an RSP_UD long frame.

The frames are built here (EN 13757-2 long frame, EN 13757-3 variable data structure with CI 72:
identification number in BCD, manufacturer code, version, medium, access number, status, signature,
then DIF/VIF data records) with this module's own checksum, so the driver's path through pyMeterBus
is tested against an independent encoder. Two record layouts, after the documents' examples:

* electricity meter (medium 02): import energy (DIF 04 VIF 03: 32-bit integer, Wh), export energy
  (DIF 84 DIFE 40: subunit 1), active power (DIF 04 VIF 2B: W);
* heat meter (medium 04): energy (DIF 0C VIF 06: 8-digit BCD, kWh), volume (DIF 04 VIF 13: litres),
  power (DIF 04 VIF 2B: W), flow and return temperature (DIF 02 VIF 59 / 5D: 0.01 degC).

A meter may spread its records over several answers (`telegrams=N`, EN 13757-3 multi-telegram
readout): every answer but the last ends with DIF 1F ("more records follow"); a REQ_UD2 whose FCB
toggled gets the next answer, one with the same FCB gets the last answer again (the master did not
receive it), SND_NKE starts over at the first.

Serves on a pty end (the far side of a socat pair) or as a TCP gateway. Faults for tests:
`inject("crc" | "truncate" | "silent", n)`, `pause()`/`resume()`. Never imported by the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from drivers.sim.pushed import open_pty_end, write_all

Values = Callable[[], Mapping[str, float | int]]
MbusFault = Literal["crc", "truncate", "silent"]

MANUFACTURER_GIA: Final = ((ord("G") - 64) << 10) | ((ord("I") - 64) << 5) | (ord("A") - 64)


def bcd(value: int, nbytes: int) -> bytes:
    """Little-endian packed BCD (EN 13757-3 type A)."""
    digits = f"{value:0{nbytes * 2}d}"
    if len(digits) > nbytes * 2:
        raise ValueError(f"{value} does not fit {nbytes * 2} BCD digits")
    return bytes(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))[::-1]


def le(value: int, nbytes: int, *, signed: bool = True) -> bytes:
    return value.to_bytes(nbytes, "little", signed=signed)


MORE_RECORDS_FOLLOW: Final = 0x1F  # DIF closing an answer that is not the meter's last


def electricity_record_list(v: Mapping[str, float | int]) -> list[bytes]:
    return [
        bytes([0x04, 0x03]) + le(int(v.get("energy_import_wh", 0)), 4, signed=False),
        bytes([0x84, 0x40, 0x03]) + le(int(v.get("energy_export_wh", 0)), 4, signed=False),
        bytes([0x04, 0x2B]) + le(round(v.get("power_w", 0)), 4),
    ]


def heat_record_list(v: Mapping[str, float | int]) -> list[bytes]:
    return [
        bytes([0x0C, 0x06]) + bcd(int(v.get("heat_energy_wh", 0)) // 1000, 4),
        bytes([0x04, 0x13]) + le(int(v.get("volume_l", 0)), 4, signed=False),
        bytes([0x04, 0x2B]) + le(round(v.get("heat_power_w", 0)), 4),
        bytes([0x02, 0x59]) + le(round(v.get("flow_temperature_c", 0) * 100), 2),
        bytes([0x02, 0x5D]) + le(round(v.get("return_temperature_c", 0) * 100), 2),
    ]


def electricity_records(v: Mapping[str, float | int]) -> bytes:
    return b"".join(electricity_record_list(v))


def heat_records(v: Mapping[str, float | int]) -> bytes:
    return b"".join(heat_record_list(v))


def split_records(records: list[bytes], telegrams: int) -> list[bytes]:
    """The records spread over `telegrams` answers, in order; every answer but the last ends in DIF 1F."""
    n = max(1, min(telegrams, len(records)))
    size = -(-len(records) // n)
    parts = [b"".join(records[i : i + size]) for i in range(0, len(records), size)]
    return [p + (bytes([MORE_RECORDS_FOLLOW]) if i < len(parts) - 1 else b"") for i, p in enumerate(parts)]


def long_frame(address: int, user_data: bytes) -> bytes:
    """68 L L 68 | C A CI user data | CS 16, checksum = sum of C..data modulo 256."""
    body = bytes([0x08, address]) + user_data
    if len(body) > 255:
        raise ValueError("long frame longer than 255 bytes")
    return bytes([0x68, len(body), len(body), 0x68]) + body + bytes([sum(body) & 0xFF, 0x16])


def rsp_ud(
    address: int, *, serial: int, medium: int, records: bytes, access: int = 0, manufacturer: int = MANUFACTURER_GIA
) -> bytes:
    header = bcd(serial, 4) + le(manufacturer, 2, signed=False) + bytes([0x01, medium, access & 0xFF, 0x00, 0, 0])
    return long_frame(address, bytes([0x72]) + header + records)


@dataclass
class SimMeter:
    address: int
    serial: int
    medium: Literal["electricity", "heat"]
    values: Values
    access: int = 0
    #: answers the records are spread over (multi-telegram readout)
    telegrams: int = 1
    _part: int = field(default=0, init=False)
    _fcb: bool | None = field(default=None, init=False)
    _last: bytes = field(default=b"", init=False)

    def reset(self) -> None:
        """SND_NKE: the next REQ_UD2 gets the first answer, whatever its FCB."""
        self._part, self._fcb, self._last = 0, None, b""

    def request(self, fcb: bool) -> bytes:
        """The answer to REQ_UD2: the next telegram when the FCB toggled, the last one again if not."""
        if self._fcb is not None and fcb == self._fcb and self._last:
            return self._last
        self._fcb = fcb
        self._last = self.answer()
        return self._last

    def answer(self) -> bytes:
        self.access = (self.access + 1) & 0xFF
        v = self.values()
        if self.medium == "electricity":
            records, medium = electricity_record_list(v), 0x02
        else:
            records, medium = heat_record_list(v), 0x04
        parts = split_records(records, self.telegrams)
        part = parts[self._part % len(parts)]
        self._part = (self._part + 1) % len(parts)
        return rsp_ud(self.address, serial=self.serial, medium=medium, records=part, access=self.access)


@dataclass
class MbusSimStats:
    requests: int = 0
    answers: int = 0
    faults: int = 0


@dataclass
class MbusSim:
    """Meters on one line, served on a pty end (`serve_pty`) or as a TCP gateway (`serve_tcp`)."""

    meters: list[SimMeter]
    stats: MbusSimStats = field(default_factory=MbusSimStats)
    _faults: list[MbusFault | None] = field(default_factory=list)
    _talking: bool = True
    _fd: int = -1
    _server: asyncio.Server | None = None
    _buf: bytearray = field(default_factory=bytearray)

    def inject(self, fault: MbusFault, count: int = 1, *, after: int = 0) -> None:
        """The next `count` data answers get `fault`, after `after` answers given as they are."""
        self._faults.extend([None] * after + [fault] * count)

    def pause(self) -> None:
        self._talking = False

    def resume(self) -> None:
        self._talking = True

    def _answer(self, frame: bytes) -> bytes:
        """The line's answer to one master frame (b"" for none)."""
        control, address = frame[1], frame[2]
        if (control + address) & 0xFF != frame[3]:
            return b""  # a corrupted request: real meters stay silent
        meter = next((m for m in self.meters if m.address == address), None)
        if meter is None or not self._talking:
            return b""
        self.stats.requests += 1
        if control == 0x40:
            meter.reset()
            return b"\xe5"
        if control & 0xCF != 0x4B:  # REQ_UD2 with or without FCV/FCB
            return b""
        answer = meter.request(bool(control & 0x20)) if control & 0x10 else meter.answer()
        fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            self.stats.faults += 1
        if fault == "silent":
            return b""
        if fault == "crc":
            i = len(answer) - 6
            return answer[:i] + bytes([answer[i] ^ 0x01]) + answer[i + 1 :]
        if fault == "truncate":
            return answer[: len(answer) // 2]
        self.stats.answers += 1
        return answer

    def _frames(self, data: bytes) -> list[bytes]:
        """Master short frames out of the byte stream (anything else is skipped)."""
        self._buf.extend(data)
        out = []
        while self._buf:
            if self._buf[0] != 0x10:
                del self._buf[0]
                continue
            if len(self._buf) < 5:
                break
            frame = bytes(self._buf[:5])
            del self._buf[:5]
            if frame[4] == 0x16:
                out.append(frame)
        return out

    # -- pty -----------------------------------------------------------------------------------
    async def serve_pty(self, path: str) -> MbusSim:
        self._fd = open_pty_end(path)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fd, self._on_pty)
        return self

    def _on_pty(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except (BlockingIOError, OSError):
            return
        for frame in self._frames(data):
            answer = self._answer(frame)
            if answer:
                asyncio.get_running_loop().create_task(write_all(self._fd, answer))

    # -- TCP gateway -----------------------------------------------------------------------------
    async def serve_tcp(self, host: str, port: int) -> MbusSim:
        self._server = await asyncio.start_server(self._on_client, host, port)
        return self

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                for frame in self._frames(data):
                    answer = self._answer(frame)
                    if answer:
                        writer.write(answer)
                        await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
