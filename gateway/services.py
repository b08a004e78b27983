"""`open_services`: the shared machinery every room uses, opened once per agent start and closed after.

The order matters and is written once here: the data directory is locked (one agent per ledger), the
ledger opened (migrated if older), its writer and the disk guard built around it (the writer asks the
guard for room when the disk is full; the guard prunes through the writer), the reader pool opened
beside it, and the clock guard placed in front of the writer with the newest stored reading as its floor
(time must not run back past what is stored). On exit queued readings are committed and everything is
closed, even when a room failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

from drivers.model import from_ms
from drivers.services import DriverServices
from gateway.ledger.reader import LedgerReader
from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.rooms import HealthBoard, Services
from gateway.runtime.backup import acquire_agent_lock
from gateway.runtime.clock import Clock, WallClock
from gateway.runtime.clockguard import RELEASE_FLOOR, ClockGuard
from gateway.runtime.diskguard import DiskGuard
from gateway.runtime.live import LiveState
from gateway.settings import Config
from gateway.sinks.outbox import LatestOutbox


@contextlib.asynccontextmanager
async def open_services(config: Config, clock: Clock) -> AsyncIterator[Services]:
    s, site = config.settings, config.site
    lock = acquire_agent_lock(s.ledger_path.parent)  # one agent per ledger; restore checks it too
    try:
        ledger = await asyncio.to_thread(Ledger, s.ledger_path, synchronous=s.ledger.synchronous)
        disk: DiskGuard | None = None

        async def on_disk_full() -> None:
            if disk is not None:
                await disk.relieve()

        writer = LedgerWriter(
            ledger,
            commit_interval_s=s.ledger.commit_interval_s,
            max_batch=s.ledger.max_batch,
            max_queue=s.ledger.max_queue,
            on_disk_full=on_disk_full,
        )
        try:
            newest_ms = await writer.call(Ledger.clock_floor_ms)

            def record(led: Ledger, kind: str, detail: str, ts_ms: int) -> None:
                if kind == "clock_floor_lowered":
                    # Where the trustworthy readings start: Ledger.clock_floor_ms reads it on restart.
                    detail = json.dumps({**json.loads(detail), "head_seq": led.head[0]})
                led.record_event(kind, detail, ts_ms=ts_ms)

            async def record_event(kind: str, detail: str, ts_ms: int) -> None:
                await writer.call(partial(record, kind=kind, detail=detail, ts_ms=ts_ms))

            guard = ClockGuard(
                forward=writer.submit,
                record_event=record_event,
                floor=max(RELEASE_FLOOR, from_ms(newest_ms)) if newest_ms is not None else RELEASE_FLOOR,
                require_ntp_sync=s.clock.require_ntp_sync,
                max_held=s.clock.max_held,
                max_step_s=s.clock.max_step_s,
                trust_after_s=s.clock.trust_after_s,
                wall=clock.now,
                # A simulated clock has no jumps to detect: measure it against itself.
                mono=time.monotonic if isinstance(clock, WallClock) else lambda: clock.now().timestamp(),
            )
            services: Services
            disk = DiskGuard(
                data_dir=s.ledger_path.parent,
                writer=writer,
                forwarded_seq=lambda: services.forwarded_seq(),
                clock=clock,
                min_free_bytes=int(s.ledger.min_free_mb * 1_048_576),
                reserve_bytes=int(s.ledger.reserve_mb * 1_048_576),
            )
            reader = LedgerReader(Path(s.ledger_path))
            try:
                drivers = DriverServices(base_dir=config.base_dir)
                async with drivers, contextlib.AsyncExitStack() as stack:
                    services = Services(
                        settings=s,
                        site=site,
                        base_dir=config.base_dir,
                        clock=clock,
                        writer=writer,
                        reader=reader,
                        guard=guard,
                        disk=disk,
                        live=LiveState.for_devices(dict(site.device_classes)),
                        drivers=drivers,
                        stack=stack,
                        health=HealthBoard(),
                        retained=LatestOutbox(),
                        influx_extras=LatestOutbox(),
                        config_path=config.path,
                    )
                    yield services
            finally:
                await _commit_held(guard, writer)
                await asyncio.to_thread(reader.close)
        finally:
            await asyncio.to_thread(writer.close)
    finally:
        lock.close()


async def _commit_held(guard: ClockGuard, writer: LedgerWriter) -> None:
    """Shutdown (every part has stopped, the writer's thread still runs): readings the clock guard still
    holds are committed `estimated`, stamped from its trusted time, rather than lost with the process.
    In chunks below the writer's queue limit, so `submit` never waits for a commit loop that is gone."""
    held = guard.take_held()
    step = 1000
    for i in range(0, len(held), step):
        await writer.submit(held[i : i + step])
        await writer.flush()
