"""Ingestion: one submitted report (or key transition) decided, stored and logged in one transaction.

The decision, in order (each step's outcome is final):

1. too large -> refused, nothing stored; not a monthly report at all -> quarantine `malformed`;
2. a replay (same site, month and bytes already decided) -> the stored decision, nothing changes;
3. not attributable to an enrolled site's pinned key -> quarantine (`site_mismatch` when the topic or
   URL names another site than the report, `unknown_site`, `revoked_site`, `unpinned_key`,
   `bad_signature`): kept and listed, never counted, and no receipt in the site's name (a forged
   report must not overwrite the genuine site's receipt);
4. verified with the adapter (`verifier.verify_site_report`: the pinned key chain and the key in force
   after the transitions the hub followed, the previous-report chain, the area's policy) -> `rejected`
   with reasons; a report claiming a meter another site owns is rejected too (`channel:`), or
5. the first accepted report of a site-month wins: a different one is a `conflict` unless it is a
   valid reissue (`reissue_of` = the SHA-256 of the report that counts now);
6. accepted -> appended to the log (leaf `site_report`), a new signed tree head;
7. a signed receipt (accepted / rejected with reasons, log index) stored for the MQTT outbox.

The previous-report link: month M names the report of M-1 it followed. When M-1 was reissued after M
was built (the reissue accepted before or after M arrives), M still names the version it saw: any
accepted version of M-1 is a valid link, and continuity is checked against that version.

Key transitions (`submit_key_transition`): the site's announcement is checked by the adapter; each
transition signed by a key the hub trusts is followed (its key pinned, the statement logged), one that
is not is quarantined (`key_transition`) for an operator to pin the new key out of band.

Everything from step 2 on runs inside `db.write_transaction`, so concurrent submissions (threads, or
hub replicas sharing a database) are decided one at a time and a crash leaves either all of it or none.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import Connection, bindparam, insert, or_, select

from gateway.certification.area import channel_key
from gateway.certification.periods import shift_month
from gateway.hub import db, log
from gateway.hub.store import CHANNEL_OWNER_Q, PINNED_KEYS_Q, SITE_WITH_POLICY_Q, TRANSITIONS_Q, HubStore
from gateway.hub.verifier import Identity, Malformed, follow_transitions, identify, verify_site_report

logger = logging.getLogger(__name__)

Via = Literal["mqtt", "http"]
Status = Literal["accepted", "rejected", "quarantined", "refused"]
MAX_REASONS: Final = 50


@dataclass(slots=True)
class Outcome:
    status: Status
    site: str
    month: str | None
    sha256: str
    reasons: list[str] = field(default_factory=list)
    log_index: int | None = None
    receipt: dict[str, Any] | None = None
    replay: bool = False
    quarantine_kind: str | None = None

    def as_json(self) -> dict[str, Any]:
        if self.receipt is not None:
            return {**self.receipt, "replay": self.replay}
        return {
            "status": self.status,
            "site": self.site,
            "month": self.month,
            "report_sha256": self.sha256,
            "reasons": self.reasons,
            "replay": self.replay,
        }


_r = db.reports.c
#: a site-month's accepted reports and the one of SHA-256 `sha` whatever its status, oldest log entry
#: first (a replay is the row of `sha`; what counts is the last accepted one)
MONTH_REPORTS_Q: Final = (
    select(_r.sha256, _r.status, _r.reasons, _r.log_index)
    .where(_r.site == bindparam("site"), _r.month == bindparam("month"))
    .where(or_(_r.sha256 == bindparam("sha"), _r.status == "accepted"))
    .order_by(_r.log_index)
)
#: the previous month's accepted reports with their bytes (the chain is checked against one of them)
PREVIOUS_REPORTS_Q: Final = (
    select(_r.sha256, _r.status, _r.log_index, _r.raw)
    .where(_r.site == bindparam("site"), _r.month == bindparam("month"), _r.status == "accepted")
    .order_by(_r.log_index)
)


class Ingestor:
    def __init__(self, store: HubStore, *, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._reads = db.BatchedReads()

    # -- reports --------------------------------------------------------------------------------------
    def submit_report(self, claimed_site: str, data: bytes, *, via: Via) -> Outcome:
        sha = hashlib.sha256(data).hexdigest()
        if len(data) > self.max_bytes:
            return Outcome("refused", claimed_site, None, sha, [f"report of {len(data)} bytes > {self.max_bytes}"])
        try:
            ident = identify(data)
        except Malformed as exc:
            with db.write_transaction(self.store.engine) as conn:
                return self._quarantine(conn, claimed_site, None, sha, data, via, "malformed", str(exc))
        with db.write_transaction(self.store.engine) as conn:
            return self._decide(conn, claimed_site, ident, data, via)

    def _decide(
        self,
        conn: Connection,
        claimed: str,
        ident: Identity,
        data: bytes,
        via: Via,
    ) -> Outcome:
        s = self.store
        site, month, sha, key_id, reissue_of = ident.site, ident.month, ident.sha256, ident.key_id, ident.reissue_of
        if site != claimed:
            return self._quarantine(
                conn, claimed, month, sha, data, via, "site_mismatch", f"sent as site {claimed!r}, report is {site!r}"
            )
        # Everything the decision reads, in one round trip where the database allows (db.BatchedReads):
        # this very report (a replay) and the month's accepted ones, the site with its area's policy, its
        # pinned keys, the previous month's reports, its key transitions, its channels' owners.
        channels = self._channel_keys(site, ident.doc)
        prev = {"site": site, "month": shift_month(month, -1)}
        month_rows, site_rows, key_rows, prev_rows, transition_rows, *owner_rows = self._reads.run(
            conn,
            [
                (MONTH_REPORTS_Q, {"site": site, "month": month, "sha": sha}),
                (SITE_WITH_POLICY_Q, {"site": site}),
                (PINNED_KEYS_Q, {"site": site}),
                (PREVIOUS_REPORTS_Q, prev),
                (TRANSITIONS_Q, {"site": site}),
                *((CHANNEL_OWNER_Q, {"key": k}) for k, _ in channels),
            ],
        )
        row = next((r for r in month_rows if r.sha256 == sha), None)
        current = self._counting(month_rows)
        if row is not None:  # a replay: the decision stands, nothing changes (it is counted, to be seen)
            s.record_incident(conn, site=site, month=month, kind="replay", sha256=sha, detail=f"again via {via}")
            receipt = s.stored_receipt(conn, site, month, sha)
            was: Status = "accepted" if row.status == "accepted" else "rejected"
            return Outcome(was, site, month, sha, json.loads(row.reasons), row.log_index, receipt, replay=True)
        site_row = site_rows[0] if site_rows else None
        if site_row is None:
            return self._quarantine(conn, site, month, sha, data, via, "unknown_site", f"site {site!r} is not enrolled")
        if site_row.status != "enrolled":
            return self._quarantine(conn, site, month, sha, data, via, "revoked_site", f"site {site!r} is revoked")
        pinned = s.pinned_from(key_rows)
        if not any(k.key_id == key_id for k in pinned):
            return self._quarantine(
                conn, site, month, sha, data, via, "unpinned_key", f"signed by key {key_id}, not pinned for {site!r}"
            )
        verdict = verify_site_report(
            data,
            pinned=pinned,
            previous=self._previous(prev_rows, ident.previous_sha256),
            policy=s.policy_of(site_row.policy),
            transitions=s.transitions_from(transition_rows),
            ident=ident,
        )
        if not verdict.signature_ok:
            return self._quarantine(conn, site, month, sha, data, via, "bad_signature", "; ".join(verdict.reasons))
        owners = {r.channel_key: r for rows in owner_rows for r in rows}
        if verdict.ok:
            verdict.reasons += s.channel_conflicts(owners, site, channels)
            verdict.ok = not verdict.reasons
        reasons = verdict.reasons[:MAX_REASONS]
        status: Status = "accepted" if verdict.ok else "rejected"
        db_status: str = status
        if verdict.ok and current is not None and reissue_of != current:
            status, db_status = "rejected", "conflict"
            reasons = [
                f"conflict: a different report for {month} is stored (sha256 {current}); a replacement must be"
                " a reissue naming it in reissue_of"
            ]
        log_index = tree_size = None
        if status == "accepted":
            log_index, head = s.append_leaf(conn, "site_report", log.site_report_leaf(site, month, sha))
            tree_size = int(head["tree_size"])
            s.claim_channels(conn, site, month, sha, channels, owners)
        conn.execute(
            insert(db.reports).values(
                site=site,
                month=month,
                sha256=sha,
                raw=data,
                received_ms=s.now_ms(),
                via=via,
                status=db_status,
                reasons=json.dumps(reasons),
                key_id=key_id,
                grade=verdict.grade,
                reissue_of=reissue_of,
                log_index=log_index,
            )
        )
        if db_status == "conflict":
            assert current is not None
            conn.execute(
                insert(db.conflicts).values(
                    site=site,
                    month=month,
                    stored_sha256=current,
                    other_sha256=sha,
                    detected_ms=s.now_ms(),
                    detail=reasons[0],
                )
            )
        receipt = s.make_receipt(
            conn,
            site=site,
            month=month,
            sha256=sha,
            status=status,
            reasons=reasons,
            log_index=log_index,
            tree_size=tree_size,
            retain=status == "accepted" or current is None,
        )
        logger.info("report %s %s from %s: %s%s", site, month, via, status, f" ({reasons[0]})" if reasons else "")
        return Outcome(status, site, month, sha, reasons, log_index, receipt)

    @staticmethod
    def _channel_keys(site: str, doc: dict[str, Any]) -> list[tuple[str, str]]:
        """(meter key, channel id) of every serialised channel of a verified report (its parsed `doc`)."""
        out = []
        for ch in doc.get("channels", []):
            key = channel_key(site, ch)
            if key is not None:
                out.append((key[:255], str(ch.get("id"))[:255]))
        return out

    @staticmethod
    def _counting(rows: Sequence[Any]) -> str | None:
        """The SHA-256 of the report that counts for a site-month: the last accepted one (accepted reports
        always have a log index, so the order by it is total among them)."""
        accepted = [r for r in rows if r.status == "accepted"]
        return str(accepted[-1].sha256) if accepted else None

    @staticmethod
    def _previous(accepted: Sequence[Any], named: str | None) -> bytes | None:
        """The report of the previous month to check the chain against, among its `accepted` ones (oldest
        log entry first): the version `named` (a report built before M-1 was reissued names the version
        it followed), else the one counting now."""
        chosen = next((r for r in accepted if r.sha256 == named), accepted[-1] if accepted else None)
        return bytes(chosen.raw) if chosen is not None else None

    def _quarantine(
        self,
        conn: Connection,
        claimed: str,
        month: str | None,
        sha: str,
        data: bytes,
        via: Via,
        kind: str,
        reason: str,
    ) -> Outcome:
        claimed = claimed[:255]
        row = conn.execute(
            select(db.quarantine.c.kind, db.quarantine.c.reason).where(
                db.quarantine.c.claimed_site == claimed, db.quarantine.c.sha256 == sha
            )
        ).first()
        if row is not None:
            return Outcome("quarantined", claimed, month, sha, [row.reason], replay=True, quarantine_kind=row.kind)
        conn.execute(
            insert(db.quarantine).values(
                claimed_site=claimed,
                month=month[:16] if month else None,
                sha256=sha,
                raw=data,
                received_ms=self.store.now_ms(),
                via=via,
                kind=kind,
                reason=reason[:2000],
            )
        )
        logger.warning("quarantined a submission for %r via %s: %s: %s", claimed, via, kind, reason[:200])
        return Outcome("quarantined", claimed, month, sha, [reason], quarantine_kind=kind)

    def note_too_large(self, claimed_site: str, size: int, *, via: Via) -> None:
        """Count a payload refused for its size (nothing of it is kept): visible on the portal."""
        digest = hashlib.sha256(f"too_large:{via}".encode()).hexdigest()
        with db.write_transaction(self.store.engine) as conn:
            self.store.record_incident(
                conn, site=claimed_site, month=None, kind="too_large", sha256=digest,
                detail=f"a {size}-byte payload via {via} refused (limit {self.max_bytes})",
            )  # fmt: skip

    # -- evidence -------------------------------------------------------------------------------------
    def submit_evidence(self, site: str, month: str, data: bytes, *, max_unpacked: int) -> Outcome:
        """An evidence bundle (zip) for a report the hub holds: recomputed from its readings and events with
        the certification verifier under the area's policy; stored with the result (`verified` / `failed`).
        The recomputation runs outside the write lock (it reads a month of readings); only the result is
        written under it."""
        import io
        import zipfile

        from gateway.certification import bundle
        from gateway.certification.verify import verify_report

        sha = hashlib.sha256(data).hexdigest()
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                infos = z.infolist()
                if sum(i.file_size for i in infos) > max_unpacked:
                    return Outcome("refused", site, month, sha, [f"evidence unpacks to more than {max_unpacked} bytes"])
                files: dict[str, bytes] = {}
                for info in infos:
                    parts = info.filename.split("/")
                    key = "/".join(parts[-2:]) if len(parts) >= 2 and parts[-2] == bundle.REPLACED_DIR else parts[-1]
                    files[key] = z.read(info)
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            return Outcome("refused", site, month, sha, [f"not a zip evidence bundle ({exc})"])
        report = files.get(bundle.REPORT)
        if report is None or bundle.READINGS not in files:
            return Outcome("refused", site, month, sha, [f"the bundle lacks {bundle.REPORT} or {bundle.READINGS}"])
        report_sha = hashlib.sha256(report).hexdigest()
        s = self.store
        with s.engine.connect() as conn:
            row = conn.execute(
                select(db.reports.c.status, db.reports.c.month).where(
                    db.reports.c.site == site, db.reports.c.sha256 == report_sha
                )
            ).first()
            if row is None or row.month != month:
                return Outcome(
                    "refused",
                    site,
                    month,
                    sha,
                    [f"no report {report_sha} of {site} for {month} at the hub: push it first"],
                )
            site_row = s.site_row(conn, site)
            policy = s.area_policy(conn, site_row.area)
            trusted = s.pinned_keys(conn, site)
        from gateway.certification.keys import PinnedKey as TrustedKey

        try:
            outcome = verify_report(
                report,
                trusted=[TrustedKey(k.key_id, k.public_key(), site) for k in trusted],
                evidence=files,
                policy=policy,
            )
            reasons = [f"{f.rule}: {f.message}" for f in outcome.failures][:MAX_REASONS]
        except Exception as exc:  # an unusable bundle is a refusal of the bundle, not of the hub
            reasons = [f"unusable: {type(exc).__name__}: {str(exc)[:300]}"]
        status = "verified" if not reasons else "failed"
        with db.write_transaction(s.engine) as conn:
            have = conn.execute(
                select(db.evidence.c.status).where(
                    db.evidence.c.site == site, db.evidence.c.report_sha256 == report_sha
                )
            ).first()
            if have is None:
                conn.execute(
                    insert(db.evidence).values(
                        site=site,
                        report_sha256=report_sha,
                        month=month,
                        zip=data,
                        status=status,
                        reasons=json.dumps(reasons),
                        received_ms=s.now_ms(),
                    )
                )
        logger.info("evidence for %s %s (%s): %s", site, month, report_sha[:16], status)
        return Outcome("accepted" if status == "verified" else "rejected", site, month, report_sha, reasons)

    # -- key transitions ------------------------------------------------------------------------------
    def submit_key_transition(self, claimed_site: str, data: bytes, *, via: Via) -> Outcome:
        """The site's key-transition announcement (`{site, transitions: [...]}`): transitions signed by a key
        the hub trusts are followed; anything else is quarantined (`key_transition`) and listed."""
        sha = hashlib.sha256(data).hexdigest()
        if len(data) > self.max_bytes:
            return Outcome("refused", claimed_site, None, sha, [f"statement of {len(data)} bytes > {self.max_bytes}"])
        s = self.store
        with db.write_transaction(s.engine) as conn:
            site_row = s.site_row(conn, claimed_site)
            if site_row is None or site_row.status != "enrolled":
                kind = "unknown_site" if site_row is None else "revoked_site"
                return self._quarantine(
                    conn, claimed_site, None, sha, data, via, kind, f"site {claimed_site!r} is {kind}"
                )
            try:
                verdict = follow_transitions(
                    data,
                    site=claimed_site,
                    pinned=s.pinned_keys(conn, claimed_site),
                    known=s.transition_digests(conn, claimed_site),
                )
            except Malformed as exc:
                return self._quarantine(conn, claimed_site, None, sha, data, via, "malformed", str(exc))
            last = None
            for t, pem, detail in verdict.followed:
                last = s.record_transition(conn, claimed_site, t, pem, detail)
                logger.info("site %s: key %s in force from event %d", claimed_site, t.new_key_id[:16], t.event_id)
            if verdict.problems:
                out = self._quarantine(
                    conn, claimed_site, None, sha, data, via, "key_transition", "; ".join(verdict.problems)[:2000]
                )
                out.log_index = last
                return out
            return Outcome("accepted", claimed_site, None, sha, [], last, replay=not verdict.followed)
