"""Bearer tokens with roles and site scope.

Tokens are stored as SHA-256 digests (gateway/credentials.py: the process holds nothing replayable)
and the digest of a presented token is compared in constant time (`hmac.compare_digest` against every
configured digest, so timing does not reveal which one matched); tokens are never logged: logs name the
token's holder, or the client's address for a failure. A browser cannot send an Authorization header
when it navigates, so the page also accepts the token from the `gia_token` cookie (set by opening
`/?token=...` once, only after the token was checked; HttpOnly, SameSite=Strict). An empty token (a
`gia_token=` cookie, `Bearer ` with nothing after it) is a failed authentication, never a match.

Issue 15 (finding 8):

* **Who is the client.** The peer address, unless the peer is one of `http.trusted_proxies`: then the
  right-most `X-Forwarded-For` hop that is not itself a trusted proxy. Without trusted proxies the
  header is ignored (uvicorn's own proxy handling is off, gateway/runtime/http.py), so a client cannot
  pick the address its failures are counted under. A request that carries forwarding headers is never
  the anonymous loopback viewer: a proxy on the same machine would otherwise let the whole network in.
* **Failures lock out failures only.** A presented token is checked first; a valid one is accepted even
  when its client address has too many recent failures (behind a proxy every visitor shares one
  address, and one bad client must not lock out everyone). Wrong tokens from that address get 429.
* **Failures are logged** (client address, reason, path; never the token), rate-limited to
  `AUTH_LOG_LINES` lines a window, with a count of the lines left out.
* **Site scope.** With `site` set (the agent), a principal whose scope does not include the site is
  refused (403) on every endpoint, viewer ones included: a token for another site reads nothing here.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from fastapi import HTTPException, Request

from gateway.credentials import token_digest

Role = Literal["viewer", "certifier", "admin"]

AUTH_FAILURE_WINDOW_S = 60.0
AUTH_FAILURE_LIMIT = 20
AUTH_LOG_LINES: Final = 10  # failure log lines per window, all clients together
MAX_TRACKED_CLIENTS: Final = 10_000  # addresses with recent failures kept; the oldest are forgotten
FORWARDING_HEADERS: Final = ("x-forwarded-for", "forwarded", "x-real-ip")

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[str]
    sites: frozenset[str]

    def may_read_site(self, site: str) -> bool:
        return "*" in self.sites or site in self.sites


class TokenEntry:
    """A configured token as its digest (the token itself is not kept) and who holds it."""

    __slots__ = ("digest", "principal")

    def __init__(self, token: str | bytes, principal: Principal) -> None:
        if not token:
            raise ValueError(f"token of {principal.name!r} is empty")
        self.digest: bytes = token_digest(token)
        self.principal = principal


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def _in(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class ApiError(HTTPException):
    """An error the API returns as JSON `{"error": ..., "detail": ...}`."""

    def __init__(self, status_code: int, error: str, detail: str = "") -> None:
        super().__init__(status_code=status_code, detail=detail)
        self.error = error


class Authenticator:
    def __init__(
        self,
        tokens: list[TokenEntry],
        *,
        anonymous_viewer_on_loopback: bool,
        trusted_proxies: Sequence[str] = (),
        site: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._anonymous_loopback = anonymous_viewer_on_loopback
        self._proxies = parse_networks(trusted_proxies)
        self.site = site
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._log_window_start = -AUTH_FAILURE_WINDOW_S
        self._log_lines = 0
        self._log_suppressed = 0

    # -- who is asking ---------------------------------------------------------------------------
    def client_address(self, request: Request) -> str:
        """The peer, or behind a trusted proxy the right-most forwarded hop that is not a proxy."""
        peer = request.client.host if request.client else "?"
        if not self._proxies or not _in(peer, self._proxies):
            return peer
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not _in(hop, self._proxies):
                return hop
        return hops[0] if hops else peer

    def is_https(self, request: Request) -> bool:
        """Whether the visitor's connection is HTTPS: ours, or a trusted proxy's `X-Forwarded-Proto`
        (a cookie set behind a TLS-terminating proxy keeps its Secure flag)."""
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else ""
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return bool(self._proxies) and _in(peer, self._proxies) and forwarded == "https"

    def _anonymous_allowed(self, request: Request) -> bool:
        if not self._anonymous_loopback or any(h in request.headers for h in FORWARDING_HEADERS):
            return False
        host = request.client.host if request.client else ""
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    # -- failures --------------------------------------------------------------------------------
    def _rate_limited(self, client: str) -> bool:
        q = self._failures.get(client)
        if q is None:
            return False
        now = self._clock()
        while q and now - q[0] > AUTH_FAILURE_WINDOW_S:
            q.popleft()
        if not q:
            del self._failures[client]  # one entry per client with recent failures, not per client ever seen
            return False
        return len(q) >= AUTH_FAILURE_LIMIT

    def _record_failure(self, client: str, reason: str, request: Request) -> None:
        q = self._failures.get(client)
        if q is None:
            q = self._failures[client] = deque(maxlen=AUTH_FAILURE_LIMIT)
            while len(self._failures) > MAX_TRACKED_CLIENTS:
                self._failures.popitem(last=False)
        q.append(self._clock())
        self._log_failure(client, reason, request.url.path)

    def _log_failure(self, client: str, reason: str, path: str) -> None:
        now = self._clock()
        if now - self._log_window_start >= AUTH_FAILURE_WINDOW_S:
            self._log_window_start, self._log_lines = now, 0
        if self._log_lines >= AUTH_LOG_LINES:
            self._log_suppressed += 1
            return
        self._log_lines += 1
        more = f" ({self._log_suppressed} earlier failures not logged)" if self._log_suppressed else ""
        self._log_suppressed = 0
        log.warning("authentication failed from %s on %s: %s%s", client, path[:100], reason, more)

    def _match(self, presented: str) -> Principal | None:
        found = None
        digest = token_digest(presented)
        for entry in self._tokens:
            if hmac.compare_digest(entry.digest, digest):  # no early exit: constant work per request
                found = entry.principal
        return found

    # -- the request path ------------------------------------------------------------------------
    def authenticate(self, request: Request, role: Role) -> Principal:
        client = self.client_address(request)
        header = request.headers.get("authorization", "")
        presented = None
        if header.lower().startswith("bearer "):
            presented = header[7:].strip()
        elif header:
            presented = ""  # another scheme (Basic ...) is a failed attempt, not an anonymous visit
        elif "gia_token" in request.cookies:
            presented = request.cookies["gia_token"].strip()
        if presented is None:
            if role == "viewer" and self._anonymous_allowed(request):
                return Principal("anonymous-loopback", frozenset({"viewer"}), frozenset({"*"}))
            if self._rate_limited(client):
                raise ApiError(429, "too_many_failures", "too many failed authentications; wait a minute")
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>'")
        principal = self._match(presented) if presented else None
        if principal is None:
            limited = self._rate_limited(client)
            self._record_failure(client, "empty token" if not presented else "unknown token", request)
            if limited:
                raise ApiError(429, "too_many_failures", "too many failed authentications; wait a minute")
            raise ApiError(401, "unauthorized", "unknown token")
        if role not in principal.roles and "admin" not in principal.roles:
            raise ApiError(403, "forbidden", f"token '{principal.name}' lacks the role '{role}'")
        self.check_scope(principal)
        return principal

    def verify(self, request: Request, token: str) -> Principal:
        """Who holds `token` (any role), counted as an attempt of `request`'s client; ApiError 401/429/403.
        What `/?token=` and the login forms call *before* they set the `gia_token` cookie."""
        client = self.client_address(request)
        presented = token.strip()
        principal = self._match(presented) if presented else None
        if principal is None:
            limited = self._rate_limited(client)
            self._record_failure(client, "empty token" if not presented else "unknown token", request)
            if limited:
                raise ApiError(429, "too_many_failures", "too many failed authentications; wait a minute")
            raise ApiError(401, "unauthorized", "unknown token")
        self.check_scope(principal)
        return principal

    def check_scope(self, principal: Principal) -> None:
        """403 unless the principal may read this gateway's site (no check without a site: the hub)."""
        if self.site is not None and not principal.may_read_site(self.site):
            raise ApiError(403, "forbidden", f"'{principal.name}' may not read site {self.site!r}")
