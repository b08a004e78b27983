"""The hub on the certification trust rework (#14): key transitions followed from the pinned chain (only the
key in force accepted after one), a lost key pinned anew, a reissue of month M-1 after M, and
`gia verify --log-head` checking a report's place in the hub's log offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.certification.service import ReportService
from gateway.certification.signing import KeyStore, public_pem
from gateway.certification.sitekeys import rotate_site_key
from gateway.certification.verify import verify_paths
from gateway.hub.ingest import Ingestor
from gateway.hub.store import HubStore
from tests.certification import helpers as h
from tests.hub.conftest import FEB_START

APRIL = datetime(2025, 4, 5, tzinfo=UTC)


@dataclass
class Site:
    dir: Path
    svc: ReportService
    k1_pem: bytes
    feb: bytes
    mar: bytes


def _site(directory: Path, site: str = "mill") -> Site:
    samples = h.register_samples("m1", "energy_import_wh", FEB_START, h.MARCH_END + h.Q15, value=h.constant_400w)
    s = h.settings(directory, [h.device("m1", h.channel("consumption", rated_power_w=1000), serial="SN-1")], site=site)
    h.make_ledger(s.ledger_path, samples).close()
    svc = h.service(s, now=APRIL)
    k1 = public_pem(KeyStore(directory / "keys").public_key()).encode()
    return Site(directory, svc, k1, svc.report_json(site, "2025-02"), svc.report_json(site, "2025-03"))


def ingest(store: HubStore) -> Ingestor:
    return Ingestor(store, max_bytes=2 * 1024 * 1024)


def test_a_rotation_signed_by_the_old_key_is_followed_and_only_the_new_key_counts_after_it(
    store: HubStore, tmp_path: Path
) -> None:
    site = _site(tmp_path / "mill")
    store.enroll("mill", "zemgale", site.k1_pem)
    ing = ingest(store)
    assert ing.submit_report("mill", site.feb, via="mqtt").status == "accepted"
    old_key = KeyStore(site.dir / "keys").private_key_for_rotation()
    rotation = rotate_site_key(site.dir / "keys", site.dir / "ledger.db", site="mill", reason="yearly rotation")
    assert rotation.signed_by_old
    announcement = site.svc.key_transitions_json()
    out = ing.submit_key_transition("mill", announcement, via="mqtt")
    # both statements are logged: the key's own announcement (event 1, already pinned) and the rotation
    assert (out.status, out.replay) == ("accepted", False) and out.log_index == 2
    assert [k.key_id for k in _pinned(store)] == [json.loads(site.feb)["signature"]["key_id"], rotation.key_id]
    again = ing.submit_key_transition("mill", announcement, via="http")
    assert (again.status, again.replay) == ("accepted", True) and store.leaf_count() == 3
    # March reissued after the rotation: signed by the new key, carrying the transition
    reissue = site.svc.reissue("mill", "2025-03", "rebuilt after a key rotation")
    # a March built before the rotation (events head before it) is still the old key's to sign
    assert ing.submit_report("mill", site.mar, via="mqtt").status == "accepted"
    assert ing.submit_report("mill", reissue, via="http").status == "accepted"
    # the old key (stolen, say) signing a report past the rotation and leaving the transition out: refused
    doc = json.loads(reissue)
    doc["key_transitions"] = doc["key_transitions"][:1]
    doc["reissue_of"] = json.loads(reissue)["reissue_of"]
    assert old_key is not None
    forged = _sign_with(old_key, doc)
    out = ing.submit_report("mill", forged, via="mqtt")
    assert out.status == "rejected", out
    assert any("key in force" in r for r in out.reasons) and any(r.startswith("key_transitions:") for r in out.reasons)


def _pinned(store: HubStore) -> list:  # type: ignore[type-arg]
    with store.engine.connect() as conn:
        return store.pinned_keys(conn, "mill")


def _sign_with(private, doc: dict) -> bytes:  # type: ignore[no-untyped-def,type-arg]
    import base64

    from gateway.certification.signing import key_id, signing_bytes

    body = {k: v for k, v in doc.items() if k != "signature"}
    sig = private.sign(signing_bytes(body))
    body["signature"] = {
        "alg": "Ed25519",
        "key_id": key_id(private.public_key()),
        "value": base64.b64encode(sig).decode(),
    }
    return json.dumps(body).encode()


def test_a_transition_the_old_key_did_not_sign_is_quarantined_until_the_key_is_pinned_out_of_band(
    store: HubStore, tmp_path: Path
) -> None:
    site = _site(tmp_path / "mill")
    store.enroll("mill", "zemgale", site.k1_pem)
    ing = ingest(store)
    shutil.rmtree(site.dir / "keys")  # the key is lost: the new one cannot be vouched for by it
    rotation = rotate_site_key(site.dir / "keys", site.dir / "ledger.db", site="mill", reason="lost key")
    assert not rotation.signed_by_old
    out = ing.submit_key_transition("mill", site.svc.key_transitions_json(), via="mqtt")
    assert (out.status, out.quarantine_kind) == ("quarantined", "key_transition")
    assert "pin it out of band" in out.reasons[0]
    reissue = site.svc.reissue("mill", "2025-03", "new key")
    assert ing.submit_report("mill", reissue, via="mqtt").quarantine_kind == "unpinned_key"
    new_pem = public_pem(KeyStore(site.dir / "keys").public_key()).encode()
    assert store.pin_key("mill", new_pem, "fingerprint checked by phone with the site") == rotation.key_id
    assert ing.submit_report("mill", site.feb, via="mqtt").status == "accepted"
    assert ing.submit_report("mill", site.mar, via="mqtt").status == "accepted"
    assert ing.submit_report("mill", reissue, via="mqtt").status == "accepted"


def test_a_reissue_of_the_previous_month_after_the_month_was_accepted(store: HubStore, tmp_path: Path) -> None:
    """M-1 reissued after M: the reissue is accepted, M keeps counting; and an M that names the version of
    M-1 it followed is accepted even when it arrives after the reissue (continuity against that version)."""
    site = _site(tmp_path / "mill")
    store.enroll("mill", "zemgale", site.k1_pem)
    ing = ingest(store)
    feb2 = site.svc.reissue("mill", "2025-02", "late meter replacement record")
    assert json.loads(site.mar)["previous_report_sha256"] == ing.submit_report("mill", site.feb, via="mqtt").sha256
    assert ing.submit_report("mill", site.mar, via="mqtt").status == "accepted"
    out = ing.submit_report("mill", feb2, via="mqtt")
    assert out.status == "accepted", out.reasons
    assert store.report_bytes("mill", "2025-02") == feb2 and store.report_bytes("mill", "2025-03") == site.mar
    # another hub sees them in the other order: the reissue first, then March naming the first version
    from tests.hub.conftest import hub_config

    other = HubStore.open(hub_config(tmp_path / "other", store_db(store, tmp_path)))
    try:
        other.enroll("mill", "zemgale", site.k1_pem)
        o = ingest(other)
        assert [o.submit_report("mill", r, via="mqtt").status for r in (site.feb, feb2, site.mar)] == ["accepted"] * 3
        # a March naming a February the hub never accepted fails the chain
        doc = json.loads(site.mar)
        doc["previous_report_sha256"] = "0" * 64
        bad = o.submit_report(
            "mill", _sign_with(KeyStore(site.dir / "keys").private_key_for_rotation(), doc), via="mqtt"
        )
        assert bad.status == "rejected" and any(r.startswith("previous_report:") for r in bad.reasons)
    finally:
        other.close()


def store_db(store: HubStore, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh database for a second hub: SQLite whatever `store` runs on (the point is a hub that saw the
    reports in another order, not the engine; a skip for PostgreSQL would fail the run under CI)."""
    from gateway.hub.config import DatabaseConfig

    return DatabaseConfig(url=f"sqlite:///{tmp_path / 'other.db'}")


def test_gia_verify_log_head_checks_inclusion_offline(store: HubStore, tmp_path: Path) -> None:
    site = _site(tmp_path / "mill")
    store.enroll("mill", "zemgale", site.k1_pem)
    ing = ingest(store)
    ing.submit_report("mill", site.feb, via="mqtt")
    ing.submit_report("mill", site.mar, via="mqtt")
    d = tmp_path / "certifier"
    d.mkdir()
    (d / "mar.json").write_bytes(site.mar)
    (d / "feb.json").write_bytes(site.feb)
    (d / "site.pem").write_bytes(site.k1_pem)
    (d / "hub.pem").write_text(store.keys.public_info()["public_key_pem"])
    proof = store.inclusion_proof("mill", "2025-03")
    (d / "proof.json").write_text(json.dumps(proof))
    (d / "head.json").write_text(json.dumps(proof["tree_head"]))

    def run(*args: str) -> tuple[int, str]:
        import io

        buf = io.StringIO()
        from gateway.certification.verify import run as verify_run

        return verify_run(list(args), stdout=buf), buf.getvalue()

    rc, out = run(str(d / "mar.json"), "--public-key", str(d / "site.pem"), "--log-head", str(d / "proof.json"),
                  "--hub-key", str(d / "hub.pem"))  # fmt: skip
    assert rc == 0 and "OK log: included at leaf 1" in out, out
    rc, out = run(str(d / "mar.json"), "--public-key", str(d / "site.pem"), "--log-head", str(d / "head.json"),
                  "--log-proof", str(d / "proof.json"), "--hub-key", str(d / "hub.pem"))  # fmt: skip
    assert rc == 0, out
    # February's bytes are not at March's leaf; a head signed by another key is refused; no hub key: unusable
    rc, out = run(str(d / "feb.json"), "--public-key", str(d / "site.pem"), "--log-head", str(d / "proof.json"),
                  "--hub-key", str(d / "hub.pem"))  # fmt: skip
    assert rc == 1 and "FAIL log.inclusion: the report is not at leaf 1" in out
    (d / "other.pem").write_text(KeyStore(tmp_path / "other-hub").public_info()["public_key_pem"])
    rc, out = run(str(d / "mar.json"), "--public-key", str(d / "site.pem"), "--log-head", str(d / "proof.json"),
                  "--hub-key", str(d / "other.pem"))  # fmt: skip
    assert rc == 1 and "FAIL log.inclusion: tree head: signature key_id" in out
    rc, out = run(str(d / "mar.json"), "--public-key", str(d / "site.pem"), "--log-head", str(d / "head.json"),
                  "--hub-key", str(d / "hub.pem"))  # fmt: skip
    assert rc == 2 and "--log-proof" in out
    assert verify_paths(d / "mar.json", public_key=d / "site.pem", evidence=None, log_head=d / "proof.json") == 2
    # and `gia verify` stays light with --log-head: nothing of the hub or the agent is imported
    code = (
        "import sys\n"
        f"sys.argv = ['gia', 'verify', {str(d / 'mar.json')!r}, '--public-key', {str(d / 'site.pem')!r},"
        f" '--log-head', {str(d / 'proof.json')!r}, '--hub-key', {str(d / 'hub.pem')!r}]\n"
        "from gateway.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'pydantic', 'yaml', 'fastapi',"
        " 'sqlalchemy', 'aiomqtt', 'psycopg'})\n"
        "agent = sorted(m for m in sys.modules if m.startswith('gateway.hub') or m.startswith('gateway.runtime'))\n"
        "print(code, heavy, agent)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 [] []", out
