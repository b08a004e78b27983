"""`Hub`: the area hub's composition root — the store, the ingestor and the hub's parts under the
gateway's `Supervisor` (each restarted with backoff on failure; their states are `/healthz`).

Parts: `hub-mqtt` (subscriptions and the receipt outbox; when `hub.mqtt` is set), `hub-live` (the sites'
live state into the area live view, gateway/hub/live.py; when `hub.mqtt` is set), `hub-live-influx` (the
view as InfluxDB measurement `area`; when `hub.live.influxdb` is set), `hub-http` (the push
API and the certifier portal; when `hub.http.enabled`) and `hub-areas` (builds the area reports that are
due: after each accepted report and every `area_check_s`). Nothing global: two hubs can run in one
process (tests do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from gateway import __version__
from gateway.hub.api import create_hub_app, hub_authenticator
from gateway.hub.areas import AreaReports
from gateway.hub.config import HubSettings
from gateway.hub.ingest import Ingestor, Outcome
from gateway.hub.live import AreaInflux, LiveIngest, LiveView
from gateway.hub.mqtt import HubMqtt, Inflight, _transient
from gateway.hub.store import HubStore
from gateway.rooms import Part
from gateway.runtime.http import HttpServer
from gateway.runtime.supervisor import PartState, Supervisor

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, settings: HubSettings, *, store: HubStore | None = None) -> None:
        self.settings = settings
        self.cfg = settings.hub
        self._own_store = store is None
        self.store = store if store is not None else HubStore.open(self.cfg)
        self.ingestor = Ingestor(self.store, max_bytes=self.cfg.max_report_bytes)
        self.areas = AreaReports(self.store)
        self.areas_due = asyncio.Event()
        self.inflight = Inflight()
        self.supervisor = Supervisor()
        self.started = time.monotonic()
        self.mqtt: HubMqtt | None = None
        # hostname and pid: replicas on one machine must not share an id (the broker would drop one whenever
        # the other connects); the sessions are clean, so a new id per start loses nothing. The live view's
        # connection takes the same id with "-live".
        client_id = self.cfg.mqtt.client_id or f"gia-hub-{socket.gethostname()}-{os.getpid()}" if self.cfg.mqtt else ""
        if self.cfg.mqtt is not None:
            self.mqtt = HubMqtt(
                self.cfg.mqtt,
                self.ingestor,
                client_id=client_id,
                on_decided=self._decided,
                inflight=self.inflight,
            )
        # the area live view: every replica serves it (from the database); it ingests when hub.mqtt is set
        self.live_view: LiveView | None = None
        self.live: LiveIngest | None = None
        self.area_influx: AreaInflux | None = None
        if self.cfg.live.enabled:
            self.live_view = LiveView(self.store.engine, self.cfg.areas, self.cfg.live)
            if self.cfg.live.influxdb is not None:
                self.area_influx = AreaInflux(self.live_view, self.cfg.live.influxdb, self.cfg.live.influx_interval_s)
            if self.cfg.mqtt is not None:
                self.live = LiveIngest(
                    self.cfg.mqtt,
                    self.cfg.live,
                    self.store.engine,
                    client_id=f"{client_id}-live",
                    timezones=self.live_view.timezones,
                )
        self.http_server: HttpServer | None = None
        self._stopping = False

    def parts(self) -> list[Part]:
        """The hub's parts, with the agent's plug (gateway/rooms.py): a name, a run, and health reasons."""
        out: list[Part] = []
        if self.mqtt is not None:
            out.append(Part("hub-mqtt", self.mqtt.run, max_backoff_s=10.0))
        if self.live is not None:
            out.append(Part("hub-live", self.live.run, max_backoff_s=10.0))
        if self.area_influx is not None:
            out.append(Part("hub-live-influx", self.area_influx.run, max_backoff_s=30.0))
        if self.cfg.http.enabled:
            out.append(Part("hub-http", self._serve_http, max_backoff_s=10.0))
        out.append(Part("hub-areas", self._build_areas, max_backoff_s=30.0))
        return out

    def _decided(self, outcome: Outcome) -> None:
        if outcome.status == "accepted" and not outcome.replay:
            self.areas_due.set()

    async def _build_areas(self) -> None:
        """Build the area reports that are due (every area_check_s, and soon after an accepted report)."""
        while True:
            self.areas_due.clear()
            try:
                await self.inflight.run(self.areas.step)
            except Exception as exc:
                if not _transient(exc):
                    raise
                log.warning("area reports: database unavailable (%s); retrying", type(exc).__name__)
            try:
                async with asyncio.timeout(self.cfg.area_check_s):
                    await self.areas_due.wait()
                await asyncio.sleep(1.0)  # let a burst of reports land before building
            except TimeoutError:
                pass

    def health(self) -> dict[str, Any]:
        reasons: list[str] = []
        classes: list[str] = []  # what /healthz tells a client without a token
        parts = {}
        for name, h in self.supervisor.health().items():
            parts[name] = {"state": h.state.value, "restarts": h.restarts, "last_error": h.last_error}
            if h.state is PartState.RESTARTING:
                reasons.append(f"part {name} is restarting after: {h.last_error}")
                classes.append(f"{name}: restarting")
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
                classes.append("mqtt: disconnected")
        live = None
        if self.live is not None:
            m = self.live.metrics()
            lags = [v["reading_age_s"] for v in m.pop("lag_per_site").values()]
            live = {**m, "sites_seen": len(lags), "max_reading_age_s": max(lags, default=None)}
            if not m["connected"]:
                reasons.append(f"live view not connected to the broker: {m['last_error'] or 'connecting'}")
                classes.append("live: disconnected")
        database: dict[str, Any] = {"backend": self.store.engine.dialect.name}
        try:
            database["log_size"] = self.store.leaf_count()
        except Exception as exc:  # the database is down: say so, without the URL (it is no secret, but)
            reasons.append(f"database unavailable: {type(exc).__name__}")
            classes.append("database: unavailable")
            database["error"] = type(exc).__name__
        return {
            "status": "ok" if not reasons else "degraded",
            "reasons": reasons,
            "reason_classes": classes,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "parts": parts,
            "mqtt": mqtt,
            "live": live,
            "database": database,
        }

    def app(self) -> Any:
        receipts = self.mqtt.receipts_due.set if self.mqtt is not None else (lambda: None)

        def on_receipt() -> None:
            receipts()
            self.areas_due.set()

        return create_hub_app(
            self.store,
            self.ingestor,
            health=self.health,
            max_body_bytes=self.cfg.http.max_body_bytes,
            on_receipt=on_receipt,
            auth=hub_authenticator(self.cfg.http),
            areas=self.areas,
            max_evidence_bytes=self.cfg.max_evidence_bytes,
            live=self.live_view,
            live_metrics=self.live.metrics if self.live is not None else None,
            stream_s=self.cfg.live.stream_s,
            stopping=lambda: self._stopping,
        )

    async def _serve_http(self) -> None:
        server = self.http_server = HttpServer(self.app(), self.cfg.http)
        try:
            await server.serve(stopping=lambda: self._stopping)
        finally:
            self.http_server = None

    def request_http_stop(self) -> None:
        self._stopping = True
        if self.http_server is not None:
            self.http_server.stop()

    async def run(self) -> None:
        """Run every part until cancelled; then close the database."""
        for part in self.parts():
            self.supervisor.add(part.name, part.run, max_backoff_s=part.max_backoff_s)
        try:
            await self.supervisor.run()
        finally:
            await self.inflight.drain()
            if self._own_store:
                self.store.close()
