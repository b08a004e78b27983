"""`db.BatchedReads`: reads sent together (one round trip on PostgreSQL, compiled once) give exactly what
the same statements give one by one, on both engines, for every parameter set they are run with."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select

from gateway.hub import db
from gateway.hub.ingest import MONTH_REPORTS_Q, PREVIOUS_REPORTS_Q, Ingestor
from gateway.hub.store import CHANNEL_OWNER_Q, PINNED_KEYS_Q, SITE_WITH_POLICY_Q, TRANSITIONS_Q, HubStore
from tests.hub.conftest import SignedSite

ALL_REPORTS = select(db.reports.c.sha256, db.reports.c.raw).where(db.reports.c.site == bindparam("site"))


def _plain(rows: list[Any]) -> list[dict[str, Any]]:
    return [r._asdict() if hasattr(r, "_asdict") else vars(r) for r in rows]


def test_batched_reads_equal_reads_one_by_one(store: HubStore, mill: SignedSite) -> None:
    store.enroll("mill", "zemgale", mill.public_pem)
    ing = Ingestor(store, max_bytes=2 * 1024 * 1024)
    for month in ("2025-02", "2025-03"):
        assert ing.submit_report("mill", mill.reports[month], via="mqtt").status == "accepted"
    reads = db.BatchedReads()
    for site in ("mill", "nobody", "mill"):  # the second run of each statement reuses its compiled SQL
        batch = [
            (MONTH_REPORTS_Q, {"site": site, "month": "2025-03", "sha": "0" * 64}),
            (PREVIOUS_REPORTS_Q, {"site": site, "month": "2025-02"}),
            (SITE_WITH_POLICY_Q, {"site": site}),
            (PINNED_KEYS_Q, {"site": site}),
            (TRANSITIONS_Q, {"site": site}),
            (CHANNEL_OWNER_Q, {"key": "no such meter"}),
            (ALL_REPORTS, {"site": site}),
        ]
        with db.write_transaction(store.engine) as conn:
            together = reads.run(conn, batch)
            alone = [conn.execute(stmt, params).all() for stmt, params in batch]
        assert [_plain(rows) for rows in together] == [_plain(list(rows)) for rows in alone]
        if site == "mill":
            assert [bytes(r.raw) for r in together[-1]] == [mill.reports["2025-02"], mill.reports["2025-03"]]
            assert together[2][0].status == "enrolled" and together[2][0].policy is not None
        else:
            assert all(rows == [] for rows in together)
