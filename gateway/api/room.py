"""The HTTP room (section `http`): the web page and the API, served by uvicorn inside the agent.

The app is built when the part starts, after every room has set what the API serves (`Providers`:
reports, forecasts, flexibility). The page's energy balance and flow history are the site's arithmetic
(`gateway.site.balance`) run on the ledger's reader threads, never on the writer's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import Any, Final, TypeVar, cast

from fastapi import FastAPI

from gateway.api.app import ApiServices, create_app
from gateway.api.auth import Authenticator, Principal, TokenEntry
from gateway.api.sessions import PageAuth, UserStore
from gateway.api.summary_routes import add_summary_routes
from gateway.rooms import Part, Room, Services
from gateway.runtime.http import HttpServer
from gateway.settings import HttpConfig, Settings
from gateway.site.balance import energy_summary, flow_history
from gateway.site.resolve import Site

T = TypeVar("T")

log = logging.getLogger(__name__)


def authenticator(cfg: HttpConfig, site: str | None = None) -> Authenticator:
    """The tokens of `cfg` (as digests); with `site`, principals scoped to other sites are refused."""
    tokens = [TokenEntry(t.value(), Principal(t.name, frozenset(t.roles), frozenset(t.sites))) for t in cfg.tokens]
    return Authenticator(
        tokens,
        anonymous_viewer_on_loopback=cfg.anonymous_viewer_on_loopback,
        trusted_proxies=cfg.trusted_proxies,
        site=site,
    )


def page_auth(settings: Settings) -> PageAuth:
    """Tokens (auth.py) plus the login page's users and sessions (sessions.py)."""
    return PageAuth(authenticator(settings.http, settings.site.id), users=UserStore(settings.data_dir / "users.json"))


def build_app(site: Site, services: Services) -> FastAPI:
    p = services.providers
    api = ApiServices(
        site=site.id,
        live=services.live,
        auth=page_auth(services.settings),
        health=services.report,
        reports=p.reports,
        forecast=p.forecast,
        flexibility=p.flexibility,
        stopping=lambda: services.stopping(),
        expensive_per_client=services.settings.http.expensive_per_client,
        report_builds=services.settings.http.report_builds,
        scratch_dir=services.settings.data_dir / "tmp",
    )
    app = create_app(api)
    channels, clock, reader = site.channels, services.clock, services.reader

    async def summary() -> dict[str, Any]:
        now = clock.now()
        return await reader.call(
            lambda led: energy_summary(
                channels,
                led,
                site=site.id,
                timezone=site.timezone,
                now=now,
                device_classes=site.device_classes,
                site_name=site.name,
            )
        )

    async def history(start_ms: int, end_ms: int, step_s: int) -> dict[str, Any]:
        return await reader.call(
            lambda led: flow_history(channels, led, start_ms=start_ms, end_ms=end_ms, step_s=step_s)
        )

    add_summary_routes(app, auth=api.auth, summary=summary, history=history, now=clock.now)
    for add_routes in p.routes:  # routes other rooms serve through the API (e.g. control)
        add_routes(app, api.auth)
    add_manager_day(app, site, services, auth=api.auth)
    return app


#: how long a history answer is reused (the page refreshes its views every minute or so)
VIEW_TTL_S: Final = 10.0


class ViewCache:
    """Answers of expensive viewer queries, reused for `ttl_s`; concurrent askers of one key share one
    computation. Bounded: the oldest entries go first."""

    def __init__(self, *, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, asyncio.Future[Any]]] = {}

    async def get(self, key: Hashable, compute: Callable[[], Coroutine[Any, Any, T]]) -> T:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl_s and not (hit[1].done() and hit[1].exception()):
            return cast(T, await asyncio.shield(hit[1]))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_task(compute())
        self._entries[key] = (now, fut)
        while len(self._entries) > self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        return cast(T, await asyncio.shield(fut))


def add_manager_day(app: FastAPI, site: Site, services: Services, *, auth: Any) -> None:
    """The pages (login, live, history, setup), history and setup APIs of issue 21, on the same app."""
    from datetime import date

    from gateway.api.history_routes import HistorySources, InfluxQuery, add_history_routes
    from gateway.api.pages import PageSite, add_pages
    from gateway.api.setup_routes import SetupContext, add_setup_routes
    from gateway.i18n import Catalogues
    from gateway.site.history import View, period_balances

    channels, clock, reader, settings = site.channels, services.clock, services.reader, services.settings
    sources = tuple(sorted({c.source or "other" for c in channels if c.role == "generation"}))
    page_site = PageSite(
        id=site.id,
        name=site.name,
        timezone=site.timezone,
        has_battery=any(c.role in ("storage_charge", "storage_discharge") for c in channels),
        sources=sources,
    )
    add_pages(app, auth=auth, catalogues=Catalogues(), site=page_site)

    # What viewers ask for is read on a pool of its own, one thread: however many viewers hammer the
    # history, at most one such query runs at a time, and the sinks' reads (the shared pool) never queue
    # behind them. Answers are kept for VIEW_TTL_S: the same view asked again (every open page polls it)
    # costs nothing. Measured in the attack soak (bench/soak.py --attack): four clients requesting history
    # as fast as answered stretched the commit delay's p99 to 5 s on a 2-core machine with 50 devices.
    from gateway.ledger.reader import LedgerReader

    view_reader = LedgerReader(reader.path, max_workers=1, name="ledger-view")
    services.stack.push_async_callback(asyncio.to_thread, view_reader.close)
    answers = ViewCache(ttl_s=VIEW_TTL_S, max_entries=64)

    async def energy(view: str, anchor: date) -> dict[str, Any]:
        v: View = "week" if view == "week" else "year" if view == "year" else "month"

        async def compute() -> dict[str, Any]:
            now = clock.now()
            return await view_reader.call(
                lambda led: period_balances(channels, led, view=v, anchor=anchor, timezone=site.timezone, now=now)
            )

        return await answers.get(("energy", v, anchor.isoformat()), compute)

    async def trend(device: str, quantity: str, start_ms: int, end_ms: int, points: int) -> dict[str, Any]:
        from gateway.api.history_routes import ledger_trend

        async def compute() -> dict[str, Any]:
            return await view_reader.call(lambda led: ledger_trend(led, device, quantity, start_ms, end_ms, points))

        # a trend ending now moves every request: its key is rounded to the cache's lifetime
        bucket = int(VIEW_TTL_S * 1000)
        return await answers.get(("trend", device, quantity, start_ms // bucket, end_ms // bucket, points), compute)

    async def first_counter_ms() -> int | None:
        return await view_reader.call(lambda led: led.first_counter_ms())

    influx = settings.influxdb
    add_history_routes(
        app,
        auth=auth,
        src=HistorySources(
            site=site.id,
            timezone=site.timezone,
            now=clock.now,
            energy=energy,
            trend=trend,
            first_counter_ms=first_counter_ms,
            device_classes={d: str(c) for d, c in site.device_classes.items()},
            instant_retention_days=settings.ledger.retention_days,
            influx=InfluxQuery(
                url=influx.url,
                database=influx.database or "",
                username=influx.username,
                password=influx.password_value(),
                site=site.id,
                timeout_s=influx.timeout_s,
            )
            if influx is not None and influx.api == "v1"
            else None,
            reuse=answers.get,
            reuse_ms=int(VIEW_TTL_S * 1000),
        ),
    )
    add_setup_routes(
        app,
        auth=auth,
        ctx=SetupContext(
            config_path=services.config_path, data_dir=settings.data_dir, pool=services.drivers.pool, now=clock.now
        ),
    )


def http_connection_limit(site: Site, settings: Settings) -> int:
    """`http.max_connections`, lowered (with a warning naming the fields) if the descriptors cannot hold it."""
    from drivers.config import ModbusDeviceConfig
    from gateway.runtime.fdbudget import listener_budget, nofile_limits

    proxies = {
        d.config.proxy: d.config.proxy_max_clients
        for d in site.devices
        if isinstance(d.config, ModbusDeviceConfig) and d.config.proxy
    }
    soft = nofile_limits()[0]
    budget = listener_budget(
        soft_limit=soft,
        devices=len(site.devices),
        http_wanted=settings.http.max_connections,
        proxies=len(proxies),
        proxy_wanted=max(proxies.values(), default=0),
    )
    if budget.lowered:
        log.warning(
            "the descriptor limit (%d) cannot hold the configured connection limits: %s; raise LimitNOFILE= "
            "in the unit or lower these fields",
            soft,
            ", ".join(budget.lowered),
        )
    return budget.http


async def _serve(site: Site, services: Services) -> None:
    server = HttpServer(
        build_app(site, services),
        services.settings.http,
        max_connections=http_connection_limit(site, services.settings),
    )
    services.on_stop.append(server.stop)
    try:
        await server.serve(stopping=services.stopping)
    finally:
        services.on_stop.remove(server.stop)


async def parts(site: Site, services: Services) -> Sequence[Part]:
    if not services.settings.http.enabled:
        return []
    return [Part("http", lambda: _serve(site, services))]


ROOM = Room("http", parts, section="http", config=HttpConfig)
