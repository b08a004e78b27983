"""Bearer tokens with roles and site scope.

Tokens are compared in constant time (`hmac.compare_digest` against every configured token, so timing
does not reveal which prefix matched) and are never logged: logs name the token's holder. A browser
cannot send an Authorization header when it navigates, so the page also accepts the token from the
`gia_token` cookie (set by opening `/?token=...` once; HttpOnly, SameSite=Strict).
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal

from fastapi import HTTPException, Request

Role = Literal["viewer", "certifier", "admin"]

AUTH_FAILURE_WINDOW_S = 60.0
AUTH_FAILURE_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[str]
    sites: frozenset[str]

    def may_read_site(self, site: str) -> bool:
        return "*" in self.sites or site in self.sites


@dataclass(frozen=True, slots=True)
class TokenEntry:
    secret: bytes
    principal: Principal


class ApiError(HTTPException):
    """An error the API returns as JSON `{"error": ..., "detail": ...}`."""

    def __init__(self, status_code: int, error: str, detail: str = "") -> None:
        super().__init__(status_code=status_code, detail=detail)
        self.error = error


class Authenticator:
    def __init__(self, tokens: list[TokenEntry], *, anonymous_viewer_on_loopback: bool) -> None:
        self._tokens = tokens
        self._anonymous_loopback = anonymous_viewer_on_loopback
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _client_is_loopback(self, request: Request) -> bool:
        host = request.client.host if request.client else ""
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def _rate_limited(self, client: str) -> bool:
        q = self._failures.get(client)
        if q is None:
            return False
        now = time.monotonic()
        while q and now - q[0] > AUTH_FAILURE_WINDOW_S:
            q.popleft()
        if not q:
            del self._failures[client]  # one entry per client with recent failures, not per client ever seen
            return False
        return len(q) >= AUTH_FAILURE_LIMIT

    def _record_failure(self, client: str) -> None:
        self._failures[client].append(time.monotonic())

    def _match(self, presented: str) -> Principal | None:
        found = None
        data = presented.encode()
        for entry in self._tokens:
            if hmac.compare_digest(entry.secret, data):  # no early exit: constant work per request
                found = entry.principal
        return found

    def authenticate(self, request: Request, role: Role) -> Principal:
        client = request.client.host if request.client else "?"
        if self._rate_limited(client):
            raise ApiError(429, "too_many_failures", "too many failed authentications; wait a minute")
        header = request.headers.get("authorization", "")
        presented = None
        if header.lower().startswith("bearer "):
            presented = header[7:].strip()
        elif "gia_token" in request.cookies:
            presented = request.cookies["gia_token"]
        if presented is None:
            if role == "viewer" and self._anonymous_loopback and self._client_is_loopback(request):
                return Principal("anonymous-loopback", frozenset({"viewer"}), frozenset({"*"}))
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>'")
        principal = self._match(presented)
        if principal is None:
            self._record_failure(client)
            raise ApiError(401, "unauthorized", "unknown token")
        if role not in principal.roles and "admin" not in principal.roles:
            raise ApiError(403, "forbidden", f"token '{principal.name}' lacks the role '{role}'")
        return principal
