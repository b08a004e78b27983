"""`Hub`: the area hub's composition root — the store, the ingestor and the hub's parts under the
gateway's `Supervisor` (each restarted with backoff on failure; their states are `/healthz`).

Parts: `hub-mqtt` (subscriptions and the receipt outbox; when `hub.mqtt` is set) and `hub-http`
(the API; when `hub.http.enabled`). Nothing global: two hubs can run in one process (tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from gateway import __version__
from gateway.hub.api import create_hub_app
from gateway.hub.config import HubSettings
from gateway.hub.ingest import Ingestor
from gateway.hub.mqtt import HubMqtt
from gateway.hub.store import HubStore
from gateway.supervisor import PartState, Supervisor

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the hub's runner owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


class Hub:
    def __init__(self, settings: HubSettings, *, store: HubStore | None = None) -> None:
        self.settings = settings
        self.cfg = settings.hub
        self._own_store = store is None
        self.store = store if store is not None else HubStore.open(self.cfg)
        self.ingestor = Ingestor(self.store, max_bytes=self.cfg.max_report_bytes)
        self.supervisor = Supervisor()
        self.started = time.monotonic()
        self.mqtt: HubMqtt | None = None
        if self.cfg.mqtt is not None:
            self.mqtt = HubMqtt(
                self.cfg.mqtt,
                self.ingestor,
                client_id=self.cfg.mqtt.client_id or f"gia-hub-{socket.gethostname()}",
            )
        self.http_server: _EmbeddedServer | None = None

    def parts(self) -> dict[str, Callable[[], Awaitable[None]]]:
        out: dict[str, Callable[[], Awaitable[None]]] = {}
        if self.mqtt is not None:
            out["hub-mqtt"] = self.mqtt.run
        if self.cfg.http.enabled:
            out["hub-http"] = self._serve_http
        return out

    def health(self) -> dict[str, Any]:
        reasons: list[str] = []
        parts = {}
        for name, h in self.supervisor.health().items():
            parts[name] = {"state": h.state.value, "restarts": h.restarts, "last_error": h.last_error}
            if h.state is PartState.RESTARTING:
                reasons.append(f"part {name} is restarting after: {h.last_error}")
        mqtt = None
        if self.mqtt is not None:
            mh = self.mqtt.health
            mqtt = {
                "connected": mh.connected,
                "messages": mh.messages,
                "decided": mh.decided,
                "too_large": mh.too_large,
                "database_retries": mh.retries,
                "receipts_published": mh.receipts_published,
                "last_error": mh.last_error,
            }
            if not mh.connected:
                reasons.append(f"not connected to the broker: {mh.last_error or 'connecting'}")
        database: dict[str, Any] = {"backend": self.store.engine.dialect.name}
        try:
            database["log_size"] = self.store.leaf_count()
        except Exception as exc:  # the database is down: say so, without the URL (it is no secret, but)
            reasons.append(f"database unavailable: {type(exc).__name__}")
            database["error"] = type(exc).__name__
        return {
            "status": "ok" if not reasons else "degraded",
            "reasons": reasons,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "parts": parts,
            "mqtt": mqtt,
            "database": database,
        }

    def app(self) -> Any:
        return create_hub_app(
            self.store,
            self.ingestor,
            health=self.health,
            max_body_bytes=self.cfg.http.max_body_bytes,
            on_receipt=self.mqtt.receipts_due.set if self.mqtt is not None else (lambda: None),
        )

    async def _serve_http(self) -> None:
        cfg = self.cfg.http
        config = uvicorn.Config(
            self.app(),
            host=cfg.host,
            port=cfg.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=str(cfg.tls_cert_file) if cfg.tls_cert_file else None,
            ssl_keyfile=str(cfg.tls_key_file) if cfg.tls_key_file else None,
            timeout_graceful_shutdown=2,
        )
        server = self.http_server = _EmbeddedServer(config)
        task = asyncio.ensure_future(server.serve())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 3.0)
            raise

    def request_http_stop(self) -> None:
        if self.http_server is not None:
            self.http_server.should_exit = True

    async def run(self) -> None:
        """Run every part until cancelled; then close the database."""
        for name, factory in self.parts().items():
            self.supervisor.add(name, factory, max_backoff_s=10.0)
        try:
            await self.supervisor.run()
        finally:
            if self._own_store:
                self.store.close()
