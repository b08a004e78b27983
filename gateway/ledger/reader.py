"""The one way the running agent reads its ledger: read-only connections on reader threads.

Why not the writer's thread: SQLite calls block, and the writer thread commits every second. A viewer's
history query (0.75 s on a month) or a report build queued there stretched commits from 1 s to several
seconds. WAL mode lets readers run beside the writer without blocking it, so every reader — sinks
reading after their cursor, the live balance, history, forecasting, certification — gets a read-only
`Ledger` on a small pool of threads of its own. Writes (appends, cursors, events, pruning) stay on the
writer's thread (`LedgerWriter.call`).

Each pool thread keeps its own connection (sqlite3 connections are not shared across threads). The pool
is bounded: a crowd of viewers queues here instead of opening connections without limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.ledger.store import Ledger

T = TypeVar("T")


class LedgerReader:
    """A bounded pool of reader threads, each with its own read-only connection to the ledger."""

    def __init__(self, path: Path, *, max_workers: int = 2, name: str = "ledger-read") -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._opened: list[Ledger] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    def _ledger(self) -> Ledger:
        led: Ledger | None = getattr(self._local, "ledger", None)
        if led is None:
            led = Ledger(self.path, readonly=True)
            self._local.ledger = led
            with self._lock:
                self._opened.append(led)
        return led

    def _run(self, fn: Callable[[Ledger], T]) -> T:
        led = self._ledger()
        led.refresh_head()
        return fn(led)

    async def call(self, fn: Callable[[Ledger], T]) -> T:
        """Run `fn(ledger)` on a reader thread with a read-only ledger that sees every committed entry."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for led in self._opened:
                led.close()
            self._opened.clear()
