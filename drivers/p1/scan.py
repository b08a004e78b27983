"""`gia scan --p1-port URL`: listen to a P1/HAN customer port for one telegram and say what it is.

A P1 port is not asked anything: the meter talks every 1 s (DSMR 5, e-MUCS) or 10 s (DSMR 4, the Nordic
HAN ports). The scan therefore listens up to a timeout for the first complete, CRC-checked telegram and
tells the variant from the telegram itself, so the technician does not need to know the standard:

* `0-0:96.1.4(...)` (the e-MUCS version line) -> `belgium` (Fluvius);
* `1-3:0.2.8(4x)` (the DSMR version line, 4.0/4.2) -> `dsmr4`; `1-3:0.2.8(5x)` -> `dsmr5`;
* neither line -> the Nordic HAN data set (Energiföretagen v2.0; SESKO SK 13-1 in Finland sends the
  same lines and dsmr-parser reads both with one spec), proposed as `sweden`.

The guess is then proved by decoding the telegram with that variant's decoder (drivers/p1/decode.py,
CRC checked): a variant is proposed only if its decoder reads the energy registers from the telegram.

DSMR 4 meters send 7E1 and the others 8N1. Both frames are ten bits long (start, 7 data + parity or 8
data, stop), so a port opened at 8N1 receives a 7E1 telegram as ASCII with the parity in bit 7: the
scan masks bit 7 (P1 telegrams are ASCII) and notes whether it was ever set, which says the line is 7E1.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from drivers.base import TransientError
from drivers.links import open_link, parse_link
from drivers.model import Value
from drivers.p1.config import Variant
from drivers.p1.decode import P1Decoder
from drivers.p1.driver import p1_framer
from drivers.pushed import DecodeError, Truncated

_BELGIAN_VERSION: Final = re.compile(r"^0-0:96\.1\.4\(", re.MULTILINE)
_DSMR_VERSION: Final = re.compile(r"^1-3:0\.2\.8\((\d+)\)", re.MULTILINE)
_EQUIPMENT_ID: Final = re.compile(r"^0-0:96\.1\.1\(([0-9A-Fa-f]{2,96})\)", re.MULTILINE)


class P1ScanError(TransientError):
    """No telegram the scan could read arrived on the port within the time given."""


@dataclass(frozen=True, slots=True)
class P1Found:
    """What one telegram said about the meter behind a P1/HAN port."""

    connection: str  # the URL to put in the config (with 7E1 options added when the line needs them)
    variant: Variant
    header: str  # the identification line, e.g. '/ISK5\\2M550T-1012' (maker and model)
    serial: str | None  # the equipment identifier (0-0:96.1.1), when the meter sends one
    quantities: Mapping[str, Value]
    seven_bit: bool  # bit 7 was set on the line: the meter sends 7E1


def detect_variant(telegram: bytes) -> Variant:
    """The variant a telegram's version lines name (see the module docstring); raises ValueError for a
    DSMR version this gateway does not read (DSMR 2.2/3.0 have no CRC and never frame here)."""
    text = telegram.decode("latin-1")
    if _BELGIAN_VERSION.search(text):
        return "belgium"
    m = _DSMR_VERSION.search(text)
    if m is None:
        return "sweden"
    if m.group(1).startswith("4"):
        return "dsmr4"
    if m.group(1).startswith("5"):
        return "dsmr5"
    raise ValueError(f"the telegram names DSMR version {m.group(1)}; this gateway reads DSMR 4 and 5")


def _serial(text: str) -> str | None:
    """The equipment identifier: DSMR sends it as hex-coded ASCII ('4530...' -> 'E0...')."""
    m = _EQUIPMENT_ID.search(text)
    if m is None:
        return None
    raw = m.group(1)
    try:
        decoded = bytes.fromhex(raw).decode("ascii")
    except ValueError:
        return raw
    return decoded if decoded.isprintable() else raw


def with_seven_bit(connection: str) -> str:
    """`connection` with 7E1 options for a serial port (a TCP dongle sets its own line)."""
    parts = urlsplit(connection)
    if parts.scheme.lower() != "serial" or "parity=" in parts.query:
        return connection
    return connection + ("&" if parts.query else "?") + "parity=E&bytesize=7"


def identify(telegram: bytes, *, connection: str, seven_bit: bool, variant: Variant | None = None) -> P1Found:
    """Decode one framed telegram (raises DecodeError for a bad CRC or content, ValueError for an
    unsupported DSMR version or a telegram without energy registers)."""
    chosen: Variant = variant or detect_variant(telegram)
    values = P1Decoder(chosen)(telegram)
    if "energy_import_wh" not in values:
        raise ValueError(f"a {chosen} telegram without the energy register 1.8.x: is this a P1 port?")
    text = telegram.decode("latin-1")
    if seven_bit and chosen != "dsmr4":
        connection = with_seven_bit(connection)
    return P1Found(
        connection=connection,
        variant=chosen,
        header=text.split("\r\n", 1)[0].lstrip("/"),
        serial=_serial(text),
        quantities=values,
        seven_bit=seven_bit,
    )


async def listen(
    connection: str, *, timeout_s: float, variant: Variant | None = None, open_timeout_s: float = 3.0
) -> P1Found:
    """Open the port, wait up to `timeout_s` for the first telegram that decodes, close the port.

    Raises ValueError for a malformed URL, TransientError when the port cannot be opened and
    P1ScanError when nothing readable arrived (the message says what did arrive)."""
    settings = parse_link(connection)  # 8N1 unless the URL says otherwise: reads 7E1 too (see above)
    link = await open_link(settings, timeout_s=open_timeout_s)
    framer = p1_framer()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    received = 0
    seven_bit = False
    last_error = ""
    try:
        while (left := deadline - loop.time()) > 0:
            data = await link.read(min(left, 0.5))
            if not data:
                continue
            received += len(data)
            if any(b & 0x80 for b in data):
                seven_bit = True
                data = bytes(b & 0x7F for b in data)
            for frame in framer.feed(data):
                if isinstance(frame, Truncated):
                    last_error = f"a truncated telegram ({frame.why})"
                    continue
                try:
                    return identify(frame, connection=connection, seven_bit=seven_bit, variant=variant)
                except (DecodeError, ValueError) as exc:
                    last_error = str(exc)
    finally:
        await link.close()
    if not received:
        why = "no byte arrived: check the cable (RJ12), that the port is enabled by the grid operator and the URL"
    elif last_error:
        why = f"{received} bytes arrived, none a readable telegram; last: {last_error}"
    else:
        why = f"{received} bytes arrived but no complete telegram ('/' .. '!CRC'): check baud rate and parity"
    raise P1ScanError(f"{settings.where}: no P1 telegram within {timeout_s:g} s; {why}")
