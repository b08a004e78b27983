"""File descriptors: keep enough for devices and the ledger whatever the network does (issue #15, finding 2).

Every accepted socket is a descriptor. With the usual soft limit of 1024 and no bound on connections,
~1000 idle sockets on the HTTP port left the agent unable to reopen a meter's connection ("Too many open
files") and `/healthz` unanswered, while asyncio logged every failed accept. Three defences live here:

* `raise_nofile_limit()` lifts the soft limit to the hard one at start (the systemd unit sets both with
  `LimitNOFILE=`; its seccomp filter refuses `setrlimit`, which is then harmless);
* `listener_budget()` sizes the HTTP server's and the Modbus proxy's connection limits well below that
  limit, leaving `RESERVED_FDS` plus `FDS_PER_DEVICE` per device for the ledger (database, WAL, shared
  memory, one connection per reader thread), logs, pipes and device connections;
* `QuietAcceptErrors` rate-limits asyncio's "socket.accept() out of system resource" line, which repeats
  for every accept while descriptors are short.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

#: descriptors kept for the ledger, its reader threads, logs, pipes, the event loop, certification files
RESERVED_FDS: Final = 128
#: per device: its connection (or serial port), a reconnect overlapping the old socket, sink connections
FDS_PER_DEVICE: Final = 4


def nofile_limits() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (capped at 65536); returns the soft limit in force."""
    soft, hard = nofile_limits()
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:  # seccomp (the unit's ~@resources) or a container's policy
            log.debug("cannot raise the descriptor limit from %d to %d: %s", soft, want, exc)
    return soft


@dataclass(frozen=True)
class ListenerBudget:
    """Connection limits that fit the descriptor limit; `lowered` names what had to be cut and why."""

    http: int
    proxy: int
    lowered: tuple[str, ...] = ()


def listener_budget(
    *, soft_limit: int, devices: int, http_wanted: int, proxies: int, proxy_wanted: int
) -> ListenerBudget:
    """Split what the reserve leaves between the HTTP server and `proxies` Modbus proxy ports.

    The configured limits stand when they fit; otherwise both are scaled down together (at least 4
    each), and `lowered` says which config field to raise together with `LimitNOFILE=`.
    """
    free = soft_limit - RESERVED_FDS - FDS_PER_DEVICE * devices
    wanted = http_wanted + proxies * proxy_wanted
    if wanted <= free:
        return ListenerBudget(http_wanted, proxy_wanted)
    scale = max(free, 0) / wanted
    http = max(4, int(http_wanted * scale))
    proxy = max(4, int(proxy_wanted * scale))
    lowered = [f"http.max_connections {http_wanted} -> {http}"]
    if proxies:
        lowered.append(f"devices[].proxy_max_clients {proxy_wanted} -> {proxy}")
    return ListenerBudget(http, proxy, tuple(lowered))


@dataclass
class QuietAcceptErrors:
    """A loop exception handler that logs one accept failure per `interval_s` and counts the rest.

    asyncio retries a failed accept (EMFILE, ENFILE, ENOBUFS) and reports each failure through the
    loop's exception handler; under a connection flood that filled the log. Other reports pass to the
    handler that was there before.
    """

    interval_s: float = 60.0
    suppressed: int = 0
    now: Callable[[], float] = time.monotonic
    _last: float | None = field(default=None, repr=False)
    _previous: Any = field(default=None, repr=False)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept()"):
            t = self.now()
            if self._last is not None and t - self._last < self.interval_s:
                self.suppressed += 1
                return
            self._last = t
            exc = context.get("exception")
            log.error(
                "cannot accept connections: %s (%d more since the last report; raise LimitNOFILE= or lower "
                "http.max_connections)",
                exc or message,
                self.suppressed,
            )
            self.suppressed = 0
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
