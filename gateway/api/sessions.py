"""The login page's side of authentication: users with hashed passwords, browser sessions, role rules.

Built on top of `Authenticator.authenticate(request, role) -> Principal` (bearer tokens, owned by
gateway/api/auth.py) and never instead of it:

* **Users** live in `<data_dir>/users.json`, written by `gia user add` (gateway/cli_users.py). Each holds
  a scrypt hash (hashlib's, i.e. OpenSSL's: memory-hard, standard library, nothing to vendor; N=2^14,
  r=8, p=1, a 16-byte salt), never the password. Verification runs in a worker thread (~50 ms).
* **Sessions**: a successful password login gets a random 256-bit session id in an HttpOnly,
  SameSite=Strict cookie (`gia_session`); the server keeps id -> principal and expiry in memory (a
  restart signs everyone out, which is fine for a gateway). A token login keeps the existing
  mechanism: the token itself in the `gia_token` cookie, checked by `Authenticator` on every request.
* **Roles**: the page and the live API are for anyone who may see the site, so a certifier (who
  could not open the page before) or an admin is also a viewer; reports need `certifier` (or admin);
  the device setup needs `admin`.

Failed password logins are counted per client address: 10 a minute, then 429 until the minute passes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fastapi import Request

from gateway.api.auth import ApiError, Authenticator, Principal, Role

SESSION_COOKIE: Final = "gia_session"
TOKEN_COOKIE: Final = "gia_token"
SESSION_TTL_S: Final = 12 * 3600
LOGIN_FAILURES_PER_MINUTE: Final = 10
_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1}
ROLES: Final[tuple[Role, ...]] = ("viewer", "certifier", "admin")


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): what users.json stores."""
    if len(password) < 10:
        raise ValueError("a password needs at least 10 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **_SCRYPT)
    salt64, digest64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt64}${digest64}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.b64decode(digest)),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str
    roles: frozenset[str]
    sites: frozenset[str]


class UserStore:
    """`users.json`: `{"users": [{"name", "password_hash", "roles", "sites"}]}`, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, User]:
        if not self.path.is_file():
            return {}
        data = json.loads(self.path.read_text())
        return {
            u["name"]: User(u["name"], u["password_hash"], frozenset(u["roles"]), frozenset(u.get("sites", ["*"])))
            for u in data.get("users", [])
        }

    def put(self, name: str, password: str, roles: list[str], sites: list[str]) -> None:
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ValueError(f"roles must be some of {', '.join(ROLES)}")
        users = self.load()
        users[name] = User(name, hash_password(password), frozenset(roles), frozenset(sites or ["*"]))
        self._write(users)

    def remove(self, name: str) -> bool:
        users = self.load()
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, User]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "users": [
                {"name": u.name, "password_hash": u.password_hash, "roles": sorted(u.roles), "sites": sorted(u.sites)}
                for u in users.values()
            ]
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.path)


def has_role(principal: Principal, role: Role) -> bool:
    """Admin may do everything; anyone who may see the site (viewer, certifier) may view it."""
    if "admin" in principal.roles or role in principal.roles:
        return True
    return role == "viewer" and "certifier" in principal.roles


@dataclass
class _Session:
    principal: Principal
    expires: float


@dataclass
class PageAuth:
    """Sessions and users in front of the token `Authenticator`; the same `authenticate` signature."""

    tokens: Authenticator
    users: UserStore | None = None
    clock: Callable[[], float] = time.monotonic
    _sessions: dict[str, _Session] = field(default_factory=dict)
    _failures: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    # -- the request path ---------------------------------------------------------------------
    def client_address(self, request: Request) -> str:
        """Who the request is from (the token authenticator's rule for trusted proxies)."""
        return self.tokens.client_address(request)

    def authenticate(self, request: Request, role: Role) -> Principal:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid and "authorization" not in request.headers:
            principal = self.session(sid)
            if principal is not None:
                self.tokens.check_scope(principal)  # a user scoped to other sites reads nothing here
                if not has_role(principal, role):
                    raise ApiError(403, "forbidden", f"user '{principal.name}' lacks the role '{role}'")
                return principal
        try:
            return self.tokens.authenticate(request, role)
        except ApiError as exc:
            if exc.status_code != 403 or role != "viewer":
                raise
            return self.tokens.authenticate(request, "certifier")  # a certifier may view the page too

    def optional(self, request: Request) -> Principal | None:
        """Who is asking, or None (pages decide between showing and redirecting to the login)."""
        try:
            return self.authenticate(request, "viewer")
        except ApiError as exc:
            if exc.status_code in (401, 403):
                return None
            raise

    def session(self, sid: str) -> Principal | None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]
        found = self._sessions.get(sid)
        return found.principal if found else None

    # -- the login form -------------------------------------------------------------------------
    def login_token(self, request: Request, token: str) -> Principal:
        """Check a token as the bearer header would be (any of the roles will do)."""
        return self.tokens.verify(request, token)

    def login_password(self, request: Request, name: str, password: str) -> Principal:
        client = self.tokens.client_address(request)
        q = self._failures[client]
        now = self.clock()
        while q and now - q[0] > 60:
            q.popleft()
        if len(q) >= LOGIN_FAILURES_PER_MINUTE:
            raise ApiError(429, "too_many_failures", "too many failed logins; wait a minute")
        user = (self.users.load() if self.users else {}).get(name)
        # the same work for an unknown user as for a wrong password: timing says nothing about names
        ok = check_password(password, user.password_hash if user else _DUMMY_HASH) and user is not None
        if not ok or user is None:
            q.append(now)
            raise ApiError(401, "unauthorized", "unknown user or wrong password")
        if not q:
            self._failures.pop(client, None)
        return Principal(user.name, user.roles, user.sites)

    def start_session(self, principal: Principal) -> str:
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = _Session(principal, self.clock() + SESSION_TTL_S)
        return sid

    def end_session(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)


_DUMMY_HASH: Final = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="  # never matches
)
