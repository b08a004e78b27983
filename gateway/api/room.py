"""The HTTP room (section `http`): the web page and the API, served by uvicorn inside the agent.

The app is built when the part starts, after every room has set what the API serves (`Providers`:
reports, forecasts, flexibility). The page's energy balance and flow history are the site's arithmetic
(`gateway.site.balance`) run on the ledger's reader threads, never on the writer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from gateway.api.app import ApiServices, create_app
from gateway.api.auth import Authenticator, Principal, TokenEntry
from gateway.api.summary_routes import add_summary_routes
from gateway.rooms import Part, Room, Services
from gateway.runtime.http import HttpServer
from gateway.settings import HttpConfig
from gateway.site.balance import energy_summary, flow_history
from gateway.site.resolve import Site


def authenticator(cfg: HttpConfig) -> Authenticator:
    tokens = [
        TokenEntry(t.value().encode(), Principal(t.name, frozenset(t.roles), frozenset(t.sites))) for t in cfg.tokens
    ]
    return Authenticator(tokens, anonymous_viewer_on_loopback=cfg.anonymous_viewer_on_loopback)


def build_app(site: Site, services: Services) -> FastAPI:
    p = services.providers
    api = ApiServices(
        site=site.id,
        live=services.live,
        auth=authenticator(services.settings.http),
        health=services.report,
        reports=p.reports,
        forecast=p.forecast,
        flexibility=p.flexibility,
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
    return app


async def _serve(site: Site, services: Services) -> None:
    server = HttpServer(build_app(site, services), services.settings.http)
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
