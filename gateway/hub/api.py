"""The hub's HTTP API (FastAPI, as the gateway's: JSON errors `{"error", "detail"}`, 401/403, `/openapi.json`).

* `POST /api/v1/hub/sites/{site}/reports` — a site pushes a signed report (or its key-transition
  announcement `{site, transitions}`) with its per-site bearer token. 200 with the signed receipt once
  the report is decided and stored (accepted, or rejected with reasons: either way the site stops
  retrying); 422 when the submission is quarantined or malformed; 413 past the body limit (read in
  chunks, so a 10 MB body never sits in memory whole); 401 without a valid token, 403 with another
  site's token; 503 while the database is unavailable (retry).
* `GET /api/v1/log/head`, `GET /api/v1/log/proof?site=&month=`, `GET /api/v1/log/consistency?first=&second=`
  — public: the signed tree head and proofs (a certifier checks them with `gateway.hub.log`).
* `GET /healthz` — 200 when healthy, 503 with reasons.
"""

# No `from __future__ import annotations`: FastAPI resolves the annotations at runtime.

import asyncio
import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.api.auth import ApiError
from gateway.hub.ingest import Ingestor
from gateway.hub.store import HubError, HubStore

MONTH_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


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


def create_hub_app(
    store: HubStore,
    ingestor: Ingestor,
    *,
    health: Callable[[], dict[str, Any]],
    max_body_bytes: int,
    on_receipt: Callable[[], None] = lambda: None,
) -> FastAPI:
    app = FastAPI(
        title="GIA area hub",
        version=__version__,
        description="Enrolled sites push signed monthly reports; the transparency log's heads and proofs.",
        docs_url=None,
        redoc_url=None,
    )

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

    @app.get("/healthz", tags=["health"], summary="200 when healthy, 503 with reasons otherwise")
    async def healthz() -> JSONResponse:
        report = health()
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    @app.post(
        "/api/v1/hub/sites/{site}/reports",
        tags=["ingest"],
        summary="Push a signed monthly report (or key transition); answers the receipt",
    )
    async def push(site: str, request: Request) -> JSONResponse:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <site token>'")
        owner = await _db(lambda: store.site_for_token(header[7:].strip()))
        if owner is None:
            raise ApiError(401, "unauthorized", "unknown token")
        if owner != site:
            raise ApiError(403, "forbidden", f"this token pushes for site {owner!r}, not {site[:63]!r}")
        data = await _read_limited(request, max_body_bytes)
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

    @app.get("/api/v1/log/head", tags=["log"], summary="The latest signed tree head")
    async def head() -> JSONResponse:
        found = await _db(store.tree_head)
        if found is None:
            raise ApiError(404, "empty_log", "the log has no entries yet")
        return JSONResponse(found)

    @app.get("/api/v1/log/proof", tags=["log"], summary="Inclusion proof of a site's report for a month")
    async def proof(site: Annotated[str, Query()], month: Annotated[str, Query()]) -> JSONResponse:
        if not MONTH_RE.fullmatch(month) or not SITE_RE.fullmatch(site):
            raise ApiError(400, "bad_request", "site is a site id, month is YYYY-MM")
        return JSONResponse(await _db(lambda: store.inclusion_proof(site, month)))

    @app.get("/api/v1/log/consistency", tags=["log"], summary="Consistency proof between two tree sizes")
    async def consistency(
        first: Annotated[int, Query(ge=0)], second: Annotated[int | None, Query(ge=0)] = None
    ) -> JSONResponse:
        return JSONResponse(await _db(lambda: store.consistency_proof(first, second)))

    return app
