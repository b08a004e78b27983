"""The Modbus proxy: re-serve the registers the gateway polls to other local clients.

Many inverters and meters accept exactly one Modbus TCP client, which the gateway then occupies: the
installer's commissioning tool, a heat-pump controller or an EMS can no longer read the device. With
`proxy: tcp://0.0.0.0:1502` on a device, the gateway answers their reads on that port from what it last
read itself (the bus keeps every word it reads), so the device still sees one client. Only registers
the gateway polls are served, and only while fresh (`max_age_s`, default three poll intervals): older or
never-read registers get exception 0x0B ("gateway target device failed to respond") rather than a
stale number presented as current. The proxy is read-only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from drivers.modbus.bus import BusPool
from drivers.modbus.registermap import RegisterType
from drivers.modbus.server import LookupServer


def cache_lookup(
    pool: BusPool, routes: Mapping[int, str], *, max_age_s: float, now: Callable[[], float] = time.monotonic
) -> Callable[[int, RegisterType, int, int], list[int] | None]:
    """A lookup answering (unit, type, address, count) from the bus each unit id is routed to."""

    def lookup(unit: int, rtype: RegisterType, address: int, count: int) -> list[int] | None:
        key = routes.get(unit)
        bus = pool.get(key) if key is not None else None
        if bus is None:
            return None
        oldest = now() - max_age_s
        words = []
        for a in range(address, address + count):
            hit = bus.cache.get((unit, rtype, a))
            if hit is None or hit[1] < oldest:
                return None
            words.append(hit[0])
        return words

    return lookup


def proxy_server(
    listen: str,
    pool: BusPool,
    routes: Mapping[int, str],
    *,
    max_age_s: float,
    max_clients: int = 8,
    idle_timeout_s: float = 60.0,
) -> LookupServer:
    """A server on `listen` for the unit ids in `routes` (unit id -> bus key of the device's connection).

    At most `max_clients` connections at once, each closed after `idle_timeout_s` without a request.
    """
    return LookupServer(
        listen=listen,
        unit_ids=sorted(routes),
        lookup=cache_lookup(pool, routes, max_age_s=max_age_s),
        max_clients=max_clients,
        idle_timeout_s=idle_timeout_s,
    )
