"""The ledger's async face: one owner thread, batched commits, and a notification for consumers.

SQLite calls block (an fsync on an SD card can take tens of milliseconds), so every ledger call runs on
one dedicated thread that owns the connection; the event loop only awaits. Samples are queued and
committed in batches every `commit_interval_s` (or sooner when `max_batch` is reached): one fsync per
batch keeps SD-card wear low, and nothing downstream sees a sample before its batch is committed.

How long a reading waits before it is durable (`CommitStats`: from the moment the first poll of a batch
was queued to the end of its commit) is the figure that says whether the loop keeps up; health reports
it, and the soak's attacker run (`bench/soak.py --attack`) holds its p99 against 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from operator import methodcaller
from typing import Any, TypeVar

from drivers.cancel import raise_if_cancelling
from drivers.model import Sample, is_counter
from gateway.ledger.store import Ledger
from gateway.ledger.tail import CommittedTail

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Upper bounds (s) of the commit-delay histogram; the last bucket is everything slower.
DELAY_BUCKETS_S = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Durations:
    """One kind of duration: a cumulative histogram since start and the last 1000 exactly.

    Cumulative, so a long run's p99 is known without keeping every value (bounded memory); the recent
    window gives the p50/p99 of now."""

    def __init__(self) -> None:
        self.count = 0
        self.max_s = 0.0
        self.buckets = [0] * (len(DELAY_BUCKETS_S) + 1)
        self._recent: deque[float] = deque(maxlen=1000)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.max_s = max(self.max_s, seconds)
        self._recent.append(seconds)
        for i, bound in enumerate(DELAY_BUCKETS_S):
            if seconds <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def p99_bound_s(self) -> float | None:
        """The smallest bucket bound at least 99 % of all values met (None: none yet, or beyond 30 s)."""
        if not self.count:
            return None
        need, seen = 0.99 * self.count, 0
        for bound, n in zip(DELAY_BUCKETS_S, self.buckets, strict=False):
            seen += n
            if seen >= need:
                return bound
        return None

    def as_json(self, name: str) -> dict[str, Any]:
        recent = sorted(self._recent)

        def q(p: float) -> float | None:
            return round(recent[min(len(recent) - 1, int(p * len(recent)))], 3) if recent else None

        return {
            f"{name}_p50_s": q(0.50),
            f"{name}_p99_s": q(0.99),
            f"{name}_max_s": round(self.max_s, 3),
            f"{name}_p99_bound_s_since_start": self.p99_bound_s(),
            f"{name}_buckets_s": {
                **{str(b): n for b, n in zip(DELAY_BUCKETS_S, self.buckets, strict=False)},
                "inf": self.buckets[-1],
            },
        }


class CommitStats:
    """Commit figures for health: the *interval* between the ends of successive commits (the loop keeping
    pace: `commit_interval_s` plus the commit itself), and the *delay* of each batch's oldest reading from
    being queued to being durable (what a reading waits)."""

    def __init__(self) -> None:
        self.commits = 0
        self.delay = Durations()
        self.interval = Durations()
        self._last_end: float | None = None

    def add(self, delay_s: float, *, end: float | None = None) -> None:
        self.commits += 1
        self.delay.add(delay_s)
        if end is not None:
            if self._last_end is not None:
                self.interval.add(end - self._last_end)
            self._last_end = end

    def p99_bound_s(self) -> float | None:
        """The delay's p99 bound since start (see `Durations.p99_bound_s`)."""
        return self.delay.p99_bound_s()

    def as_json(self) -> dict[str, Any]:
        return {"commits": self.commits, **self.interval.as_json("interval"), **self.delay.as_json("delay")}


class LedgerWriter:
    """Owns the `Ledger` and its thread. Consumers `wait_beyond(seq)` to learn of new commits."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        commit_interval_s: float,
        max_batch: int,
        max_queue: int,
        on_disk_full: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._ledger = ledger
        self._on_disk_full = on_disk_full
        self.disk_full_events = 0
        self.dropped_instant = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._commit_interval_s = commit_interval_s
        self._max_batch = max_batch
        self._max_queue = max_queue
        # Whole polls are queued (one list per poll), not single samples: per-item queue operations
        # cost more than hashing and inserting the sample.
        self._pending: list[list[Sample]] = []
        self._pending_count = 0
        self._pending_since: float | None = None  # monotonic time the oldest queued poll arrived
        self.commit_stats = CommitStats()
        self._has_data = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._has_space = asyncio.Event()
        self._has_space.set()
        self._committed = asyncio.Condition()
        self.head_seq = ledger.head[0]
        #: the latest committed entries, for the sinks (gateway/ledger/tail.py)
        self.tail = CommittedTail()
        self.committed_samples = 0
        self.commit_failures = 0
        self.queue_full_waits = 0

    async def call(self, fn: Callable[[Ledger], T]) -> T:
        """Run `fn(ledger)` on the ledger's thread (the only thread that may touch the connection)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._ledger)

    async def submit(self, samples: Iterable[Sample]) -> None:
        """Queue samples for the next commit. Waits (back-pressure) rather than drop when full."""
        batch = list(samples)
        if not batch:
            return
        while self._pending_count >= self._max_queue:
            self.queue_full_waits += 1
            self._has_space.clear()
            await self._has_space.wait()
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._pending.append(batch)
        self._pending_count += len(batch)
        self._has_data.set()
        if self._pending_count >= self._max_batch:
            self._batch_full.set()

    @property
    def pending(self) -> int:
        return self._pending_count

    def _take(self) -> tuple[list[Sample], float | None]:
        batch = [s for poll in self._pending for s in poll]
        since, self._pending_since = self._pending_since, None
        self._pending.clear()
        self._pending_count = 0
        self._has_data.clear()
        self._batch_full.clear()
        self._has_space.set()
        return batch, since

    async def run(self) -> None:
        """Commit loop: a supervised task. On shutdown it commits what it holds before it stops."""
        try:
            while True:
                raise_if_cancelling()  # 3.11's wait_for may have turned the shutdown into a TimeoutError
                await self._has_data.wait()
                # The interval counts from the oldest queued poll, not from now: readings queued while
                # the last commit ran have already waited that long, so a commit taking C seconds makes
                # the cadence max(interval, C), not interval + C (a loaded Pi drifted to 1.65 s at 1 s).
                since = self._pending_since
                wait = self._commit_interval_s - (time.monotonic() - since if since is not None else 0.0)
                if self._pending_count < self._max_batch and wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._batch_full.wait()
                await self._commit(*self._take())
        except asyncio.CancelledError:
            await asyncio.shield(self.flush())
            raise

    async def flush(self) -> None:
        """Commit everything queued now (shutdown path)."""
        batch, since = self._take()
        if batch:
            await self._commit(batch, since)

    async def _commit(self, batch: list[Sample], since: float | None = None) -> None:
        while True:
            try:
                entries = await self.call(methodcaller("append_entries", batch))
                break
            except sqlite3.OperationalError as exc:
                self.commit_failures += 1
                if "full" in str(exc).lower():
                    # Disk full: energy registers (what certification needs) go first. Instant values
                    # of this batch are given up, counted, and the guard frees space from old ones.
                    self.disk_full_events += 1
                    kept = [s for s in batch if is_counter(s.quantity)]
                    if len(kept) < len(batch):
                        self.dropped_instant += len(batch) - len(kept)
                        log.error(
                            "disk full: dropped %d instant readings, keeping %d register readings",
                            len(batch) - len(kept),
                            len(kept),
                        )
                        batch = kept
                    if self._on_disk_full is not None:
                        try:
                            await self._on_disk_full()
                        except Exception:  # the batch stays ours whatever relief does
                            log.exception("disk-full relief failed")
                    if not batch:
                        return
                else:
                    log.error("ledger commit of %d samples failed (%s); retrying in 1 s", len(batch), exc)
                await asyncio.sleep(1.0)
            except Exception as exc:  # anything else: retry, never drop a reading silently
                self.commit_failures += 1
                log.error("ledger commit of %d samples failed (%s); retrying in 1 s", len(batch), exc)
                await asyncio.sleep(1.0)
        self.committed_samples += len(batch)
        if since is not None:
            end = time.monotonic()
            self.commit_stats.add(end - since, end=end)
        self.tail.extend(entries)
        async with self._committed:
            if entries:
                self.head_seq = entries[-1].seq
            self._committed.notify_all()

    async def wait_beyond(self, seq: int, max_wait_s: float) -> int:
        """Wait until the committed head passes `seq` (or `max_wait_s` elapses); returns the head."""
        async with self._committed:
            if self.head_seq <= seq:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max_wait_s):
                        await self._committed.wait_for(lambda: self.head_seq > seq)
            return self.head_seq

    def close(self) -> None:
        self._executor.submit(self._ledger.close).result()
        self._executor.shutdown(wait=True)
