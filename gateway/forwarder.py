"""Forwarding from the ledger to one sink, from a persistent cursor: nothing lost, nothing doubled.

The loop reads committed entries after the sink's cursor, sends them, and only after the receiver has
acknowledged them moves the cursor (committed in the ledger). A crash between the two replays the last
batch, which the sink's idempotent writes absorb. A dead receiver just stops the cursor: the ledger
holds everything, and the loop resumes where it stopped when the receiver is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from drivers.backoff import Backoff
from drivers.cancel import raise_if_cancelling
from drivers.model import to_ms
from gateway.clock import Clock
from gateway.ledger.store import Entry, Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.sinks.base import Sink, SinkError, SinkRejected

log = logging.getLogger(__name__)


@dataclass
class ForwarderHealth:
    name: str
    connected: bool = False
    cursor: int = 0
    forwarded: int = 0
    rejected_batches: int = 0
    rejected_entries: int = 0
    failures: int = 0
    last_error: str | None = None
    #: what the loop is doing now: connecting, forwarding, retrying (in backoff); a sink stuck in one
    #: phase is visible in /healthz instead of only as a growing lag
    phase: str = "starting"


def whole_groups(entries: list[Entry], *, full: bool) -> list[Entry]:
    """Drop a trailing (device, ts) group that may continue past the batch, so no line is sent in halves.

    A poll's samples are appended contiguously, so a group is a run of equal (device, ts). When the
    batch was cut at its size limit, the last run may be incomplete; it is sent with the next batch.
    A batch that is one single run is sent as it is (it cannot be made whole within the limit).
    """
    if not full or not entries:
        return entries
    last = (entries[-1].device, entries[-1].ts_ms)
    i = len(entries)
    while i > 0 and (entries[i - 1].device, entries[i - 1].ts_ms) == last:
        i -= 1
    return entries[:i] if i > 0 else entries


SideTask = Callable[[Sink], Coroutine[Any, Any, None]]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a (nested) exception group: `SinkError: ...`, not "unhandled errors in a
    TaskGroup (1 sub-exception)"."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class Forwarder:
    def __init__(
        self,
        *,
        sink_factory: Callable[[], Sink],
        name: str,
        writer: LedgerWriter,
        clock: Clock,
        side_tasks: Sequence[SideTask] = (),
        max_backoff_s: float = 10.0,
    ) -> None:
        self.name = name
        self._sink_factory = sink_factory
        self._writer = writer
        self._clock = clock
        self._side_tasks = side_tasks
        # Capped at 10 s, Telegraf's default flush interval: after a long outage the readings resume
        # within ~10 s of the receiver's return, and the jitter still spreads a fleet's reconnects.
        self._backoff = Backoff(initial_s=1.0, max_s=max_backoff_s)
        self.health = ForwarderHealth(name)

    async def run(self) -> None:
        self.health.cursor = await self._writer.call(lambda led: led.cursor(self.name))
        while True:
            raise_if_cancelling()  # a retry after a cancellation turned into TimeoutError (drivers/cancel.py)
            self.health.phase = "connecting"
            try:
                async with self._sink_factory() as sink:
                    self.health.phase = "forwarding"
                    if not self.health.connected:
                        log.info("%s: connected; forwarding from entry %d", self.name, self.health.cursor + 1)
                    self.health.connected = True
                    self.health.last_error = None
                    async with asyncio.TaskGroup() as tg:
                        for side in self._side_tasks:
                            tg.create_task(side(sink), name=f"{self.name}-side")
                        await self._forward(sink)
            except* (SinkError, OSError, TimeoutError) as group:
                error = _first_leaf(group)
                del group  # its traceback holds the failed sink (and its connection) until the next failure
                self.health.failures += 1
                text = str(error) or type(error).__name__
                if self.health.connected or self.health.last_error != text:
                    # once per outage, and again only when the cause changes: not once per retry
                    log.error("%s: %s; keeping readings in the ledger and retrying", self.name, text)
                self.health.connected = False
                self.health.last_error = text
                del error
                self.health.phase = "retrying"
                await asyncio.sleep(self._backoff.next_delay())

    async def _forward(self, sink: Sink) -> None:
        while True:
            raise_if_cancelling()
            cursor = self.health.cursor
            batch = await self._writer.call(partial(Ledger.read_after, seq=cursor, limit=sink.batch_size))
            if not batch:
                await self._writer.wait_beyond(cursor, 5.0)
                continue
            batch = whole_groups(batch, full=len(batch) >= sink.batch_size)
            try:
                await sink.send(batch)
            except SinkRejected as exc:
                # The receiver refuses this data as such; retrying forever would stall every later
                # reading. The entries stay in the ledger (and in certification); count and say so.
                self.health.rejected_batches += 1
                self.health.rejected_entries += len(batch)
                log.error(
                    "%s: rejected %d entries (%d..%d): %s", self.name, len(batch), batch[0].seq, batch[-1].seq, exc
                )
            else:
                self.health.forwarded += len(batch)
            new_cursor = batch[-1].seq
            now_ms = to_ms(self._clock.now())
            await self._writer.call(partial(Ledger.set_cursor, name=self.name, seq=new_cursor, now_ms=now_ms))
            self.health.cursor = new_cursor
            self._backoff.reset()
