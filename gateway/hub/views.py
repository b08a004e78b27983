"""What the certifier portal and its API read: per area, the month x site matrix of decisions and grades with
each month's area report and criteria, a site-month's drill-down, the refusals, the pinned keys. Read-only
queries over the hub's database (SQLAlchemy Core); the writing side is `store`, `ingest` and `areas`."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select

from gateway.certification.exact import iso_ms
from gateway.hub import db


class Views:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def area_sites(self, area: str) -> list[str]:
        with self.engine.connect() as conn:
            return [str(r[0]) for r in conn.execute(select(db.sites.c.id).where(db.sites.c.area == area))]

    def site_area(self, site: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(db.sites.c.area).where(db.sites.c.id == site)).first()
        return str(row[0]) if row is not None else None

    def sites(self, area: str) -> list[dict[str, Any]]:
        """Enrolled (and revoked) sites of the area: pinned key chain, last accepted report, its grade."""
        with self.engine.connect() as conn:
            sites = conn.execute(select(db.sites).where(db.sites.c.area == area).order_by(db.sites.c.id)).all()
            keys = conn.execute(
                select(db.site_keys)
                .join(db.sites, db.sites.c.id == db.site_keys.c.site)
                .where(db.sites.c.area == area)
                .order_by(db.site_keys.c.site, db.site_keys.c.position)
            ).all()
            last = conn.execute(
                select(db.reports.c.site, db.reports.c.month, db.reports.c.grade, db.reports.c.sha256)
                .join(db.sites, db.sites.c.id == db.reports.c.site)
                .where(db.sites.c.area == area, db.reports.c.status == "accepted")
                .order_by(db.reports.c.site, db.reports.c.month, db.reports.c.log_index)
            ).all()
        latest = {r.site: r for r in last}
        out = []
        for s in sites:
            chain = [
                {"key_id": k.key_id, "via": k.via, "pinned_at": iso_ms(k.pinned_ms), "position": int(k.position)}
                for k in keys
                if k.site == s.id
            ]
            lr = latest.get(s.id)
            out.append(
                {
                    "site": s.id,
                    "status": s.status,
                    "enrolled_at": iso_ms(s.enrolled_ms),
                    "revoked_at": iso_ms(s.revoked_ms) if s.revoked_ms else None,
                    "revoke_reason": s.revoke_reason,
                    "keys": chain,
                    "key_id": chain[-1]["key_id"] if chain else None,
                    "last_report": {"month": lr.month, "grade": lr.grade, "sha256": lr.sha256} if lr else None,
                }
            )
        return out

    def trusted_keys(self, area: str) -> dict[str, Any]:
        """The pinned keys of the area's sites as `gia verify --trusted-keys` reads them (site-bound)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.site_keys)
                .join(db.sites, db.sites.c.id == db.site_keys.c.site)
                .where(db.sites.c.area == area)
                .order_by(db.site_keys.c.site, db.site_keys.c.position)
            ).all()
        return {
            "keys": [{"site": r.site, "key_id": r.key_id, "via": r.via, "public_key_pem": r.public_pem} for r in rows],
            "note": "compare each fingerprint (key_id) with the site's 'gia keys show' over another channel before"
            " pinning these",
        }

    def matrix(self, area: str) -> dict[str, Any]:
        """Months (newest first) x sites: each cell the decision that counts (accepted, else the last
        refusal) with its grade; each month's area report with its criteria."""
        with self.engine.connect() as conn:
            sites = [
                str(r[0])
                for r in conn.execute(select(db.sites.c.id).where(db.sites.c.area == area).order_by(db.sites.c.id))
            ]
            reports = conn.execute(
                select(
                    db.reports.c.site,
                    db.reports.c.month,
                    db.reports.c.status,
                    db.reports.c.grade,
                    db.reports.c.sha256,
                    db.reports.c.reasons,
                    db.reports.c.log_index,
                    db.reports.c.id,
                )
                .join(db.sites, db.sites.c.id == db.reports.c.site)
                .where(db.sites.c.area == area)
                .order_by(db.reports.c.id)
            ).all()
            areps = conn.execute(
                select(db.area_reports)
                .where(db.area_reports.c.area == area)
                .order_by(db.area_reports.c.period, db.area_reports.c.version)
            ).all()
        grouped: dict[tuple[str, str], list[Any]] = {}
        for r in reports:
            grouped.setdefault((r.month, r.site), []).append(r)
        cells: dict[tuple[str, str], dict[str, Any]] = {}
        for key, rows in grouped.items():
            accepted = [r for r in rows if r.status == "accepted"]
            r = accepted[-1] if accepted else rows[-1]
            cells[key] = {
                "status": r.status,
                "grade": r.grade,
                "sha256": r.sha256,
                "log_index": r.log_index,
                "reasons": json.loads(r.reasons)[:3],
                "refused": sum(1 for x in rows if x.status != "accepted"),
            }
        by_period: dict[str, Any] = {}
        for a in areps:
            body = json.loads(a.raw)
            by_period[a.period] = {
                "version": int(a.version),
                "sha256": a.sha256,
                "complete": bool(a.complete),
                "log_index": int(a.log_index),
                "criteria": body.get("criteria", []),
                "missing": [m["site"] for m in body.get("missing", [])],
                "totals": {
                    k: body.get("totals", {}).get(k) for k in ("consumption_wh", "generation_wh", "grid_import_wh")
                },
                "renewable_share_market": body.get("renewable_share_market"),
                "created_at": iso_ms(a.created_ms),
            }
        months = sorted({m for m, _ in cells} | {p for p in by_period if len(p) == 7}, reverse=True)
        return {
            "area": area,
            "sites": sites,
            "months": [
                {
                    "month": m,
                    "area_report": by_period.get(m),
                    "cells": {s: cells.get((m, s)) for s in sites},
                }
                for m in months
            ],
            "years": {p: v for p, v in by_period.items() if len(p) == 4},
        }

    def site_month(self, site: str, month: str) -> dict[str, Any]:
        """Every report a site sent for a month, with the hub's decision, reasons and receipt."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(db.reports)
                .where(db.reports.c.site == site, db.reports.c.month == month)
                .order_by(db.reports.c.id)
            ).all()
            ev = {
                r.report_sha256: {"status": r.status, "reasons": json.loads(r.reasons)}
                for r in conn.execute(
                    select(db.evidence.c.report_sha256, db.evidence.c.status, db.evidence.c.reasons).where(
                        db.evidence.c.site == site, db.evidence.c.month == month
                    )
                )
            }
        return {
            "site": site,
            "month": month,
            "reports": [
                {
                    "sha256": r.sha256,
                    "status": r.status,
                    "grade": r.grade,
                    "reasons": json.loads(r.reasons),
                    "received_at": iso_ms(r.received_ms),
                    "via": r.via,
                    "key_id": r.key_id,
                    "reissue_of": r.reissue_of,
                    "log_index": r.log_index,
                    "evidence": ev.get(r.sha256),
                }
                for r in rows
            ],
        }

    def site_report(self, site: str, month: str, sha256: str | None = None) -> bytes | None:
        """The report as received: the one that counts (latest accepted), or the one with `sha256`."""
        with self.engine.connect() as conn:
            q = select(db.reports.c.raw).where(db.reports.c.site == site, db.reports.c.month == month)
            if sha256 is not None:
                q = q.where(db.reports.c.sha256 == sha256)
            else:
                q = q.where(db.reports.c.status == "accepted").order_by(db.reports.c.log_index.desc())
            row = conn.execute(q.limit(1)).first()
        return bytes(row[0]) if row is not None else None

    def evidence(self, site: str, month: str, sha256: str | None) -> bytes | None:
        with self.engine.connect() as conn:
            q = select(db.evidence.c.zip, db.evidence.c.report_sha256).where(
                db.evidence.c.site == site, db.evidence.c.month == month
            )
            if sha256 is not None:
                q = q.where(db.evidence.c.report_sha256 == sha256)
            rows = conn.execute(q).all()
        if not rows:
            return None
        if sha256 is None and len(rows) > 1:
            current = self.site_report(site, month)
            import hashlib

            want = hashlib.sha256(current).hexdigest() if current is not None else None
            rows = [r for r in rows if r.report_sha256 == want] or rows
        return bytes(rows[-1].zip)

    def refusals(self, area: str | None) -> dict[str, Any]:
        """What the hub refused, for an area (None: everything, for admins): quarantined submissions
        (claimed for a site of the area), conflicts, rejected reports, and counted incidents."""
        with self.engine.connect() as conn:
            area_sites = (
                {str(r[0]) for r in conn.execute(select(db.sites.c.id).where(db.sites.c.area == area))}
                if area is not None
                else None
            )

            def mine(site: str) -> bool:
                return area_sites is None or site in area_sites

            quarantine = [
                {
                    "claimed_site": r.claimed_site,
                    "month": r.month,
                    "kind": r.kind,
                    "reason": r.reason,
                    "sha256": r.sha256,
                    "received_at": iso_ms(r.received_ms),
                    "via": r.via,
                }
                for r in conn.execute(select(db.quarantine).order_by(db.quarantine.c.id.desc()).limit(500))
                if mine(r.claimed_site)
            ]
            conflicts = [
                {
                    "site": r.site,
                    "month": r.month,
                    "stored_sha256": r.stored_sha256,
                    "other_sha256": r.other_sha256,
                    "detail": r.detail,
                    "detected_at": iso_ms(r.detected_ms),
                }
                for r in conn.execute(select(db.conflicts).order_by(db.conflicts.c.id.desc()).limit(500))
                if mine(r.site)
            ]
            rejected = [
                {
                    "site": r.site,
                    "month": r.month,
                    "sha256": r.sha256,
                    "grade": r.grade,
                    "reasons": json.loads(r.reasons)[:5],
                    "received_at": iso_ms(r.received_ms),
                    "via": r.via,
                }
                for r in conn.execute(
                    select(db.reports)
                    .where(db.reports.c.status == "rejected")
                    .order_by(db.reports.c.id.desc())
                    .limit(500)
                )
                if mine(r.site)
            ]
            incidents = [
                {
                    "site": r.site,
                    "month": r.month,
                    "kind": r.kind,
                    "sha256": r.sha256,
                    "detail": r.detail,
                    "count": int(r._mapping["count"]),
                    "last_at": iso_ms(r.last_ms),
                }
                for r in conn.execute(select(db.incidents).order_by(db.incidents.c.last_ms.desc()).limit(500))
                if mine(r.site)
            ]
        return {"quarantine": quarantine, "conflicts": conflicts, "rejected": rejected, "incidents": incidents}
