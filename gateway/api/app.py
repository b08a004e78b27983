"""`create_app(services)`: the HTTP API and web page as a FastAPI app, with nothing global.

FastAPI because the contract requires `/openapi.json` (certifiers and schemathesis read it) and request
validation with clear errors; every error leaves as JSON `{"error": ..., "detail": ...}`. Blocking work
(report generation reads SQLite, PDF rendering) runs in a worker thread, never on the event loop.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local `Viewer`/`Certifier` aliases.

import asyncio
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from drivers.errors import GiaError
from drivers.model import QUANTITIES, iso_utc
from gateway import __version__
from gateway.api.auth import ApiError, Principal, Role
from gateway.api.limits import ExpensiveRequestLimit
from gateway.api.pages import LANG_COOKIE
from gateway.i18n import Catalogues, negotiate
from gateway.rooms import ReportProvider
from gateway.runtime.live import LiveEvent, LiveState

MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class Authenticates(Protocol):
    """`Authenticator` (tokens) or `sessions.PageAuth` (tokens, login sessions and users)."""

    def authenticate(self, request: Request, role: Role) -> Principal: ...

    def client_address(self, request: Request) -> str: ...


@dataclass
class ApiServices:
    site: str
    live: LiveState
    auth: Authenticates
    health: Callable[[], dict[str, Any]]
    reports: ReportProvider | None = None
    forecast: Callable[[str], dict[str, Any] | None] = field(default=lambda _t: None)
    flexibility: Callable[[], dict[str, Any] | None] = field(default=lambda: None)
    #: true once the agent is stopping: long-lived responses (the SSE stream) end by themselves
    stopping: Callable[[], bool] = field(default=lambda: False)
    #: history/report/evidence requests one client may have in flight (`http.expensive_per_client`)
    expensive_per_client: int = 4
    #: report, PDF and evidence builds at once (`http.report_builds`); more wait their turn
    report_builds: int = 1
    #: where evidence zips are built before they are streamed: the data dir (its disk budget), not /tmp
    scratch_dir: Path | None = None


def _error(status: int, error: str, detail: Any = "") -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _sample_json(s: Any) -> dict[str, Any]:
    return {"value": s.value, "unit": s.unit, "quality": s.quality.value, "ts": iso_utc(s.ts)}


def live_snapshot(live: LiveState) -> dict[str, Any]:
    devices: dict[str, Any] = {}
    for dev_id, status in live.devices.items():
        devices[dev_id] = {**status.as_json(), "values": {}}
    for (dev_id, quantity), s in sorted(live.values.items()):
        if dev_id in devices:
            devices[dev_id]["values"][quantity] = _sample_json(s)
    return {"devices": devices}


def _event_json(event: LiveEvent) -> dict[str, Any]:
    if event.kind == "availability":
        return {"device": event.device, "state": "online" if event.online else "offline"}
    return {"device": event.device, "values": {s.quantity: _sample_json(s) for s in event.samples}}


#: Sent with every response (issue 15): the pages load only their own scripts (no inline script, so an
#: injected `<script>` does not run), cannot be framed (clickjacking of the setup page), and leak no URL
#: (a `/?token=` bookmark) to another site through the Referer header.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def add_security_headers(app: FastAPI) -> None:
    """`SECURITY_HEADERS` on every response of `app` (the gateway's and the hub's)."""

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def health_for(request: Request, auth: Authenticates, report: dict[str, Any]) -> dict[str, Any]:
    """The whole health report for a viewer; for anyone else only the status and the reason classes
    (issue 15: `/healthz` is open to the network, and its reasons quoted broker addresses and error
    texts). A monitor without a token still sees healthy or not, and which part is unwell."""
    try:
        auth.authenticate(request, "viewer")
    except ApiError:
        return {"status": report["status"], "reasons": list(report.get("reason_classes", []))}
    return report


def create_app(services: ApiServices) -> FastAPI:
    catalogues = Catalogues()
    app = FastAPI(
        title="GIA Gateway",
        version=__version__,
        description="Live energy data, forecasts, flexibility signals and signed monthly reports of one site.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(
        ExpensiveRequestLimit,
        per_client=services.expensive_per_client,
        client_key=lambda scope: services.auth.client_address(Request(scope)),
    )
    # A bounded pool for report/PDF/evidence builds: each may take a core for seconds, and the
    # pollers and the ledger's commit thread must keep theirs (issue #15, finding 7).
    builds = asyncio.Semaphore(services.report_builds)

    add_security_headers(app)

    def need(role: Role) -> Callable[[Request], Principal]:
        def dependency(request: Request) -> Principal:
            return services.auth.authenticate(request, role)

        return dependency

    Viewer = Annotated[Principal, Depends(need("viewer"))]
    Certifier = Annotated[Principal, Depends(need("certifier"))]

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        resp = _error(exc.status_code, exc.error, exc.detail)
        if headers:
            resp.headers.update(headers)
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

    @app.get("/healthz", tags=["health"], summary="200 when healthy, 503 with reasons otherwise")
    async def healthz(request: Request) -> JSONResponse:
        report = health_for(request, services.auth, services.health())
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    # The pages themselves (/, /login, /history, /setup) are added by gateway/api/pages.py.

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if not re.fullmatch(r"[a-z0-9_.-]+\.(js|css|svg|txt)", name) or ".." in name:
            raise ApiError(404, "not_found", name)
        path = resources.files("gateway.api").joinpath("static").joinpath(name)
        if not path.is_file():
            raise ApiError(404, "not_found", name)
        media = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml", "txt": "text/plain"}
        return Response(
            path.read_bytes(), media_type=media[name.rsplit(".", 1)[1]], headers={"Cache-Control": "max-age=3600"}
        )

    @app.get("/api/v1/live", tags=["live"], summary="Latest value and quality of every quantity")
    async def live(_p: Viewer) -> dict[str, Any]:
        return {"site": services.site, **live_snapshot(services.live)}

    @app.get("/api/v1/live/stream", tags=["live"], summary="Live values as server-sent events")
    async def live_stream(request: Request, _p: Viewer) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            sub = services.live.subscribe(maxsize=1000)
            try:
                snap = json.dumps({"site": services.site, **live_snapshot(services.live)})
                yield f"event: snapshot\ndata: {snap}\n\n".encode()
                idle = 0.0
                # Checked every second: a stopping agent ends the stream itself, so uvicorn's graceful
                # shutdown is not left to cancel it with a traceback (a browser tab open at Ctrl-C).
                while not services.stopping() and not await request.is_disconnected():
                    try:
                        async with asyncio.timeout(1.0):
                            event = await sub.get()
                    except TimeoutError:
                        idle += 1.0
                        if idle >= 15.0:
                            idle = 0.0
                            yield b": keep-alive\n\n"
                        continue
                    idle = 0.0
                    yield f"event: {event.kind}\ndata: {json.dumps(_event_json(event))}\n\n".encode()
            finally:
                services.live.unsubscribe(sub)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    @app.get("/api/v1/devices", tags=["live"], summary="Devices, state, last reading, error counts")
    async def devices(_p: Viewer) -> dict[str, Any]:
        return {"devices": [s.as_json() for s in services.live.devices.values()]}

    @app.get("/api/v1/quantities", tags=["live"], summary="Canonical quantities and their units")
    async def quantities(_p: Viewer) -> dict[str, Any]:
        return {
            "quantities": {
                q.name: {"unit": q.unit, "kind": q.kind.value, "label": q.label, "display_unit": q.display_unit}
                for q in QUANTITIES.values()
            }
        }

    @app.get("/api/v1/forecasts/{target}", tags=["forecasts"], summary="Current forecast of a target")
    async def forecast(target: Literal["load", "wind", "pv"], _p: Viewer) -> dict[str, Any]:
        found = services.forecast(target)
        if found is None:
            raise ApiError(404, "no_forecast", f"no {target} forecast yet (forecasting disabled or still training)")
        return found

    @app.get("/api/v1/flexibility", tags=["flexibility"], summary="Current flexibility signal")
    async def flexibility(_p: Viewer) -> dict[str, Any]:
        found = services.flexibility()
        if found is None:
            raise ApiError(404, "no_signal", "no flexibility signal (flexibility disabled or no forecast yet)")
        return found

    def _check_report_request(principal: Principal, site: str, month: str) -> None:
        if not MONTH_RE.fullmatch(month):
            raise ApiError(400, "bad_month", f"{month!r}: write the month as YYYY-MM")
        if not principal.may_read_site(site):
            raise ApiError(403, "forbidden", f"token '{principal.name}' may not read site {site!r}")
        if site != services.site:
            raise ApiError(404, "unknown_site", f"this gateway serves site {services.site!r}")
        if services.reports is None:
            raise ApiError(503, "certification_unavailable", "certification is not configured")

    async def _call_reports(fn: Callable[[], Any]) -> Any:
        try:
            async with builds:
                return await asyncio.to_thread(fn)
        except GiaError as exc:  # the error says its own status and code (drivers/errors.py)
            raise ApiError(exc.http_status, exc.error_code, str(exc)) from None

    @app.get("/api/v1/sites/{site}/reports/{month}", tags=["certification"], summary="Signed monthly report")
    async def report(
        request: Request,
        site: str,
        month: str,
        principal: Certifier,
        format: Annotated[Literal["json", "csv", "pdf"], Query()] = "json",
        lang: Annotated[Literal["en", "lv"] | None, Query(description="PDF language (default: negotiated)")] = None,
    ) -> Response:
        _check_report_request(principal, site, month)
        assert services.reports is not None
        reports = services.reports
        # The PDF in the reader's language: ?lang=, else the page's choice (cookie), else Accept-Language.
        chosen = lang or request.cookies.get(LANG_COOKIE)
        reader = catalogues.get(negotiate(request.headers.get("accept-language"), chosen))
        builds: dict[str, Callable[[str, str], bytes]] = {
            "json": reports.report_json,
            "csv": reports.report_csv,
            "pdf": partial(reports.report_pdf, t=reader),
        }
        build = builds[format]
        media = {"json": "application/json", "csv": "text/csv", "pdf": "application/pdf"}[format]
        body = await _call_reports(lambda: build(site, month))
        headers = {} if format == "json" else {"Content-Disposition": f'attachment; filename="{site}-{month}.{format}"'}
        return Response(body, media_type=media, headers=headers)

    @app.get("/api/v1/sites/{site}/evidence/{month}", tags=["certification"], summary="Evidence bundle (zip)")
    async def evidence(site: str, month: str, principal: Certifier) -> Response:
        _check_report_request(principal, site, month)
        assert services.reports is not None
        reports = services.reports

        # Streamed through a temporary file: a month of register readings can be hundreds of MB. The file
        # lies in the data dir, whose free space the disk guard watches, not in a /tmp on the same card
        # that the guard would answer by pruning unforwarded readings.
        scratch = services.scratch_dir
        if scratch is not None:
            scratch.mkdir(mode=0o700, parents=True, exist_ok=True)

        def build() -> str:
            with tempfile.NamedTemporaryFile(prefix="gia-evidence-", suffix=".zip", delete=False, dir=scratch) as f:
                try:
                    reports.write_evidence_zip(site, month, f)
                except BaseException:
                    os.unlink(f.name)
                    raise
                return f.name

        path = await _call_reports(build)
        return FileResponse(
            path,
            media_type="application/zip",
            filename=f"{site}-{month}-evidence.zip",
            background=BackgroundTask(os.unlink, path),
        )

    @app.get("/api/v1/keys", tags=["certification"], summary="Public signing keys with fingerprints")
    async def keys() -> dict[str, Any]:
        reports = services.reports
        return {"keys": await asyncio.to_thread(reports.public_keys) if reports else []}

    return app
