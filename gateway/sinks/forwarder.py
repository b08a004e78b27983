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
from gateway.ledger.reader import LedgerReader
from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.rooms import Part, Services
from gateway.runtime.clock import Clock
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
        reader: LedgerReader,
        clock: Clock,
        side_tasks: Sequence[SideTask] = (),
        max_backoff_s: float = 10.0,
    ) -> None:
        self.name = name
        self._sink_factory = sink_factory
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._side_tasks = side_tasks
        # Capped at 10 s, Telegraf's default flush interval: after a long outage the readings resume
        # within ~10 s of the receiver's return, and the jitter still spreads a fleet's reconnects.
        self._backoff = Backoff(initial_s=1.0, max_s=max_backoff_s)
        self.health = ForwarderHealth(name)

    def status(self, head_seq: int) -> dict[str, Any]:
        fh = self.health
        return {
            "connected": fh.connected,
            "phase": fh.phase,
            "cursor": fh.cursor,
            "lag": head_seq - fh.cursor,
            "forwarded": fh.forwarded,
            "rejected_entries": fh.rejected_entries,
            "last_error": fh.last_error,
        }

    async def run(self) -> None:
        self.health.cursor = await self._reader.call(lambda led: led.cursor(self.name))
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
            # the latest entries from the writer's memory; older ones read beside the writer, never on
            # its thread (a catch-up must not stretch commits)
            polls = self._writer.tail.polls_after(cursor, sink.batch_size)
            if polls is None:
                polls = await self._reader.call(partial(Ledger.read_polls_after, seq=cursor, limit=sink.batch_size))
            if not polls:
                await self._writer.wait_beyond(cursor, 5.0)
                continue
            n = sum(len(p.entries) for p in polls)
            try:
                await sink.send(polls)
            except SinkRejected as exc:
                # The receiver refuses this data as such; retrying forever would stall every later
                # reading. The entries stay in the ledger (and in certification); count and say so.
                self.health.rejected_batches += 1
                self.health.rejected_entries += n
                first, last = polls[0].entries[0].seq, polls[-1].last_seq
                log.error("%s: rejected %d entries (%d..%d): %s", self.name, n, first, last, exc)
            else:
                self.health.forwarded += n
            new_cursor = polls[-1].last_seq
            now_ms = to_ms(self._clock.now())
            await self._writer.call(partial(Ledger.set_cursor, name=self.name, seq=new_cursor, now_ms=now_ms))
            self.health.cursor = new_cursor
            self._backoff.reset()


def sink_part(
    name: str, sink_factory: Callable[[], Sink], services: Services, *, side_tasks: Sequence[SideTask] = ()
) -> Part:
    """The part that forwards the ledger to one sink: its cursor counts for retention and the disk guard,
    and its state is `health["sinks"][name]` (a disconnected sink is a reason)."""
    fw = Forwarder(
        sink_factory=sink_factory,
        name=name,
        writer=services.writer,
        reader=services.reader,
        clock=services.clock,
        side_tasks=side_tasks,
    )
    services.cursors[name] = lambda: fw.health.cursor
    services.health.add("sinks", lambda: fw.status(services.writer.head_seq), key=name)

    def reasons() -> list[str]:
        fh = fw.health
        return [f"sink {name} is disconnected: {fh.last_error}"] if not fh.connected and fh.last_error else []

    return Part(f"sink:{name}", fw.run, reasons=reasons)
