"""The per-client limit on expensive endpoints (`http.expensive_per_client`) counts the client a trusted
proxy forwards, not the proxy: behind nginx on the Pi, one viewer's open history requests must not make
every other viewer's answer 429 — and an untrusted peer cannot pick its own key with `X-Forwarded-For`."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.api.auth import Authenticator
from gateway.api.limits import ExpensiveRequestLimit


def _app(trusted: list[str], release: asyncio.Event) -> Starlette:
    async def history(request: Request) -> PlainTextResponse:
        await release.wait()
        return PlainTextResponse("ok")

    auth = Authenticator(tokens=[], anonymous_viewer_on_loopback=False, trusted_proxies=trusted)
    app = Starlette(routes=[Route("/api/v1/history", history)])
    app.add_middleware(
        ExpensiveRequestLimit, per_client=1, client_key=lambda scope: auth.client_address(Request(scope))
    )
    return app


async def _second_client_status(trusted: list[str]) -> int:
    release = asyncio.Event()
    transport = httpx.ASGITransport(app=_app(trusted, release), client=("10.0.0.1", 40000))  # the proxy
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
        first = asyncio.create_task(c.get("/api/v1/history", headers={"X-Forwarded-For": "192.168.1.20"}))
        await asyncio.sleep(0.05)  # the first viewer's request is in flight
        second = asyncio.create_task(c.get("/api/v1/history", headers={"X-Forwarded-For": "192.168.1.21"}))
        await asyncio.sleep(0.05)  # a refused second request has its answer by now; an admitted one waits
        refused_at_once = second.done()
        release.set()
        assert (await first).status_code == 200
        status = (await second).status_code
        assert refused_at_once == (status == 429), (refused_at_once, status)
        return status


async def test_viewers_behind_a_trusted_proxy_each_have_their_own_limit() -> None:
    assert await _second_client_status(["10.0.0.1"]) == 200


async def test_an_untrusted_peer_cannot_choose_its_key_with_forwarded_for() -> None:
    assert await _second_client_status([]) == 429
