"""The web pages: login, live, history and device setup, in the visitor's language.

Pages are HTML files in `static/` with `{{ English text }}` placeholders, filled from the one message
catalogue (gateway/i18n) for the negotiated language: the `gia_lang` cookie (the switch on every page),
else `Accept-Language`. Each page carries a small JSON boot block — language, the catalogue's
translations for the script, who is signed in with which roles, the site's time zone — so the script
shows times in one convention (the site's zone, named once) and only the links the visitor can use.

A browser that is not signed in is sent to `/login` (API clients keep their JSON 401). The login takes
a token (the installer's viewer/certifier tokens) or a user name and password (`gia user add`), see
gateway/api/sessions.py.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from gateway.api.auth import ApiError, Principal
from gateway.api.sessions import SESSION_COOKIE, TOKEN_COOKIE, PageAuth, has_role
from gateway.i18n import LANGUAGES, NATIVE_NAMES, Catalogues, Translator, negotiate

LANG_COOKIE: Final = "gia_lang"
_PLACEHOLDER: Final = re.compile(r"\{\{\s*(.+?)\s*\}\}")


@dataclass(frozen=True)
class PageSite:
    id: str
    name: str
    timezone: str
    has_battery: bool
    sources: tuple[str, ...]  # generation sources present: "pv", "wind", ...


def _safe_next(target: str | None) -> str:
    """Only same-site paths: a login link must not bounce the visitor to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def add_pages(app: FastAPI, *, auth: PageAuth, catalogues: Catalogues, site: PageSite) -> None:
    def lang_of(request: Request) -> Translator:
        return catalogues.get(negotiate(request.headers.get("accept-language"), request.cookies.get(LANG_COOKIE)))

    def render(name: str, request: Request, principal: Principal | None, **extra: Any) -> HTMLResponse:
        t = lang_of(request)
        page = resources.files("gateway.api").joinpath(f"static/{name}").read_text()
        page = _PLACEHOLDER.sub(lambda m: html.escape(t.gettext(m.group(1)), quote=False), page)
        boot = {
            "lang": t.lang,
            "languages": {code: NATIVE_NAMES[code] for code in LANGUAGES},
            "messages": dict(t.messages),
            "site": {
                "id": site.id,
                "name": site.name,
                "timezone": site.timezone,
                "has_battery": site.has_battery,
                "sources": list(site.sources),
            },
            "user": None
            if principal is None
            else {
                "name": principal.name,
                "roles": sorted(principal.roles),
                "certifier": has_role(principal, "certifier") and principal.may_read_site(site.id),
                "admin": has_role(principal, "admin"),
            },
            **extra,
        }
        # "</" would end the script element early: JSON allows "<\/"
        data = json.dumps(boot, ensure_ascii=False).replace("</", "<\\/")
        page = page.replace('<html lang="en">', f'<html lang="{t.lang}">', 1)
        page = page.replace("<!--BOOT-->", f'<script id="gia-boot" type="application/json">{data}</script>', 1)
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "Content-Language": t.lang})

    def to_login(request: Request) -> RedirectResponse:
        nxt = urllib.parse.quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return RedirectResponse(f"/login?next={nxt}", status_code=303)

    def page(name: str, role: str = "viewer") -> Any:
        async def handler(request: Request) -> Response:
            try:
                principal = auth.authenticate(request, "viewer")
            except ApiError as exc:
                if exc.status_code == 401 and _wants_html(request):
                    return to_login(request)
                raise
            if role == "admin" and not has_role(principal, "admin"):
                raise ApiError(403, "forbidden", f"'{principal.name}' lacks the role 'admin'")
            return render(name, request, principal)

        return handler

    @app.get("/", include_in_schema=False)
    async def index(request: Request, token: str | None = None) -> Response:
        if token is not None:
            # Exchange a token in the URL (bookmarkable for a wall screen) for a cookie, then drop it
            # from the address bar so it does not linger in history. Only a token that authenticates
            # becomes a cookie (issue 15: any string, even an empty one, was set before).
            try:
                auth.tokens.verify(request, token)
            except ApiError as exc:
                t = lang_of(request)
                message = {
                    401: t("Unknown token, or wrong user name or password."),
                    403: t("This token may not open this page."),
                    429: t("Too many failed attempts: wait a minute and try again."),
                }.get(exc.status_code, exc.detail)
                failed = render("login.html", request, None, next="/", error=message)
                failed.status_code = exc.status_code
                return failed
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(
                TOKEN_COOKIE, token.strip(), httponly=True, samesite="strict", secure=auth.tokens.is_https(request)
            )
            return resp
        handler: Response = await page("index.html")(request)
        return handler

    app.add_api_route("/history", page("history.html"), methods=["GET"], include_in_schema=False)
    app.add_api_route("/setup", page("setup.html", role="admin"), methods=["GET"], include_in_schema=False)

    @app.get("/login", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        return render("login.html", request, auth.optional(request), next=_safe_next(request.query_params.get("next")))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        import asyncio

        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))

        def field(key: str) -> str:
            return (form.get(key) or [""])[0]

        nxt = _safe_next(field("next"))
        t = lang_of(request)
        secure = request.url.scheme == "https"
        try:
            if field("token"):
                principal = auth.login_token(request, field("token"))
                resp = RedirectResponse(nxt, status_code=303)
                resp.set_cookie(TOKEN_COOKIE, field("token").strip(), httponly=True, samesite="strict", secure=secure)
                resp.delete_cookie(SESSION_COOKIE)
                return resp
            principal = await asyncio.to_thread(auth.login_password, request, field("user"), field("password"))
        except ApiError as exc:
            message = {
                401: t("Unknown token, or wrong user name or password."),
                403: t("This token may not open this page."),
                429: t("Too many failed attempts: wait a minute and try again."),
            }.get(exc.status_code, exc.detail)
            page = render("login.html", request, None, next=nxt, error=message)
            page.status_code = exc.status_code
            return page
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(SESSION_COOKIE, auth.start_session(principal), httponly=True, samesite="strict", secure=secure)
        resp.delete_cookie(TOKEN_COOKIE)
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        auth.end_session(request.cookies.get(SESSION_COOKIE))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        resp.delete_cookie(TOKEN_COOKIE)
        return resp

    @app.get("/lang/{code}", include_in_schema=False)
    async def choose_language(request: Request, code: str) -> Response:
        if code not in LANGUAGES:
            raise ApiError(404, "not_found", f"no language {code!r}; choose one of {', '.join(LANGUAGES)}")
        resp = RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
        resp.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="lax")
        return resp

    @app.get("/api/v1/me", tags=["live"], summary="Who is signed in, with which roles and language")
    async def me(request: Request) -> JSONResponse:
        principal = auth.authenticate(request, "viewer")
        return JSONResponse(
            {
                "name": principal.name,
                "roles": sorted(principal.roles),
                "certifier": has_role(principal, "certifier") and principal.may_read_site(site.id),
                "admin": has_role(principal, "admin"),
                "lang": lang_of(request).lang,
            }
        )
