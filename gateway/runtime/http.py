"""Serving an ASGI app inside a supervised part: the gateway's API and the hub's share this one server.

uvicorn runs without its own signal handlers (the process's runner owns shutdown). `stop()` asks it to
close its connections gracefully (the runner calls it first on SIGTERM); a cancelled part lets uvicorn
close its sockets itself within a bound. A server that ends while nobody asked it to (a port in use) is
an error, so the supervisor restarts the part and health says why.

Bounded, because the port faces the site LAN without a token (issue #15, finding 2): uvicorn by itself
keeps a socket that never sends a request open forever, so ~1000 idle sockets used up the agent's file
descriptors; `/healthz` stopped answering and a meter could not reconnect. Here every connection must
send its first request within `header_timeout_s` (a keep-alive one its next within `keep_alive_s`), and
beyond `max_connections` open at once a new one is closed as soon as it is accepted, so the process
always keeps descriptors for its devices and its ledger (`gateway.runtime.fdbudget` sizes the limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class ListenConfig(Protocol):
    """What a server needs from an `http:` section (gateway.settings.HttpConfig has it)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def listen(self) -> str: ...

    tls_cert_file: Path | None
    tls_key_file: Path | None
    max_connections: int
    header_timeout_s: float
    keep_alive_s: float


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the process's runner owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@dataclass
class ConnectionStats:
    """What the bounds did: connections refused or evicted at the limit, closed for sending no request."""

    refused: int = 0
    evicted: int = 0
    timed_out: int = 0


def bounded_protocol(*, max_connections: int, header_timeout_s: float, stats: ConnectionStats) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a cap on open connections and a deadline for the first request.

    At the cap, a new connection evicts the open one that has waited longest without a request in
    progress (never sent one, or idle between keep-alive requests): a real client sends its request
    at once, so an attacker holding idle sockets cannot lock it out, and the count never passes the
    cap. Only when every connection is busy with a request is the new one closed unserved. h11 (not
    httptools) because it is pure Python and bounds the header size itself (16 KiB by default).
    """

    class BoundedH11Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None
        _opened_at = 0.0

        def _idle(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                idle = [c for c in self.connections if isinstance(c, BoundedH11Protocol) and c._idle()]
                if not idle:
                    stats.refused += 1
                    transport.abort()  # no FIN handshake to wait for: the descriptor is freed now
                    return
                oldest = min(idle, key=lambda c: c._opened_at)
                stats.evicted += 1
                self.connections.discard(oldest)
                oldest.transport.abort()
            super().connection_made(transport)
            self._opened_at = time.monotonic()
            self._header_deadline = self.loop.call_later(header_timeout_s, self._no_request)

        def _no_request(self) -> None:
            # `cycle` is set once a request's headers are complete; None means none arrived in time.
            if self.cycle is None and not self.transport.is_closing():
                stats.timed_out += 1
                self.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None
            if self.transport is None:  # refused in connection_made: nothing to undo
                return
            super().connection_lost(exc)

    return BoundedH11Protocol


class HttpServer:
    def __init__(self, app: Any, cfg: ListenConfig, *, max_connections: int | None = None) -> None:
        """`max_connections` overrides the config's when the descriptor budget is smaller (fdbudget)."""
        self.cfg = cfg
        self.max_connections = min(cfg.max_connections, max_connections or cfg.max_connections)
        self.stats = ConnectionStats()
        protocol = bounded_protocol(
            max_connections=self.max_connections, header_timeout_s=cfg.header_timeout_s, stats=self.stats
        )
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,
                host=cfg.host,
                port=cfg.port,
                http=protocol,
                # Requests in flight (tasks) beyond this get 503; connections are bounded above.
                limit_concurrency=2 * self.max_connections,
                timeout_keep_alive=max(1, round(cfg.keep_alive_s)),
                log_config=None,
                access_log=False,
                lifespan="off",
                ssl_certfile=str(cfg.tls_cert_file) if cfg.tls_cert_file else None,
                ssl_keyfile=str(cfg.tls_key_file) if cfg.tls_key_file else None,
                timeout_graceful_shutdown=2,
            )
        )

    @property
    def started(self) -> bool:
        """True once the server accepts connections."""
        return bool(self._server.started)

    def stop(self) -> None:
        self._server.should_exit = True

    async def serve(self, *, stopping: Callable[[], bool]) -> None:
        """Serve until cancelled (or stopped); raise when the server ended by itself."""
        task = asyncio.ensure_future(self._server.serve())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self._server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 3.0)
            raise
        if not stopping():
            raise RuntimeError(f"HTTP server on {self.cfg.listen} stopped (is the port in use?)")
