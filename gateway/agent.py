"""The composition root: the one place that wires drivers, ledger, sinks, services and the HTTP API.

Everything the agent runs is a named part under one `Supervisor` (one TaskGroup): the ledger writer,
a poller per device, a forwarder per sink, retention, the HTTP server, and whatever the caller adds
(the demo adds its simulated devices). Nothing here is global; two agents can run in one process.

Data path: poller -> LiveState (latency) and LedgerWriter (commit) -> Forwarder(sink) per sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn

from drivers.model import from_ms, to_ms
from gateway import __version__, systemd
from gateway.api.app import ApiServices, create_app
from gateway.api.auth import Authenticator, Principal, TokenEntry
from gateway.backup import acquire_agent_lock
from gateway.clock import Clock, WallClock
from gateway.clockguard import RELEASE_FLOOR, ClockGuard
from gateway.diskguard import DiskGuard
from gateway.forecasts import ForecastRunner
from gateway.forwarder import Forwarder
from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.live import LiveState
from gateway.poller import DevicePoller
from gateway.settings import Settings
from gateway.sinks.base import Sink
from gateway.sinks.mqtt import MqttSink, RetainedOutbox
from gateway.sinks.outbox import LatestOutbox
from gateway.supervisor import PartState, Supervisor

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the agent owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@dataclass
class Agent:
    settings: Settings
    base_dir: Path = field(default_factory=Path.cwd)
    clock: Clock = field(default_factory=WallClock)
    extra_parts: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor()
        self.outbox = RetainedOutbox()
        self.forwarders: list[Forwarder] = []
        self.started_monotonic = time.monotonic()
        self.http_server: _EmbeddedServer | None = None
        self.ready = asyncio.Event()
        self.writer: LedgerWriter | None = None
        self.live = LiveState()
        self._stopping = False
        self.reports = self._report_service()
        self.clock_guard: ClockGuard | None = None
        self.influx_outbox: LatestOutbox[str, list[str]] = LatestOutbox()
        self.runner: ForecastRunner | None = None
        self.disk_guard: DiskGuard | None = None

    # -- health ---------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        reasons: list[str] = []
        parts = {}
        for name, h in self.supervisor.health().items():
            parts[name] = {"state": h.state.value, "restarts": h.restarts, "last_error": h.last_error}
            if h.state is PartState.RESTARTING:
                reasons.append(f"part {name} is restarting after: {h.last_error}")
        devices = {d: s.as_json()["state"] for d, s in self.live.devices.items()}
        reasons += [f"device {d} is offline" for d, st in devices.items() if st == "offline"]
        sinks = {}
        head = self.writer.head_seq if self.writer else 0
        for fw in self.forwarders:
            fh = fw.health
            sinks[fw.name] = {
                "connected": fh.connected,
                "phase": fh.phase,
                "cursor": fh.cursor,
                "lag": head - fh.cursor,
                "forwarded": fh.forwarded,
                "rejected_entries": fh.rejected_entries,
                "last_error": fh.last_error,
            }
            if not fh.connected and fh.last_error:
                reasons.append(f"sink {fw.name} is disconnected: {fh.last_error}")
        if self.clock_guard is not None:
            ch = self.clock_guard.health
            if not ch.plausible or ch.held:
                reasons.append(f"system clock is before {ch.floor}: {ch.held} readings held until it passes it")
            if ch.dropped:
                reasons.append(f"{ch.dropped} readings dropped while the clock was unset (hold buffer full)")
        if self.disk_guard is not None and self.disk_guard.health.low:
            dh = self.disk_guard.health
            reasons.append(f"disk space low ({dh.free_mb} MB free): raw-sample retention reduced")
        ledger: dict[str, Any] = {"head_seq": head}
        if self.writer:
            ledger.update(
                pending=self.writer.pending,
                commit_failures=self.writer.commit_failures,
                disk_full_events=self.writer.disk_full_events,
                dropped_instant=self.writer.dropped_instant,
            )
        if self.disk_guard is not None:
            ledger["disk"] = vars(self.disk_guard.health)
        return {
            "status": "ok" if not reasons else "degraded",
            "reasons": reasons,
            "site": self.settings.site.id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "devices": devices,
            "parts": parts,
            "ledger": ledger,
            "sinks": sinks,
            "clock": vars(self.clock_guard.health) if self.clock_guard else None,
        }

    # -- wiring ---------------------------------------------------------------------------------------
    def _authenticator(self) -> Authenticator:
        tokens = [
            TokenEntry(t.value().encode(), Principal(t.name, frozenset(t.roles), frozenset(t.sites)))
            for t in self.settings.http.tokens
        ]
        return Authenticator(tokens, anonymous_viewer_on_loopback=self.settings.http.anonymous_viewer_on_loopback)

    def _report_service(self) -> Any:
        from gateway.certification.service import ReportService

        return ReportService(self.settings, now_ms=lambda: to_ms(self.clock.now()), base_dir=self.base_dir)

    def _ensure_site_key(self) -> None:
        from gateway.certification.sitekeys import ensure_site_key

        ensure_site_key(self.settings.data_dir / "keys", self.settings.ledger_path, site=self.settings.site.id)

    def api_services(self) -> ApiServices:
        from gateway.certification.service import (
            LedgerUnavailable,
            MalformedMonth,
            MonthInFuture,
            NotClosed,
            SigningKeyMissing,
            StoredReportLost,
            UnknownSite,
        )

        runner = self.runner
        return ApiServices(
            site=self.settings.site.id,
            live=self.live,
            auth=self._authenticator(),
            health=self.health,
            reports=self.reports,
            forecast=runner.forecast_payload if runner else (lambda _t: None),
            flexibility=runner.flex_payload if runner else (lambda: None),
            report_errors=[
                (UnknownSite, 404, "unknown_site"),
                (MalformedMonth, 400, "bad_month"),
                (MonthInFuture, 400, "month_in_future"),
                (LedgerUnavailable, 503, "ledger_unavailable"),
                (SigningKeyMissing, 503, "signing_key_missing"),
                (StoredReportLost, 503, "stored_report_lost"),
                (NotClosed, 409, "month_not_closed"),
            ],
        )

    async def _publish_reports(self) -> None:
        """Publish (retained) the signed report of every closed month among the last two, once each version.

        A month closes only after the settlement delay and once every channel has a reading after its end
        (`ReportService.closed_report_json`); before that nothing is published, so an outage around
        midnight cannot freeze a month with a missing boundary. A reissue is published when it appears.
        """
        import hashlib

        from gateway.certification.periods import shift_month
        from gateway.sinks.topics import Topics

        assert self.settings.mqtt is not None
        site = self.settings.site.id
        topics = Topics.for_site(self.settings.mqtt.prefix, site)
        published: dict[str, str] = {}
        transitions = b""
        while True:
            try:  # the key transitions, for the hub: re-published whenever `gia keys rotate` added one
                now_transitions = await asyncio.to_thread(self.reports.key_transitions_json)
                if now_transitions != transitions:
                    self.outbox.put(topics.key_transitions, now_transitions)
                    transitions = now_transitions
            except Exception as exc:
                log.warning("key transitions not published: %s", exc)
            now = self.clock.now().astimezone(ZoneInfo(self.settings.site.timezone))
            this_month = f"{now.year:04d}-{now.month:02d}"
            last = shift_month(this_month, -1)
            for month in (shift_month(this_month, -2), last):
                try:
                    body = await asyncio.to_thread(self.reports.closed_report_json, site, month)
                except Exception as exc:  # no readings yet, ledger busy, key missing: try again later
                    log.warning("report %s not published: %s", month, exc)
                    continue
                if body is None:
                    continue  # not settled yet
                sha = hashlib.sha256(body).hexdigest()
                if published.get(month) != sha:
                    self.outbox.put(topics.report(month), body)
                    published[month] = sha
                    log.info("published signed report %s (%s)", month, sha[:16])
            nxt = self.reports.settles_at_ms(last) if last not in published else self.reports.settles_at_ms(this_month)
            wait_s = min(3600.0, max(60.0, (nxt - to_ms(self.clock.now())) / 1000))
            await asyncio.sleep(wait_s / getattr(self.clock, "speed", 1.0))

    def _app(self) -> Any:
        from gateway.api.summary import channels_from_devices, energy_summary, flow_history, moduli_from_maps
        from gateway.api.summary_routes import add_summary_routes

        s = self.settings
        services = self.api_services()
        app = create_app(services)
        writer = self.writer
        assert writer is not None
        channels = channels_from_devices(s.devices, map_moduli=moduli_from_maps(s.devices, base_dir=self.base_dir))
        classes = {d: st.device_class for d, st in self.live.devices.items()}

        async def summary() -> dict[str, Any]:
            now = self.clock.now()
            return await writer.call(
                lambda led: energy_summary(
                    channels,
                    led,
                    site=s.site.id,
                    timezone=s.site.timezone,
                    now=now,
                    device_classes=classes,
                    site_name=s.site.name,
                )
            )

        async def history(start_ms: int, end_ms: int, step_s: int) -> dict[str, Any]:
            return await writer.call(
                lambda led: flow_history(channels, led, start_ms=start_ms, end_ms=end_ms, step_s=step_s)
            )

        add_summary_routes(app, auth=services.auth, summary=summary, history=history, now=self.clock.now)
        return app

    async def _serve_http(self) -> None:
        cfg = self.settings.http
        config = uvicorn.Config(
            self._app(),
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
            # Let uvicorn close its sockets and streams itself, within a bound.
            server.should_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 3.0)
            raise
        finally:
            self.http_server = None
        if not self._stopping:
            raise RuntimeError(f"HTTP server on {cfg.listen} stopped (is the port in use?)")

    async def _retention(self, writer: LedgerWriter) -> None:
        cfg = self.settings.ledger
        while True:
            now_ms = to_ms(self.clock.now())
            cursors = await writer.call(Ledger.cursors)
            names = [fw.name for fw in self.forwarders]
            forwarded = min((cursors.get(n, 0) for n in names), default=writer.head_seq)
            pruned = await writer.call(
                partial(
                    Ledger.prune,
                    instant_before_ms=now_ms - int(cfg.retention_days * DAY_MS),
                    counter_before_ms=now_ms - int(cfg.counter_retention_days * DAY_MS),
                    forwarded_seq=forwarded,
                )
            )
            if pruned:
                log.info("retention: pruned the payload of %d forwarded readings", pruned)
            await asyncio.sleep(3600)

    def _proxies(self, pool: Any) -> dict[str, Any]:
        """One Modbus proxy server per `proxy:` address; each unit id is routed to its device's bus."""
        from drivers.config import ModbusDeviceConfig, parse_connection
        from drivers.modbus.proxy import proxy_server

        routes: dict[str, dict[int, str]] = {}
        max_age: dict[str, float] = {}
        for d in self.settings.devices:
            if isinstance(d, ModbusDeviceConfig) and d.proxy:
                routes.setdefault(d.proxy, {})[d.unit_id] = parse_connection(d.connection).bus_key
                max_age[d.proxy] = max(max_age.get(d.proxy, 0.0), 3 * d.poll_interval_s)
        return {listen: proxy_server(listen, pool, r, max_age_s=max_age[listen]) for listen, r in routes.items()}

    def _device_hub(self) -> Any:
        """One MQTT subscription connection for all MQTT devices (the `mqtt:` section's broker)."""
        from drivers.config import MqttDeviceConfig
        from drivers.mqtt.driver import Broker, MqttHub

        m = self.settings.mqtt
        if m is None or not any(isinstance(d, MqttDeviceConfig) for d in self.settings.devices):
            return None
        client_id = f"{m.client_id or 'gia-' + self.settings.site.id}-devices"
        tls = m.tls
        return MqttHub(
            Broker(
                url=m.url,
                username=m.username,
                password=m.password_value(),
                client_id=client_id,
                timeout_s=m.timeout_s,
                tls=m.tls_enabled,
                ca_file=tls.ca_file if tls else None,
                cert_file=tls.cert_file if tls else None,
                key_file=tls.key_file if tls else None,
                insecure=tls.insecure if tls else False,
            )
        )

    def _discovery_devices(self) -> list[Any]:
        from drivers.config import ModbusDeviceConfig
        from drivers.maps import load_map
        from gateway.sinks.homeassistant import device_from_map

        return [
            device_from_map(d.id, load_map(d.map, base_dir=self.base_dir))
            for d in self.settings.devices
            if isinstance(d, ModbusDeviceConfig) and d.map is not None
        ]

    def _sinks(self, writer: LedgerWriter, device_classes: dict[str, str]) -> None:
        s = self.settings
        if s.influxdb is not None:
            from gateway.sinks.influx import InfluxSink

            influx_cfg = s.influxdb

            def influx_factory() -> Sink:
                return InfluxSink(influx_cfg, site=s.site.id, device_classes=device_classes)

            async def influx_extras(sink: Sink) -> None:
                assert isinstance(sink, InfluxSink)
                await sink.extras_publisher(self.influx_outbox)

            self.forwarders.append(
                Forwarder(
                    sink_factory=influx_factory,
                    name="influxdb",
                    writer=writer,
                    clock=self.clock,
                    side_tasks=[influx_extras],
                )
            )
        if s.mqtt is not None:
            mqtt_cfg = s.mqtt

            discovery = self._discovery_devices() if mqtt_cfg.homeassistant_discovery else []

            def mqtt_factory() -> Sink:
                return MqttSink(mqtt_cfg, site=s.site.id, live=self.live, outbox=self.outbox, discovery=discovery)

            async def live_side(sink: Sink) -> None:
                assert isinstance(sink, MqttSink)
                await sink.live_publisher(sink)

            self.forwarders.append(
                Forwarder(
                    sink_factory=mqtt_factory, name="mqtt", writer=writer, clock=self.clock, side_tasks=[live_side]
                )
            )

    async def run(self) -> None:
        """Run until cancelled; on cancellation every part stops and queued readings are committed."""
        from drivers.factory import create_driver, device_class_of
        from drivers.modbus.bus import BusPool

        s = self.settings
        self._stopping = False
        lock = acquire_agent_lock(s.ledger_path.parent)  # one agent per ledger; restore checks it too
        try:
            # A site that has started never gets a new signing key silently (`gia keys rotate --reason`).
            await asyncio.to_thread(self._ensure_site_key)
        except BaseException:
            lock.close()
            raise
        ledger = await asyncio.to_thread(Ledger, s.ledger_path, synchronous=s.ledger.synchronous)
        disk: DiskGuard | None = None

        async def on_disk_full() -> None:
            if disk is not None:
                await disk.relieve()

        writer = LedgerWriter(
            ledger,
            commit_interval_s=s.ledger.commit_interval_s,
            max_batch=s.ledger.max_batch,
            max_queue=s.ledger.max_queue,
            on_disk_full=on_disk_full,
        )
        self.writer = writer
        disk = self.disk_guard = DiskGuard(
            data_dir=s.ledger_path.parent,
            writer=writer,
            forwarded_seq=lambda: min((fw.health.cursor for fw in self.forwarders), default=writer.head_seq),
            clock=self.clock,
            min_free_bytes=int(s.ledger.min_free_mb * 1_048_576),
            reserve_bytes=int(s.ledger.reserve_mb * 1_048_576),
        )
        device_classes = {d.id: device_class_of(d, base_dir=self.base_dir) for d in s.devices}
        self.live = LiveState.for_devices(device_classes)
        newest_ms = await writer.call(Ledger.newest_ts_ms)

        async def record_event(kind: str, detail: str, ts_ms: int) -> None:
            await writer.call(partial(Ledger.record_event, kind=kind, detail=detail, ts_ms=ts_ms))

        guard = self.clock_guard = ClockGuard(
            forward=writer.submit,
            record_event=record_event,
            floor=max(RELEASE_FLOOR, from_ms(newest_ms)) if newest_ms is not None else RELEASE_FLOOR,
            require_ntp_sync=s.clock.require_ntp_sync,
            max_held=s.clock.max_held,
            wall=self.clock.now,
            # A simulated clock has no jumps to detect: measure it against itself.
            mono=time.monotonic if isinstance(self.clock, WallClock) else lambda: self.clock.now().timestamp(),
        )
        try:
            async with BusPool() as pool, contextlib.AsyncExitStack() as stack:
                for listen, proxy in self._proxies(pool).items():
                    await proxy.start()
                    stack.push_async_callback(proxy.stop)
                    log.info("Modbus proxy on %s serving unit(s) %s", listen, ", ".join(map(str, proxy.unit_ids)))
                device_hub = self._device_hub()
                hub = await stack.enter_async_context(device_hub) if device_hub is not None else None
                self.supervisor.add("ledger", writer.run)
                self.supervisor.add("clock", guard.run)
                self.supervisor.add("disk", disk.run)
                for dev in s.devices:
                    dev_cfg = dev

                    def factory(cfg: Any = dev_cfg) -> Any:
                        return create_driver(cfg, pool=pool, base_dir=self.base_dir, mqtt=hub)

                    poller = DevicePoller(
                        device_id=dev.id,
                        driver_factory=factory,
                        interval_s=dev.poll_interval_s,
                        timeout_s=getattr(dev, "timeout_s", dev.poll_interval_s),
                        clock=self.clock,
                        live=self.live,
                        on_samples=guard.submit,
                    )
                    self.supervisor.add(f"device:{dev.id}", poller.run)
                self._sinks(writer, device_classes)
                for fw in self.forwarders:
                    self.supervisor.add(f"sink:{fw.name}", fw.run)
                self.supervisor.add("retention", lambda: self._retention(writer))
                if s.forecasting.enabled or s.flexibility.enabled:
                    from gateway.api.summary import channels_from_devices, moduli_from_maps

                    channels = channels_from_devices(
                        s.devices, map_moduli=moduli_from_maps(s.devices, base_dir=self.base_dir)
                    )
                    self.runner = ForecastRunner(
                        settings=s,
                        clock=self.clock,
                        live=self.live,
                        channels=channels,
                        mqtt_outbox=self.outbox if s.mqtt is not None else None,
                        influx_outbox=self.influx_outbox if s.influxdb is not None else None,
                    )
                    self.supervisor.add("forecasting", self.runner.run)
                if s.mqtt is not None:
                    self.supervisor.add("reports", self._publish_reports)
                if s.http.enabled:
                    self.supervisor.add("http", self._serve_http)
                for name, part in self.extra_parts.items():
                    self.supervisor.add(name, part)
                self.supervisor.add("systemd-watchdog", lambda: systemd.watchdog(self._status_line))
                self.ready.set()
                systemd.notify("READY=1")
                log.info(
                    "agent for site %s running: %d devices, sinks: %s",
                    s.site.id,
                    len(s.devices),
                    ", ".join(fw.name for fw in self.forwarders) or "none",
                )
                try:
                    await self.supervisor.run()
                finally:
                    self._stopping = True
        finally:
            await asyncio.to_thread(writer.close)
            lock.close()

    def _status_line(self) -> str:
        h = self.health()
        online = sum(1 for st in h["devices"].values() if st == "online")
        return f"{h['status']}: {online}/{len(h['devices'])} devices online, ledger at {h['ledger']['head_seq']}"

    def request_http_stop(self) -> None:
        systemd.notify("STOPPING=1")
        self._stopping = True
        if self.http_server is not None:
            self.http_server.should_exit = True
