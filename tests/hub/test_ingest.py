"""Ingestion decisions on both databases (SQLite and a real PostgreSQL): accepted, replayed, refused,
quarantined, conflicting, reissued; the log and its proofs follow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import text

from gateway.certification.signing import public_pem
from gateway.hub import log
from gateway.hub.config import DatabaseConfig
from gateway.hub.ingest import Ingestor
from gateway.hub.store import HubStore
from tests.hub.conftest import SignedSite, hub_config


def ingest(store: HubStore) -> Ingestor:
    return Ingestor(store, max_bytes=2 * 1024 * 1024)


def test_enrolled_report_is_accepted_logged_and_provable(store: HubStore, mill: SignedSite) -> None:
    enrolled = store.enroll("mill", "zemgale", mill.public_pem)
    ing = ingest(store)
    feb = ing.submit_report("mill", mill.reports["2025-02"], via="mqtt")
    mar = ing.submit_report("mill", mill.reports["2025-03"], via="http")
    assert (feb.status, feb.log_index) == ("accepted", 0), feb.reasons
    assert (mar.status, mar.log_index) == ("accepted", 1), mar.reasons
    assert mar.receipt is not None and mar.receipt["status"] == "accepted" and mar.receipt["tree_size"] == 2
    hub_key = store.keys.public_key()
    # the receipt is signed by the hub
    from gateway.certification.signing import verify_signature

    assert verify_signature(mar.receipt, hub_key) is None
    # offline: the report's bytes, the proof and the hub-signed head are enough
    proof = store.inclusion_proof("mill", "2025-03")
    assert log.check_report_inclusion(mill.reports["2025-03"], proof, proof["tree_head"], hub_key) == []
    [info] = store.sites()
    assert (info.status, info.key_ids, info.reports, info.last_month) == ("enrolled", [enrolled.key_id], 2, "2025-03")
    assert store.authenticate_site("mill", enrolled.token)
    assert not store.authenticate_site("mill", enrolled.token + "x")
    assert not store.authenticate_site("other", enrolled.token)


def test_replay_is_a_no_op(store: HubStore, mill: SignedSite) -> None:
    store.enroll("mill", "zemgale", mill.public_pem)
    ing = ingest(store)
    first = ing.submit_report("mill", mill.reports["2025-02"], via="mqtt")
    head = store.tree_head()
    again = ing.submit_report("mill", mill.reports["2025-02"], via="http")
    assert again.replay and again.status == "accepted" and again.log_index == first.log_index
    assert again.receipt == first.receipt
    assert store.tree_head() == head and store.leaf_count() == 1


def test_unknown_site_and_unpinned_key_are_quarantined_never_counted(
    store: HubStore, mill: SignedSite, intruder_keys
) -> None:  # type: ignore[no-untyped-def]
    ing = ingest(store)
    out = ing.submit_report("mill", mill.reports["2025-02"], via="mqtt")
    assert (out.status, out.quarantine_kind) == ("quarantined", "unknown_site")
    store.enroll("mill", "zemgale", public_pem(intruder_keys.public_key()).encode())  # the wrong key pinned
    out = ing.submit_report("mill", mill.reports["2025-03"], via="mqtt")
    assert (out.status, out.quarantine_kind, out.receipt) == ("quarantined", "unpinned_key", None)
    assert store.leaf_count() == 0 and store.tree_head() is None
    assert [q["kind"] for q in store.quarantined()] == ["unknown_site", "unpinned_key"]
    assert store.sites()[0].reports == 0
    # replaying a quarantined submission adds nothing
    assert ing.submit_report("mill", mill.reports["2025-03"], via="http").replay
    assert len(store.quarantined()) == 2


def test_forged_report_with_a_pinned_key_id_gets_no_receipt(store: HubStore, mill: SignedSite) -> None:
    """An edited report keeps the key id but not the signature: not the site's, so no receipt in its name."""
    store.enroll("mill", "zemgale", mill.public_pem)
    doc = json.loads(mill.reports["2025-02"])
    doc["indicators"]["consumption_wh"] += 1000
    out = ingest(store).submit_report("mill", json.dumps(doc).encode(), via="mqtt")
    assert (out.status, out.quarantine_kind, out.receipt) == ("quarantined", "bad_signature", None)
    assert "signature" in out.reasons[0]


def test_second_different_report_for_a_month_is_a_conflict_unless_a_reissue(store: HubStore, mill: SignedSite) -> None:
    store.enroll("mill", "zemgale", mill.public_pem)
    ing = ingest(store)
    first = ing.submit_report("mill", mill.reports["2025-02"], via="mqtt")
    rebuilt = mill.resign("2025-02", generated_at="2025-04-06T00:00:00.000Z")
    out = ing.submit_report("mill", rebuilt, via="mqtt")
    assert out.status == "rejected" and out.reasons[0].startswith("conflict:")
    assert out.receipt is not None and out.receipt["log_index"] is None
    [c] = store.conflicts()
    assert (c["stored_sha256"], c["other_sha256"]) == (first.sha256, out.sha256)
    assert store.leaf_count() == 1
    assert store.report_bytes("mill", "2025-02") == mill.reports["2025-02"]  # the first one still counts
    reissue = mill.resign("2025-02", reissue_of=first.sha256, reissue_reason="late meter replacement record")
    out = ing.submit_report("mill", reissue, via="http")
    assert (out.status, out.log_index) == ("accepted", 1), out.reasons
    assert store.report_bytes("mill", "2025-02") == reissue
    # a reissue naming a report that is not the one counting now is a conflict again
    stale = mill.resign("2025-02", reissue_of=first.sha256, reissue_reason="again")
    assert ing.submit_report("mill", stale, via="http").status == "rejected"


def lenient(mill: SignedSite, month: str) -> bytes:
    """The site chose its own lenient threshold (coverage 0.9): 5 % of the energy not measured, still
    'verified' by its own rules, internally consistent (its quality block recomputed as the gateway would,
    the lenient threshold listed in `lenient_vs_scheme`) and validly signed (issue #14, case 7)."""
    from gateway.certification.policy import grade_channel, policy_of_method
    from gateway.certification.report import report_quality

    doc = json.loads(mill.reports[month])
    doc["method"]["min_energy_coverage"] = "0.9"
    ch = doc["channels"][0]
    moved = ch["energy_wh"] // 20
    ch["measured_wh"] -= moved
    ch["interpolated_wh"] += moved
    ch["coverage"]["energy"] = "0.950000"
    g = grade_channel(ch, policy_of_method(doc["method"]))
    ch["grade"], ch["interval_grade"], ch["reasons"] = g.total, g.intervals, g.reasons
    doc["quality"] = report_quality(
        doc["channels"], indicators=doc["indicators"], complete=doc["period"]["complete"], method=doc["method"]
    )
    assert doc["quality"]["grade"] == "verified" and doc["quality"]["lenient_vs_scheme"]
    return json.dumps(mill.keys.sign_report(doc)).encode()


def test_grade_better_than_the_area_policy_is_rejected(store: HubStore, mill: SignedSite) -> None:
    """The area, not the site, sets the thresholds: the same report is refused under the area's 0.99."""
    from gateway.certification.policy import Policy
    from gateway.hub.config import AreaConfig
    from gateway.hub.verifier import PinnedKey, verify_site_report

    report = lenient(mill, "2025-02")
    pinned = [PinnedKey(json.loads(report)["signature"]["key_id"], mill.public_pem)]
    # by a policy as lenient as the site's the report is fine: only the area's policy refuses it
    verdict = verify_site_report(report, pinned=pinned, previous=None, policy=Policy(min_energy_coverage="0.9"))
    assert verdict.ok and verdict.grade == "verified", verdict.reasons
    store.sync_areas([AreaConfig(id="strict", policy={"min_energy_coverage": "0.99"})])
    store.enroll("mill", "strict", mill.public_pem)
    out = ingest(store).submit_report("mill", report, via="mqtt")
    assert out.status == "rejected"
    assert any(r.startswith("policy.grade:") and "gives provisional" in r for r in out.reasons), out.reasons
    with store.engine.connect() as conn:
        assert store.area_policy(conn, "strict").name == "area strict policy"


def test_previous_report_chain_is_checked(store: HubStore, mill: SignedSite) -> None:
    """March names February's SHA-256: with another February stored, March's chain link fails."""
    store.enroll("mill", "zemgale", mill.public_pem)
    ing = ingest(store)
    other_feb = mill.resign("2025-02", generated_at="2025-04-06T00:00:00.000Z")
    assert ing.submit_report("mill", other_feb, via="mqtt").status == "accepted"
    out = ing.submit_report("mill", mill.reports["2025-03"], via="mqtt")
    assert out.status == "rejected"
    assert any(r.startswith("previous_report:") for r in out.reasons), out.reasons


def test_malformed_payloads_and_site_mismatch_are_quarantined(store: HubStore, mill: SignedSite) -> None:
    store.enroll("mill", "zemgale", mill.public_pem)
    ing = ingest(store)
    deep = b"[" * 200_000  # json recurses per level: a RecursionError, not a ValueError
    for payload in (b"", b"\xff\xfe", b"[1, 2]", b'{"schema": "gia-monthly-report/1"}', b"{" * 10_000, deep):
        out = ing.submit_report("mill", payload, via="mqtt")
        assert (out.status, out.quarantine_kind) == ("quarantined", "malformed"), payload[:20]
    doc = json.loads(mill.reports["2025-02"])
    doc["channels"][0]["energy_wh"] = 1.5  # a float where the signed data has integers
    out = ing.submit_report("mill", json.dumps(doc).encode(), via="mqtt")
    assert out.status == "quarantined"
    out = ing.submit_report("bakery", mill.reports["2025-02"], via="mqtt")
    assert out.quarantine_kind == "site_mismatch"
    big = ing.submit_report("mill", b" " * (3 * 1024 * 1024), via="mqtt")
    assert big.status == "refused"
    assert store.leaf_count() == 0


def test_revoked_site_is_quarantined(store: HubStore, mill: SignedSite) -> None:
    enrolled = store.enroll("mill", "zemgale", mill.public_pem)
    store.revoke("mill", "decommissioned")
    out = ingest(store).submit_report("mill", mill.reports["2025-02"], via="mqtt")
    assert out.quarantine_kind == "revoked_site"
    assert not store.authenticate_site("mill", enrolled.token)
    assert store.sites()[0].status == "revoked"


def test_two_hubs_sharing_one_database_append_one_at_a_time(
    store: HubStore, mill: SignedSite, tmp_path, hub_db
) -> None:  # type: ignore[no-untyped-def]
    """Two hub processes' stores (own engines, own caches) ingest concurrently: the write lock orders them,
    the log has every accepted report once, and both see the same signed tree."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.hub.conftest import hub_config

    other = HubStore.open(hub_config(tmp_path, hub_db))
    try:
        sites = [f"s{i}" for i in range(12)]
        for s in sites:
            store.enroll(s, "zemgale", mill.public_pem)

        payloads = [mill.as_site(s, "2025-02") for s in sites]
        a, b = ingest(store), ingest(other)
        with ThreadPoolExecutor(4) as pool:
            futs = [
                pool.submit((a if i % 2 else b).submit_report, s, p, via="mqtt")
                for i, (s, p) in enumerate(zip(sites, payloads, strict=True))
            ]
            # and each report a second time through the other hub: replays
            futs += [
                pool.submit((b if i % 2 else a).submit_report, s, p, via="http")
                for i, (s, p) in enumerate(zip(sites, payloads, strict=True))
            ]
            outcomes = [f.result() for f in futs]
        assert sorted(o.log_index for o in outcomes if not o.replay) == list(range(12))  # type: ignore[type-var]
        assert sum(o.replay for o in outcomes) == 12
        assert store.leaf_count() == 12
        assert store.tree_head() == other.tree_head()
        head = store.tree_head()
        assert head is not None
        for s, p in zip(sites, payloads, strict=True):
            proof = other.inclusion_proof(s, "2025-02")
            assert log.check_report_inclusion(p, proof, head, store.keys.public_key()) == []
    finally:
        other.close()


def test_stored_reports_are_compressed_with_lz4_on_postgresql(
    tmp_path: Path, postgres_db: Any, mill: SignedSite
) -> None:
    """The hub asks PostgreSQL for lz4 (cheaper than pglz per stored report, bench/hub_reports.py); the
    report's bytes come back unchanged."""
    store = HubStore.open(
        hub_config(tmp_path, DatabaseConfig(url=postgres_db.url, password_file=postgres_db.password_file))
    )
    try:
        store.enroll("mill", "zemgale", mill.public_pem)
        raw = mill.reports["2025-02"]
        assert ingest(store).submit_report("mill", raw, via="mqtt").status == "accepted"
        with store.engine.connect() as conn:
            kind, back = conn.execute(text("SELECT pg_column_compression(raw), raw FROM reports")).one()
    finally:
        store.close()
    assert kind == "lz4" and bytes(back) == raw
