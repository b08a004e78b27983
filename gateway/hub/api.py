"""The hub's HTTP API and certifier portal (FastAPI, as the gateway's: JSON errors `{"error", "detail"}`,
401 without or with a bad token, 403 with a token lacking the role or the area, `/openapi.json`).

Sites (per-site push tokens, `gia hub enroll`):

* `POST /api/v1/hub/sites/{site}/reports` — a signed report (or the key-transition announcement
  `{site, transitions}`). 200 with the signed receipt once decided and stored (accepted, or rejected
  with reasons: either way the site stops retrying); 422 when quarantined or malformed; 413 past the
  body limit (read in chunks, so a 10 MB body never sits in memory whole); 503 while the database is
  unavailable (retry).
* `POST /api/v1/hub/sites/{site}/evidence/{month}` — the evidence bundle (zip) of a report the hub holds;
  recomputed on arrival; 200 with the result.

Certifiers and area staff (tokens with roles `viewer`, `certifier`, `admin`, scoped to areas):

* `GET /` — the portal (a login form without a token; `/?token=...` or the form sets an HttpOnly cookie);
* `GET /api/v1/areas`, `.../{area}/sites`, `.../{area}/matrix`, `.../{area}/refusals`,
  `.../{area}/sites/{site}/months/{month}` (viewer): the area x month matrix, sites, refusals, drill-down;
* `GET /api/v1/areas/{area}/reports/{period}`, `.../{area}/sites/{site}/reports/{month}`,
  `.../{area}/sites/{site}/evidence/{month}`, `.../{area}/keys` (certifier): signed area reports, site
  reports as received, evidence, the pinned keys (`gia verify --trusted-keys` reads that JSON);
* `GET /live` — the area live page; `GET /api/v1/hub/areas/{area}/live` (viewer): every site's flows and
  status now and the area's provisional balance today and this month; `.../live/stream`: the same as
  server-sent events; `GET /api/v1/hub/metrics` (viewer): this replica's live ingestion (rate, latency,
  queue depth, shed, lag per site);
* public: `GET /api/v1/hub/key` (the hub's public key), `GET /api/v1/log/head`,
  `GET /api/v1/log/proof?site=&month=` (or `?area=&period=`), `GET /api/v1/log/consistency?first=&second=`,
  `GET /healthz`.
"""

# No `from __future__ import annotations`: FastAPI resolves the annotations at runtime.

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from functools import partial
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.api.app import add_security_headers, health_for
from gateway.api.auth import ApiError, Authenticator, Principal, Role, TokenEntry
from gateway.hub.areas import AreaReports
from gateway.hub.config import HubHttpConfig
from gateway.hub.ingest import Ingestor
from gateway.hub.live import LiveView
from gateway.hub.store import HubError, HubStore
from gateway.hub.views import Views

MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
PERIOD_RE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2]))?$")
SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _error(status: int, error: str, detail: Any = "") -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body of {declared} bytes > limit {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"body > limit {limit} bytes")
    return bytes(body)


def _is_transient(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


#: A certifier sees what a viewer sees (the portal's page and matrix) and downloads; an admin everything.
IMPLIED: dict[str, frozenset[str]] = {"certifier": frozenset({"viewer"}), "admin": frozenset({"viewer", "certifier"})}


def hub_authenticator(cfg: HubHttpConfig) -> Authenticator:
    """The gateway's authenticator with the hub's tokens; a principal's scope holds area ids."""
    tokens = [
        TokenEntry(
            t.value(),
            Principal(
                t.name, frozenset(t.roles).union(*(IMPLIED.get(r, frozenset()) for r in t.roles)), frozenset(t.areas)
            ),
        )
        for t in cfg.tokens
    ]
    return Authenticator(
        tokens, anonymous_viewer_on_loopback=cfg.anonymous_viewer_on_loopback, trusted_proxies=cfg.trusted_proxies
    )


def create_hub_app(
    store: HubStore,
    ingestor: Ingestor,
    *,
    health: Callable[[], dict[str, Any]],
    max_body_bytes: int,
    on_receipt: Callable[[], None] = lambda: None,
    auth: Authenticator | None = None,
    areas: AreaReports | None = None,
    max_evidence_bytes: int = 64 * 1024 * 1024,
    live: LiveView | None = None,
    live_metrics: Callable[[], dict[str, Any]] | None = None,
    stream_s: float = 2.0,
    stopping: Callable[[], bool] = lambda: False,
) -> FastAPI:
    app = FastAPI(
        title="GIA area hub",
        version=__version__,
        description="Enrolled sites push signed monthly reports; certifiers read the area's verified figures,"
        " signed area reports and the transparency log's heads and proofs.",
        docs_url=None,
        redoc_url=None,
    )
    add_security_headers(app)
    auth = auth or Authenticator([], anonymous_viewer_on_loopback=False)
    areas = areas or AreaReports(store)
    views = Views(store.engine)

    def need(role: Role) -> Callable[[Request], Principal]:
        def dependency(request: Request) -> Principal:
            return auth.authenticate(request, role)

        return dependency

    Viewer = Annotated[Principal, Depends(need("viewer"))]
    Certifier = Annotated[Principal, Depends(need("certifier"))]

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        resp = _error(exc.status_code, exc.error, exc.detail)
        if exc.status_code == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(
            exc.status_code, {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error"), exc.detail
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        return _error(400, "bad_request", detail)

    async def _db(fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except HubError as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        except Exception as exc:
            if _is_transient(exc):
                raise ApiError(503, "database_unavailable", "the hub's database is unavailable; retry") from None
            raise

    async def _area(principal: Principal, area: str) -> None:
        if not SITE_RE.fullmatch(area):
            raise ApiError(400, "bad_request", "an area id is lowercase letters, digits, '-' and '_'")
        if not principal.may_read_site(area):  # the principal's scope holds area ids
            raise ApiError(403, "forbidden", f"token '{principal.name}' may not read area {area!r}")
        known = await _db(lambda: [a["id"] for a in store.areas()])
        if area not in known:
            raise ApiError(404, "unknown_area", f"no area {area!r} at this hub")

    async def _site_of_area(principal: Principal, area: str, site: str, month: str | None = None) -> None:
        await _area(principal, area)
        if not SITE_RE.fullmatch(site):
            raise ApiError(400, "bad_request", "a site id is lowercase letters, digits, '-' and '_'")
        if month is not None and not MONTH_RE.fullmatch(month):
            raise ApiError(400, "bad_month", f"{month[:20]!r}: write the month as YYYY-MM")
        if await _db(lambda: views.site_area(site)) != area:
            raise ApiError(404, "unknown_site", f"site {site!r} is not enrolled in area {area!r}")

    # -- health, page ---------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"], summary="200 when healthy, 503 with reasons otherwise")
    async def healthz(request: Request) -> JSONResponse:
        report = health_for(request, auth, health())
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    def _page(name: str) -> str:
        return resources.files("gateway.hub").joinpath(f"static/{name}").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request, token: str | None = None) -> Response:
        if token is not None:
            # A token in the URL (a bookmark) becomes a cookie once checked; the address bar forgets it.
            try:
                auth.verify(request, token)
            except ApiError as exc:
                return HTMLResponse(_page("login.html"), status_code=exc.status_code)
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie("gia_token", token, httponly=True, samesite="strict", secure=auth.is_https(request))
            return resp
        try:
            auth.authenticate(request, "viewer")
        except ApiError as exc:
            if exc.status_code in (401, 403):
                return HTMLResponse(_page("login.html"), status_code=exc.status_code)
            raise
        return HTMLResponse(_page("portal.html"))

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_page() -> Response:
        return HTMLResponse(_page("login.html"))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = (await _read_limited(request, 4096)).decode(errors="replace")
        token = (parse_qs(body).get("token") or [""])[-1].strip()
        try:
            auth.verify(request, token)  # only a token that authenticates becomes a cookie
        except ApiError as exc:
            return HTMLResponse(_page("login.html"), status_code=exc.status_code)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie("gia_token", token, httponly=True, samesite="strict", secure=auth.is_https(request))
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie("gia_token")
        return resp

    @app.get("/live", response_class=HTMLResponse, include_in_schema=False)
    async def live_page(request: Request) -> Response:
        try:
            auth.authenticate(request, "viewer")
        except ApiError as exc:
            if exc.status_code in (401, 403):
                return HTMLResponse(_page("login.html"), status_code=exc.status_code)
            raise
        return HTMLResponse(_page("live.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if not re.fullmatch(r"(portal|live)\.(js|css)", name) or name == "live.css":
            raise ApiError(404, "not_found", name)
        media = {"js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[1]]
        return Response(_page(name), media_type=media, headers={"Cache-Control": "max-age=300"})

    # -- sites push -----------------------------------------------------------------------------------
    async def _site_token(request: Request, site: str) -> None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <site token>'")
        owner = await _db(lambda: store.site_for_token(header[7:].strip()))
        if owner is None:
            raise ApiError(401, "unauthorized", "unknown token")
        if owner != site:
            raise ApiError(403, "forbidden", f"this token pushes for site {owner!r}, not {site[:63]!r}")

    @app.post(
        "/api/v1/hub/sites/{site}/reports",
        tags=["ingest"],
        summary="Push a signed monthly report (or key-transition announcement); answers the receipt",
    )
    async def push(site: str, request: Request) -> JSONResponse:
        await _site_token(request, site)
        try:
            data = await _read_limited(request, max_body_bytes)
        except ApiError as exc:
            if exc.status_code == 413:
                size = request.headers.get("content-length", "?")
                await _db(lambda: ingestor.note_too_large(site, int(size) if size.isdigit() else -1, via="http"))
            raise
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            doc = None
        # the site's key-transition announcement ({site, transitions}, as on gia/{site}/keys/transition)
        if isinstance(doc, dict) and "transitions" in doc and "schema" not in doc:
            outcome = await _db(lambda: ingestor.submit_key_transition(site, data, via="http"))
        else:
            outcome = await _db(lambda: ingestor.submit_report(site, data, via="http"))
        if outcome.status == "refused":
            raise ApiError(413, "too_large", "; ".join(outcome.reasons))
        if outcome.status == "quarantined":
            return _error(422, "quarantined", outcome.reasons)
        if not outcome.replay:
            on_receipt()
        return JSONResponse(outcome.as_json(), status_code=200)

    @app.post("/api/v1/hub/sites/{site}/evidence/{month}", tags=["ingest"], summary="Push a report's evidence (zip)")
    async def push_evidence(site: str, month: str, request: Request) -> JSONResponse:
        await _site_token(request, site)
        if not MONTH_RE.fullmatch(month):
            raise ApiError(400, "bad_month", f"{month[:20]!r}: write the month as YYYY-MM")
        data = await _read_limited(request, max_evidence_bytes)
        outcome = await _db(lambda: ingestor.submit_evidence(site, month, data, max_unpacked=8 * max_evidence_bytes))
        if outcome.status == "refused":
            return _error(422, "evidence_refused", outcome.reasons)
        verified = outcome.status == "accepted"
        return JSONResponse(
            {
                "site": site,
                "month": month,
                "report_sha256": outcome.sha256,
                "verified": verified,
                "reasons": outcome.reasons,
            }
        )

    # -- the portal's API -----------------------------------------------------------------------------
    @app.get("/api/v1/me", tags=["portal"], summary="Who the token is: roles and areas")
    async def me(principal: Viewer) -> dict[str, Any]:
        return {"name": principal.name, "roles": sorted(principal.roles), "areas": sorted(principal.sites)}

    @app.get("/api/v1/areas", tags=["portal"], summary="The areas this token may read")
    async def list_areas(principal: Viewer) -> dict[str, Any]:
        found = await _db(store.areas)
        return {
            "areas": [
                {"id": a["id"], "name": a["name"], "policy": a["policy"], "definition": a["definition"]}
                for a in found
                if principal.may_read_site(a["id"])
            ]
        }

    @app.get("/api/v1/areas/{area}/sites", tags=["portal"], summary="Sites: pinned keys, last report, status")
    async def area_sites(area: str, principal: Viewer) -> dict[str, Any]:
        await _area(principal, area)
        return {"area": area, "sites": await _db(lambda: views.sites(area))}

    @app.get("/api/v1/areas/{area}/matrix", tags=["portal"], summary="Months x sites: decisions, grades, criteria")
    async def matrix(area: str, principal: Viewer) -> dict[str, Any]:
        await _area(principal, area)
        out: dict[str, Any] = await _db(lambda: views.matrix(area))
        for m in out["months"][:3]:  # the recent months without an area report: who is awaited, until when
            if m["area_report"] is None:
                month = str(m["month"])
                m["status"] = await _db(partial(areas.status, area, month))
        return out

    @app.get("/api/v1/areas/{area}/refusals", tags=["portal"], summary="Quarantined, conflicting, rejected, counted")
    async def refusals(area: str, principal: Viewer) -> dict[str, Any]:
        await _area(principal, area)
        return {"area": area, **await _db(lambda: views.refusals(area))}

    @app.get(
        "/api/v1/areas/{area}/sites/{site}/months/{month}", tags=["portal"], summary="A site-month's reports, decided"
    )
    async def site_month(area: str, site: str, month: str, principal: Viewer) -> dict[str, Any]:
        await _site_of_area(principal, area, site, month)
        return dict(await _db(lambda: views.site_month(site, month)))

    @app.get("/api/v1/areas/{area}/reports/{period}", tags=["certification"], summary="The signed area report")
    async def area_report(
        area: str, period: str, principal: Certifier, version: Annotated[int | None, Query(ge=1)] = None
    ) -> Response:
        await _area(principal, area)
        if not PERIOD_RE.fullmatch(period):
            raise ApiError(400, "bad_month", "the period is YYYY-MM (a month) or YYYY (the yearly roll-up)")
        if version is None:
            found = await _db(lambda: areas.latest(area, period))
            data = found.data if found is not None else None
        else:
            rows = await _db(lambda: areas.versions(area, period))
            sha = next((r["sha256"] for r in rows if r["version"] == version), None)
            data = await _db(lambda: _area_report_by_sha(store, sha)) if sha else None
        if data is None:
            status = await _db(lambda: areas.status(area, period)) if MONTH_RE.fullmatch(period) else None
            raise ApiError(404, "no_area_report", status or f"no area report for {period}")
        return Response(
            data,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{area}-{period}.json"'},
        )

    @app.get(
        "/api/v1/areas/{area}/sites/{site}/reports/{month}", tags=["certification"], summary="A site report as received"
    )
    async def site_report(
        area: str, site: str, month: str, principal: Certifier, sha256: Annotated[str | None, Query()] = None
    ) -> Response:
        await _site_of_area(principal, area, site, month)
        if sha256 is not None and not SHA_RE.fullmatch(sha256):
            raise ApiError(400, "bad_request", "sha256 is 64 lowercase hex digits")
        data = await _db(lambda: views.site_report(site, month, sha256))
        if data is None:
            raise ApiError(404, "no_report", f"no accepted report of {site} for {month}")
        return Response(
            data,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{site}-{month}.json"'},
        )

    @app.get(
        "/api/v1/areas/{area}/sites/{site}/evidence/{month}", tags=["certification"], summary="Evidence bundle (zip)"
    )
    async def site_evidence(
        area: str, site: str, month: str, principal: Certifier, sha256: Annotated[str | None, Query()] = None
    ) -> Response:
        await _site_of_area(principal, area, site, month)
        if sha256 is not None and not SHA_RE.fullmatch(sha256):
            raise ApiError(400, "bad_request", "sha256 is 64 lowercase hex digits")
        data = await _db(lambda: views.evidence(site, month, sha256))
        if data is None:
            raise ApiError(404, "no_evidence", f"the site pushed no evidence for {month} (its hub: evidence: true)")
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{site}-{month}-evidence.zip"'},
        )

    @app.get("/api/v1/areas/{area}/keys", tags=["certification"], summary="The sites' pinned keys (--trusted-keys)")
    async def area_keys(area: str, principal: Certifier) -> JSONResponse:
        await _area(principal, area)
        return JSONResponse(
            await _db(lambda: views.trusted_keys(area)),
            headers={"Content-Disposition": f'attachment; filename="{area}-keys.json"'},
        )

    # -- the area live view -----------------------------------------------------------------------------
    def _live() -> LiveView:
        if live is None:
            raise ApiError(404, "no_live_view", "the live view is off at this hub (hub.live.enabled)")
        return live

    @app.get("/api/v1/hub/areas/{area}/live", tags=["live"], summary="Sites' flows and status now, balance today")
    async def area_live(area: str, principal: Viewer) -> dict[str, Any]:
        view = _live()
        await _area(principal, area)
        return dict(await _db(lambda: view.area(area)))

    @app.get("/api/v1/hub/areas/{area}/live/stream", tags=["live"], summary="The area live view as server-sent events")
    async def area_live_stream(area: str, request: Request, principal: Viewer) -> StreamingResponse:
        view = _live()
        await _area(principal, area)

        async def events() -> AsyncIterator[bytes]:
            # Every stream_s the view from the database (it merges every replica's share of the messages).
            while not stopping() and not await request.is_disconnected():
                try:
                    doc = await asyncio.to_thread(view.area, area)
                except Exception as exc:
                    if not _is_transient(exc):
                        raise
                    yield b'event: unavailable\ndata: {"error": "database_unavailable"}\n\n'
                else:
                    yield f"event: area\ndata: {json.dumps(doc)}\n\n".encode()
                waited = 0.0
                while waited < stream_s and not stopping():
                    await asyncio.sleep(min(0.5, stream_s))
                    waited += 0.5

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    @app.get("/api/v1/hub/metrics", tags=["live"], summary="This replica's live ingestion: rate, lag, queue, shed")
    async def metrics(_p: Viewer) -> dict[str, Any]:
        if live_metrics is None:
            raise ApiError(404, "no_live_ingest", "this hub does not ingest live state (hub.mqtt, hub.live.enabled)")
        return live_metrics()

    # -- public: the hub's key and its log ---------------------------------------------------------------
    @app.get("/api/v1/hub/key", tags=["log"], summary="The hub's public key: signs tree heads and area reports")
    async def hub_key() -> dict[str, str]:
        return dict(await _db(store.keys.public_info))

    @app.get("/api/v1/log/head", tags=["log"], summary="The latest signed tree head")
    async def head() -> JSONResponse:
        found = await _db(store.tree_head)
        if found is None:
            raise ApiError(404, "empty_log", "the log has no entries yet")
        return JSONResponse(found, headers={"Content-Disposition": 'attachment; filename="tree-head.json"'})

    @app.get("/api/v1/log/proof", tags=["log"], summary="Inclusion proof of a site's (or an area's) report")
    async def proof(
        site: Annotated[str | None, Query()] = None,
        month: Annotated[str | None, Query()] = None,
        area: Annotated[str | None, Query()] = None,
        period: Annotated[str | None, Query()] = None,
    ) -> JSONResponse:
        if site is not None and month is not None and MONTH_RE.fullmatch(month) and SITE_RE.fullmatch(site):
            found = await _db(lambda: store.inclusion_proof(site, month))
            name = f"{site}-{month}-proof.json"
        elif area is not None and period is not None and PERIOD_RE.fullmatch(period) and SITE_RE.fullmatch(area):
            found = await _db(lambda: store.area_inclusion_proof(area, period))
            name = f"{area}-{period}-proof.json"
        else:
            raise ApiError(400, "bad_request", "give site and month (YYYY-MM), or area and period (YYYY-MM or YYYY)")
        return JSONResponse(found, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/v1/log/consistency", tags=["log"], summary="Consistency proof between two tree sizes")
    async def consistency(
        first: Annotated[int, Query(ge=0)], second: Annotated[int | None, Query(ge=0)] = None
    ) -> JSONResponse:
        return JSONResponse(await _db(lambda: store.consistency_proof(first, second)))

    return app


def _area_report_by_sha(store: HubStore, sha: str) -> bytes | None:
    from sqlalchemy import select

    from gateway.hub import db

    with store.engine.connect() as conn:
        row = conn.execute(select(db.area_reports.c.raw).where(db.area_reports.c.sha256 == sha)).first()
    return bytes(row[0]) if row is not None else None
