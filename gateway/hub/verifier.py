"""The one adapter between the hub and the certification package's verifier (`gateway.certification`).

Everything the hub needs to know about a site report or a key-transition statement goes through here:

* `identify(data)` — who the report says it is from (site, month, signing key id, previous-report hash,
  `reissue_of`, events head), without trusting any of it; raises `Malformed` when it is not a report.
* `verify_site_report(data, pinned=..., transitions=..., previous=..., policy=...)` — the certification
  verifier (`verify_report`) with the site's *pinned* key chain as the only trusted keys (never a key
  shipped with the report), the previous report the hub holds, and the **area's** grading policy (a
  `gateway.certification.policy.Policy`): a report whose self-declared grade beats the policy fails
  there (`policy.grade`). On top, the hub's own knowledge of the site's keys: once the hub has followed
  a transition (announced by the site, signed by the key it replaces), a report whose events head lies
  after that transition must be signed by the new key and must carry the transition — only the key in
  force is accepted, and a report signed with a retired key cannot pretend the rotation never happened.
* `follow_transitions(payload, site=..., pinned=..., known=...)` — the site's announcement
  (`gia/{site}/keys/transition`: `{site, transitions: [{event_id, statement, new_signature,
  old_signature}]}`) checked with `gateway.certification.keys`: a transition is followed only when the
  key it replaces is trusted and signed it; one the old key did not sign (the key was lost) is not
  followed — the operator pins the new key out of band.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.certification.keys import PinnedKey as TrustedKey
from gateway.certification.keys import TrustError, follow, parse_transition
from gateway.certification.periods import BadMonth, month_period
from gateway.certification.policy import GRADES, Policy
from gateway.certification.signing import KeyFileError, canonical, key_id, load_public_pem
from gateway.certification.verify import Unusable, verify_report

__all__ = [
    "GRADES",
    "Identity",
    "KnownTransition",
    "Malformed",
    "PinnedKey",
    "Policy",
    "TransitionVerdict",
    "Verdict",
    "follow_transitions",
    "identify",
    "verify_site_report",
]

TRANSITIONS_SCHEMA: Final = "gia-key-transitions/1"


class Malformed(Exception):
    """Not a site report (or transition announcement) at all: not JSON, not our schema, no site or month."""


@dataclass(frozen=True, slots=True)
class PinnedKey:
    """A key of a site's pinned chain as the hub stores it (PEM; position 0 enrolled out of band)."""

    key_id: str
    public_pem: bytes

    def public_key(self) -> Ed25519PublicKey:
        return load_public_pem(self.public_pem)


@dataclass(frozen=True, slots=True)
class KnownTransition:
    """A key transition the hub followed: from the site's events chain event `event_id`, `new_key_id` signs."""

    event_id: int
    new_key_id: str
    old_key_id: str | None


@dataclass(frozen=True, slots=True)
class Identity:
    site: str
    month: str
    key_id: str | None
    previous_sha256: str | None
    reissue_of: str | None
    sha256: str
    events_head_id: int | None = None
    #: the parsed report (kept so ingestion does not parse 30 KiB again for its channels or key checks)
    doc: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(slots=True)
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The signature verified against a key of the site's pinned chain: the report is the site's own
    #: (else it is not attributable to the site and must not produce a receipt in its name).
    signature_ok: bool = False
    grade: str | None = None  # under the area's policy
    declared_grade: str | None = None


@dataclass(slots=True)
class TransitionVerdict:
    """What an announcement brings: transitions to follow now (each with its new key), and problems."""

    followed: list[tuple[KnownTransition, bytes, bytes]] = field(default_factory=list)  # (t, new PEM, detail)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"not JSON ({exc})") from None
    except RecursionError:  # json's C scanner recurses per nesting level: '[' * 200000 gets here
        raise Malformed("not JSON (nested too deeply)") from None


def identify(data: bytes) -> Identity:
    doc = _loads(data)
    if not isinstance(doc, dict):
        raise Malformed("not a JSON object")
    if doc.get("schema") != "gia-monthly-report/1":
        raise Malformed(f"schema {str(doc.get('schema'))[:60]!r} is not 'gia-monthly-report/1'")
    site = doc.get("site")
    period = doc.get("period")
    site_id = site.get("id") if isinstance(site, dict) else None
    month = period.get("month") if isinstance(period, dict) else None
    if not isinstance(site_id, str) or not isinstance(month, str):
        raise Malformed("the report names no site.id or period.month")
    try:
        month_period(month, "UTC")
    except (BadMonth, ValueError):
        raise Malformed(f"period.month {month[:20]!r} is not YYYY-MM") from None
    sig = doc.get("signature")
    kid = sig.get("key_id") if isinstance(sig, dict) and isinstance(sig.get("key_id"), str) else None
    prev = doc.get("previous_report_sha256")
    reissue = doc.get("reissue_of")
    ev = doc.get("evidence")
    head = ev.get("events_head_id") if isinstance(ev, dict) else None
    return Identity(
        site=site_id,
        month=month,
        key_id=kid,
        previous_sha256=prev if isinstance(prev, str) else None,
        reissue_of=reissue if isinstance(reissue, str) else None,
        sha256=hashlib.sha256(data).hexdigest(),
        events_head_id=head if isinstance(head, int) and not isinstance(head, bool) else None,
        doc=doc,
    )


def _trusted(site: str, pinned: Sequence[PinnedKey]) -> list[TrustedKey]:
    return [TrustedKey(k.key_id, k.public_key(), site) for k in pinned]


def _key_in_force(ident: Identity, data: bytes, known: Sequence[KnownTransition], verdict: Verdict) -> None:
    """The hub's own check: after a transition it followed, only the new key signs, and the report must
    show the transition (the site cannot sign with a retired key and leave the rotation out). The report
    is parsed only when a transition applies (most sites never rotate)."""
    if not known or ident.events_head_id is None:
        return
    before = [t for t in known if t.event_id <= ident.events_head_id]
    if not before:
        return
    report = ident.doc or json.loads(data)
    last = max(before, key=lambda t: t.event_id)
    if ident.key_id != last.new_key_id:
        verdict.reasons.append(
            f"signature: signed by key {ident.key_id}, but the key in force at the report's events head"
            f" {ident.events_head_id} is {last.new_key_id} (transition at event {last.event_id}): a retired key"
            " signs nothing after its transition"
        )
    carried = {t.get("event_id") for t in report.get("key_transitions", []) if isinstance(t, dict)}
    omitted = sorted(t.event_id for t in before if t.event_id not in carried)
    if omitted:
        verdict.reasons.append(
            f"key_transitions: the report omits the key transition(s) at event(s) {omitted} that the site announced"
            f" and its events head {ident.events_head_id} covers"
        )


def verify_site_report(
    data: bytes,
    *,
    pinned: Sequence[PinnedKey],
    previous: bytes | None,
    policy: Policy,
    transitions: Sequence[KnownTransition] = (),
    ident: Identity | None = None,
) -> Verdict:
    """Verify a report from an enrolled site (see the module doc). Never raises on bad input. `ident`:
    `identify(data)` when the caller has it already (the ingestor), so the report is not parsed again."""
    if ident is None:
        try:
            ident = identify(data)
        except Malformed as exc:
            return Verdict(False, [f"malformed: {exc}"])
    try:
        outcome = verify_report(data, trusted=_trusted(ident.site, pinned), previous=previous, policy=policy)
    except (Unusable, KeyFileError, TrustError) as exc:
        return Verdict(False, [f"unusable: {exc}"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return Verdict(False, [f"unusable: {type(exc).__name__}: {str(exc)[:200]}"])
    verdict = Verdict(
        True,
        reasons=[f"{f.rule}: {f.message}" for f in outcome.failures],
        notes=list(outcome.notes),
        signature_ok=outcome.key_id is not None,
        grade=outcome.policy_grade,
        declared_grade=outcome.declared_grade,
    )
    if previous is None and ident.previous_sha256:
        verdict.notes.append("the hub holds no previous report of this site: chain link not checked")
    if verdict.signature_ok:
        _key_in_force(ident, data, transitions, verdict)
    verdict.ok = not verdict.reasons
    return verdict


def follow_transitions(
    data: bytes, *, site: str, pinned: Sequence[PinnedKey], known: Mapping[int, str]
) -> TransitionVerdict:
    """The transitions of an announcement the hub should follow now (see the module doc).

    `known` maps the event ids of transitions already recorded to the SHA-256 of their detail: one seen
    again is skipped; a different statement under a recorded event id is a problem (the site's events
    chain cannot hold two). Raises `Malformed` when the payload is not an announcement at all.
    """
    doc = _loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("transitions"), list):
        raise Malformed("not a key-transition announcement ({site, transitions: [...]})")
    if doc.get("site") != site:
        raise Malformed(f"the announcement is for site {str(doc.get('site'))[:63]!r}, not {site!r}")
    out = TransitionVerdict()
    items: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(doc["transitions"]):
        eid = item.get("event_id") if isinstance(item, dict) else None
        if not isinstance(eid, int) or isinstance(eid, bool) or eid < 1:
            out.problems.append(f"transitions[{i}]: no event id")
            continue
        items.append((eid, item))
    items.sort(key=lambda x: x[0])
    trusted: dict[str, Ed25519PublicKey] = {k.key_id: k.public_key() for k in pinned}
    for eid, item in items:
        detail = {k: item.get(k) for k in ("statement", "new_signature", "old_signature")}
        body = canonical({"event_id": eid, **detail})
        digest = hashlib.sha256(body).hexdigest()
        if eid in known:
            if known[eid] != digest:
                out.problems.append(f"event {eid}: a different transition statement than the one recorded for it")
            continue
        try:
            t = parse_transition(detail, eid)
        except TrustError as exc:
            out.problems.append(f"event {eid}: {exc}")
            continue
        chain = follow(trusted, [(eid, detail)], site=site)
        out.notes.extend(chain.notes)
        if chain.problems:
            out.problems.extend(chain.problems)
            continue
        if t.new_key_id not in chain.trusted:
            out.problems.append(
                f"event {eid}: key {t.new_key_id} is introduced without the signature of a key the hub trusts"
                f" ({t.reason!r}): pin it out of band (gia hub pin {site} --public-key FILE)"
            )
            continue
        trusted[t.new_key_id] = t.new_key
        pem = load_public_pem(str(detail["statement"]["new_public_key"]).encode())  # type: ignore[index]
        assert key_id(pem) == t.new_key_id
        out.followed.append(
            (
                KnownTransition(eid, t.new_key_id, t.old_key_id),
                str(detail["statement"]["new_public_key"]).encode(),  # type: ignore[index]
                body,
            )
        )
    return out
