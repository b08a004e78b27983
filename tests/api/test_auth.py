"""HTTP API auth and errors: 401 / 403 / 400 / 429 as JSON, through the real ASGI app."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from fastapi import Request

from drivers.model import Sample
from gateway.api.app import ApiServices, create_app
from gateway.api.auth import Authenticator, Principal, TokenEntry
from gateway.runtime.live import LiveState

VIEWER = "v" * 40
CERT = "c" * 40
CERT_OTHER = "o" * 40


def app(*, anonymous: bool = False) -> httpx.AsyncClient:
    live = LiveState.for_devices({"grid": "meter"})
    live.update("grid", [Sample("grid", "power_w", 1500.0, "W", datetime(2026, 1, 1, tzinfo=UTC))])
    live.set_online("grid", True)
    tokens = [
        TokenEntry(VIEWER.encode(), Principal("ops", frozenset({"viewer"}), frozenset({"*"}))),
        TokenEntry(CERT.encode(), Principal("lv-cert", frozenset({"certifier"}), frozenset({"site-a"}))),
        TokenEntry(CERT_OTHER.encode(), Principal("other", frozenset({"certifier"}), frozenset({"site-b"}))),
    ]
    services = ApiServices(
        site="site-a",
        live=live,
        auth=Authenticator(tokens, anonymous_viewer_on_loopback=anonymous),
        health=lambda: {"status": "ok", "reasons": []},
    )
    api = create_app(services)
    # the pages (/, /login, ...) are added beside the API (gateway/api/pages.py, issue 21)
    from gateway.api.pages import PageSite, add_pages
    from gateway.api.sessions import PageAuth
    from gateway.i18n import Catalogues

    assert isinstance(services.auth, Authenticator)
    add_pages(api, auth=PageAuth(services.auth), catalogues=Catalogues(), site=PageSite("site-a", "", "UTC", False, ()))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://gw")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_live_needs_a_viewer_token() -> None:
    async with app() as c:
        r = await c.get("/api/v1/live")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert (await c.get("/api/v1/live", headers=bearer("x" * 40))).status_code == 401
        r = await c.get("/api/v1/live", headers=bearer(VIEWER))
        assert r.status_code == 200
        assert r.json()["devices"]["grid"]["values"]["power_w"] == {
            "value": 1500.0,
            "unit": "W",
            "quality": "good",
            "ts": "2026-01-01T00:00:00Z",
        }


async def test_certifier_paths_roles_and_sites() -> None:
    async with app() as c:
        url = "/api/v1/sites/site-a/reports/2026-01"
        assert (await c.get(url)).status_code == 401
        r = await c.get(url, headers=bearer(VIEWER))
        assert r.status_code == 403 and "lacks the role 'certifier'" in r.json()["detail"]
        r = await c.get(url, headers=bearer(CERT_OTHER))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = await c.get("/api/v1/sites/site-a/reports/2026-13", headers=bearer(CERT))
        assert r.status_code == 400 and r.json()["error"] == "bad_month"
        r = await c.get(url + "?format=xml", headers=bearer(CERT))
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = await c.get("/api/v1/sites/site-b/reports/2026-01", headers=bearer(CERT_OTHER))
        assert r.status_code == 404 and r.json()["error"] == "unknown_site"


async def test_anonymous_viewer_only_when_enabled_and_only_viewer() -> None:
    async with app(anonymous=True) as c:  # the ASGI test client connects from 127.0.0.1
        assert (await c.get("/api/v1/devices")).status_code == 200
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/api/v1/sites/site-a/reports/2026-01")).status_code == 401


async def test_token_in_url_becomes_a_cookie() -> None:
    async with app() as c:
        r = await c.get(f"/?token={VIEWER}")
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert "httponly" in r.headers["set-cookie"].lower()
        assert (await c.get("/")).status_code == 200  # the cookie now authenticates


async def test_repeated_failures_are_rate_limited() -> None:
    async with app() as c:
        codes = [(await c.get("/api/v1/live", headers=bearer(f"{i:040d}"))).status_code for i in range(25)]
        assert codes[:20] == [401] * 20 and codes[-1] == 429
        # the failures lock out wrong tokens only: a valid token from the same address (a proxy's, say,
        # which every visitor shares) still gets in (issue 15)
        assert (await c.get("/api/v1/live", headers=bearer(VIEWER))).status_code == 200
        assert (await c.get("/api/v1/live", headers=bearer("9" * 40))).status_code == 429


async def test_unknown_path_and_openapi() -> None:
    async with app() as c:
        r = await c.get("/nope")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        spec = (await c.get("/openapi.json")).json()
        assert "/api/v1/sites/{site}/reports/{month}" in spec["paths"]
        assert (await c.get("/api/v1/keys")).json() == {"keys": []}
        r = await c.get("/static/..%2f..%2fsettings.py")
        assert r.status_code == 404


@pytest.mark.parametrize("target", ["load", "wind", "pv"])
async def test_forecast_without_forecasting_is_a_clear_404(target: str) -> None:
    async with app() as c:
        r = await c.get(f"/api/v1/forecasts/{target}", headers=bearer(VIEWER))
        assert r.status_code == 404 and r.json()["error"] == "no_forecast"


def test_failure_records_are_forgotten_after_the_window() -> None:
    """One entry per client with recent failures, not per client ever seen (memory stays bounded)."""
    import gateway.api.auth as auth_mod

    now = [1000.0]
    auth = Authenticator([], anonymous_viewer_on_loopback=False, clock=lambda: now[0])
    probe = Request({"type": "http", "method": "GET", "path": "/api/v1/live", "headers": []})
    for i in range(50):
        auth._record_failure(f"10.0.0.{i}", "unknown token", probe)
    assert len(auth._failures) == 50
    now[0] += auth_mod.AUTH_FAILURE_WINDOW_S + 1
    for i in range(50):
        assert not auth._rate_limited(f"10.0.0.{i}")
    assert auth._failures == {}


def test_tokens_are_kept_as_digests_and_url_credentials_are_redacted_in_logs() -> None:
    """The authenticator keeps no replayable token (issue 15), and a URL with userinfo that reaches a
    log message by any way is printed without it (gateway/runtime/logs.py's filter)."""
    import logging

    from gateway.credentials import redact_url, token_digest
    from gateway.runtime.logs import RedactUrls

    entry = TokenEntry(VIEWER, Principal("ops", frozenset({"viewer"}), frozenset({"*"})))
    assert entry.digest == token_digest(VIEWER) and VIEWER.encode() not in entry.digest
    assert not any(VIEWER in repr(getattr(entry, slot)) for slot in TokenEntry.__slots__)
    with pytest.raises(ValueError, match="empty"):
        TokenEntry("", Principal("empty", frozenset({"viewer"}), frozenset({"*"})))
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "broker %s: %s", ("mqtt://u:pw@h:1883", "x"), None)
    RedactUrls().filter(record)
    assert record.getMessage() == "broker mqtt://***@h:1883: x"
    assert redact_url("http://admin:pw@influx:8086/db") == "http://***@influx:8086/db"
