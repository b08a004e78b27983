"""Area reports at the hub: monthly reports when every site is in (or at the deadline, naming the missing),
yearly roll-ups, each signed by the hub's key and appended to the transparency log.

The arithmetic is `gateway.certification.area` (`aggregate`, `rollup`), so a certifier re-adds an area
report offline with `gia verify` from the area report, the site reports and the keys they pinned. The
hub feeds it what it holds: each site's authoritative (latest accepted) report of the month, the site's
pinned key chain, the area's grading policy and definition, the log state and each report's leaf index.

When a month's area report is built (`due`):
* every site expected for the month (enrolled in the area, not revoked before the month began) has an
  accepted report — built at once; or
* the deadline has passed (`deadline_days` after the month's end, in the area's time zone) — built with
  the sites still without a report listed in `missing[]` ("no accepted report by the deadline ...").

A site report accepted after its month's area report was built (late, or a reissue) makes the area report
out of date: the next version is built, naming the one it replaces (`reissue_of`), and logged too. A
year's roll-up is built once the year's last month has its area report, and again when a month's area
report gets a new version. Everything happens in one write transaction under the hub's lock, so hub
replicas sharing a database build each version once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select

from gateway.certification.area import (
    AreaDefinition,
    SiteInput,
    Verdict,
    aggregate,
    definition_from_mapping,
    rollup,
    sign_area_report,
)
from gateway.certification.exact import iso_ms
from gateway.certification.keys import PinnedKey as TrustedKey
from gateway.certification.periods import BadMonth, month_period, parse_month, shift_month
from gateway.certification.policy import policy_from_mapping
from gateway.certification.signing import canonical
from gateway.hub import db, log
from gateway.hub.store import HubError, HubStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AreaRow:
    id: str
    name: str
    policy: dict[str, Any]
    definition: AreaDefinition


@dataclass(frozen=True, slots=True)
class Built:
    area: str
    period: str
    version: int
    sha256: str
    data: bytes
    log_index: int
    complete: bool


#: How often a month's area report is prepared outside the write lock before it is built under it.
OPTIMISTIC_TRIES = 3


@dataclass(frozen=True, slots=True)
class _Plan:
    """An area report prepared on a read snapshot, and the inputs it was prepared from."""

    body: dict[str, Any]
    complete: bool
    current_sha: str | None  # the version it replaces
    expected: list[str]
    shas: dict[str, str]  # site -> SHA-256 of the report summed


class AreaReports:
    def __init__(self, store: HubStore) -> None:
        self.store = store

    # -- reading ----------------------------------------------------------------------------------------
    def _area(self, conn: Connection, area: str) -> AreaRow:
        row = conn.execute(select(db.areas).where(db.areas.c.id == area)).first()
        if row is None:
            raise HubError(f"area {area!r} is not configured")
        return AreaRow(row.id, row.name, json.loads(row.policy), definition_from_mapping(json.loads(row.definition)))

    def latest(self, area: str, period: str) -> Built | None:
        with self.store.engine.connect() as conn:
            return self._latest(conn, area, period)

    def _latest(self, conn: Connection, area: str, period: str) -> Built | None:
        r = conn.execute(
            select(db.area_reports)
            .where(db.area_reports.c.area == area, db.area_reports.c.period == period)
            .order_by(db.area_reports.c.version.desc())
            .limit(1)
        ).first()
        if r is None:
            return None
        return Built(r.area, r.period, int(r.version), r.sha256, bytes(r.raw), int(r.log_index), bool(r.complete))

    def versions(self, area: str, period: str) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(db.area_reports)
                .where(db.area_reports.c.area == area, db.area_reports.c.period == period)
                .order_by(db.area_reports.c.version)
            ).all()
        return [
            {
                "version": int(r.version),
                "sha256": r.sha256,
                "complete": bool(r.complete),
                "reissue_of": r.reissue_of,
                "log_index": int(r.log_index),
                "created_at": iso_ms(r.created_ms),
            }
            for r in rows
        ]

    def periods(self, area: str) -> list[str]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(db.area_reports.c.period).where(db.area_reports.c.area == area).distinct()).all()
        return sorted(str(r[0]) for r in rows)

    # -- who is expected, what is in --------------------------------------------------------------------
    def expected(self, conn: Connection, a: AreaRow, month: str) -> list[str]:
        """Sites of the area enrolled now and not revoked before the month began: a site enrolls, then
        sends its history, and an area report built today names every enrolled site it lacks."""
        start = month_period(month, a.definition.timezone).start_ms
        rows = conn.execute(select(db.sites).where(db.sites.c.area == a.id).order_by(db.sites.c.id)).all()
        return [r.id for r in rows if r.status == "enrolled" or (r.revoked_ms or 0) >= start]

    def _shas(self, conn: Connection, area: str, month: str) -> dict[str, str]:
        """site -> SHA-256 of its authoritative report of the month (no report bytes read)."""
        rows = conn.execute(
            select(db.reports.c.site, db.reports.c.sha256)
            .join(db.sites, db.sites.c.id == db.reports.c.site)
            .where(db.sites.c.area == area, db.reports.c.month == month, db.reports.c.status == "accepted")
            .order_by(db.reports.c.site, db.reports.c.log_index)
        ).all()
        return {r.site: r.sha256 for r in rows}

    @staticmethod
    def _listed(data: bytes) -> dict[str, str]:
        was = json.loads(data)
        listed = {s["site"]: s["report_sha256"] for s in was.get("sites", [])}
        listed.update({m["site"]: m["report_sha256"] for m in was.get("missing", []) if m.get("report_sha256")})
        return listed

    def needs_build(self, area: str, month: str) -> bool:
        """Read-only: would `build_month` build now (due and never built, or a site report changed since)?"""
        with self.store.engine.connect() as conn:
            a = self._area(conn, area)
            now = self.store.now_ms()
            if month_period(month, a.definition.timezone).end_ms > now:
                return False
            have = self._shas(conn, area, month)
            current = self._latest(conn, area, month)
            if current is not None:
                return self._listed(current.data) != have
            expected = self.expected(conn, a, month)
            return all(s in have for s in expected) or now >= self._deadline_ms(a, month)

    def needs_year(self, area: str, year: str) -> bool:
        """Read-only: would `build_year` build now (December in and never built, or a month changed)?"""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(db.area_reports.c.period, db.area_reports.c.sha256)
                .where(db.area_reports.c.area == area, db.area_reports.c.period.like(f"{year}%"))
                .order_by(db.area_reports.c.period, db.area_reports.c.version)
            ).all()
        latest = {r.period: r.sha256 for r in rows}  # the last version of each period wins
        monthly = {p: sha for p, sha in latest.items() if len(p) == 7}
        if year not in latest:
            return f"{year}-12" in monthly
        current = self.latest(area, year)
        assert current is not None
        return {m["month"]: m["report_sha256"] for m in json.loads(current.data).get("months", [])} != monthly

    def _inputs(self, conn: Connection, area: str, month: str) -> dict[str, tuple[str, bytes, int]]:
        """site -> (sha256, bytes, log index) of the authoritative report of every site of the area."""
        rows = conn.execute(
            select(db.reports.c.site, db.reports.c.sha256, db.reports.c.raw, db.reports.c.log_index)
            .join(db.sites, db.sites.c.id == db.reports.c.site)
            .where(db.sites.c.area == area, db.reports.c.month == month, db.reports.c.status == "accepted")
            .order_by(db.reports.c.site, db.reports.c.log_index)
        ).all()
        return {r.site: (r.sha256, bytes(r.raw), int(r.log_index)) for r in rows}  # the last one wins

    def _verdicts(self, conn: Connection, area: str, month: str) -> dict[str, Verdict]:
        """site -> the verdict ingestion stored for its authoritative report, for `aggregate(verified=...)`.

        Why: ingestion verified each accepted report (pinned key chain, every rule, the grade under the
        area's policy) in the same database; verifying each again at every build was half the hub's
        report cost. A verdict is reused only when it was made under the policy in force now: a report
        received before the area's last change (policy, definition or name: `areas.updated_ms`) gets
        none, so `aggregate` verifies it again. `aggregate` still checks that the stored bytes hash to
        the stored SHA-256 the verdict was made on."""
        updated = conn.execute(select(db.areas.c.updated_ms).where(db.areas.c.id == area)).scalar_one()
        rows = conn.execute(
            select(db.reports.c.site, db.reports.c.sha256, db.reports.c.key_id, db.reports.c.grade)
            .add_columns(db.reports.c.received_ms)
            .join(db.sites, db.sites.c.id == db.reports.c.site)
            .where(db.sites.c.area == area, db.reports.c.month == month, db.reports.c.status == "accepted")
            .order_by(db.reports.c.site, db.reports.c.log_index)
        ).all()
        out: dict[str, Verdict] = {}
        for r in rows:  # the last one wins, as in `_inputs`
            if r.key_id is not None and int(r.received_ms) > int(updated):
                out[r.site] = Verdict(r.sha256, r.key_id, r.grade)
            else:
                out.pop(r.site, None)
        return out

    def status(self, area: str, month: str) -> dict[str, Any]:
        """For the portal and `gia hub area-report`: who is in, who is awaited, the deadline."""
        with self.store.engine.connect() as conn:
            a = self._area(conn, area)
            expected = self.expected(conn, a, month)
            have = self._inputs(conn, area, month)
        deadline = self._deadline_ms(a, month)
        return {
            "area": area,
            "month": month,
            "expected": expected,
            "in": sorted(have),
            "awaited": [s for s in expected if s not in have],
            "deadline": iso_ms(deadline),
        }

    @staticmethod
    def _deadline_ms(a: AreaRow, month: str) -> int:
        return month_period(month, a.definition.timezone).end_ms + a.definition.deadline_days * 86_400_000

    # -- building ---------------------------------------------------------------------------------------
    def build_month(self, area: str, month: str, *, force: bool = False) -> Built | None:
        """Build (or rebuild, when a site report changed since) the month's area report if it is due, or
        now with `force`; returns what counts afterwards (None when not due and never built).

        The aggregation (each site report checked against the verdict its ingestion stored, then
        summed) is the slow part. It runs on a read snapshot, outside the write lock, so
        ingestion on every replica goes on meanwhile; the result is stored under the lock only if its
        inputs (the expected sites, each one's authoritative report, the version it replaces) are still
        the current ones, else it is prepared again. After `OPTIMISTIC_TRIES` such races the build runs
        under the lock, as one transaction, so a busy hub still makes progress."""
        try:
            parse_month(month)
        except BadMonth as exc:
            raise HubError(str(exc)) from None
        for _ in range(OPTIMISTIC_TRIES):
            with self.store.engine.connect() as conn:
                plan = self._prepare_month(conn, area, month, force)
            if not isinstance(plan, _Plan):
                return plan
            with db.write_transaction(self.store.engine) as conn:
                current = self._latest(conn, area, month)
                if (current.sha256 if current is not None else None) == plan.current_sha and (
                    plan.expected == self.expected(conn, self._area(conn, area), month)
                    and plan.shas == self._shas(conn, area, month)
                ):
                    return self._store(conn, area, month, plan.body, plan.complete, current)
            logger.info("area report %s %s: inputs changed while it was built; building again", area, month)
        with db.write_transaction(self.store.engine) as conn:
            plan = self._prepare_month(conn, area, month, force)
            if not isinstance(plan, _Plan):
                return plan
            return self._store(conn, area, month, plan.body, plan.complete, self._latest(conn, area, month))

    def _prepare_month(self, conn: Connection, area: str, month: str, force: bool) -> _Plan | Built | None:
        """The area report body to store (a `_Plan`), or what counts already when nothing is to be built."""
        a = self._area(conn, area)
        now = self.store.now_ms()
        if month_period(month, a.definition.timezone).end_ms > now and not force:
            return self._latest(conn, area, month)
        expected = self.expected(conn, a, month)
        have = self._inputs(conn, area, month)
        current = self._latest(conn, area, month)
        complete = all(s in have for s in expected)
        if current is not None and self._listed(current.data) == {s: v[0] for s, v in have.items()}:
            return current
        elif not complete and not force and now < self._deadline_ms(a, month):
            return None
        deadline = iso_ms(self._deadline_ms(a, month))
        keys = self.store.area_pinned_keys(conn, area)  # one query, not one per site
        inputs = [
            SiteInput(s, raw, None, tuple(TrustedKey(k.key_id, k.public_key(), s) for k in keys.get(s, ())))
            for s, (_sha, raw, _i) in sorted(have.items())
        ]
        head = self._head(conn)
        crit = next((c for c in a.definition.criteria if c.name == "renewable_share"), None)
        body = aggregate(
            area,
            month,
            inputs,
            name=a.name,
            threshold=crit.threshold if crit is not None else "0.5",
            threshold_basis=(crit.basis or "market") if crit is not None else "market",
            policy=policy_from_mapping(a.policy),
            definition=a.definition,
            expected=expected,
            absent_reason=f"no accepted report by {iso_ms(now)} (deadline {deadline})",
            log=head,
            log_indexes={s: v[2] for s, v in have.items()},
            verified=self._verdicts(conn, area, month),
        )
        body["reissue_of"] = current.sha256 if current is not None else None
        return _Plan(
            body=body,
            complete=complete,
            current_sha=current.sha256 if current is not None else None,
            expected=expected,
            shas={s: v[0] for s, v in have.items()},
        )

    def build_year(self, area: str, year: str, *, force: bool = False) -> Built | None:
        """The year's roll-up, once its December area report exists (now with `force`); a new version when
        a month's area report changed since."""
        if not (len(year) == 4 and year.isdigit()):
            raise HubError(f"{year!r} is not a year; write YYYY")
        with db.write_transaction(self.store.engine) as conn:
            a = self._area(conn, area)
            monthly = [b for m in range(1, 13) if (b := self._latest(conn, area, f"{year}-{m:02d}")) is not None]
            current = self._latest(conn, area, year)
            if not monthly or (not force and current is None and not any(b.period.endswith("-12") for b in monthly)):
                return current
            if current is not None:
                was = {m["month"]: m["report_sha256"] for m in json.loads(current.data).get("months", [])}
                if was == {b.period: b.sha256 for b in monthly}:
                    return current
            body = rollup(
                area, year, [b.data for b in monthly], name=a.name, definition=a.definition, log=self._head(conn)
            )
            body["reissue_of"] = current.sha256 if current is not None else None
            return self._store(
                conn, area, year, body, all(json.loads(b.data)["missing"] == [] for b in monthly), current
            )

    def _head(self, conn: Connection) -> dict[str, Any] | None:
        row = conn.execute(
            select(db.tree_heads.c.tree_size, db.tree_heads.c.root).order_by(db.tree_heads.c.tree_size.desc()).limit(1)
        ).first()
        return {"tree_size": int(row.tree_size), "root": row.root} if row is not None else None

    def _store(
        self, conn: Connection, area: str, period: str, body: dict[str, Any], complete: bool, current: Built | None
    ) -> Built:
        signed = sign_area_report(body, self.store.keys)
        data = canonical(signed)
        sha = hashlib.sha256(data).hexdigest()
        index, _head = self.store.append_leaf(conn, "area_report", log.area_report_leaf(area, period, sha))
        version = current.version + 1 if current is not None else 1
        conn.execute(
            insert(db.area_reports).values(
                area=area,
                period=period,
                version=version,
                sha256=sha,
                raw=data,
                complete=complete,
                reissue_of=current.sha256 if current is not None else None,
                log_index=index,
                created_ms=self.store.now_ms(),
            )
        )
        logger.info("area report %s %s v%d built (%s), log leaf %d", area, period, version, sha[:16], index)
        return Built(area, period, version, sha, data, index, complete)

    # -- the loop's step --------------------------------------------------------------------------------
    def due_months(self, area: str) -> list[str]:
        """Every ended month from the area's first accepted report on (a month nobody reported gets its
        area report at the deadline too, naming everyone missing)."""
        with self.store.engine.connect() as conn:
            a = self._area(conn, area)
            first = conn.execute(
                select(func.min(db.reports.c.month))
                .join(db.sites, db.sites.c.id == db.reports.c.site)
                .where(db.sites.c.area == area, db.reports.c.status == "accepted")
            ).scalar_one()
        now = self.store.now_ms()
        out: list[str] = []
        month = str(first) if first is not None else None
        while month is not None and month_period(month, a.definition.timezone).end_ms <= now and len(out) < 1200:
            out.append(month)
            month = shift_month(month, 1)
        return out

    def step(self) -> list[Built]:
        """Build every area report that is due (and the roll-ups they complete); returns what was built."""
        built: list[Built] = []
        with self.store.engine.connect() as conn:
            areas = [str(r[0]) for r in conn.execute(select(db.areas.c.id))]
        for area in areas:
            years: set[str] = set()
            for month in self.due_months(area):
                if not self.needs_build(area, month):  # cheap: no report bytes, no write lock
                    if self.latest(area, month) is not None:
                        years.add(month[:4])
                    continue
                before = self.latest(area, month)
                b = self.build_month(area, month)
                if b is not None and (before is None or before.sha256 != b.sha256):
                    built.append(b)
                if b is not None:
                    years.add(month[:4])
            for year in sorted(years):
                if not self.needs_year(area, year):
                    continue
                before = self.latest(area, year)
                y = self.build_year(area, year)
                if y is not None and (before is None or before.sha256 != y.sha256):
                    built.append(y)
        return built
