"""Key-transition statements and trusted-key chains. Pure (standard library + `cryptography` + `rfc8785`).

Why: a certifier pins a site's public key once, out of band. A site key can be lost or rotated; the
new key must then be reachable from the pinned one, or the certifier must pin it again. A transition is
a statement in the site's ledger events chain (kind `key_transition`), so it is hash-chained with the
meter replacements and report closings, committed to by every later report, and carried in its
evidence bundle:

    statement = {type: "gia-key-transition/1", site, new_key_id, new_public_key (PEM), old_key_id | null,
                 reason, at}
    detail    = {statement, new_signature, old_signature | null}

Both signatures are Ed25519 over the RFC 8785 canonical statement: `new_signature` proves possession of
the new key; `old_signature`, by the key being replaced, is what lets a verifier follow the transition
from a pinned key. Without it (the old key was lost) the new key must be pinned anew.

Rules a verifier applies (`follow`): start from the pinned keys; walk the transitions in chain order;
a transition whose old key is trusted and whose old signature verifies makes its new key trusted. A
report is valid only under the key in force at its events head: the last transition's new key (a key
retired by a later transition signs nothing after it), or, with no transition, a pinned key.

This module is also what the area hub uses to follow a site's key changes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drivers.errors import GiaError
from gateway.certification.signing import KeyFileError, key_id, load_public_pem, public_pem

STATEMENT_TYPE: Final = "gia-key-transition/1"
EVENT_KIND: Final = "key_transition"
_PEM_BEGIN: Final = "-----BEGIN PUBLIC KEY-----"
_PEM_END: Final = "-----END PUBLIC KEY-----"


class TrustError(GiaError, ValueError):
    """A trusted-keys file or a transition statement is unusable."""

    exit_code = 2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def transition_detail(
    *,
    site: str,
    new_key: Ed25519PrivateKey,
    old_key: Ed25519PrivateKey | None,
    old_key_id: str | None,
    reason: str,
    at: str,
) -> dict[str, Any]:
    """The signed statement a rotation records (`old_key` None when the old private key is lost)."""
    pub = new_key.public_key()
    statement = {
        "type": STATEMENT_TYPE,
        "site": site,
        "new_key_id": key_id(pub),
        "new_public_key": public_pem(pub),
        "old_key_id": key_id(old_key.public_key()) if old_key is not None else old_key_id,
        "reason": reason,
        "at": at,
    }
    body = rfc8785.dumps(statement)
    return {
        "statement": statement,
        "new_signature": _b64(new_key.sign(body)),
        "old_signature": _b64(old_key.sign(body)) if old_key is not None else None,
    }


def _verify(pub: Ed25519PublicKey, signature: Any, body: bytes) -> bool:
    try:
        pub.verify(base64.b64decode(str(signature), validate=True), body)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Transition:
    event_id: int | None
    site: str
    new_key_id: str
    new_key: Ed25519PublicKey
    old_key_id: str | None
    old_signature: str | None
    body: bytes
    reason: str
    at: str


def parse_transition(detail: Mapping[str, Any], event_id: int | None = None) -> Transition:
    """Check a transition's own consistency (key id, proof of possession); raises `TrustError`."""
    try:
        st = detail["statement"]
        if st.get("type") != STATEMENT_TYPE:
            raise TrustError(f"statement type {st.get('type')!r} is not {STATEMENT_TYPE!r}")
        pub = load_public_pem(str(st["new_public_key"]).encode())
        if key_id(pub) != st["new_key_id"]:
            raise TrustError(f"new_key_id {st['new_key_id']} is not the fingerprint of new_public_key")
        body = rfc8785.dumps(st)
        if not _verify(pub, detail.get("new_signature"), body):
            raise TrustError(f"new key {st['new_key_id'][:16]}... did not sign the statement")
        return Transition(
            event_id,
            str(st["site"]),
            str(st["new_key_id"]),
            pub,
            st.get("old_key_id"),
            detail.get("old_signature"),
            body,
            str(st.get("reason", "")),
            str(st.get("at", "")),
        )
    except (KeyError, TypeError, AttributeError, KeyFileError) as exc:
        raise TrustError(f"malformed key transition ({type(exc).__name__}: {exc})") from None


@dataclass(slots=True)
class Chain:
    """What following the transitions from the pinned keys gives."""

    trusted: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    current: str | None = None  # the key in force after the last transition (None: no transition seen)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def follow(
    pinned: Mapping[str, Ed25519PublicKey], details: Iterable[tuple[int | None, Mapping[str, Any]]], *, site: str
) -> Chain:
    """Follow `site`'s key transitions (in chain order) from the pinned keys."""
    chain = Chain(trusted=dict(pinned))
    for event_id, detail in details:
        try:
            t = parse_transition(detail, event_id)
        except TrustError as exc:
            chain.problems.append(f"key transition (event {event_id}): {exc}")
            continue
        if t.site != site:
            chain.problems.append(f"key transition (event {event_id}) is for site {t.site!r}, not {site!r}")
            continue
        chain.current = t.new_key_id
        if t.new_key_id in chain.trusted:
            chain.notes.append(f"key {t.new_key_id[:16]}... in force from {t.at} ({t.reason}); pinned")
            continue
        old = chain.trusted.get(t.old_key_id or "")
        if old is not None and t.old_signature is not None and _verify(old, t.old_signature, t.body):
            chain.trusted[t.new_key_id] = t.new_key
            chain.notes.append(
                f"key {t.new_key_id[:16]}... in force from {t.at}, signed over by trusted key"
                f" {str(t.old_key_id)[:16]}... (reason: {t.reason})"
            )
        else:
            why = (
                "not signed by the key it replaces (that key was not available)"
                if t.old_signature is None
                else "signed by a key that is not trusted"
            )
            chain.notes.append(
                f"key {t.new_key_id[:16]}... introduced at {t.at} {why} (reason: {t.reason}): not trusted unless"
                " pinned out of band"
            )
    return chain


def transitions_from_events(events: Iterable[Mapping[str, Any]]) -> list[tuple[int | None, dict[str, Any]]]:
    """The key transitions among ledger events (`{id, kind, detail}`), detail parsed, in chain order."""
    out = []
    for e in events:
        if e.get("kind") != EVENT_KIND:
            continue
        try:
            detail = json.loads(e["detail"])
        except (ValueError, TypeError, KeyError):
            detail = {}
        out.append((int(e["id"]) if e.get("id") is not None else None, detail if isinstance(detail, dict) else {}))
    return out


@dataclass(frozen=True, slots=True)
class PinnedKey:
    key_id: str
    key: Ed25519PublicKey
    site: str | None = None  # None: not bound to a site (a bare PEM)


def load_trusted_keys(path: Path) -> list[PinnedKey]:
    """`--trusted-keys FILE`: the JSON of `GET /api/v1/keys` (site-bound) or concatenated PEM blocks."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrustError(f"{path}: cannot read ({exc})") from None
    out: list[PinnedKey] = []
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TrustError(f"{path}: not JSON ({exc})") from None
        items = data.get("keys", []) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise TrustError(f"{path}: expected a list of {{site, public_key_pem}} (the /api/v1/keys answer)")
        for i, item in enumerate(items):
            try:
                pub = load_public_pem(str(item["public_key_pem"]).encode())
            except (KeyError, TypeError, KeyFileError) as exc:
                raise TrustError(f"{path}: keys[{i}]: {exc}") from None
            site = item.get("site") if isinstance(item, dict) else None
            out.append(PinnedKey(key_id(pub), pub, str(site) if site is not None else None))
    else:
        blocks = text.split(_PEM_BEGIN)[1:]
        for i, block in enumerate(blocks):
            end = block.find(_PEM_END)
            if end < 0:
                raise TrustError(f"{path}: PEM block {i + 1} has no END line")
            try:
                pub = load_public_pem((_PEM_BEGIN + block[: end + len(_PEM_END)] + "\n").encode())
            except KeyFileError as exc:
                raise TrustError(f"{path}: PEM block {i + 1}: {exc}") from None
            out.append(PinnedKey(key_id(pub), pub))
    if not out:
        raise TrustError(f"{path}: no public key found (PEM blocks, or the JSON of GET /api/v1/keys)")
    return out


def pinned_for(site: str, keys: Iterable[PinnedKey]) -> dict[str, Ed25519PublicKey]:
    """The pinned keys that may sign for `site` (site-bound ones for it, and unbound ones)."""
    return {k.key_id: k.key for k in keys if k.site is None or k.site == site}
