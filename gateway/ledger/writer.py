"""The ledger's async face: one owner thread, batched commits, and a notification for consumers.

SQLite calls block (an fsync on an SD card can take tens of milliseconds), so every ledger call runs on
one dedicated thread that owns the connection; the event loop only awaits. Samples are queued and
committed in batches every `commit_interval_s` (or sooner when `max_batch` is reached): one fsync per
batch keeps SD-card wear low, and nothing downstream sees a sample before its batch is committed.

The commit timer runs on that thread too, not on the event loop. Every poll, sink, and HTTP answer
shares the loop; when it runs late (the attack soak: 50 meters, viewers, a flood of MQTT garbage on a
2-core machine), a timer there fired late, the hand-off to the thread waited for the loop again, and the
commit interval's p99 sat at 3 s against a 1-s setting. On the thread, a batch is committed when it is
due whatever the loop is doing; the loop learns of it afterwards (head, tail, waiters) through
`call_soon_threadsafe`. Readings are handed over under a lock (`submit`), whole polls at a time.

How long a reading waits before it is durable (`CommitStats`: from the moment the first poll of a batch
was queued to the end of its commit) is the figure that says whether the loop keeps up; health reports
it, and the soak's attacker run (`bench/soak.py --attack`) holds its p99 against 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from drivers.model import Sample, is_counter
from gateway.ledger.store import Entry, Ledger
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
    """Commit figures for health: the *interval* between the ends of successive commits (the cadence:
    `commit_interval_s` plus the commit itself, plus any time with nothing to commit), the *delay* of each
    batch's oldest reading from being queued to being durable (what a reading waits), the *duration* of
    the commit itself on the ledger's thread (hashing, inserting, the fsync), and the *idle* time between
    a commit's end and the next reading handed in. An interval is idle + delay (delay = the timer +
    duration): a long interval with a short delay means the readings did not come (pollers, clock guard),
    not that the ledger was slow."""

    def __init__(self) -> None:
        self.commits = 0
        self.delay = Durations()
        self.interval = Durations()
        self.duration = Durations()
        self.idle = Durations()
        self._last_end: float | None = None

    def add(self, delay_s: float, *, end: float | None = None, duration_s: float | None = None) -> None:
        self.commits += 1
        self.delay.add(delay_s)
        if duration_s is not None:
            self.duration.add(duration_s)
        if end is not None:
            if self._last_end is not None:
                interval = end - self._last_end
                self.interval.add(interval)
                self.idle.add(max(0.0, interval - delay_s))
            self._last_end = end

    def p99_bound_s(self) -> float | None:
        """The delay's p99 bound since start (see `Durations.p99_bound_s`)."""
        return self.delay.p99_bound_s()

    def as_json(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            **self.interval.as_json("interval"),
            **self.delay.as_json("delay"),
            **self.duration.as_json("duration"),
            **self.idle.as_json("idle"),
        }


class LedgerWriter:
    """Owns the `Ledger` and its thread. Consumers `wait_beyond(seq)` to learn of new commits.

    State the thread and the loop share (the queued polls, the jobs, the flush target) is guarded by
    `_cv`; what the loop reads (head, tail, committed counts, commit figures) is changed on the loop only,
    by `_published`, so health and the sinks never see a half-updated figure. The failure counters
    (`commit_failures`, `disk_full_events`, `dropped_instant`) are plain integers the thread increments."""

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
        self._commit_interval_s = commit_interval_s
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()  # set when the thread ends (closed, or a bug: `run` raises)
        self._closing = False
        self._jobs: deque[tuple[Callable[[Ledger], Any], Future[Any]]] = deque()
        # Whole polls are queued (one list per poll), not single samples: per-item queue operations
        # cost more than hashing and inserting the sample.
        self._pending: list[list[Sample]] = []
        self._pending_count = 0
        self._pending_since: float | None = None  # monotonic time the oldest queued poll arrived
        # a batch whose commit failed: committed before anything queued after it, not before `_retry_at`
        self._retry: tuple[list[Sample], int, float | None] | None = None
        self._retry_at = 0.0
        self._closing_failures = 0  # commits that failed after close() was asked
        self._job_turn = False  # after a commit, a waiting job goes before the next commit
        self._armed = False  # the commit timer runs (`run` is active)
        self._tick_origin = 0.0  # monotonic time the timer was armed: its ticks are every interval from it
        self._enqueued_polls = 0  # polls ever submitted (under _cv)
        self._taken_polls = 0  # polls taken into a batch that committed or is being committed (under _cv)
        self._flush_upto = 0  # commit regardless of the timer until this many polls are taken
        self._relieving = False
        self._committed_polls = 0  # loop side: polls whose commit the loop has learnt of
        self._slow_logged = float("-inf")  # loop side: when a late commit was last logged
        self._changed = asyncio.Event()  # set (and replaced) whenever the loop learns of a commit
        self.commit_stats = CommitStats()
        self.head_seq = ledger.head[0]
        #: the latest committed entries, for the sinks (gateway/ledger/tail.py)
        self.tail = CommittedTail()
        self.committed_samples = 0
        self.commit_failures = 0
        self.queue_full_waits = 0

    # -- the loop's side -------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._closing:
            raise RuntimeError("the ledger is closed")
        if self._thread is None or not self._thread.is_alive():
            stopped = self._stopped = asyncio.Event()
            self._thread = threading.Thread(
                target=self._thread_main, args=(self._loop, stopped), name="ledger", daemon=True
            )
            self._thread.start()

    def _enqueue(self, fn: Callable[[Ledger], T]) -> Future[T]:
        fut: Future[T] = Future()
        with self._cv:
            if self._closing:
                raise RuntimeError("the ledger is closed")
            self._jobs.append((fn, fut))
            self._cv.notify()
        return fut

    async def call(self, fn: Callable[[Ledger], T]) -> T:
        """Run `fn(ledger)` on the ledger's thread (the only thread that may touch the connection)."""
        self._ensure_thread()
        return await asyncio.wrap_future(self._enqueue(fn))

    async def submit(self, samples: Iterable[Sample]) -> None:
        """Queue samples for the next commit. Waits (back-pressure) rather than drop when full."""
        batch = list(samples)
        if not batch:
            return
        self._ensure_thread()
        while self._pending_count + self._retry_len >= self._max_queue:
            self.queue_full_waits += 1
            await self._changed.wait()
        with self._cv:
            if self._pending_since is None:
                self._pending_since = time.monotonic()
                self._cv.notify()  # the thread now has a deadline
            self._pending.append(batch)
            self._pending_count += len(batch)
            self._enqueued_polls += 1
            if self._pending_count >= self._max_batch:
                self._cv.notify()

    @property
    def pending(self) -> int:
        return self._pending_count

    @property
    def _retry_len(self) -> int:
        """Readings in the failed batch waiting for its retry (back-pressure and batch size count them)."""
        return len(self._retry[0]) if self._retry is not None else 0

    async def run(self) -> None:
        """The commit timer: a supervised part. It arms the thread's timer and watches the thread; on
        shutdown it commits what is queued before it stops."""
        self._ensure_thread()
        stopped = self._stopped
        with self._cv:
            self._armed = True
            self._tick_origin = time.monotonic()
            self._cv.notify()
        try:
            await stopped.wait()
            raise RuntimeError("the ledger's thread stopped")  # the supervisor restarts it (and us)
        except asyncio.CancelledError:
            with self._cv:
                self._armed = False
            await asyncio.shield(self.flush())
            raise

    async def flush(self) -> None:
        """Commit everything queued now, timer or not (shutdown path), and wait until it is committed."""
        self._ensure_thread()
        with self._cv:
            target = self._enqueued_polls
            self._flush_upto = max(self._flush_upto, target)
            self._cv.notify()
        while self._committed_polls < target:
            await self._changed.wait()

    async def wait_beyond(self, seq: int, max_wait_s: float) -> int:
        """Wait until the committed head passes `seq` (or `max_wait_s` elapses); returns the head."""
        if self.head_seq <= seq:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait_s):
                    while self.head_seq <= seq:
                        await self._changed.wait()
        return self.head_seq

    def _wake(self) -> None:
        """On the loop: wake everything waiting for a change (commit, space in the queue)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _published(
        self,
        entries: list[Entry],
        polls: int,
        samples: int,
        since: float | None,
        end: float,
        took: float,
        wake: bool = True,
    ) -> None:
        """On the loop: a commit's results become visible (in commit order: call_soon_threadsafe is FIFO)."""
        self.committed_samples += samples
        self._committed_polls += polls
        if since is not None:
            delay = end - since
            self.commit_stats.add(delay, end=end, duration_s=took)
            # Readings waiting over twice the interval is the ledger falling behind (a slow card, a
            # starved thread); a long interval with nothing to commit is a quiet site, not worth a line.
            if delay > 2 * self._commit_interval_s and end - self._slow_logged > 60:
                self._slow_logged = end
                log.warning(
                    "readings waited %.2f s to be committed (commit interval %.1f s), the commit itself took"
                    " %.3f s (at most one such line a minute; health: ledger.commit)",
                    delay,
                    self._commit_interval_s,
                    took,
                )
        self.tail.extend(entries)
        if entries:
            self.head_seq = entries[-1].seq
        if wake:
            self._wake()

    def _announce(
        self, entries: list[Entry], polls: int, samples: int, since: float | None, end: float, took: float
    ) -> None:
        """From the thread: hand a commit's results to the loop (if the loop is gone — `close` after the
        agent stopped — the figures are set here, and nobody is left to wake)."""
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("no loop yet")
            loop.call_soon_threadsafe(self._published, entries, polls, samples, since, end, took)
        except RuntimeError:
            self._published(entries, polls, samples, since, end, took, wake=False)

    def _wake_loop(self) -> None:
        """From the thread: wake the loop's waiters (submitters held by back-pressure after a take)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(self._wake)

    async def _relieve(self) -> None:
        try:
            if self._on_disk_full is not None:
                await self._on_disk_full()
        except Exception:  # the batch stays ours whatever relief does
            log.exception("disk-full relief failed")

    def _relief_done(self, _fut: Any = None) -> None:
        with self._cv:
            self._relieving = False
            self._cv.notify()

    def close(self) -> None:
        """Commit what is still queued, close the ledger on its thread and stop the thread (from any
        thread but the loop's; the agent calls it after its parts and the final flush have run)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._cv:
                self._closing = True
            self._ledger.close()
            return
        with self._cv:
            self._flush_upto = max(self._flush_upto, self._enqueued_polls)
            self._closing = True
            self._cv.notify()
        thread.join()

    # -- the ledger's thread ---------------------------------------------------------------------------

    def _due_in(self, now: float) -> float | None:
        """Seconds until a commit is due (<= 0: now; None: nothing to commit). Under `_cv`."""
        if self._retry is None and not self._pending:
            return None
        if self._closing and self._closing_failures >= 5:
            return None  # shutting down on a failing disk: `_finish` reports what is left
        if self._retry is not None and self._relieving:
            return None  # a full disk: retry once the guard has freed space (`_relieve` notifies)
        wait = self._retry_at - now
        if self._taken_polls < self._flush_upto:
            return wait
        if not self._armed:
            return None
        if self._pending_count + self._retry_len >= self._max_batch:
            return wait
        # A batch is due at the first tick of a fixed grid (every `commit_interval_s` from when the
        # timer was armed) after its oldest reading arrived. Not "interval after the last commit": a
        # commit taking C seconds made the cadence interval + C (a loaded Pi drifted to 1.65 s at 1 s).
        # Not "interval after the oldest reading" either: pollers answer in bursts at whole seconds, and
        # a deadline one interval after a burst's first answer fell just after the next burst had come
        # in whole about one time in five, so the burst after that waited a full second more: commit
        # intervals alternated ~1 s and ~2 s (the attack soak: 73 of 344 intervals held ~1 s with
        # nothing to commit). On a grid every interval that received readings ends with a commit.
        since = self._retry[2] if self._retry is not None else self._pending_since
        if since is None:
            return wait
        step = self._commit_interval_s
        due = self._tick_origin + (math.floor((since - self._tick_origin) / step) + 1) * step
        return max(wait, due - now)

    def _take(self) -> tuple[list[Sample], int, float | None]:
        """Everything queued, the failed batch first (under `_cv`)."""
        batch, polls, since = self._retry if self._retry is not None else ([], 0, self._pending_since)
        self._retry = None
        batch = batch + [s for poll in self._pending for s in poll]
        polls += len(self._pending)
        self._taken_polls += polls
        self._pending.clear()
        self._pending_count = 0
        self._pending_since = None
        return batch, polls, since

    def _thread_main(self, loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> None:
        try:
            self._serve()
        except BaseException:
            log.exception("the ledger's thread failed")
            raise
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody watches
                loop.call_soon_threadsafe(stopped.set)

    def _serve(self) -> None:
        while True:
            job: tuple[Callable[[Ledger], Any], Future[Any]] | None = None
            work: tuple[list[Sample], int, float | None] | None = None
            with self._cv:
                while True:
                    due = self._due_in(time.monotonic())
                    if due is not None and due <= 0 and not (self._job_turn and self._jobs):
                        work = self._take()
                        self._job_turn = True
                        break
                    if self._jobs:
                        job = self._jobs.popleft()
                        self._job_turn = False
                        break
                    if self._closing and due is None and not self._relieving:
                        self._finish()
                        return
                    self._cv.wait(due)
            if job is not None:
                fn, fut = job
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(self._ledger))
                    except BaseException as exc:  # the caller gets it; the thread goes on
                        fut.set_exception(exc)
            if work is not None:
                self._wake_loop()  # the queue has room again
                self._commit(*work)

    def _finish(self) -> None:
        """The thread's last act (under `_cv`): close the ledger; say what could not be committed."""
        left = self._pending_count + self._retry_len
        if left:
            log.error("ledger closed with %d readings not committed (the last commit failed)", left)
        try:
            self._ledger.close()
        except Exception:
            log.exception("closing the ledger failed")

    def _commit(self, batch: list[Sample], polls: int, since: float | None) -> None:
        """Commit one batch on the ledger's thread; on failure it goes back to be retried in 1 s."""
        start = time.monotonic()
        try:
            entries = self._ledger.append_entries(batch)
        except sqlite3.OperationalError as exc:
            self.commit_failures += 1
            if "full" in str(exc).lower():
                # Disk full: energy registers (what certification needs) go first. Instant values of
                # this batch are given up, counted, and the guard frees space from old ones.
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
                self._start_relief()
                if not batch:  # nothing left to keep: the polls are done with
                    self._announce([], polls, 0, None, time.monotonic(), 0.0)
                    return
            else:
                log.error("ledger commit of %d samples failed (%s); retrying in 1 s", len(batch), exc)
            self._put_back(batch, polls, since)
            return
        except Exception as exc:  # anything else: retry, never drop a reading silently
            self.commit_failures += 1
            log.error("ledger commit of %d samples failed (%s); retrying in 1 s", len(batch), exc)
            self._put_back(batch, polls, since)
            return
        end = time.monotonic()
        self._announce(entries, polls, len(batch), since, end, end - start)

    def _put_back(self, batch: list[Sample], polls: int, since: float | None) -> None:
        with self._cv:
            self._retry = (batch, polls, since)
            self._taken_polls -= polls  # not committed: a flush waiting for them forces the retry
            self._retry_at = time.monotonic() + 1.0
            if self._closing:
                self._closing_failures += 1

    def _start_relief(self) -> None:
        """Ask the loop to run the disk guard's relief (once at a time; it calls back into this thread)."""
        with self._cv:
            if self._relieving or self._on_disk_full is None or self._loop is None:
                return
            self._relieving = True
        coro = self._relieve()
        try:
            asyncio.run_coroutine_threadsafe(coro, self._loop).add_done_callback(self._relief_done)
        except RuntimeError:  # the loop is gone: no relief, retry as is
            coro.close()
            self._relief_done()
