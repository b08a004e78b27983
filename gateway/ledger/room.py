"""The ledger room: the commit loop, the clock guard in front of it, the disk guard, and retention.

The writer, reader and guards themselves are shared services (built by `gateway.services.open_services`,
since every room reads or feeds them); this room runs their loops and reports their health:
`health["ledger"]` (head, pending, commit delays, commit failures, disk) and `health["clock"]`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

from drivers.model import to_ms
from gateway.ledger.store import Ledger
from gateway.rooms import Part, Room, Services
from gateway.site.resolve import Site

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


async def _retention(services: Services) -> None:
    """Hourly: prune the payload of old readings every sink has forwarded (registers are kept longer)."""
    cfg = services.settings.ledger
    while True:
        now_ms = to_ms(services.clock.now())
        pruned = await services.writer.call(
            partial(
                Ledger.prune,
                instant_before_ms=now_ms - int(cfg.retention_days * DAY_MS),
                counter_before_ms=now_ms - int(cfg.counter_retention_days * DAY_MS),
                forwarded_seq=services.forwarded_seq(),
            )
        )
        if pruned:
            log.info("retention: pruned the payload of %d forwarded readings", pruned)
        await asyncio.sleep(3600)


async def parts(site: Site, services: Services) -> Sequence[Part]:
    writer, guard, disk = services.writer, services.guard, services.disk

    def ledger_health() -> dict[str, Any]:
        return {
            "head_seq": writer.head_seq,
            "pending": writer.pending,
            "commit_failures": writer.commit_failures,
            "disk_full_events": writer.disk_full_events,
            "dropped_instant": writer.dropped_instant,
            "commit": writer.commit_stats.as_json(),
            "disk": vars(disk.health),
        }

    def clock_reasons() -> list[str]:
        ch, out = guard.health, []
        if ch.quarantined:
            out.append(
                f"system clock is {ch.ahead_s:.0f} s ahead of monotonic time: {ch.held} readings quarantined"
                " until it comes back or holds steadily"
            )
        elif not ch.plausible or ch.held:
            out.append(f"system clock is before {ch.floor}: {ch.held} readings held until it passes it")
        if ch.dropped:
            out.append(f"{ch.dropped} readings dropped while the clock was unset (hold buffer full)")
        return out

    def disk_reasons() -> list[str]:
        dh = disk.health
        return [f"disk space low ({dh.free_mb} MB free): raw-sample retention reduced"] if dh.low else []

    services.health.add("ledger", ledger_health)
    services.health.add("clock", lambda: vars(guard.health))
    return [
        Part("ledger", writer.run),
        Part("clock", guard.run, reasons=clock_reasons),
        Part("disk", disk.run, reasons=disk_reasons),
        Part("retention", lambda: _retention(services)),
    ]


ROOM = Room("ledger", parts, section="ledger")
