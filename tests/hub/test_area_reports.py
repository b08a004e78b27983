"""Area reports at the hub, on SQLite and a real PostgreSQL: built when every enrolled site is in, or at the
deadline naming the missing; a late report makes a new version; the yearly roll-up; each signed by the hub,
appended to the log, and verified offline by `gia verify` from the area report, the site reports and the
pinned keys only."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import update

from gateway.certification.verify import run as verify_run
from gateway.hub import db
from gateway.hub.areas import AreaReports
from gateway.hub.config import AreaConfig, DatabaseConfig, HubConfig
from gateway.hub.ingest import Ingestor
from gateway.hub.store import HubStore
from gateway.hub.views import Views
from tests.hub.conftest import AREA_DEFINITION, SignedSite


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def open_store(tmp_path: Path, database: DatabaseConfig, clock: Clock) -> HubStore:
    area = AreaConfig(id="park", name="Park", **AREA_DEFINITION)
    return HubStore.open(HubConfig(data_dir=tmp_path / "hub", database=database, areas=[area]), now_ms=clock)


def verify(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    return verify_run(list(args), stdout=buf), buf.getvalue()


def certifier_files(tmp_path: Path, store: HubStore, area_report: bytes, sites: dict[str, SignedSite]) -> Path:
    """What a certifier holds: the area report, the site reports, the keys pinned (from the hub's portal, after
    checking the fingerprints) and the hub's key."""
    d = tmp_path / "certifier"
    (d / "sites").mkdir(parents=True, exist_ok=True)
    body = json.loads(area_report)
    for s in [x["site"] for x in body["sites"]] + [m["site"] for m in body["missing"] if m["report_sha256"]]:
        (d / "sites" / f"{s}.json").write_bytes(Views(store.engine).site_report(s, body["month"]) or b"")
    (d / "area.json").write_bytes(area_report)
    (d / "keys.json").write_text(json.dumps(Views(store.engine).trusted_keys("park")))
    (d / "hub.pem").write_text(store.keys.public_info()["public_key_pem"])
    return d


def test_area_report_when_every_site_is_in_adds_up_and_verifies_offline(
    tmp_path: Path, hub_db: DatabaseConfig, area_sites: dict[str, SignedSite]
) -> None:
    clock = Clock(ms(2025, 4, 6))
    store = open_store(tmp_path, hub_db, clock)
    try:
        for s, site in area_sites.items():
            store.enroll(s, "park", site.public_pem)
        ing, areas = Ingestor(store, max_bytes=1 << 22), AreaReports(store)
        assert ing.submit_report("p", area_sites["p"].reports["2025-03"], via="mqtt").status == "accepted"
        assert ing.submit_report("b", area_sites["b"].reports["2025-03"], via="http").status == "accepted"
        assert areas.step() == [] and areas.build_month("park", "2025-03") is None  # c awaited, before the deadline
        assert areas.status("park", "2025-03")["awaited"] == ["c"]
        assert ing.submit_report("c", area_sites["c"].reports["2025-03"], via="mqtt").status == "accepted"
        [built] = areas.step()
        assert (built.period, built.version, built.complete, built.log_index) == ("2025-03", 1, True, 3)
        body = json.loads(built.data)
        reps = {s: json.loads(x.reports["2025-03"]) for s, x in area_sites.items()}
        for key in ("consumption_wh", "generation_wh", "grid_import_wh", "grid_export_wh", "renewable_generation_wh"):
            assert body["totals"][key] == sum(r["indicators"][key] for r in reps.values()), key
        assert [(s["site"], s["log_index"]) for s in body["sites"]] == [("b", 1), ("c", 2), ("p", 0)]
        assert body["log"]["tree_size"] == 3 and body["missing"] == []
        assert sum(a["allocated_wh"] for a in body["allocations"]) <= reps["p"]["channels"][0]["energy_wh"]
        assert {c["name"] for c in body["criteria"]} >= {"renewable_share", "data_completeness"}
        assert areas.step() == []  # nothing new: no second version
        d = certifier_files(tmp_path, store, built.data, area_sites)
        rc, out = verify(str(d / "area.json"), "--public-key", str(d / "hub.pem"), "--trusted-keys",
                         str(d / "keys.json"), "--evidence", str(d / "sites"))  # fmt: skip
        assert rc == 0 and "OK area park 2025-03" in out and "3 site reports verified" in out, out
        (d / "proof.json").write_text(json.dumps(store.area_inclusion_proof("park", "2025-03")))
        rc, out = verify(str(d / "area.json"), "--public-key", str(d / "hub.pem"), "--trusted-keys",
                         str(d / "keys.json"), "--evidence", str(d / "sites"), "--log-head", str(d / "proof.json"),
                         "--hub-key", str(d / "hub.pem"))  # fmt: skip
        assert rc == 0 and "OK log: included at leaf 3" in out, out
        # a site report swapped for another validly signed one: the area report no longer adds up
        (d / "sites" / "b.json").write_bytes(area_sites["b"].resign("2025-03", generated_at="2025-04-07T00:00:00Z"))
        rc, out = verify(str(d / "area.json"), "--public-key", str(d / "hub.pem"), "--trusted-keys",
                         str(d / "keys.json"), "--evidence", str(d / "sites"))  # fmt: skip
        assert rc == 1 and "area.site.b.report_sha256" in out
    finally:
        store.close()


def test_at_the_deadline_the_missing_are_named_and_a_late_report_makes_a_new_version(
    tmp_path: Path, hub_db: DatabaseConfig, area_sites: dict[str, SignedSite]
) -> None:
    clock = Clock(ms(2025, 3, 5))
    store = open_store(tmp_path, hub_db, clock)
    try:
        for s, site in area_sites.items():
            store.enroll(s, "park", site.public_pem)
        ing, areas = Ingestor(store, max_bytes=1 << 22), AreaReports(store)
        for s in ("p", "b"):
            assert ing.submit_report(s, area_sites[s].reports["2025-02"], via="mqtt").status == "accepted"
        assert areas.step() == []
        clock.now = ms(2025, 3, 11)  # February's deadline (10 days after its end) has passed
        [v1] = areas.step()
        body = json.loads(v1.data)
        assert not v1.complete and [m["site"] for m in body["missing"]] == ["c"]
        assert body["missing"][0]["reason"].startswith("no accepted report by 2025-03-11")
        assert body["data_completeness"] == "0.666667" and body["allocations"][0]["allocated_wh"] == 0
        d = certifier_files(tmp_path / "v1", store, v1.data, area_sites)
        rc, out = verify(str(d / "area.json"), "--public-key", str(d / "hub.pem"), "--trusted-keys",
                         str(d / "keys.json"), "--evidence", str(d / "sites"))  # fmt: skip
        assert rc == 0, out
        # c's February arrives late: the area report is rebuilt as version 2, naming the first
        assert ing.submit_report("c", area_sites["c"].reports["2025-02"], via="http").status == "accepted"
        [v2] = areas.step()
        assert (v2.version, v2.complete) == (2, True)
        assert json.loads(v2.data)["reissue_of"] == v1.sha256
        assert [v["version"] for v in areas.versions("park", "2025-02")] == [1, 2]
        # the yearly roll-up on demand (December is not in yet): February and the months missing
        year = areas.build_year("park", "2025", force=True)
        assert year is not None
        y = json.loads(year.data)
        assert [m["month"] for m in y["months"]] == ["2025-02"] and y["totals"] == json.loads(v2.data)["totals"]
        yd = tmp_path / "year"
        yd.mkdir()
        (yd / "year.json").write_bytes(year.data)
        (yd / "2025-02.json").write_bytes(v2.data)
        (yd / "hub.pem").write_text(store.keys.public_info()["public_key_pem"])
        rc, out = verify(str(yd / "year.json"), "--public-key", str(yd / "hub.pem"), "--evidence", str(yd))
        assert rc == 0 and "OK area park 2025" in out, out
        assert store.leaf_count() == 6  # 3 site reports + 2 versions of February + the roll-up
        # December's area report (built at its deadline: nobody in) completes the year: the step rolls it up
        clock.now = ms(2025, 12, 20)
        # March to November were reported by nobody: each built at its deadline, naming everyone missing (and
        # the roll-up built on demand above follows as its version 2)...
        assert [b.period for b in areas.step()] == [*(f"2025-{m:02d}" for m in range(3, 12)), "2025"]
        clock.now = ms(2026, 1, 11)  # ...as was December (nobody in)
        built = areas.step()
        assert [b.period for b in built] == ["2025-12", "2025"] and not built[0].complete
        again = built[1]
        assert again.version == 3
        assert [m["month"] for m in json.loads(again.data)["months"]][:2] == ["2025-02", "2025-03"]
        assert len(json.loads(again.data)["months"]) == 11
        assert areas.step() == []
    finally:
        store.close()


def test_gia_hub_area_report_pin_and_area_proof_from_the_command_line(
    tmp_path: Path, area_sites: dict[str, SignedSite]
) -> None:
    import yaml
    from typer.testing import CliRunner

    from gateway.cli import build_app
    from gateway.hub.config import load_hub_settings

    cfg = tmp_path / "hub.yaml"
    cfg.write_text(yaml.safe_dump({"hub": {"data_dir": "state", "areas": [{"id": "park", **AREA_DEFINITION}]}}))

    def gia(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(build_app(), [*args, "--config", str(cfg)])
        return r.exit_code, r.output

    for s, site in area_sites.items():
        (tmp_path / f"{s}.pem").write_bytes(site.public_pem)
        assert gia("hub", "enroll", s, "--area", "park", "--public-key", str(tmp_path / f"{s}.pem"))[0] == 0
    store = HubStore.open(load_hub_settings(cfg).hub)
    try:
        ing = Ingestor(store, max_bytes=1 << 22)
        for s in ("p", "b"):
            ing.submit_report(s, area_sites[s].reports["2025-03"], via="http")
    finally:
        store.close()
    code, out = gia("hub", "area-report", "park", "2025-13")
    assert code == 1 and "not a month" in out
    # March's deadline is long past (the hub runs on today's clock): built at once, c named missing
    code, out = gia("hub", "area-report", "park", "2025-03", "-o", str(tmp_path / "area.json"))
    assert code == 0 and "version 1" in out, out
    area = json.loads((tmp_path / "area.json").read_text())
    assert [m["site"] for m in area["missing"]] == ["c"], ([s["site"] for s in area["sites"]], area["accounting"])
    code, out = gia("hub", "log", "proof", "park", "2025-03", "--area", "-o", str(tmp_path / "proof.json"))
    assert code == 0 and json.loads((tmp_path / "proof.json").read_text())["leaf_index"] == 2
    code, out = gia("hub", "area-report", "park", "2025")
    assert code == 1 and "--now" in out
    assert gia("hub", "area-report", "park", "2025", "--now")[0] == 0
    code, out = gia("hub", "pin", "c", "--public-key", str(tmp_path / "b.pem"), "--reason", "checked by phone")
    assert code == 0 and "pinned key" in out
    assert gia("hub", "pin", "nobody", "--public-key", str(tmp_path / "b.pem"), "--reason", "x")[0] == 1


def test_a_bad_area_definition_or_policy_in_hub_yaml_names_the_field(tmp_path: Path) -> None:
    import pytest
    import yaml

    from gateway.hub.config import load_hub_settings
    from gateway.settings import ConfigError

    bad = [
        ({"policy": {"min_energy_coverag": "0.9"}}, "hub.areas[0].policy: unknown policy field(s) min_energy_coverag"),
        (
            {"shared_generators": [{"id": "w", "site": "p", "channel": "x", "allocation": "contracted",
                                    "shares": {"a": "0.6", "b": "0.5"}}]},
            "shares: add up to 1.1",
        ),
        ({"criteria": [{"name": "renewable_share", "basis": "location", "threshold": "0.5"}]}, "criteria[0].basis"),
    ]  # fmt: skip
    for area, message in bad:
        cfg = tmp_path / "hub.yaml"
        cfg.write_text(yaml.safe_dump({"hub": {"data_dir": "state", "areas": [{"id": "park", **area}]}}))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_hub_settings(cfg)


def test_a_stored_report_whose_bytes_no_longer_match_its_sha256_is_not_summed(
    tmp_path: Path, hub_db: DatabaseConfig, area_sites: dict[str, SignedSite]
) -> None:
    """The hub's build reuses the verdicts ingestion stored instead of verifying every signature again, so
    it must still notice stored bytes that are not the ones verified. b's stored report gains a line end:
    its signature still verifies (a line end after the document is allowed), so a build that only
    re-verified would sum it; its bytes no longer hash to the stored sha256, so it is not summed."""
    clock = Clock(ms(2025, 4, 6))
    store = open_store(tmp_path, hub_db, clock)
    try:
        for s, site in area_sites.items():
            store.enroll(s, "park", site.public_pem)
        clock.now += 1_000  # received after the area's policy was stored: the verdicts are reusable
        ing, areas = Ingestor(store, max_bytes=1 << 22), AreaReports(store)
        for s in ("p", "b", "c"):
            assert ing.submit_report(s, area_sites[s].reports["2025-03"], via="mqtt").status == "accepted"
        signed = area_sites["b"].reports["2025-03"]
        altered = signed.rstrip(b"\r\n") + (b"\r\n" if signed.endswith(b"\n") else b"\n")
        assert altered != signed
        with db.write_transaction(store.engine) as conn:
            conn.execute(
                update(db.reports).where(db.reports.c.site == "b", db.reports.c.month == "2025-03").values(raw=altered)
            )
        built = areas.build_month("park", "2025-03")
        assert built is not None
        body = json.loads(built.data)
        assert [s["site"] for s in body["sites"]] == ["c", "p"]
        [b] = body["missing"]
        assert b["site"] == "b" and "altered" in b["reason"], b
    finally:
        store.close()


def test_a_verdict_made_before_the_areas_policy_changed_is_not_reused(
    tmp_path: Path, hub_db: DatabaseConfig, area_sites: dict[str, SignedSite]
) -> None:
    """A verdict is reused only under the policy it was made under: reports received before the area's
    policy changed are verified again under the new one. b's stored grade is made unreadable for the
    build: if it were reused b would not be summed (not graded `verified`); verified again, it is."""
    clock = Clock(ms(2025, 4, 6))
    store = open_store(tmp_path, hub_db, clock)
    try:
        for s, site in area_sites.items():
            store.enroll(s, "park", site.public_pem)
        clock.now += 1_000
        ing, areas = Ingestor(store, max_bytes=1 << 22), AreaReports(store)
        for s in ("p", "b", "c"):
            assert ing.submit_report(s, area_sites[s].reports["2025-03"], via="mqtt").status == "accepted"
        with db.write_transaction(store.engine) as conn:
            conn.execute(update(db.reports).where(db.reports.c.site == "b").values(grade="provisional"))
        with store.engine.connect() as conn:
            assert "b" in areas._verdicts(conn, "park", "2025-03")  # reused as it stands
        clock.now += 1_000
        with db.write_transaction(store.engine) as conn:  # what sync_areas does when hub.yaml's policy changes
            conn.execute(update(db.areas).where(db.areas.c.id == "park").values(updated_ms=clock.now))
        built = areas.build_month("park", "2025-03")
        assert built is not None
        assert [s["site"] for s in json.loads(built.data)["sites"]] == ["b", "c", "p"]
    finally:
        store.close()
