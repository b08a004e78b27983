"""Fixtures for the drivers tests: real pymodbus servers on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from drivers.maps import load_map
from drivers.modbus.registermap import RegisterMap
from drivers.sim.server import SimServer, free_tcp_port

SimFactory = Callable[..., Any]


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """sim_factory(map_or_name, values=..., unit_ids=..., scheme='tcp') -> started SimServer."""
    started: list[SimServer] = []

    async def make(
        register_map: RegisterMap | str,
        *,
        values: Callable[[], Mapping[str, float | int | None]] | None = None,
        unit_ids: tuple[int, ...] | None = None,
        scheme: str = "tcp",
    ) -> SimServer:
        m = load_map(register_map) if isinstance(register_map, str) else register_map
        server = SimServer(
            m,
            listen=f"{scheme}://127.0.0.1:{free_tcp_port()}",
            unit_ids=unit_ids or (m.default_unit_id,),
            values=values,
        )
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()
