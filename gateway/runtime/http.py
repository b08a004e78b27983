"""Serving an ASGI app inside a supervised part: the gateway's API and the hub's share this one server.

uvicorn runs without its own signal handlers (the process's runner owns shutdown). `stop()` asks it to
close its connections gracefully (the runner calls it first on SIGTERM); a cancelled part lets uvicorn
close its sockets itself within a bound. A server that ends while nobody asked it to (a port in use) is
an error, so the supervisor restarts the part and health says why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import uvicorn


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


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the process's runner owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


class HttpServer:
    def __init__(self, app: Any, cfg: ListenConfig) -> None:
        self.cfg = cfg
        self._server = _EmbeddedServer(
            uvicorn.Config(
                app,
                host=cfg.host,
                port=cfg.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                ssl_certfile=str(cfg.tls_cert_file) if cfg.tls_cert_file else None,
                ssl_keyfile=str(cfg.tls_key_file) if cfg.tls_key_file else None,
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
                await asyncio.wait_for(task, 3.0)
            raise
        if not stopping():
            raise RuntimeError(f"HTTP server on {self.cfg.listen} stopped (is the port in use?)")
