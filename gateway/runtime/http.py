"""Serving an ASGI app inside a supervised part: the gateway's API and the hub's share this one server.

uvicorn runs without its own signal handlers (the process's runner owns shutdown). `stop()` asks it to
close its connections gracefully (the runner calls it first on SIGTERM); a cancelled part lets uvicorn
close its sockets itself within a bound. A server that ends while nobody asked it to (a port in use) is
an error, so the supervisor restarts the part and health says why.

Bounded, because the port faces the site LAN without a token (issue #15, finding 2): uvicorn by itself
keeps a socket that never sends a request open forever, so ~1000 idle sockets used up the agent's file
descriptors; `/healthz` stopped answering and a meter could not reconnect. Here every connection must
finish its TLS handshake and send its first request within `header_timeout_s` (a keep-alive one its
next within `keep_alive_s`), and at `max_connections` the longest-idle connection makes room for a new
one (`ConnectionSlots`), so the process always keeps descriptors for its devices and its ledger
(`gateway.runtime.fdbudget` sizes the limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

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


@dataclass(eq=False)
class _Conn:
    """One accepted TCP connection: its raw transport and the HTTP protocol serving it."""

    transport: asyncio.Transport
    http: H11Protocol
    opened_at: float = field(default_factory=time.monotonic)
    deadline: asyncio.TimerHandle | None = None

    def idle(self) -> bool:
        """No request in progress: none sent yet (TLS handshake included), or between keep-alive requests."""
        cycle = self.http.cycle
        return cycle is None or bool(cycle.response_complete)

    def abort(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.transport.abort()  # no FIN handshake to wait for: the descriptor is freed now


class ConnectionSlots:
    """At most `max_connections` accepted TCP connections, counted when accepted (before a TLS handshake).

    At the cap, a new connection evicts the open one that has waited longest without a request in
    progress: a real client sends its request at once, so an attacker holding idle sockets cannot lock it
    out, and the count never passes the cap. Only when every connection is busy with a request is the new
    one closed unserved. Each connection must complete its first request's headers (and its TLS
    handshake) within `header_timeout_s`.
    """

    def __init__(self, *, max_connections: int, header_timeout_s: float, stats: ConnectionStats) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.stats = stats
        self.open: dict[int, _Conn] = {}

    def admit(self, transport: asyncio.Transport, http: H11Protocol) -> _Conn | None:
        if len(self.open) >= self.max_connections:
            idle = [c for c in self.open.values() if c.idle()]
            if not idle:
                self.stats.refused += 1
                transport.abort()
                return None
            oldest = min(idle, key=lambda c: c.opened_at)
            self.stats.evicted += 1
            self.release(oldest)
            oldest.abort()
        conn = _Conn(transport, http)
        self.open[id(conn)] = conn
        conn.deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, self._no_request, conn)
        return conn

    def _no_request(self, conn: _Conn) -> None:
        # `cycle` is set once a request's headers are complete; None means none arrived in time.
        conn.deadline = None
        if conn.http.cycle is None and id(conn) in self.open:
            self.stats.timed_out += 1
            self.release(conn)
            conn.abort()

    def release(self, conn: _Conn | None) -> None:
        if conn is not None:
            self.open.pop(id(conn), None)
            if conn.deadline is not None:
                conn.deadline.cancel()
                conn.deadline = None


def bounded_protocol(slots: ConnectionSlots, tls: ssl.SSLContext | None) -> Callable[..., asyncio.BaseProtocol]:
    """The protocol factory uvicorn calls per accepted connection: its h11 protocol under `slots`.

    With TLS the factory wraps the HTTP protocol in asyncio's SSL protocol itself (uvicorn would let
    asyncio do it, with no bound on connections still in their handshake and a 60 s handshake timeout),
    so a socket that never starts the handshake counts and times out like one that never sends a
    request. h11 (not httptools) because it is pure Python and bounds the header size itself (16 KiB).
    """

    class BoundedH11Protocol(H11Protocol):
        _slot: _Conn | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if tls is None:
                self._slot = slots.admit(transport, self)
                if self._slot is None:
                    self._refused = True
                    return
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            slots.release(self._slot)
            if self._refused:  # closed in connection_made: nothing to undo
                return
            super().connection_lost(exc)

    class BoundedSSLProtocol(SSLProtocol):
        _slot: _Conn | None = None
        _refused = False
        http: H11Protocol

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._slot = slots.admit(cast(asyncio.Transport, transport), self.http)
            if self._slot is None:
                self._refused = True
                return
            super().connection_made(transport)

        def connection_lost(self, exc: BaseException | None) -> None:
            slots.release(self._slot)
            if self._refused:
                return
            super().connection_lost(exc)

    def factory(**kwargs: Any) -> asyncio.BaseProtocol:
        http = BoundedH11Protocol(**kwargs)
        if tls is None:
            return http
        wrapped = BoundedSSLProtocol(
            asyncio.get_running_loop(),
            http,
            tls,
            None,  # type: ignore[arg-type]  # no waiter: nobody awaits the handshake, the slot's deadline bounds it
            server_side=True,
            ssl_handshake_timeout=max(1, math.ceil(slots.header_timeout_s)),
        )
        wrapped.http = http
        return wrapped

    return factory


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class HttpServer:
    def __init__(self, app: Any, cfg: ListenConfig, *, max_connections: int | None = None) -> None:
        """`max_connections` overrides the config's when the descriptor budget is smaller (fdbudget)."""
        self.cfg = cfg
        self.max_connections = min(cfg.max_connections, max_connections or cfg.max_connections)
        self.stats = ConnectionStats()
        self.slots = ConnectionSlots(
            max_connections=self.max_connections, header_timeout_s=cfg.header_timeout_s, stats=self.stats
        )
        tls = (
            server_tls_context(cfg.tls_cert_file, cfg.tls_key_file) if cfg.tls_cert_file and cfg.tls_key_file else None
        )
        protocol = bounded_protocol(self.slots, tls)
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,
                host=cfg.host,
                port=cfg.port,
                http=cast(Any, protocol),  # a factory, called as uvicorn calls a protocol class
                # Requests in flight (tasks) beyond this get 503; connections are bounded above.
                limit_concurrency=2 * self.max_connections,
                timeout_keep_alive=max(1, round(cfg.keep_alive_s)),
                log_config=None,
                access_log=False,
                lifespan="off",
                # TLS is done by the protocol factory (bounded handshakes), so uvicorn gets plain TCP.
                timeout_graceful_shutdown=2,
                # X-Forwarded-For is believed only from http.trusted_proxies, by the authenticator
                # (gateway/api/auth.py); uvicorn's default believed any peer on 127.0.0.1.
                proxy_headers=False,
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
                async with asyncio.timeout(3.0):
                    await task
            raise
        if not stopping():
            raise RuntimeError(f"HTTP server on {self.cfg.listen} stopped (is the port in use?)")
