"""The composition root: resolve the site, open the shared services, ask every room for its parts, run.

Read top to bottom, this is the whole agent. Everything it runs is a named part of a room (a poller per
device, the ledger's loops, a forwarder per sink, report publishing, forecasting, the HTTP server, ...)
under one `Supervisor` (one TaskGroup): a failing part restarts with backoff, the others keep going.
Which rooms exist is `gateway.registry.ROOMS`; how a room plugs in is `gateway.rooms`. Nothing here is
global: two agents can run in one process.

Data path: poller -> live snapshot (latency) and clock guard -> ledger writer (commit) -> the reader
-> one forwarder per sink (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import __version__
from gateway.registry import ROOMS
from gateway.rooms import Part, Room, Services
from gateway.runtime import systemd
from gateway.runtime.clock import Clock, WallClock
from gateway.runtime.supervisor import PartState, Supervisor
from gateway.services import open_services
from gateway.settings import Config

log = logging.getLogger(__name__)


@dataclass
class Agent:
    config: Config
    clock: Clock = field(default_factory=WallClock)
    rooms: Sequence[Room] = ROOMS
    #: parts the caller runs beside the rooms' (the demo's simulated devices)
    extra_parts: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor()
        self.started_monotonic = time.monotonic()
        self.ready = asyncio.Event()
        self.services: Services | None = None
        self._parts: list[Part] = []
        self._stopping = False

    def health(self) -> dict[str, Any]:
        """`/healthz`: the union of every part's reasons, and the sections rooms publish."""
        reasons: list[str] = []
        classes: list[str] = []  # what /healthz tells a client without a token: no addresses, no error texts
        parts = {}
        for name, h in self.supervisor.health().items():
            parts[name] = {"state": h.state.value, "restarts": h.restarts, "last_error": h.last_error}
            if h.state is PartState.RESTARTING:
                reasons.append(f"part {name} is restarting after: {h.last_error}")
                classes.append(f"{name}: restarting")
        for p in self._parts:
            found = p.reasons()
            reasons += found
            if found:
                classes.append(f"{p.name}: degraded")
        sections = self.services.health.sections() if self.services is not None else {}
        return {
            "status": "ok" if not reasons else "degraded",
            "reasons": reasons,
            "reason_classes": classes,
            "site": self.config.site.id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "parts": parts,
            **sections,
        }

    async def run(self) -> None:
        """Run until cancelled; on cancellation every part stops and queued readings are committed."""
        site = self.config.site
        self._stopping = False
        async with open_services(self.config, self.clock) as services:
            services.report = self.health
            services.stopping = lambda: self._stopping
            self.services = services
            for room in self.rooms:
                self._parts += await room.parts(site, services)
            self._parts += [Part(name, run) for name, run in self.extra_parts.items()]
            for part in self._parts:
                self.supervisor.add(part.name, part.run, max_backoff_s=part.max_backoff_s)
            self.ready.set()
            systemd.notify("READY=1")
            sinks = [p.name.removeprefix("sink:") for p in self._parts if p.name.startswith("sink:")]
            http = services.settings.http
            page = (
                f"web page on http{'s' if http.tls_cert_file else ''}://{http.listen}/"
                if any(p.name == "http" for p in self._parts)
                else "web page off (http.enabled: false)"
            )
            log.info(
                "agent for site %s running: %d devices, sinks: %s, data in %s, %s",
                site.id,
                len(site.devices),
                ", ".join(sinks) or "none",
                services.settings.data_dir,
                page,
            )
            try:
                await self.supervisor.run()
            finally:
                self._stopping = True

    def request_stop(self) -> None:
        """A stop was asked for (signal): tell systemd, and let parts that close gracefully begin to."""
        systemd.notify("STOPPING=1")
        self._stopping = True
        for stop in list(self.services.on_stop if self.services else ()):
            stop()
