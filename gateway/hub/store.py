"""`HubStore`: the hub's records (areas, enrolled sites and their pinned keys, the log, tree heads,
receipts) over the database of `db.py`. Synchronous (SQLAlchemy Core); async callers use a thread.

The log lives in `log_leaves` (append-only, dense 0-based indexes) and is only ever extended inside
`db.write_transaction`, i.e. under the database's write lock, so any number of hub processes sharing
one database append one at a time and see the same tree. Each append signs a new tree head in the same
transaction: a leaf is never visible without a signed head that covers it. Leaf hashes are cached in
memory (they never change) and topped up from the table under the lock before each use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from gateway.certification.exact import iso_ms
from gateway.certification.policy import Policy, policy_from_mapping
from gateway.certification.signing import KeyFileError, KeyStore, canonical, key_id, load_public_pem
from gateway.credentials import token_digest
from gateway.hub import db, log
from gateway.hub.config import AreaConfig, HubConfig
from gateway.hub.verifier import KnownTransition, PinnedKey

HUB_KEY_FILE: Final = "hub-ed25519.pem"
RECEIPT_SCHEMA: Final = "gia-hub-receipt/1"
#: hub_meta key: the id of the hub key every replica on the database signs with.
HUB_KEY_META: Final = "hub_key_id"


class HubError(Exception):
    """An operation the hub refuses (unknown area, site already enrolled, ...): the message says why."""


class HubKeyMismatch(db.DatabaseError):
    """This process's hub key is not the one the database's log is signed with (or it has none)."""


class HubKeyStore(KeyStore):
    """The hub's Ed25519 key (signs tree heads, receipts and later area reports), as the site's KeyStore."""

    @property
    def path(self) -> Path:
        return self._dir / HUB_KEY_FILE


# Reads with named parameters (`db.BatchedReads` runs several in one round trip; the store's own methods
# use the same statements, so each read is written once).
#: a site's row with its area's policy JSON as `policy` (None for an unknown area)
SITE_WITH_POLICY_Q: Final = (
    select(db.sites, db.areas.c.policy)
    .outerjoin(db.areas, db.areas.c.id == db.sites.c.area)
    .where(db.sites.c.id == bindparam("site"))
)
#: a site's pinned key chain, enrolled key first
PINNED_KEYS_Q: Final = (
    select(db.site_keys.c.key_id, db.site_keys.c.public_pem)
    .where(db.site_keys.c.site == bindparam("site"))
    .order_by(db.site_keys.c.position)
)
#: the key transitions the hub followed for a site
TRANSITIONS_Q: Final = (
    select(db.key_transitions.c.event_id, db.key_transitions.c.new_key_id, db.key_transitions.c.old_key_id)
    .where(db.key_transitions.c.site == bindparam("site"))
    .order_by(db.key_transitions.c.event_id)
)
#: the owner of one channel key (no row: nobody owns it yet)
CHANNEL_OWNER_Q: Final = select(db.channel_owners).where(db.channel_owners.c.channel_key == bindparam("key"))


@dataclass(frozen=True, slots=True)
class Enrolled:
    site: str
    area: str
    key_id: str
    token: str  # the per-site push token: shown once, stored only as its SHA-256


@dataclass(frozen=True, slots=True)
class SiteInfo:
    site: str
    area: str
    status: str
    key_ids: list[str]
    enrolled_at: str
    reports: int
    last_month: str | None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _token_hash(token: str) -> str:
    """The push token's digest as stored (gateway/credentials.py: the same digest as the API tokens')."""
    return token_digest(token).hex()


def policy_json(policy: Policy) -> str:
    return canonical(policy.to_json()).decode()


class HubStore:
    def __init__(self, engine: Engine, keys: KeyStore, *, now_ms: Callable[[], int] = _now_ms) -> None:
        self.engine = engine
        self.keys = keys
        self.now_ms = now_ms
        self._leaves: list[bytes] = []
        self._cache_lock = threading.Lock()

    @classmethod
    def open(cls, cfg: HubConfig, *, now_ms: Callable[[], int] = _now_ms) -> HubStore:
        """Connect, migrate, load the configured areas; the caller closes it."""
        engine = db.create_hub_engine(cfg.database_config)
        try:
            db.migrate(engine)
            store = cls(engine, HubKeyStore(cfg.data_dir / "keys"), now_ms=now_ms)
            store.check_hub_key()
            store.sync_areas(cfg.areas)
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def check_hub_key(self) -> None:
        """Every process on this database signs with the same hub key, or none starts.

        Replicas (and `gia hub` commands run on another machine) each read `<data_dir>/keys/hub-ed25519.pem`;
        a replica whose file is missing would otherwise make a key of its own and sign tree heads, receipts
        and area reports that certifiers, who pinned the first key, reject. The first process records the
        key id in `hub_meta.hub_key_id` (under the write lock); later ones must hold that key, and one
        without a key file never creates one when the database already names a key."""
        with db.write_transaction(self.engine) as conn:
            row = conn.execute(select(db.hub_meta.c.value).where(db.hub_meta.c.key == HUB_KEY_META)).first()
            if row is None:
                conn.execute(insert(db.hub_meta).values(key=HUB_KEY_META, value=key_id(self.keys.public_key())))
                return
            if not self.keys.exists():
                raise HubKeyMismatch(
                    f"{self.keys.path} is missing, and this hub database is signed by hub key {row.value}: copy"
                    " keys/hub-ed25519.pem (mode 0600) from a replica that has it into this replica's data_dir;"
                    " a new key would sign a log that certifiers cannot check"
                )
            mine = key_id(self.keys.public_key())
            if mine != row.value:
                raise HubKeyMismatch(
                    f"{self.keys.path} holds hub key {mine}, but this hub database is signed by hub key"
                    f" {row.value}: every replica must use the same key file; copy keys/hub-ed25519.pem from"
                    " the replica that made it (or point hub.data_dir at the right directory)"
                )

    # -- areas and sites ------------------------------------------------------------------------------
    def sync_areas(self, areas: Sequence[AreaConfig]) -> None:
        """The configured areas (and their policies) into the database; areas are never deleted."""
        with db.write_transaction(self.engine) as conn:
            have = {r.id: r for r in conn.execute(select(db.areas))}
            for a in areas:
                pol = policy_json(a.grading_policy())
                definition = canonical(a.definition_json()).decode()
                row = have.get(a.id)
                values = {"name": a.name, "policy": pol, "definition": definition, "updated_ms": self.now_ms()}
                if row is None:
                    conn.execute(insert(db.areas).values(id=a.id, **values))
                elif (row.policy, row.name, row.definition) != (pol, a.name, definition):
                    conn.execute(update(db.areas).where(db.areas.c.id == a.id).values(**values))

    def area_policy(self, conn: Connection, area: str) -> Policy:
        """The area's grading policy (the certification `Policy`; the scheme's defaults for an unknown area)."""
        row = conn.execute(select(db.areas.c.policy).where(db.areas.c.id == area)).first()
        return self.policy_of(row[0] if row is not None else None)

    @staticmethod
    def policy_of(stored: str | None) -> Policy:
        """The `Policy` of an area's stored policy JSON (the scheme's defaults when there is none)."""
        return policy_from_mapping(json.loads(stored)) if stored is not None else Policy()

    def areas(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                {
                    "id": r.id,
                    "name": r.name,
                    "policy": json.loads(r.policy),
                    "definition": json.loads(r.definition or "{}"),
                }
                for r in conn.execute(select(db.areas).order_by(db.areas.c.id))
            ]

    def enroll(self, site: str, area: str, public_pem: bytes) -> Enrolled:
        try:
            kid = key_id(load_public_pem(public_pem))
        except KeyFileError as exc:
            raise HubError(f"public key: {exc}") from None
        token = secrets.token_urlsafe(32)
        with db.write_transaction(self.engine) as conn:
            if conn.execute(select(db.areas.c.id).where(db.areas.c.id == area)).first() is None:
                raise HubError(f"area {area!r} is not configured; add it under hub.areas")
            row = conn.execute(select(db.sites).where(db.sites.c.id == site)).first()
            if row is not None:
                raise HubError(
                    f"site {site!r} is already {row.status} (area {row.area}); keys change by key transition,"
                    " a revoked site stays revoked"
                )
            now = self.now_ms()
            conn.execute(
                insert(db.sites).values(
                    id=site, area=area, status="enrolled", token_sha256=_token_hash(token), enrolled_ms=now
                )
            )
            conn.execute(
                insert(db.site_keys).values(
                    site=site, position=0, key_id=kid, public_pem=public_pem.decode(), pinned_ms=now, via="enroll"
                )
            )
        return Enrolled(site, area, kid, token)

    def revoke(self, site: str, reason: str = "") -> None:
        with db.write_transaction(self.engine) as conn:
            row = conn.execute(select(db.sites.c.status).where(db.sites.c.id == site)).first()
            if row is None:
                raise HubError(f"site {site!r} is not enrolled")
            if row.status == "revoked":
                return
            conn.execute(
                update(db.sites)
                .where(db.sites.c.id == site)
                .values(status="revoked", revoked_ms=self.now_ms(), revoke_reason=reason, token_sha256=None)
            )

    def site_row(self, conn: Connection, site: str) -> Any:
        return conn.execute(select(db.sites).where(db.sites.c.id == site)).first()

    def pinned_keys(self, conn: Connection, site: str) -> list[PinnedKey]:
        return self.pinned_from(conn.execute(PINNED_KEYS_Q, {"site": site}).all())

    @staticmethod
    def pinned_from(rows: Sequence[Any]) -> list[PinnedKey]:
        return [PinnedKey(r.key_id, r.public_pem.encode()) for r in rows]

    def area_pinned_keys(self, conn: Connection, area: str) -> dict[str, list[PinnedKey]]:
        """`pinned_keys` of every site of an area, in one query (an area report over 500 sites made 500
        round trips for them)."""
        rows = conn.execute(
            select(db.site_keys.c.site, db.site_keys.c.key_id, db.site_keys.c.public_pem)
            .join(db.sites, db.sites.c.id == db.site_keys.c.site)
            .where(db.sites.c.area == area)
            .order_by(db.site_keys.c.site, db.site_keys.c.position)
        )
        out: dict[str, list[PinnedKey]] = {}
        for r in rows:
            out.setdefault(r.site, []).append(PinnedKey(r.key_id, r.public_pem.encode()))
        return out

    def known_transitions(self, conn: Connection, site: str) -> list[KnownTransition]:
        return self.transitions_from(conn.execute(TRANSITIONS_Q, {"site": site}).all())

    @staticmethod
    def transitions_from(rows: Sequence[Any]) -> list[KnownTransition]:
        return [KnownTransition(int(r.event_id), r.new_key_id, r.old_key_id) for r in rows]

    def transition_digests(self, conn: Connection, site: str) -> dict[int, str]:
        rows = conn.execute(
            select(db.key_transitions.c.event_id, db.key_transitions.c.sha256).where(db.key_transitions.c.site == site)
        )
        return {int(r.event_id): r.sha256 for r in rows}

    def record_transition(self, conn: Connection, site: str, t: KnownTransition, new_pem: bytes, detail: bytes) -> int:
        """Follow one transition (in the caller's write transaction): its new key joins the pinned chain
        (unless pinned already), the statement is kept and logged. Returns its leaf index."""
        digest = hashlib.sha256(detail).hexdigest()
        index, _head = self.append_leaf(conn, "key_transition", log.key_transition_leaf(site, digest))
        now = self.now_ms()
        conn.execute(
            insert(db.key_transitions).values(
                site=site,
                event_id=t.event_id,
                new_key_id=t.new_key_id,
                old_key_id=t.old_key_id,
                sha256=digest,
                detail=detail,
                log_index=index,
                received_ms=now,
            )
        )
        if t.new_key_id not in {k.key_id for k in self.pinned_keys(conn, site)}:
            position = conn.execute(
                select(func.coalesce(func.max(db.site_keys.c.position), -1) + 1).where(db.site_keys.c.site == site)
            ).scalar_one()
            conn.execute(
                insert(db.site_keys).values(
                    site=site,
                    position=int(position),
                    key_id=t.new_key_id,
                    public_pem=new_pem.decode(),
                    pinned_ms=now,
                    via="transition",
                    statement=detail,
                    log_index=index,
                )
            )
        return index

    def pin_key(self, site: str, public_pem: bytes, reason: str) -> str:
        """Pin another key for an enrolled site, out of band (its old key was lost: the transition it
        announced was not signed by a key the hub trusts). The site's quarantined announcements are then
        followed again: the transition that introduced this key becomes the point from which it is the
        key in force. Returns the key id."""
        try:
            kid = key_id(load_public_pem(public_pem))
        except KeyFileError as exc:
            raise HubError(f"public key: {exc}") from None
        if not reason.strip():
            raise HubError("pinning a key needs a reason (--reason TEXT): certifiers read it")
        with db.write_transaction(self.engine) as conn:
            row = self.site_row(conn, site)
            if row is None or row.status != "enrolled":
                raise HubError(f"site {site!r} is not enrolled")
            if kid in {k.key_id for k in self.pinned_keys(conn, site)}:
                return kid
            position = conn.execute(
                select(func.coalesce(func.max(db.site_keys.c.position), -1) + 1).where(db.site_keys.c.site == site)
            ).scalar_one()
            conn.execute(
                insert(db.site_keys).values(
                    site=site,
                    position=int(position),
                    key_id=kid,
                    public_pem=public_pem.decode(),
                    pinned_ms=self.now_ms(),
                    via="pin",
                    statement=json.dumps({"reason": reason}).encode(),
                )
            )
            self._refollow(conn, site)
        return kid

    def _refollow(self, conn: Connection, site: str) -> None:
        from gateway.hub.verifier import Malformed, follow_transitions

        rows = conn.execute(
            select(db.quarantine.c.raw)
            .where(db.quarantine.c.claimed_site == site, db.quarantine.c.kind == "key_transition")
            .order_by(db.quarantine.c.id)
        ).all()
        for r in rows:
            try:
                verdict = follow_transitions(
                    bytes(r.raw),
                    site=site,
                    pinned=self.pinned_keys(conn, site),
                    known=self.transition_digests(conn, site),
                )
            except Malformed:
                continue
            for t, pem, detail in verdict.followed:
                self.record_transition(conn, site, t, pem, detail)

    # -- channels, incidents ----------------------------------------------------------------------------
    @staticmethod
    def channel_conflicts(owners: dict[str, Any], site: str, keys: Sequence[tuple[str, str]]) -> list[str]:
        """Reasons for every (channel key, channel id) another site already owns."""
        owned = {k: r for k, r in owners.items() if r.site != site}
        return [
            f"channel: {cid} ({k}) belongs to site {owned[k].site!r} (its channel {owned[k].channel}, first in"
            f" {owned[k].first_month}): a meter is counted in one site only"
            for k, cid in keys
            if k in owned
        ]

    def claim_channels(
        self,
        conn: Connection,
        site: str,
        month: str,
        sha256: str,
        keys: Sequence[tuple[str, str]],
        owners: dict[str, Any],
    ) -> None:
        """Record this site as the owner of its channels not owned yet (one statement for all of them)."""
        new = {k: cid for k, cid in keys if k not in owners}
        if new:
            conn.execute(
                insert(db.channel_owners),
                [
                    {"channel_key": k, "site": site, "channel": cid, "first_month": month, "report_sha256": sha256}
                    for k, cid in new.items()
                ],
            )

    def record_incident(
        self, conn: Connection, *, site: str, month: str | None, kind: str, sha256: str, detail: str
    ) -> None:
        """Count a refusal that changes nothing else (a replay, an oversize payload): one row per
        (site, kind, payload), its count and last time moving."""
        site = site[:255]
        now = self.now_ms()
        row = conn.execute(
            select(db.incidents.c.id).where(
                db.incidents.c.site == site, db.incidents.c.kind == kind, db.incidents.c.sha256 == sha256
            )
        ).first()
        if row is None:
            conn.execute(
                insert(db.incidents).values(
                    site=site, month=month, kind=kind, sha256=sha256, detail=detail[:2000], count=1,
                    first_ms=now, last_ms=now,
                )
            )  # fmt: skip
        else:
            conn.execute(
                update(db.incidents)
                .where(db.incidents.c.id == row.id)
                .values(count=db.incidents.c.count + 1, last_ms=now)
            )

    def incidents(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                {
                    "site": r.site,
                    "month": r.month,
                    "kind": r.kind,
                    "sha256": r.sha256,
                    "detail": r.detail,
                    "count": int(r._mapping["count"]),
                    "first_at": iso_ms(r.first_ms),
                    "last_at": iso_ms(r.last_ms),
                }
                for r in conn.execute(select(db.incidents).order_by(db.incidents.c.id))
            ]

    def site_for_token(self, token: str) -> str | None:
        """The enrolled site a push token belongs to, or None. Only SHA-256 hashes of tokens are stored,
        and the lookup is by hash: timing reveals nothing about a token an attacker does not hold."""
        digest = _token_hash(token)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.sites.c.id, db.sites.c.token_sha256).where(
                    db.sites.c.token_sha256 == digest, db.sites.c.status == "enrolled"
                )
            ).first()
        return str(row.id) if row is not None and hmac.compare_digest(row.token_sha256, digest) else None

    def authenticate_site(self, site: str, token: str) -> bool:
        return self.site_for_token(token) == site

    def sites(self) -> list[SiteInfo]:
        with self.engine.connect() as conn:
            keys: dict[str, list[str]] = {}
            for r in conn.execute(select(db.site_keys.c.site, db.site_keys.c.key_id).order_by(db.site_keys.c.position)):
                keys.setdefault(r.site, []).append(r.key_id)
            counts = {
                r.site: (r.n, r.last)
                for r in conn.execute(
                    select(db.reports.c.site, func.count().label("n"), func.max(db.reports.c.month).label("last"))
                    .where(db.reports.c.status == "accepted")
                    .group_by(db.reports.c.site)
                )
            }
            return [
                SiteInfo(
                    r.id,
                    r.area,
                    r.status,
                    keys.get(r.id, []),
                    iso_ms(r.enrolled_ms),
                    counts.get(r.id, (0, None))[0],
                    counts.get(r.id, (0, None))[1],
                )
                for r in conn.execute(select(db.sites).order_by(db.sites.c.id))
            ]

    def quarantined(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                {
                    "id": r.id,
                    "claimed_site": r.claimed_site,
                    "month": r.month,
                    "sha256": r.sha256,
                    "kind": r.kind,
                    "reason": r.reason,
                    "received_at": iso_ms(r.received_ms),
                    "via": r.via,
                }
                for r in conn.execute(select(db.quarantine).order_by(db.quarantine.c.id))
            ]

    def conflicts(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                {
                    "site": r.site,
                    "month": r.month,
                    "stored_sha256": r.stored_sha256,
                    "other_sha256": r.other_sha256,
                    "detail": r.detail,
                    "detected_at": iso_ms(r.detected_ms),
                }
                for r in conn.execute(select(db.conflicts).order_by(db.conflicts.c.id))
            ]

    # -- the log --------------------------------------------------------------------------------------
    def _leaf_hashes(self, conn: Connection) -> list[bytes]:
        """Every leaf hash in index order: the cache topped up from the table (call under the lock)."""
        with self._cache_lock:
            have = len(self._leaves)
            rows = conn.execute(
                select(db.log_leaves.c.idx, db.log_leaves.c.leaf_hash)
                .where(db.log_leaves.c.idx >= have)
                .order_by(db.log_leaves.c.idx)
            ).all()
            for r in rows:
                if r.idx != len(self._leaves):
                    self._leaves = []  # a gap: never trust the cache, reload next time
                    raise db.DatabaseError(f"log leaf {len(self._leaves)} is missing (found {r.idx})")
                self._leaves.append(bytes(r.leaf_hash))
            return list(self._leaves)

    def append_leaf(self, conn: Connection, kind: str, leaf_input: bytes) -> tuple[int, dict[str, Any]]:
        """Append one leaf and sign the new tree head, in the caller's write transaction.

        Returns (leaf index, signed tree head). The in-memory cache is extended only by a later read,
        so a rolled-back append leaves nothing behind.
        """
        hashes = self._leaf_hashes(conn)
        index = len(hashes)
        lh = log.leaf_hash(leaf_input)
        now = self.now_ms()
        conn.execute(
            insert(db.log_leaves).values(idx=index, kind=kind, leaf_input=leaf_input, leaf_hash=lh, created_ms=now)
        )
        hashes.append(lh)
        root = log.root_from_hashes(hashes)
        head = self.keys.sign_report(log.tree_head_body(len(hashes), root, iso_ms(now)))
        conn.execute(
            insert(db.tree_heads).values(tree_size=len(hashes), root=root.hex(), head=canonical(head), created_ms=now)
        )
        return index, head

    def tree_head(self, tree_size: int | None = None) -> dict[str, Any] | None:
        """The latest signed tree head (or the one of `tree_size`); None while the log is empty."""
        with self.engine.connect() as conn:
            q = select(db.tree_heads.c.head)
            q = (
                q.where(db.tree_heads.c.tree_size == tree_size)
                if tree_size is not None
                else q.order_by(db.tree_heads.c.tree_size.desc()).limit(1)
            )
            row = conn.execute(q).first()
        return json.loads(row[0]) if row is not None else None

    def leaf_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(db.log_leaves)).scalar_one())

    def inclusion_proof(
        self, site: str, month: str, *, sha256: str | None = None, tree_size: int | None = None
    ) -> dict[str, Any]:
        """The authoritative (latest accepted) report of a site-month, its leaf and audit path under the
        latest tree head (or the head of `tree_size`). Raises HubError when there is none."""
        with self.engine.connect() as conn:
            q = select(db.reports.c.sha256, db.reports.c.log_index).where(
                db.reports.c.site == site, db.reports.c.month == month, db.reports.c.status == "accepted"
            )
            if sha256 is not None:
                q = q.where(db.reports.c.sha256 == sha256)
            row = conn.execute(q.order_by(db.reports.c.log_index.desc()).limit(1)).first()
            if row is None:
                raise HubError(f"no accepted report of site {site!r} for {month} in the log")
            return {"site": site, "month": month, **self._proof(conn, row.sha256, int(row.log_index), tree_size)}

    def area_inclusion_proof(self, area: str, period: str, *, tree_size: int | None = None) -> dict[str, Any]:
        """The latest area report of a period (YYYY-MM or YYYY), its leaf and audit path."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.area_reports.c.sha256, db.area_reports.c.log_index)
                .where(db.area_reports.c.area == area, db.area_reports.c.period == period)
                .order_by(db.area_reports.c.version.desc())
                .limit(1)
            ).first()
            if row is None:
                raise HubError(f"no area report of area {area!r} for {period} in the log")
            return {"area": area, "period": period, **self._proof(conn, row.sha256, int(row.log_index), tree_size)}

    def _proof(self, conn: Connection, sha: str, index: int, tree_size: int | None) -> dict[str, Any]:
        q = select(db.tree_heads.c.head)
        q = (
            q.where(db.tree_heads.c.tree_size == tree_size)
            if tree_size is not None
            else q.order_by(db.tree_heads.c.tree_size.desc()).limit(1)
        )
        head_row = conn.execute(q).first()
        if head_row is None:
            raise HubError(f"the hub signed no tree head of size {tree_size}")
        head = json.loads(head_row[0])
        hashes = self._leaf_hashes(conn)[: head["tree_size"]]
        if index >= len(hashes):
            raise HubError(f"leaf {index} is not in the tree of size {len(hashes)}")
        return {
            "report_sha256": sha,
            "leaf_index": index,
            "tree_size": len(hashes),
            "leaf_hash": hashes[index].hex(),
            "audit_path": [h.hex() for h in log.inclusion_proof(index, hashes)],
            "tree_head": head,
        }

    def consistency_proof(self, first: int, second: int | None = None) -> dict[str, Any]:
        with self.engine.connect() as conn:
            hashes = self._leaf_hashes(conn)
        size = len(hashes) if second is None else second
        if not 0 <= first <= size <= len(hashes):
            raise HubError(f"no consistency proof from tree size {first} to {size} (the log has {len(hashes)})")
        return {
            "first": first,
            "second": size,
            "proof": [h.hex() for h in log.consistency_proof(first, hashes[:size])],
        }

    # -- receipts -------------------------------------------------------------------------------------
    def make_receipt(
        self,
        conn: Connection,
        *,
        site: str,
        month: str,
        sha256: str,
        status: str,
        reasons: Sequence[str],
        log_index: int | None,
        tree_size: int | None,
        retain: bool = True,
    ) -> dict[str, Any]:
        """Sign and store a receipt (the MQTT outbox picks it up); one per site, month and report."""
        now = self.now_ms()
        body = self.keys.sign_report(
            {
                "schema": RECEIPT_SCHEMA,
                "site": site,
                "month": month,
                "report_sha256": sha256,
                "status": status,
                "reasons": list(reasons),
                "log_index": log_index,
                "tree_size": tree_size,
                "received_at": iso_ms(now),
            }
        )
        conn.execute(
            insert(db.receipts).values(
                site=site,
                month=month,
                report_sha256=sha256,
                status=status,
                body=canonical(body),
                created_ms=now,
                retain=retain,
            )
        )
        return body

    def stored_receipt(self, conn: Connection, site: str, month: str, sha256: str) -> dict[str, Any] | None:
        row = conn.execute(
            select(db.receipts.c.body).where(
                db.receipts.c.site == site, db.receipts.c.month == month, db.receipts.c.report_sha256 == sha256
            )
        ).first()
        return json.loads(row[0]) if row is not None else None

    def unpublished_receipts(self, limit: int = 100) -> list[tuple[int, str, str, bytes, bool]]:
        """(id, site, month, body, retain) of receipts not yet published on MQTT, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    db.receipts.c.id, db.receipts.c.site, db.receipts.c.month, db.receipts.c.body, db.receipts.c.retain
                )
                .where(db.receipts.c.published_ms.is_(None))
                .order_by(db.receipts.c.id)
                .limit(limit)
            ).all()
        return [(int(r.id), r.site, r.month, bytes(r.body), bool(r.retain)) for r in rows]

    def mark_published(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with db.write_transaction(self.engine) as conn:
            conn.execute(update(db.receipts).where(db.receipts.c.id.in_(ids)).values(published_ms=self.now_ms()))

    def report_bytes(self, site: str, month: str) -> bytes | None:
        """The authoritative report of a site-month as received."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.reports.c.raw)
                .where(db.reports.c.site == site, db.reports.c.month == month, db.reports.c.status == "accepted")
                .order_by(db.reports.c.log_index.desc())
                .limit(1)
            ).first()
        return bytes(row[0]) if row is not None else None
