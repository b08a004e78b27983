"""`GET /api/v1/summary` and `GET /api/v1/history`: the page's energy balance and past flows.

Kept out of app.py so the web page can evolve without touching the API core: `add_summary_routes`
adds the two routes to an app built by `create_app`, with the same viewer authentication and JSON
errors. The callables it receives do the ledger work on the ledger's thread (see
`gateway.api.summary`); the routes only validate parameters and return JSON.

Wiring (in the composition root, where the ledger writer, the clock and the settings are at hand):

    from gateway.api.summary import channels_from_devices, energy_summary, flow_history
    from gateway.api.summary_routes import add_summary_routes

    channels = channels_from_devices(settings.devices)
    add_summary_routes(
        app,
        auth=services.auth,
        summary=lambda: writer.call(lambda led: energy_summary(
            channels, led, site=settings.site.id, timezone=settings.site.timezone,
            now=clock.now(), device_classes=device_classes)),
        history=lambda start_ms, end_ms, step_s: writer.call(lambda led: flow_history(
            channels, led, start_ms=start_ms, end_ms=end_ms, step_s=step_s)),
        now=clock.now,
    )
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request

from drivers.model import to_ms
from gateway.api.auth import ApiError
from gateway.api.history_routes import Authenticates

MAX_HISTORY_H = 72
MIN_STEP_S = 60


def add_summary_routes(
    app: FastAPI,
    *,
    auth: Authenticates,
    summary: Callable[[], Awaitable[dict[str, Any]]],
    history: Callable[[int, int, int], Awaitable[dict[str, Any]]],
    now: Callable[[], datetime],
) -> None:
    """Add `/api/v1/summary` and `/api/v1/history` (viewer role) to `app`."""

    @app.get("/api/v1/summary", tags=["live"], summary="Today's and this month's energy balance (provisional)")
    async def get_summary(request: Request) -> dict[str, Any]:
        auth.authenticate(request, "viewer")
        return await summary()

    @app.get("/api/v1/history", tags=["live"], summary="Mean power of the site's flows from the energy registers")
    async def get_history(request: Request, hours: float = 24.0, step_s: int = 900) -> dict[str, Any]:
        auth.authenticate(request, "viewer")
        if not 0 < hours <= MAX_HISTORY_H:
            raise ApiError(400, "bad_request", f"hours must be in (0, {MAX_HISTORY_H}]")
        if step_s < MIN_STEP_S or step_s > 86400:
            raise ApiError(400, "bad_request", f"step_s must be between {MIN_STEP_S} and 86400")
        end_ms = to_ms(now())
        return await history(end_ms - int(hours * 3_600_000), end_ms, step_s)
