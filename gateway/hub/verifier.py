"""The one adapter between the hub and the certification package's verifier.

Everything the hub needs to know about a site report or a key-transition statement goes through the
functions here, so the trust rework (#14: key transitions in the events chain, `--trusted-keys`,
`--policy`, reissues with `reissue_of`/`reissue_reason`) changes this module and nothing else in
`gateway/hub/`. What it does today, over `gateway.certification.verify` as it is:

* `identify(data)` — who the report says it is from (site, month, signing key id, previous-report hash,
  `reissue_of`), without trusting any of it; raises `Malformed` when it is not a report at all.
* `verify_site_report(data, pinned=..., previous=..., policy=...)` — the signature against the site's
  *pinned* key chain (never a key shipped with the report), every internal rule of `verify_report`, the
  previous-report chain and continuity when the hub holds the previous month, and the grade under the
  **area's** policy: a report whose self-declared grade is better than the policy gives is refused.
  Until #14 adds `--policy`, the policy grade is recomputed here from the per-channel figures the
  report carries (boundary methods, energy coverage, estimated share, validation results), with the
  same rules as `compute.py`.
* `verify_key_transition(statement, pinned=...)` — not verifiable until #14 fixes the statement format:
  returns a refusal, so transitions are quarantined and listed, never followed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from gateway.certification.periods import BadMonth, month_period
from gateway.certification.signing import KeyFileError, load_public_pem
from gateway.certification.verify import Unusable, verify_report

GRADES: Final = ("verified", "provisional", "unverified")


class Malformed(Exception):
    """Not a site report at all (not JSON, not our schema, no site or month)."""


@dataclass(frozen=True, slots=True)
class PinnedKey:
    key_id: str
    public_pem: bytes


@dataclass(frozen=True, slots=True)
class Policy:
    """The area's grading thresholds (decimal strings, as in the report's method)."""

    min_energy_coverage: str = "0.99"
    max_estimated_share: str = "0.01"


@dataclass(frozen=True, slots=True)
class Identity:
    site: str
    month: str
    key_id: str | None
    previous_sha256: str | None
    reissue_of: str | None
    sha256: str


@dataclass(slots=True)
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The signature verified against a pinned key: the report is the site's own (else it is not
    #: attributable to the site and must not produce a receipt in its name).
    signature_ok: bool = False
    grade: str | None = None  # under the area's policy
    declared_grade: str | None = None


@dataclass(slots=True)
class TransitionVerdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    new_key: PinnedKey | None = None


def identify(data: bytes) -> Identity:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"not JSON ({exc})") from None
    except RecursionError:  # json's C scanner recurses per nesting level: '[' * 200000 gets here
        raise Malformed("not JSON (nested too deeply)") from None
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
    key_id = sig.get("key_id") if isinstance(sig, dict) and isinstance(sig.get("key_id"), str) else None
    prev = doc.get("previous_report_sha256")
    reissue = doc.get("reissue_of")
    return Identity(
        site=site_id,
        month=month,
        key_id=key_id,
        previous_sha256=prev if isinstance(prev, str) else None,
        reissue_of=reissue if isinstance(reissue, str) else None,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _ge(a: str, b: str) -> bool:
    return Decimal(a) >= Decimal(b)


def policy_grade(report: dict[str, Any], policy: Policy) -> tuple[str, list[str]]:
    """The report's grade recomputed under `policy` from its per-channel figures (the worst channel's)."""
    worst = 0
    reasons: list[str] = []
    for ch in report.get("channels", []):
        cid = ch.get("id")
        grade = 0
        for side in ("opening", "closing"):
            method = (ch.get(side) or {}).get("method")
            if method == "missing":
                grade = 2
                reasons.append(f"{cid}: {side} boundary missing")
            elif method != "measured":
                grade = max(grade, 1)
        total = int(ch.get("energy_wh", 0))
        cov = str((ch.get("coverage") or {}).get("energy", "0"))
        if total and not _ge(cov, policy.min_energy_coverage):
            grade = max(grade, 1)
            reasons.append(f"{cid}: energy coverage {cov} < the area's {policy.min_energy_coverage}")
        est = Decimal(int(ch.get("estimated_wh", 0))) / Decimal(total) if total else Decimal(0)
        if est > Decimal(policy.max_estimated_share):
            grade = max(grade, 1)
            reasons.append(f"{cid}: estimated share {est:.6f} > the area's {policy.max_estimated_share}")
        if any(v.get("status") == "fail" for v in ch.get("validation", [])):
            grade = max(grade, 1)
        worst = max(worst, grade)
    if not report.get("channels"):
        worst = 2
    if not (report.get("period") or {}).get("complete", False):
        worst = max(worst, 1)
        reasons.append("month not closed")
    return GRADES[worst], reasons


def verify_site_report(data: bytes, *, pinned: Sequence[PinnedKey], previous: bytes | None, policy: Policy) -> Verdict:
    """Verify a report from an enrolled site (see the module doc). Never raises on bad input."""
    try:
        ident = identify(data)
    except Malformed as exc:
        return Verdict(False, [f"malformed: {exc}"])
    key = next((k for k in pinned if k.key_id == ident.key_id), None)
    if key is None:
        return Verdict(False, [f"signature: key {ident.key_id} is not pinned for site {ident.site}"])
    try:
        public = load_public_pem(key.public_pem)
        outcome = verify_report(data, public_key=public, previous=previous)
    except (Unusable, KeyFileError) as exc:
        return Verdict(False, [f"unusable: {exc}"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # e.g. a float where only ints are signed
        return Verdict(False, [f"unusable: {type(exc).__name__}: {str(exc)[:200]}"])
    verdict = Verdict(True, notes=list(outcome.notes))
    verdict.reasons = [f"{f.rule}: {f.message}" for f in outcome.failures]
    verdict.signature_ok = not any(f.rule in ("signature", "no_float") for f in outcome.failures)
    if previous is None and ident.previous_sha256:
        verdict.notes.append("the hub holds no previous report of this site: chain link not checked")
    report = json.loads(data)
    try:
        grade, why = policy_grade(report, policy)
    except (TypeError, ValueError, AttributeError, InvalidOperation) as exc:
        verdict.reasons.append(f"policy: cannot grade the report ({type(exc).__name__}: {exc})")
        grade, why = "unverified", []
    declared = (report.get("quality") or {}).get("grade")
    verdict.grade, verdict.declared_grade = grade, declared if isinstance(declared, str) else None
    if declared not in GRADES:
        verdict.reasons.append(f"quality.grade: {declared!r} is not a grade")
    elif GRADES.index(declared) < GRADES.index(grade):
        verdict.reasons.append(
            f"policy: the report declares {declared!r} but the area's policy grades it {grade!r}"
            + (f" ({'; '.join(why[:3])})" if why else "")
        )
    verdict.ok = not verdict.reasons
    return verdict


def verify_key_transition(statement: bytes, *, pinned: Sequence[PinnedKey]) -> TransitionVerdict:
    """Seam for #14: the statement format is not fixed yet, so no transition is followed."""
    return TransitionVerdict(
        False, ["key transitions cannot be verified by this release (format pending, issue #14): quarantined"]
    )
