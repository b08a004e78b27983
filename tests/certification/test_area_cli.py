"""Area reports over three sites, the duplicate-channel rule, and the `gia` commands end to end."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gateway.certification import cli
from gateway.certification.area import AreaError, SiteInput, aggregate, verify_area

from .helpers import MARCH_START, channel, constant_400w, device, make_ledger, register_samples, service, settings

T0 = MARCH_START - timedelta(hours=2)
T1 = datetime(2025, 4, 1, tzinfo=UTC)


def _site(root: Path, site: str, scale: int, serial: str) -> SiteInput:
    d = root / site
    samples = register_samples("m1", "energy_import_wh", T0, T1, value=lambda k, ts: scale * constant_400w(k, ts))
    samples += register_samples("wt", "energy_export_wh", T0, T1, value=lambda k, ts: 50 * k)
    make_ledger(d / "ledger.db", samples).close()
    s = settings(
        d,
        [
            device("m1", channel("grid_import", rated_power_w=2000 * scale), serial=serial),
            device(
                "wt",
                channel("generation", "energy_export_wh", source="wind", renewable=True, rated_power_w=1000),
                serial=f"WT-{site}",
            ),
        ],
        site=site,
    )
    svc = service(s)
    return SiteInput(site, svc.report_json(site, "2025-03"), svc.public_keys()[0]["public_key_pem"].encode())


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> list[SiteInput]:
    root = tmp_path_factory.mktemp("area")
    return [_site(root, name, scale, f"LV-{name}") for name, scale in (("a", 1), ("b", 2), ("c", 3))]


def test_area_report_adds_up_and_verifies(three: list[SiteInput]) -> None:
    area = aggregate("park", "2025-03", three)
    reps = [json.loads(i.report) for i in three]
    for key in ("consumption_wh", "grid_import_wh", "generation_wh", "renewable_generation_wh"):
        assert area["totals"][key] == sum(r["indicators"][key] for r in reps)
    # 743 h x 400 W x (1 + 2 + 3) import + 743 h x 200 W x 3 wind
    assert area["totals"]["grid_import_wh"] == 743 * 400 * 6
    assert area["totals"]["generation_wh"] == 743 * 200 * 3
    assert area["totals"]["co2_location_kg"] == str(sum(Decimal(r["indicators"]["co2_location_kg"]) for r in reps))
    assert area["verified_consumption_share"] == "1.000000"
    assert [s["site"] for s in area["sites"]] == ["a", "b", "c"]
    assert "indicators" not in json.dumps(area["sites"])  # per-site figures stay behind the hashes
    assert verify_area(area, three).ok


def test_area_report_tampered_total_fails(three: list[SiteInput]) -> None:
    area = aggregate("park", "2025-03", three)
    area["totals"]["grid_import_wh"] += 1
    out = verify_area(area, three)
    assert [f.rule for f in out.failures] == ["area.totals"]


def test_duplicate_channel_is_rejected(three: list[SiteInput], tmp_path: Path) -> None:
    dup = _site(tmp_path, "d", 1, "LV-a")  # the same grid meter as site a
    with pytest.raises(AreaError, match=r"channel m1.grid_import \(meter:LV-A:energy_import_wh\) of site 'd'"):
        aggregate("park", "2025-03", [*three, dup])


def test_unverifiable_site_report_is_listed_not_summed(three: list[SiteInput]) -> None:
    rep = json.loads(three[1].report)
    rep["indicators"]["grid_import_wh"] = 1
    forged = SiteInput("b", json.dumps(rep).encode(), three[1].public_key_pem)
    area = aggregate("park", "2025-03", [three[0], forged, three[2]])
    assert [s["site"] for s in area["sites"]] == ["a", "c"]
    assert [m["site"] for m in area["missing"]] == ["b"]
    assert "FAIL signature" in area["missing"][0]["reason"]
    assert area["totals"]["grid_import_wh"] == 743 * 400 * (1 + 3)


# -- CLI --------------------------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer()
    cli.register(app)
    return app


def _yaml(d: Path, site: str = "s1") -> Path:
    cfg = {
        "site": {"id": site, "timezone": "Europe/Riga"},
        "data_dir": str(d),
        "http": {"enabled": False},
        "devices": [
            {
                "id": "m1",
                "driver": "modbus",
                "connection": "tcp://127.0.0.1:502",
                "sunspec": True,
                "serial": "LV-9",
                "channels": [{"role": "grid_import", "quantity": "energy_import_wh"}],
            }
        ],
    }
    p = d / "gia.yaml"
    p.write_text(json.dumps(cfg))  # JSON is YAML
    return p


def test_cli_report_evidence_verify_keys(tmp_path: Path) -> None:
    make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)).close()
    cfg = _yaml(tmp_path)
    r = CliRunner()
    app = _app()
    res = r.invoke(app, ["report", "s1", "2025-03", "--config", str(cfg), "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 1 and "gia keys rotate" in res.output  # a ledger with history gets no key silently
    res = r.invoke(app, ["keys", "show", "--config", str(cfg)])
    assert res.exit_code == 1 and "signing key is missing" in res.output
    res = r.invoke(app, ["keys", "rotate", "--reason", "first key of a site with history", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["report", "s1", "2025-03", "--config", str(cfg), "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_bytes())["channels"][0]["energy_wh"] == 743 * 400
    res = r.invoke(app, ["report", "s1", "2025-03", "--config", str(cfg), "--format", "csv"])
    assert res.exit_code == 0 and "m1.grid_import" in res.output
    res = r.invoke(app, ["report", "s1", "2025-03", "--config", str(cfg), "-f", "pdf", "-o", str(tmp_path / "r.pdf")])
    assert res.exit_code == 0 and (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    res = r.invoke(app, ["evidence", "s1", "2025-03", "--config", str(cfg), "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["keys", "export", str(tmp_path / "pub.pem"), "--config", str(cfg)])
    assert res.exit_code == 0 and "key_id (fingerprint)" in res.output
    assert (tmp_path / "pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    res = r.invoke(app, ["keys", "show", "--config", str(cfg)])
    assert "PRIVATE" not in res.output and "BEGIN PUBLIC KEY" in res.output
    args = ["verify", str(tmp_path / "r.json"), "--public-key", str(tmp_path / "pub.pem")]
    res = r.invoke(app, [*args, "--evidence", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_bytes())
    rep["channels"][0]["energy_wh"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(rep))
    res = r.invoke(app, ["verify", str(tmp_path / "bad.json"), "--public-key", str(tmp_path / "pub.pem")])
    assert res.exit_code == 1
    assert "FAIL energy_split: m1.grid_import: energy_wh 1 != measured + interpolated + estimated 297200" in res.output
    # README: a reissue of the closed month, a key rotation, verify with pinned keys and a policy
    res = r.invoke(app, ["report", "s1", "2025-03", "--reissue", "--config", str(cfg)])
    assert res.exit_code == 2 and "--reissue needs --reason" in res.output
    args = ["report", "s1", "2025-03", "--reissue", "--reason", "multiplier corrected", "--config", str(cfg)]
    res = r.invoke(app, [*args, "-o", str(tmp_path / "r2.json")])
    assert res.exit_code == 0, res.output
    r2 = json.loads((tmp_path / "r2.json").read_bytes())
    assert r2["reissue_reason"] == "multiplier corrected"
    res = r.invoke(app, ["keys", "rotate", "--reason", "scheduled", "--config", str(cfg)])
    assert res.exit_code == 0 and "signed by the old key" in res.output, res.output
    res = r.invoke(app, ["evidence", "s1", "2025-03", "--config", str(cfg), "-o", str(tmp_path / "ev2")])
    assert res.exit_code == 0, res.output
    (tmp_path / "policy.json").write_text(json.dumps({"name": "certifier X", "min_energy_coverage": "0.995"}))
    res = r.invoke(
        app,
        ["verify", str(tmp_path / "r2.json"), "--trusted-keys", str(tmp_path / "pub.pem"),
         "--policy", str(tmp_path / "policy.json"), "--evidence", str(tmp_path / "ev2")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "under policy 'certifier X'" in res.output and "reissue of report" in res.output
    res = r.invoke(app, ["report", "s1", "2025-3", "--config", str(cfg)])
    assert res.exit_code == 2 and "YYYY-MM" in res.output


def test_cli_config_problems_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "gia.yaml"
    p.write_text("site: {id: BAD ID}\ncertification: {renewable_share_threshold: 'abc'}\n")
    res = CliRunner().invoke(_app(), ["report", "x", "2025-03", "--config", str(p)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert any(line.startswith("site.id:") for line in lines)
    assert any(line.startswith("certification.renewable_share_threshold:") for line in lines)


def test_cli_meter_replacement_and_area_report(tmp_path: Path, three: list[SiteInput]) -> None:
    make_ledger(tmp_path / "ledger.db", []).close()
    cfg = _yaml(tmp_path)
    r = CliRunner()
    res = r.invoke(
        _app(),
        ["meter-replacement", "m1", "--at", "2025-03-20T10:05:00Z", "--register", "energy_import_wh=1234:5",
         "--old-serial", "A", "--new-serial", "B", "--config", str(cfg)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    from gateway.certification.source import LedgerSource

    src = LedgerSource(tmp_path / "ledger.db")
    [rep] = src.replacements()
    src.close()
    assert (rep.closing_wh, rep.opening_wh, rep.old_serial, rep.new_serial) == (1234, 5, "A", "B")

    area_dir = tmp_path / "area"
    area_dir.mkdir()
    sites: list[dict[str, Any]] = []
    for inp in three:
        (area_dir / f"{inp.site}.json").write_bytes(inp.report)
        assert inp.public_key_pem is not None
        (area_dir / f"{inp.site}.pem").write_bytes(inp.public_key_pem)
        sites.append({"site": inp.site, "report": f"{inp.site}.json", "public_key": f"{inp.site}.pem"})
    (area_dir / "area.yaml").write_text(json.dumps({"area": "park", "sites": sites, "signing_key": "agg.pem"}))
    agg_pub = tmp_path / "aggregator.pem"
    res = r.invoke(
        _app(),
        ["area-report", str(area_dir / "area.yaml"), "2025-03", "-o", str(tmp_path / "area.json"),
         "--export-key", str(agg_pub)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    area = json.loads((tmp_path / "area.json").read_text())
    assert area["totals"]["grid_import_wh"] == 743 * 400 * 6
    assert area["signature"]["alg"] == "Ed25519"
    # the certifier pins the site keys (from each site's /api/v1/keys) and the aggregator's key
    pinned = tmp_path / "site-keys.json"
    pinned.write_text(
        json.dumps({"keys": [{"site": i.site, "public_key_pem": (i.public_key_pem or b"").decode()} for i in three]})
    )
    verify_area = ["verify", str(tmp_path / "area.json"), "--evidence", str(area_dir)]
    res = r.invoke(_app(), [*verify_area, "--public-key", str(agg_pub), "--trusted-keys", str(pinned)])
    assert res.exit_code == 0, res.output
    assert "OK area park 2025-03: signature valid" in res.output
    res = r.invoke(_app(), verify_area)  # keys beside the reports are never used
    assert res.exit_code == 2 and "--public-key AGGREGATOR.pem" in res.output
    sites.append({"site": "a2", "report": "a.json", "public_key": "a.pem"})
    (area_dir / "area.yaml").write_text(json.dumps({"area": "park", "sites": sites, "signing_key": "agg.pem"}))
    res = r.invoke(_app(), ["area-report", str(area_dir / "area.yaml"), "2025-03"])
    assert res.exit_code == 2
    assert "is for site 'a'" in res.output
