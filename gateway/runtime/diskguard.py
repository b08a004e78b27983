"""Disk-space guard: an SD card that fills up must cost raw samples, never register readings or the ledger.

Order of sacrifice when free space on the data directory falls under `ledger.min_free_mb`:
1. the reserve file (`.gia-reserve`, `ledger.reserve_mb`) is deleted — SQLite needs room in its WAL even
   to prune, so a full disk must never be *completely* full for the ledger;
2. instant readings (power, voltage, ...) that every sink has already forwarded are pruned (their
   payload; the chain hashes stay), and the WAL is checkpointed so its file shrinks;
3. if still short, instant readings not yet forwarded are pruned too (counted: those are lost downstream).
Energy-register readings are never pruned here: they are what monthly certification stands on. When
space is back above the watermark plus the reserve, the reserve file is re-created.

`health.low` (and the health reason it gives) is set the moment relief starts and cleared only once the
reserve is back: pruning frees pages inside the database, not on the card, so a site that ran full is
still short of space after relief; a reason that blinked out between guard ticks hid that state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from drivers.model import to_ms
from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.runtime.clock import Clock

log = logging.getLogger(__name__)

RESERVE_NAME = ".gia-reserve"


@dataclass
class DiskHealth:
    free_mb: float = 0.0
    low: bool = False
    reserve_present: bool = False
    pruned_forwarded: int = 0
    pruned_unforwarded: int = 0


class DiskGuard:
    def __init__(
        self,
        *,
        data_dir: Path,
        writer: LedgerWriter,
        forwarded_seq: Callable[[], int],
        clock: Clock,
        min_free_bytes: int,
        reserve_bytes: int,
        interval_s: float = 1.0,
    ) -> None:
        self._dir = data_dir
        self._writer = writer
        self._forwarded_seq = forwarded_seq
        self._clock = clock
        self._min_free = min_free_bytes
        self._reserve = reserve_bytes
        self._interval_s = interval_s
        self._lock = asyncio.Lock()
        self.health = DiskHealth()

    @property
    def reserve_path(self) -> Path:
        return self._dir / RESERVE_NAME

    def _free(self) -> int:
        return shutil.disk_usage(self._dir).free

    def _ensure_reserve(self) -> None:
        path = self.reserve_path
        if path.exists() or self._reserve <= 0:
            self.health.reserve_present = path.exists()
            return
        if self._free() > self._min_free + 2 * self._reserve:
            try:
                with path.open("wb") as f:
                    f.truncate(0)
                    f.write(b"\0" * self._reserve)  # real blocks: a sparse file would free nothing
            except OSError:
                with contextlib.suppress(OSError):
                    path.unlink()
        self.health.reserve_present = path.exists()

    async def relieve(self) -> None:
        """Free space now (called on a low watermark and by the ledger writer on 'disk full').

        Never raises: on a disk this full even pruning may fail; the next tick tries again, and the
        ledger writer keeps its register readings queued meanwhile.
        """
        self.health.low = True  # before any await: whoever sees the relief's counters sees the state too
        try:
            await self._relieve()
        except Exception as exc:
            log.error("could not free disk space yet: %s", exc)

    async def _relieve(self) -> None:
        async with self._lock:
            if self.reserve_path.exists():
                self.reserve_path.unlink()
                self.health.reserve_present = False
                log.error("disk space low on %s: released the %d-byte reserve", self._dir, self._reserve)
            now_ms = to_ms(self._clock.now())
            forwarded = self._forwarded_seq()
            n = await self._writer.call(
                partial(Ledger.prune_instant_now, forwarded_seq=forwarded, keep_after_ms=now_ms)
            )
            self.health.pruned_forwarded += n
            await self._writer.call(Ledger.checkpoint)
            if self._free() < self._min_free:
                head = self._writer.head_seq
                m = await self._writer.call(partial(Ledger.prune_instant_now, forwarded_seq=head, keep_after_ms=now_ms))
                if m:
                    self.health.pruned_unforwarded += m
                    log.error("disk still full: pruned %d instant readings that sinks had not received yet", m)
                await self._writer.call(Ledger.checkpoint)
            if n:
                log.warning("disk space low: pruned %d forwarded instant readings", n)

    async def run(self) -> None:
        while True:
            free = await asyncio.to_thread(self._free)
            self.health.free_mb = round(free / 1_048_576, 1)
            if free < self._min_free:
                await self.relieve()
            await asyncio.to_thread(self._ensure_reserve)
            if self.health.low and free >= self._min_free and (self.health.reserve_present or self._reserve <= 0):
                self.health.low = False
                log.info("disk space recovered: %.1f MB free", self.health.free_mb)
            await asyncio.sleep(self._interval_s)
