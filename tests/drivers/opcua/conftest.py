"""Real asyncua servers for the OPC UA tests: the simulator serving a node map on a free loopback port.

`park` is one server per test module (its own event loop: `pytestmark` of the module sets
`loop_scope="module"`), serving the IEC 61400-25 map under several turbine roots, so that tests which
change or delete nodes each take their own turbine and share the start-up cost (asyncua builds its
standard address space for ~2 s).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio

from drivers.opcua.nodemap import NodeMap, load_node_map
from drivers.opcua.sim import OpcuaSimServer
from tests.servers import free_port

TURBINES = tuple(f"WTG{i:02d}" for i in range(1, 9))


@dataclass
class Park:
    sim: OpcuaSimServer
    url: str
    map: NodeMap


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def park() -> AsyncIterator[Park]:
    node_map = load_node_map("iec61400-25-wind-turbine")
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    sim = OpcuaSimServer(node_map, listen=url, roots=TURBINES, update_interval_s=0.1)
    await sim.start()
    try:
        yield Park(sim, url, node_map)
    finally:
        await sim.stop()
