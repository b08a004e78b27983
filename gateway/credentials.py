"""The one set of rules for credentials, shared by the agent (`gateway.settings`, `gateway.api`) and the
area hub (`gateway.hub`), so both refuse and hide the same things (issue 15, findings 1 and 6).

* **Token strength.** A bearer token is the only thing between the site LAN and the ledger's reports,
  so every token — inline, from a `token_file` or from a `GIA_` variable — must have at least
  `MIN_TOKEN_CHARS` characters and an estimated `MIN_TOKEN_BITS` bits: an empty token file once
  matched an empty `gia_token=` cookie, and `abc` passed `check-config`. The estimate is the length
  times log2 of the alphabet the characters come from (hex counts 4 bits a character), plus a floor on
  distinct characters so `aaaa…` is refused; `openssl rand -hex 32` always passes.
* **Hashed tokens.** The authenticator keeps SHA-256 digests, never the tokens: a memory dump or a
  debugger shows nothing that can be replayed. Digests of equal length are compared with
  `hmac.compare_digest`, so timing does not leak a prefix either.
* **No credentials in URLs.** `mqtt://user:pass@host` and `http://user:pass@host` end up in logs,
  `/healthz`, `check-config` output and process lists; they are refused with a pointer to the
  `*_file` fields, and `redact_url` hides any userinfo wherever a URL is still printed.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from typing import Final
from urllib.parse import urlsplit, urlunsplit

MIN_TOKEN_CHARS: Final = 32
MIN_TOKEN_BITS: Final = 128
MIN_DISTINCT_CHARS: Final = 8
TOKEN_FIX: Final = "generate one: openssl rand -hex 32"

_HEX: Final = frozenset(string.hexdigits.lower()) | frozenset(string.digits)
_CLASSES: Final = (
    (frozenset(string.ascii_lowercase), 26),
    (frozenset(string.ascii_uppercase), 26),
    (frozenset(string.digits), 10),
)


def token_bits(token: str) -> float:
    """A generous estimate of a token's entropy: length x log2(size of the alphabets it draws from)."""
    if not token:
        return 0.0
    chars = set(token)
    if chars <= _HEX or chars <= {c.upper() for c in _HEX}:
        alphabet = 16
    else:
        alphabet = sum(size for cls, size in _CLASSES if chars & cls)
        if chars - set(string.ascii_letters + string.digits):
            alphabet += 32  # punctuation
    return len(token) * math.log2(alphabet)


def token_problem(token: str) -> str | None:
    """Why `token` is too weak to be a bearer token, or None. Never includes the token itself."""
    if not token:
        return "the token is empty"
    if len(token) < MIN_TOKEN_CHARS:
        return f"the token is too short ({len(token)} < {MIN_TOKEN_CHARS} characters)"
    if len(set(token)) < MIN_DISTINCT_CHARS or token_bits(token) < MIN_TOKEN_BITS:
        return f"the token is too predictable (< {MIN_TOKEN_BITS} bits)"
    return None


def check_token(token: str) -> str:
    """`token` unchanged, or ValueError naming the problem and the fix (for pydantic validators)."""
    problem = token_problem(token)
    if problem is not None:
        raise ValueError(f"{problem}; {TOKEN_FIX}")
    return token


def token_digest(token: str | bytes) -> bytes:
    """What the authenticator stores and compares: SHA-256 of the token (tokens have >= 128 bits, so a
    fast hash is enough; a slow one would only slow every request)."""
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


_USERINFO: Final = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def url_has_credentials(url: str) -> bool:
    """True when the URL carries a user name or password before the host (`scheme://user:pass@host`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return bool(_USERINFO.search(url))
    return parts.username is not None or parts.password is not None or "@" in parts.netloc


def redact_url(url: str) -> str:
    """The URL with any userinfo replaced by `***`: safe for logs, health and check-config output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(r"\g<scheme>***@", url)
    if "@" not in parts.netloc:
        return _USERINFO.sub(r"\g<scheme>***@", url)  # a URL embedded in a longer text
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def redact_urls(text: str) -> str:
    """Every `scheme://userinfo@` in a free text (an exception message, a log line) redacted."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def refuse_url_credentials(url: str, fix: str) -> None:
    """ValueError (without echoing the URL) when the URL carries credentials; `fix` names the fields."""
    if url_has_credentials(url):
        raise ValueError(f"the URL {redact_url(url)} contains credentials; remove them and {fix}")
