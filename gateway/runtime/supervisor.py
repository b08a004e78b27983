"""Supervision: named long-running parts, each restarted with backoff when it fails, with health.

Every part of the agent (a device poller, a sink forwarder, the ledger writer, the HTTP server) is an
async function that runs until cancelled. If one raises, only that part restarts (after a capped,
jittered delay); the others keep going. The state of each part is what `/healthz` reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from drivers.backoff import Backoff

log = logging.getLogger(__name__)


class PartState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass
class PartHealth:
    name: str
    state: PartState = PartState.STARTING
    restarts: int = 0
    last_error: str | None = None


@dataclass
class _Part:
    name: str
    factory: Callable[[], Awaitable[None]]
    backoff: Backoff
    health: PartHealth = field(init=False)

    def __post_init__(self) -> None:
        self.health = PartHealth(self.name)


class Supervisor:
    def __init__(self) -> None:
        self._parts: dict[str, _Part] = {}
        self._owner: asyncio.Task[None] | None = None

    def add(self, name: str, factory: Callable[[], Awaitable[None]], *, max_backoff_s: float = 60.0) -> None:
        if name in self._parts:
            raise ValueError(f"duplicate part name {name!r}")
        self._parts[name] = _Part(name, factory, Backoff(initial_s=1.0, max_s=max_backoff_s))

    def health(self) -> dict[str, PartHealth]:
        return {name: p.health for name, p in self._parts.items()}

    async def run(self) -> None:
        """Run every part until cancelled; cancellation stops them all."""
        self._owner = asyncio.current_task()
        async with asyncio.TaskGroup() as tg:
            for part in self._parts.values():
                tg.create_task(self._guard(part), name=part.name)

    async def _guard(self, part: _Part) -> None:
        while True:
            part.health.state = PartState.RUNNING
            try:
                await part.factory()
                part.health.state = PartState.STOPPED
                return
            except asyncio.CancelledError:
                if not self._stray(part):
                    part.health.state = PartState.STOPPED
                    raise
                delay = part.backoff.next_delay()
                await asyncio.sleep(delay)
            except Exception as exc:
                part.health.restarts += 1
                part.health.last_error = f"{type(exc).__name__}: {exc}"
                part.health.state = PartState.RESTARTING
                delay = part.backoff.next_delay()
                log.exception("part %s failed; restarting in %.1f s", part.name, delay)
                await asyncio.sleep(delay)

    def _stray(self, part: _Part) -> bool:
        """True (and the request cleared) for a CancelledError that no one stopping the agent asked for.

        A part must never end silently while the agent runs: a sink that did stopped forwarding for good
        with a healthy-looking agent. Such a cancellation came from a library or stdlib corner (Python
        3.11's TaskGroup can leave a cancel request behind, CPython gh-116720); the part is restarted
        like a failed one and health says so.
        """
        owner = self._owner
        if owner is None or owner.done() or owner.cancelling():
            return False  # the supervisor itself is being stopped: a real stop
        task = asyncio.current_task()
        while task is not None and task.cancelling():
            task.uncancel()
        part.health.restarts += 1
        part.health.last_error = "CancelledError: stopped by a cancellation no one asked for"
        part.health.state = PartState.RESTARTING
        log.error("part %s was cancelled while the agent runs; restarting it", part.name)
        return True
