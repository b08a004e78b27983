"""Serving Modbus from the gateway: the read-only proxy's server, and what servers share.

The Modbus proxy (drivers/modbus/proxy.py) answers other local clients from what the gateway last read;
the simulator (drivers/sim/server.py) serves a device model. Both answer register requests through a
pymodbus server with a per-unit `action` callback; the function-code table and the request counters
they share live here, so production code (the proxy) never imports the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from drivers.modbus.registermap import RegisterType

#: Modbus read function code -> the register type it reads
FC_TYPE: Final[dict[int, RegisterType]] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


@dataclass
class ServerStats:
    requests: int = 0
    faults: int = 0


#: answer(unit, register type, first protocol address, count) -> the words, or None when not available
Lookup = Callable[[int, RegisterType, int, int], "list[int] | None"]


class LookupServer:
    """A Modbus TCP server answering holding/input reads from a lookup function (the Modbus proxy).

    A read the lookup cannot answer gets exception 0x0B, "gateway target device failed to respond":
    what a Modbus gateway says when it has no fresh answer from the device behind it. Writes are
    refused (illegal function): the proxy is read-only, the device has one master.
    """

    def __init__(self, *, listen: str, unit_ids: Sequence[int], lookup: Lookup) -> None:
        self.listen = listen
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
        self._server = ModbusTcpServer(
            devices,
            framer=FramerType.SOCKET,
            address=(parts.hostname or "127.0.0.1", parts.port or 502),
            ignore_missing_devices=True,
        )
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
