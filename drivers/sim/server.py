"""A simulated Modbus device serving any register map (pymodbus server; the proxy has its own in modbus/server.py).

The register image is computed from a `values()` callback at every request, so a simulator driven by a
physical model (drivers/sim/site.py) serves what the model says *now*. Addresses the map does not cover
answer "illegal data address" like a real device; gaps inside the covered span read as 0.

Fault injection for tests and demos: `pause()` stops answering (the client sees a timeout, exactly like
a powered-off meter behind a gateway), `inject(fault, count)` makes the next requests answer busy,
illegal address, device failure, a garbled or truncated frame, or close the connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from drivers.modbus.decode import (
    FLOATS,
    DataType,
    encode,
    encode_sentinel,
    int_range,
)
from drivers.modbus.registermap import Register, RegisterMap, RegisterType, WritableRegister
from drivers.modbus.server import FC_TYPE, ServerStats
from drivers.modbus.write import decode_writable, encode_writable
from drivers.model import QUANTITIES, QuantityKind

log = logging.getLogger(__name__)

Values = Callable[[], Mapping[str, float | int | None]]
#: called with (writable name, value in engineering units) after a write the device accepted
OnWrite = Callable[[str, float], None]
Fault = Literal["busy", "illegal_address", "device_failure", "garbled", "truncated", "close"]


#: Ports for simulators and test servers come from below Linux's ephemeral range (32768-60999 by
#: default): a port the kernel hands out for `bind(0)` is in that range, and any outgoing connection on
#: the machine may take it as its local port between this check and the server's bind, which then fails
#: with "address already in use" (seen in CI, twice). Random, so parallel test workers rarely collide.
LISTEN_PORTS: Final = range(12000, 32000)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nobody has bound right now, outside the ephemeral range (the caller binds it next)."""
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.choice(LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1} on {host}")


def _sentinel_words(reg: Register) -> list[int]:
    """What the device holds for 'not available': the map's own pattern, else the data type's."""
    bits = reg.sentinel_bits
    if bits is None:
        return encode_sentinel(reg.dt, reg.order)
    return encode(bits, _UNSIGNED[reg.words], reg.order)


_UNSIGNED: Final = {1: DataType.UINT16, 2: DataType.UINT32, 4: DataType.UINT64}


def split_parts(reg: Register, value: float) -> list[float]:
    """`value` (after the register's scale) shared out over the register and its parts.

    The largest-scale piece takes as many whole units as fit, the next the remainder, and so on (MWh
    then kWh), the way the device's own counter carries; returned in map order (register first), each
    in the quantity's unit, for `encode_register` to finish.
    """
    pieces = [(reg.scale or 1.0, -1), *((p.scale, i) for i, p in enumerate(reg.parts or ()))]
    out = [0.0] * len(pieces)
    rest = value
    ordered = sorted(pieces, key=lambda x: -abs(x[0]))
    for k, (scale, idx) in enumerate(ordered):
        units = rest / scale if k == len(ordered) - 1 else math.floor(rest / scale)
        out[idx + 1] = units * scale
        rest -= units * scale
    return out


def _encode_part(reg: Register, value: float, scale: float) -> list[int]:
    lo, hi = int_range(reg.dt)
    return encode(min(max(round(value / scale), lo), hi), reg.dt, reg.order)


def encode_register(reg: Register, value: float | int | None, *, sf_exponent: int = 0) -> list[int]:
    """The words a device holds for `value` (in the quantity's unit): the inverse of register_value.

    For a register with `parts` these are the register's own words; `encode_parts` gives the rest.
    """
    dt = reg.dt
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        if dt is DataType.BOOL:
            return [0]
        return _sentinel_words(reg)
    if dt is DataType.BOOL:
        return [1 if value else 0]
    if dt in (DataType.ENUM, DataType.BITFIELD):
        return encode(int(value) & 0xFFFF, dt, reg.order)
    v = float(value)
    if reg.modulus is not None:
        v = v % reg.modulus
    if reg.invert:
        v = -v
    if reg.offset is not None:
        v -= reg.offset
    if reg.parts:
        return _encode_part(reg, split_parts(reg, v)[0], reg.scale or 1.0)
    if reg.scale is not None:
        v /= reg.scale
    if reg.scale_factor is not None:
        v /= 10.0**sf_exponent
    if dt in FLOATS:
        return encode(v, dt, reg.order)
    lo, hi = int_range(dt)
    n = round(v)
    if QUANTITIES[reg.quantity].kind is QuantityKind.COUNTER and not reg.modulus:
        n = n % (hi + 1) if lo == 0 else n  # an unsigned counter wraps like the real register
    n = min(max(n, lo), hi)
    # Keep clear of the 'not implemented' sentinel for a real value.
    return encode(n, dt, reg.order)


def encode_parts(reg: Register, value: float | int | None) -> list[list[int]]:
    """The words of each of the register's `parts` for `value` (map order); sentinels for None."""
    if not reg.parts:
        return []
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return [_sentinel_words(reg) for _ in reg.parts]
    v = float(value)
    if reg.modulus is not None:
        v = v % reg.modulus
    if reg.invert:
        v = -v
    if reg.offset is not None:
        v -= reg.offset
    pieces = split_parts(reg, v)[1:]
    return [_encode_part(reg, piece, p.scale) for piece, p in zip(pieces, reg.parts, strict=True)]


def build_image(
    register_map: RegisterMap,
    values: Mapping[str, float | int | None],
    held: Mapping[str, float] | None = None,
) -> dict[RegisterType, dict[int, int]]:
    """Protocol address -> word for every register type the map uses (writable registers: what
    `held` says was last written, else their `sim_value`)."""
    image: dict[RegisterType, dict[int, int]] = {"holding": {}, "input": {}, "coil": {}, "discrete": {}}
    for wr in register_map.writable:
        held_value = (held or {}).get(wr.name, wr.sim_value)
        if held_value is None:
            continue
        base = register_map.protocol_address(wr.address)
        for i, word in enumerate(encode_writable(wr, min(max(held_value, wr.range[0]), wr.range[1]))):
            image[wr.type][base + i] = word
    sf_values = {sf.name: sf.sim_value for sf in register_map.scale_factors}
    for sf in register_map.scale_factors:
        image[sf.type][register_map.protocol_address(sf.address)] = encode(sf.sim_value, DataType.INT16)[0]
    for ident in register_map.identity:
        if ident.sim_value is None:
            continue
        words = encode(ident.sim_value, ident.data_type, ident.word_order, length=ident.length)
        base = register_map.protocol_address(ident.address)
        for i, w in enumerate(words):
            image[ident.type][base + i] = w
    for reg in register_map.registers:
        value = values.get(reg.quantity, reg.example)
        exp = sf_values[reg.scale_factor] if reg.scale_factor is not None else 0
        words = encode_register(reg, value if value is not None else None, sf_exponent=exp)
        base = register_map.protocol_address(reg.address)
        for i, w in enumerate(words):
            image[reg.rtype][base + i] = w
        for part, part_words in zip(reg.parts or (), encode_parts(reg, value), strict=True):
            base = register_map.protocol_address(part.address)
            for i, w in enumerate(part_words):
                image[reg.rtype][base + i] = w
    return image


def _span(addresses: Sequence[int]) -> tuple[int, int]:
    return min(addresses), max(addresses) + 1


class _ServedUnitsOnly:
    """The simulator's datastore, silent for unit ids it does not serve, as a device on a bus is.

    pymodbus 3.16's SimCore looks an unknown unit id up in its device table and raises KeyError, which
    the server answers as DEVICE_FAILURE (logging a traceback) although it was told to ignore missing
    devices; a real meter addressed with the wrong unit id does not answer at all, and that silence is
    what the agent's "wrong unit id" hint is for."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self._units = frozenset(core.device_ids())

    def _check(self, device_id: int) -> None:
        if device_id not in self._units:
            raise NoSuchIdException(f"unit {device_id} not served")

    async def async_getValues(self, device_id: int, *args: Any, **kw: Any) -> Any:
        self._check(device_id)
        return await self._core.async_getValues(device_id, *args, **kw)

    async def async_setValues(self, device_id: int, *args: Any, **kw: Any) -> Any:
        self._check(device_id)
        return await self._core.async_setValues(device_id, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


class SimServer:
    """Serve one register map on `listen` (tcp://HOST:PORT, rtu+tcp://HOST:PORT or rtu:///dev/pts/N)."""

    def __init__(
        self,
        register_map: RegisterMap | None,
        *,
        listen: str,
        unit_ids: Sequence[int] = (1,),
        values: Values | None = None,
        static: Mapping[RegisterType, Mapping[int, int]] | None = None,
        on_write: OnWrite | None = None,
    ) -> None:
        """`static` adds fixed registers (e.g. a SunSpec image) on top of the map's (map may be None).

        Writes to the map's `writable:` registers are accepted (function codes 5, 6, 15, 16), kept in
        `held` (so they read back) and reported to `on_write`; a write anywhere else answers "illegal
        data address". `refuse_writes = True` makes the device refuse every write (a device in local
        mode, or with remote control switched off)."""
        self.map = register_map
        self.listen = listen
        self.unit_ids = tuple(
            dict.fromkeys(
                [*unit_ids, *(w.unit_id for w in (register_map.writable if register_map else ()) if w.unit_id)]
            )
        )
        self._own_units = tuple(unit_ids)
        self.on_write = on_write
        self.held: dict[str, float] = {}
        self.refuse_writes = False
        self.writes: list[tuple[str, float]] = []
        self._values: Values = values or (lambda: {})
        self._paused = False
        self._faults: list[Fault] = []
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = ServerStats()
        self._static = {k: dict(v) for k, v in (static or {}).items()}
        self._layout = self._image({})

    def _image(self, values: Mapping[str, float | int | None]) -> dict[RegisterType, dict[int, int]]:
        image: dict[RegisterType, dict[int, int]] = (
            build_image(self.map, values, self.held)
            if self.map is not None
            else {"holding": {}, "input": {}, "coil": {}, "discrete": {}}
        )
        for rtype, words in self._static.items():
            image[rtype].update(words)
        if self.held and self.map is not None:  # what was written reads back, over a static image too
            for wr in self.map.writable:
                if wr.name in self.held:
                    base = self.map.protocol_address(wr.address)
                    for i, word in enumerate(encode_writable(wr, self.held[wr.name])):
                        image[wr.type][base + i] = word
        return image

    # -- control ---------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop answering (requests time out) until `resume()`; the socket stays open."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Answer the next `count` requests with `fault` instead of data."""
        self._faults.extend([fault] * count)

    def set_values(self, values: Values) -> None:
        self._values = values

    # -- pymodbus plumbing -----------------------------------------------------------------------------
    def _blocks(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        def regs(rtype: RegisterType) -> list[SimData]:
            addrs = list(self._layout[rtype])
            if not addrs:
                return [SimData(0, count=1, values=0, datatype=SimDataType.REGISTERS)]
            lo, hi = _span(addrs)
            return [SimData(lo, count=hi - lo, values=0, datatype=SimDataType.REGISTERS)]

        def bits(rtype: RegisterType) -> list[SimData]:
            addrs = list(self._layout[rtype])
            hi = (max(addrs) + 1) if addrs else 1
            n = -(-hi // 16) * 16
            return [SimData(0, values=[False] * n, datatype=SimDataType.BITS)]

        return (bits("coil"), bits("discrete"), regs("holding"), regs("input"))

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.stats.requests += 1
        if self._paused:
            raise NoSuchIdException("simulated device paused")  # no answer at all
        if self._faults and self._faults[0] in ("busy", "illegal_address", "device_failure"):
            fault = self._faults.pop(0)
            self.stats.faults += 1
            return {
                "busy": ExcCodes.DEVICE_BUSY,
                "illegal_address": ExcCodes.ILLEGAL_ADDRESS,
                "device_failure": ExcCodes.DEVICE_FAILURE,
            }[fault]
        if set_values is not None:
            return self._write(function_code, address, list(set_values))
        rtype = FC_TYPE.get(function_code)
        if rtype is None:
            return None
        try:
            image = self._image(self._values())[rtype]
        except Exception:  # a broken value generator must not kill the server
            log.exception("simulator value generator failed")
            return ExcCodes.DEVICE_FAILURE
        if rtype in ("coil", "discrete"):
            for addr, bit in image.items():
                idx, pos = divmod(addr, 16)
                i = idx - start_address
                if 0 <= i < len(registers):
                    registers[i] = (registers[i] | (1 << pos)) if bit else (registers[i] & ~(1 << pos))
        else:
            for addr, word in image.items():
                i = addr - start_address
                if 0 <= i < len(registers):
                    registers[i] = word
        return None

    def _writable_at(self, rtype: RegisterType, address: int) -> WritableRegister | None:
        for w in self.map.writable if self.map is not None else ():
            if w.type == rtype and self.map is not None and self.map.protocol_address(w.address) == address:
                return w
        return None

    def _write(self, function_code: int, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        """A write request: accepted when it covers whole writable registers, else refused."""
        if self.refuse_writes:
            return ExcCodes.ILLEGAL_FUNCTION
        rtype: RegisterType = "coil" if function_code in (5, 15) else "holding"
        words = [int(v) for v in values]
        i, accepted = 0, []
        while i < len(words):
            reg = self._writable_at(rtype, address + i)
            if reg is None or i + reg.words > len(words):
                return ExcCodes.ILLEGAL_ADDRESS
            value = decode_writable(reg, words[i : i + reg.words])
            if not reg.range[0] - 1e-6 <= value <= reg.range[1] + 1e-6:
                return ExcCodes.ILLEGAL_VALUE  # a device checks its own limits too
            accepted.append((reg.name, value))
            i += reg.words
        for name, value in accepted:
            self.held[name] = value
            self.writes.append((name, value))
            if self.on_write is not None:
                self.on_write(name, value)
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or not self._faults or self._faults[0] not in ("garbled", "truncated", "close"):
            return data
        fault = self._faults.pop(0)
        self.stats.faults += 1
        if fault == "garbled":
            return bytes(b ^ 0x5A for b in data)
        if fault == "truncated":
            return data[: max(1, len(data) // 2)]
        self._drop_connections()
        return b""

    def _drop_connections(self) -> None:
        server = self._server
        if server is None:
            return
        for conn in list(getattr(server, "active_connections", {}).values()):
            asyncio.get_running_loop().call_soon(conn.close)

    async def start(self) -> None:
        """Start listening; returns once the server accepts connections."""
        devices = [
            SimDevice(unit, simdata=self._blocks(), action=self._action, use_bit_addressing=True)
            for unit in self.unit_ids
        ]
        parts = urlsplit(self.listen)
        kwargs: dict[str, Any] = {"trace_packet": self._trace_packet, "ignore_missing_devices": True}
        if parts.scheme in ("tcp", "rtu+tcp"):
            framer = FramerType.RTU if parts.scheme == "rtu+tcp" else FramerType.SOCKET
            self._server = ModbusTcpServer(
                devices, framer=framer, address=(parts.hostname or "127.0.0.1", parts.port or 502), **kwargs
            )
        elif parts.scheme == "rtu":
            q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            self._server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=parts.path,
                baudrate=int(q.get("baud", "9600")),
                parity=q.get("parity", "N"),
                stopbits=int(q.get("stopbits", "1")),
                **kwargs,
            )
        else:
            raise ValueError(f"{self.listen!r}: listen on tcp://HOST:PORT, rtu+tcp://HOST:PORT or rtu:///dev/X")
        self._server.context = _ServedUnitsOnly(self._server.context)  # type: ignore[assignment]
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._drop_connections()
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
