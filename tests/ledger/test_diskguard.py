"""The disk guard's state as health shows it (issue 8): low from the moment relief starts until the reserve
is back, not only on the ticks that happen to see free space under the watermark.

The disk's free space is the one thing set by hand here (a root-only tmpfs is what the slow test in
test_disk_full.py uses); the ledger, its writer and the reserve file are real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.runtime.clock import WallClock
from gateway.runtime.diskguard import DiskGuard

MB = 1_048_576


class _Disk(DiskGuard):
    """A guard whose card reports `free_bytes` (what shutil.disk_usage would say)."""

    free_bytes = 100 * MB

    def _free(self) -> int:
        return self.free_bytes


@contextlib.asynccontextmanager
async def guard_on(tmp_path: Path, interval_s: float = 0.01) -> AsyncIterator[_Disk]:
    ledger = Ledger(tmp_path / "ledger.db")
    writer = LedgerWriter(ledger, commit_interval_s=0.1, max_batch=100, max_queue=1000)
    guard = _Disk(
        data_dir=tmp_path,
        writer=writer,
        forwarded_seq=lambda: 0,
        clock=WallClock(),
        min_free_bytes=2 * MB,
        reserve_bytes=MB,
        interval_s=interval_s,
    )
    task = asyncio.create_task(guard.run())
    try:
        yield guard
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.call(Ledger.close)


async def _until(cond: object, what: str) -> None:
    assert callable(cond)
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"never: {what}")


async def test_a_disk_full_commit_marks_the_disk_low_before_relief_returns(tmp_path: Path) -> None:
    async with guard_on(tmp_path, interval_s=3600) as guard:  # one tick (the reserve), then only the writer
        await _until(lambda: guard.health.reserve_present, "reserve created")
        guard.free_bytes = 0
        relief = asyncio.ensure_future(guard.relieve())  # what the writer does on SQLITE_FULL
        await asyncio.sleep(0)
        assert guard.health.low, "health must say low while relief runs, not after"
        await relief
        assert guard.health.low


async def test_the_disk_stays_low_until_the_reserve_is_back(tmp_path: Path) -> None:
    async with guard_on(tmp_path) as guard:
        await _until(lambda: guard.health.reserve_present, "reserve created")
        guard.free_bytes = MB  # under the 2 MB watermark
        await _until(lambda: not guard.health.reserve_present, "reserve released")
        assert guard.health.low
        # Relief freed pages inside the database, the card gained a little: above the watermark but
        # without room for the reserve. Still low, tick after tick.
        guard.free_bytes = 3 * MB
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert guard.health.low and not guard.health.reserve_present
        guard.free_bytes = 10 * MB
        await _until(lambda: not guard.health.low, "recovered")
        assert guard.health.reserve_present and (tmp_path / ".gia-reserve").stat().st_size == MB
