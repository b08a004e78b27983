"""The runtime room: the systemd watchdog, fed a one-line status from the agent's health, and the event
loop's lag (`health["runtime"]["loop_lag"]`, gateway/runtime/looplag.py)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.rooms import Part, Room, Services
from gateway.runtime import systemd
from gateway.runtime.looplag import LoopLag
from gateway.site.resolve import Site


async def parts(site: Site, services: Services) -> Sequence[Part]:
    def status_line() -> str:
        h = services.report()
        devices = h.get("devices", {})
        online = sum(1 for st in devices.values() if st == "online")
        return f"{h['status']}: {online}/{len(devices)} devices online, ledger at {services.writer.head_seq}"

    lag = LoopLag()
    services.health.add("runtime", lambda: {"loop_lag": lag.lag.as_json("lag")})
    return [Part("systemd-watchdog", lambda: systemd.watchdog(status_line)), Part("loop-lag", lag.run)]


ROOM = Room("runtime", parts)
