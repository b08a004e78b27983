"""The commit cadence holds when commits are slow: readings queued during a commit have already waited,
so the next commit comes `commit_interval_s` after the oldest of them, not after the commit ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drivers.model import Sample
from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter


class SlowDisk(Ledger):
    """The real ledger on a card whose commits take `commit_s` (an SD card under wear levelling)."""

    commit_s = 0.0

    def append(self, samples: Iterable[Sample]) -> int:
        time.sleep(self.commit_s)
        return super().append(samples)


async def test_slow_commits_keep_the_interval_not_interval_plus_commit(tmp_path: Path) -> None:
    interval, commit = 0.5, 0.3
    ledger = SlowDisk(tmp_path / "ledger.db")
    ledger.commit_s = commit
    writer = LedgerWriter(ledger, commit_interval_s=interval, max_batch=100_000, max_queue=100_000)
    task = asyncio.create_task(writer.run())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        for i in range(200):  # a poll every 20 ms for 4 s
            await writer.submit([Sample("m1", "power_w", float(i), "W", t0 + timedelta(milliseconds=20 * i))])
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
    stats = writer.commit_stats.as_json()

    assert stats["commits"] >= 5
    # before: every interval was interval + commit (0.8 s); now the cadence is the interval itself
    assert stats["interval_p50_s"] < interval + commit / 2, stats
    assert Ledger(tmp_path / "ledger.db").head[0] == 200
