"""Serving Modbus from the gateway: the read-only proxy's server, and what servers share.

The Modbus proxy (drivers/modbus/proxy.py) answers other local clients from what the gateway last read;
the simulator (drivers/sim/server.py) serves a device model. Both answer register requests through a
pymodbus server with a per-unit `action` callback; the function-code table and the request counters
they share live here, so production code (the proxy) never imports the simulator.

The proxy's port faces the site LAN, so its connections are bounded like the HTTP server's (issue #15,
finding 2): at most `max_clients` at once (a further one is closed as soon as it is accepted) and a
client silent for `idle_timeout_s` is closed, so idle sockets cannot use up the agent's descriptors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from drivers.modbus.registermap import RegisterType

#: Modbus read function code -> the register type it reads
FC_TYPE: Final[dict[int, RegisterType]] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


@dataclass
class ServerStats:
    requests: int = 0
    faults: int = 0
    #: at `max_clients`: new connections closed at once, quietest clients closed to make room; idle clients closed
    refused: int = 0
    evicted: int = 0
    timed_out: int = 0


class _BoundedHandler(ServerRequestHandler):
    """pymodbus's per-connection handler, closed when over the server's limit or idle too long."""

    limits: tuple[int, float, ServerStats]  # set on the subclass made per server (max, idle s, stats)
    _last_data = 0.0
    _idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        max_clients, idle_s, stats = self.limits
        # The listener has already registered this connection, so it counts itself. At the limit the
        # client silent longest makes room: idle sockets cannot lock a real client out.
        others = [c for c in self.server.active_connections.values() if c is not self]
        if len(others) >= max_clients:
            quiet = [c for c in others if isinstance(c, _BoundedHandler) and c.transport is not None]
            if not quiet:
                stats.refused += 1
                transport.abort()  # type: ignore[attr-defined]
                self.server.active_connections.pop(self.unique_id, None)
                self.listener = None
                return
            stats.evicted += 1
            min(quiet, key=lambda c: c._last_data).close()
        super().connection_made(transport)
        self._last_data = time.monotonic()
        self._idle_timer = asyncio.get_running_loop().call_later(idle_s, self._check_idle)

    def _check_idle(self) -> None:
        _max, idle_s, stats = self.limits
        if self.transport is None:
            return
        quiet = time.monotonic() - self._last_data
        if quiet >= idle_s:
            stats.timed_out += 1
            self.close()
            return
        self._idle_timer = asyncio.get_running_loop().call_later(idle_s - quiet, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last_data = time.monotonic()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)


class _BoundedTcpServer(ModbusTcpServer):
    handler: type[_BoundedHandler]

    def callback_new_connection(self) -> _BoundedHandler:
        return self.handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


#: answer(unit, register type, first protocol address, count) -> the words, or None when not available
Lookup = Callable[[int, RegisterType, int, int], "list[int] | None"]


class LookupServer:
    """A Modbus TCP server answering holding/input reads from a lookup function (the Modbus proxy).

    A read the lookup cannot answer gets exception 0x0B, "gateway target device failed to respond":
    what a Modbus gateway says when it has no fresh answer from the device behind it. Writes are
    refused (illegal function): the proxy is read-only, the device has one master.
    """

    def __init__(
        self,
        *,
        listen: str,
        unit_ids: Sequence[int],
        lookup: Lookup,
        max_clients: int = 8,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self.listen = listen
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.unit_ids = tuple(unit_ids)
        self._lookup = lookup
        self._server: ModbusTcpServer | None = None
        self.stats = ServerStats()

    def _action_for(self, unit: int) -> Callable[..., Any]:
        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            self.stats.requests += 1
            rtype = FC_TYPE.get(function_code)
            if set_values is not None or rtype not in ("holding", "input"):
                return ExcCodes.ILLEGAL_FUNCTION
            words = self._lookup(unit, rtype, address, count)
            offset = address - start_address  # `registers` is the block from start_address
            if words is None or len(words) != count or not 0 <= offset <= len(registers) - count:
                self.stats.faults += 1
                return ExcCodes.GATEWAY_NO_RESPONSE
            registers[offset : offset + count] = words
            return None

        return action

    async def start(self) -> None:
        blocks = [SimData(0, count=65535, values=0, datatype=SimDataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=SimDataType.BITS)]
        devices = [
            SimDevice(
                unit, simdata=(bits, bits, blocks, blocks), action=self._action_for(unit), use_bit_addressing=True
            )
            for unit in self.unit_ids
        ]
        parts = urlsplit(self.listen)
        if parts.scheme != "tcp":
            raise ValueError(f"{self.listen!r}: the Modbus proxy listens on tcp://HOST:PORT")
        limits = (self.max_clients, self.idle_timeout_s, self.stats)
        handler = type("BoundedHandler", (_BoundedHandler,), {"limits": limits})
        self._server = _BoundedTcpServer(
            devices,
            framer=FramerType.SOCKET,
            address=(parts.hostname or "127.0.0.1", parts.port or 502),
            ignore_missing_devices=True,
        )
        self._server.handler = handler
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
