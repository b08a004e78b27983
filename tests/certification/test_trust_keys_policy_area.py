"""Worked cases of issue #14, part 2: who is trusted and under whose thresholds.

6 keys that cannot be swapped silently — 7 the certifier's policy, not the site's thresholds —
9 area reports that cannot double count — 10 the smaller items (signature object, framing, missing
evidence files, evidence lines, `register_value`, backups without the private key, the verify entry point).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.certification.area import AreaError, SiteInput, aggregate, sign_area_report, verify_area
from gateway.certification.keys import PinnedKey
from gateway.certification.service import ReportService, SigningKeyMissing
from gateway.certification.signing import KeyMissing, KeyStore, canonical, key_id, load_public_pem
from gateway.certification.sitekeys import ensure_site_key, rotate_site_key
from gateway.certification.verify import verify_paths
from gateway.site.resolve import resolve_site

from .helpers import MARCH_START, channel, constant_400w, device, make_ledger, register_samples, service, settings

T0 = MARCH_START - timedelta(hours=2)
T1 = datetime(2025, 4, 1, tzinfo=UTC)
FULL = 743 * 400
JUNE = datetime(2025, 6, 1, tzinfo=UTC)


def verify(report: Path, evidence: Path | None = None, **kw: Any) -> tuple[int, str]:
    buf = io.StringIO()
    kw.setdefault("public_key", None)
    rc = verify_paths(report, evidence=evidence, stdout=buf, **kw)
    return rc, buf.getvalue()


def _site(d: Path, **cert: Any) -> Any:
    make_ledger(d / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)).close()
    return settings(d, [device("m1", channel("grid_import", rated_power_w=1000), serial="SN-1")], certification=cert)


# -- 6. keys -------------------------------------------------------------------------------------------
def test_verify_never_trusts_a_key_shipped_with_the_report(tmp_path: Path) -> None:
    svc = service(_site(tmp_path), now=JUNE)
    svc.write_evidence("s1", "2025-03", tmp_path / "ev")
    assert not (tmp_path / "ev" / "public_key.pem").exists()
    (tmp_path / "ev" / "public_key.pem").write_text(svc.public_keys()[0]["public_key_pem"])  # planted beside it
    rc, out = verify(tmp_path / "ev" / "report.json", tmp_path / "ev")
    assert rc == 2
    assert "no trusted key: pass --public-key PINNED.pem or --trusted-keys FILE" in out
    (tmp_path / "pinned.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    rc, out = verify(tmp_path / "ev" / "report.json", tmp_path / "ev", public_key=tmp_path / "pinned.pem")
    assert rc == 0, out
    fingerprint = svc.public_keys()[0]["key_id"]
    assert f"OK s1 2025-03: signature valid, key {fingerprint}, evidence recomputed, grade verified" in out


async def test_a_gateway_with_a_ledger_and_no_key_refuses_to_start(tmp_path: Path) -> None:
    from gateway.agent import Agent
    from gateway.settings import Config
    from gateway.site.resolve import resolve_site

    s = _site(tmp_path)
    site = resolve_site(s, base_dir=tmp_path)
    with pytest.raises(KeyMissing, match="gia keys rotate --reason"):
        await Agent(Config(s, site, tmp_path)).run()
    with pytest.raises(SigningKeyMissing):
        ReportService(s, site, now_ms=lambda: 1748736000000).report_json("s1", "2025-03")
    assert not (tmp_path / "keys" / "site-ed25519.pem").exists()  # nothing made one silently


def test_a_fresh_site_gets_its_first_key_announced_in_the_events_chain(tmp_path: Path) -> None:
    s = settings(tmp_path, [device("m1", channel("grid_import", rated_power_w=1000))])
    store = ensure_site_key(tmp_path / "keys", s.ledger_path, site="s1")
    from gateway.ledger.store import Ledger

    led = Ledger(s.ledger_path)
    [ev] = led.events(kind="key_transition")
    led.close()
    st = json.loads(ev.detail)["statement"]
    assert (st["new_key_id"], st["old_key_id"], st["reason"]) == (key_id(store.public_key()), None, "initial site key")


@pytest.fixture
def rotated(tmp_path: Path) -> dict[str, Any]:
    """March signed by key A; A rotated to B (signed by A) on 1 May; April signed by B."""
    s = _site(tmp_path)
    a = service(s, now=JUNE)
    (tmp_path / "a.pem").write_text(a.public_keys()[0]["public_key_pem"])
    a.report_json("s1", "2025-03")
    rot = rotate_site_key(tmp_path / "keys", s.ledger_path, site="s1", reason="scheduled rotation")
    assert rot.signed_by_old
    # April (readings up to 1 April only: closed unverified after the longest settlement wait) under key B
    b = ReportService(s, resolve_site(s, base_dir=tmp_path), now_ms=lambda: int(JUNE.timestamp() * 1000))
    b.write_evidence("s1", "2025-04", tmp_path / "ev-04")
    b.write_evidence("s1", "2025-03", tmp_path / "ev-03")
    return {"dir": tmp_path, "settings": s, "svc": b, "rotation": rot}


def test_verify_follows_a_signed_key_transition_from_the_pinned_key(rotated: dict[str, Any]) -> None:
    d, rot = rotated["dir"], rotated["rotation"]
    rc, out = verify(d / "ev-04" / "report.json", d / "ev-04", public_key=d / "a.pem")
    assert rc == 0, out
    assert f"signed over by trusted key {rot.old_key_id[:16]}... (reason: scheduled rotation)" in out
    assert f"signature valid, key {rot.key_id}" in out
    rc, out = verify(d / "ev-03" / "report.json", d / "ev-03", public_key=d / "a.pem")  # March: still key A
    assert rc == 0, out
    assert f"key {rot.old_key_id}" in out


def test_a_key_made_without_the_old_key_must_be_pinned_anew(rotated: dict[str, Any]) -> None:
    d, s = rotated["dir"], rotated["settings"]
    shutil.rmtree(d / "keys")  # the keys are lost
    lost = rotate_site_key(d / "keys", s.ledger_path, site="s1", reason="keys lost with the SD card")
    assert not lost.signed_by_old
    svc = ReportService(
        s, resolve_site(s, base_dir=d), now_ms=lambda: int((JUNE + timedelta(days=1)).timestamp() * 1000)
    )
    svc.reissue("s1", "2025-04", "signed again after the key was lost")
    svc.write_evidence("s1", "2025-04", d / "ev-lost")
    rc, out = verify(d / "ev-lost" / "report.json", d / "ev-lost", public_key=d / "a.pem")
    assert rc == 1
    assert "not signed by the key it replaces (that key was not available)" in out
    # pinned anew: the certifier adds key C to A (A's signed transition to B still vouches for the report
    # this reissue replaces)
    (d / "a-and-c.pem").write_text((d / "a.pem").read_text() + svc.public_keys()[0]["public_key_pem"])
    rc, out = verify(d / "ev-lost" / "report.json", d / "ev-lost", trusted_keys=d / "a-and-c.pem")
    assert rc == 0, out


def test_a_retired_key_signs_nothing_after_its_transition(rotated: dict[str, Any]) -> None:
    d = rotated["dir"]
    rep = json.loads((d / "ev-04" / "report.json").read_bytes())
    old = KeyStore(d / "old-keys")  # a key that is not in force: as if the retired key had been kept
    forged = old.sign_report(rep)
    (d / "forged.json").write_bytes(canonical(forged))
    (d / "old.pem").write_text(old.public_info()["public_key_pem"])
    rc, out = verify(d / "forged.json", public_key=d / "old.pem")
    assert rc == 1
    assert "but the key in force at its events head is" in out


def test_trusted_keys_file_binds_keys_to_sites(rotated: dict[str, Any]) -> None:
    d, svc = rotated["dir"], rotated["svc"]
    keys = {"keys": [{"site": "other", "public_key_pem": (d / "a.pem").read_text()}]}
    (d / "trusted.json").write_text(json.dumps(keys))
    rc, out = verify(d / "ev-03" / "report.json", trusted_keys=d / "trusted.json")
    assert rc == 1 and "neither pinned nor reached" in out  # key A is pinned for another site
    keys["keys"].append({"site": "s1", "public_key_pem": svc.public_keys()[0]["public_key_pem"]})
    (d / "trusted.json").write_text(json.dumps(keys))
    rc, out = verify(d / "ev-04" / "report.json", trusted_keys=d / "trusted.json")
    assert rc == 0, out


# -- 7. the certifier's policy -------------------------------------------------------------------------
LENIENT = {
    "boundary_tolerance_s": 600,
    "max_interpolation_s": 86400,
    "min_energy_coverage": "0",
    "max_estimated_share": "1",
}


def test_lenient_site_thresholds_do_not_make_verified(tmp_path: Path) -> None:
    gap = (datetime(2025, 2, 28, 20, 30, tzinfo=UTC), datetime(2025, 2, 28, 23, 30, tzinfo=UTC))

    def value(k: int, ts: datetime) -> int | None:
        return None if gap[0] < ts < gap[1] else constant_400w(k, ts)

    make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=value)).close()
    s = settings(tmp_path, [device("m1", channel("grid_import", rated_power_w=1000))], certification=LENIENT)
    svc = service(s, now=JUNE)
    svc.write_evidence("s1", "2025-03", tmp_path / "ev")
    rep = json.loads((tmp_path / "ev" / "report.json").read_bytes())
    ch = rep["channels"][0]
    # the opening at 22:00Z lies in a 3-h gap (20:30-23:30): interpolated; 1.5 h x 400 W after the boundary
    assert (ch["opening"]["method"], ch["interpolated_wh"]) == ("interpolated", 600)
    assert rep["method"]["max_interpolation_s"] == 86400  # the report states its parameters
    assert rep["quality"]["grade"] == "verified"  # under the site's own thresholds
    assert [p["parameter"] for p in rep["quality"]["lenient_vs_scheme"]] == [
        "boundary_tolerance_s",
        "max_interpolation_s",
        "min_energy_coverage",
        "max_estimated_share",
    ]
    (tmp_path / "key.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    report = tmp_path / "ev" / "report.json"
    for evidence in (None, tmp_path / "ev"):  # regraded from the facts, and recomputed from the evidence
        rc, out = verify(report, evidence, public_key=tmp_path / "key.pem")
        assert rc == 1, out
        assert "FAIL policy.grade: report says verified, the policy 'gia-scheme-defaults/1' gives provisional" in out
        assert "FAIL policy.channel.m1.grid_import.grade: report says verified, the policy gives provisional" in out
    rc, out = verify(report, tmp_path / "ev", public_key=tmp_path / "key.pem")
    assert "opening boundary estimated" in out  # recomputed with max_interpolation_s 3600: 3 h is too far
    (tmp_path / "lenient.json").write_text(json.dumps({"name": "a lenient certifier", **LENIENT}))
    rc, out = verify(report, tmp_path / "ev", public_key=tmp_path / "key.pem", policy=tmp_path / "lenient.json")
    assert rc == 0, out
    assert "grade verified under policy 'a lenient certifier'" in out


def test_a_stricter_policy_grades_lower_without_failing_an_honest_report(tmp_path: Path) -> None:
    svc = service(_site(tmp_path), now=JUNE)
    svc.write_evidence("s1", "2025-03", tmp_path / "ev")
    (tmp_path / "key.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    (tmp_path / "strict.json").write_text(json.dumps({"settlement_delay_h": 24 * 100}))
    rc, out = verify(tmp_path / "ev" / "report.json", public_key=tmp_path / "key.pem", policy=tmp_path / "strict.json")
    assert rc == 1  # closed 61 days after the month's end, before a 100-day settlement delay
    assert "FAIL policy.grade" in out and "before the policy's settlement delay of 2400 h" in out
    (tmp_path / "typo.json").write_text(json.dumps({"min_energy_coverge": "0.9"}))
    rc, out = verify(tmp_path / "ev" / "report.json", public_key=tmp_path / "key.pem", policy=tmp_path / "typo.json")
    assert rc == 2 and "unknown policy field(s) min_energy_coverge" in out


# -- 9. area reports -----------------------------------------------------------------------------------
def _area_site(root: Path, site: str, serial: str | None, *, rated: int | None = 1000) -> SiteInput:
    d = root / site
    make_ledger(d / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)).close()
    kw = {"rated_power_w": rated} if rated else {}
    s = settings(d, [device("m1", channel("grid_import", **kw), serial=serial)], site=site)
    svc = service(s, now=JUNE)
    return SiteInput(site, svc.report_json(site, "2025-03"), svc.public_keys()[0]["public_key_pem"].encode())


@pytest.fixture(scope="module")
def area_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SiteInput]:
    root = tmp_path_factory.mktemp("area")
    return {
        "a": _area_site(root, "a", "sn-123 "),
        "b": _area_site(root, "b", "SN-123"),  # the same meter, written differently
        "c": _area_site(root, "c", None),  # no serial
        "d": _area_site(root, "d", "SN-900", rated=None),  # provisional: no rated power
        "e": _area_site(root, "e", "SN-901"),
    }


def test_one_meter_in_two_sites_is_caught_whatever_its_spelling(area_sites: dict[str, SiteInput]) -> None:
    with pytest.raises(AreaError, match=r"channel m1.grid_import \(meter:SN-123:energy_import_wh\) of site 'b'"):
        aggregate("park", "2025-03", [area_sites["a"], area_sites["b"]])


def test_area_totals_sum_only_verified_reports_and_flag_unserialised_channels(
    area_sites: dict[str, SiteInput], tmp_path: Path
) -> None:
    inputs = [area_sites[k] for k in ("a", "c", "d", "e")]
    body = aggregate("park", "2025-03", inputs)
    assert [s["site"] for s in body["sites"]] == ["a", "c", "e"]
    assert body["totals"]["grid_import_wh"] == 3 * FULL  # 891 600 Wh, not 4 x 297 200
    [missing] = body["missing"]
    assert (missing["site"], missing["grade"]) == ("d", "provisional")
    assert "not summed" in missing["reason"]
    assert body["unserialised_channels"] == [{"site": "c", "channel": "m1.grid_import"}]
    signer = KeyStore(tmp_path / "aggregator")
    area = sign_area_report(body, signer)
    agg_pub = signer.public_key()
    assert verify_area(area, inputs, aggregator_key=agg_pub).ok
    forged = {**area, "totals": {**area["totals"], "grid_import_wh": 4 * FULL}}
    assert [f.rule for f in verify_area(forged, inputs, aggregator_key=agg_pub).failures] == [
        "area.signature",
        "area.totals",
    ]
    # site keys are the pinned ones: a report re-signed by another key is not summed
    other = KeyStore(tmp_path / "other")
    resigned = canonical(other.sign_report(json.loads(area_sites["e"].report)))
    swapped = SiteInput("e", resigned, area_sites["e"].public_key_pem)
    again = aggregate("park", "2025-03", [area_sites["a"], swapped])
    assert [m["site"] for m in again["missing"]] == ["e"] and "FAIL signature" in again["missing"][0]["reason"]
    pinned_other = SiteInput("e", resigned, None, (PinnedKey(key_id(other.public_key()), other.public_key(), "x"),))
    assert aggregate("park", "2025-03", [pinned_other])["sites"] == []  # pinned for site x, not e


# -- 10. smaller items ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_devices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("two")
    samples = register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)
    samples += register_samples("m2", "energy_import_wh", T0, T1, value=lambda k, ts: 10 * constant_400w(k, ts))
    make_ledger(d / "ledger.db", samples).close()
    s = settings(
        d,
        [
            device("m1", channel("grid_import", rated_power_w=1000), serial="A"),
            device("m2", channel("consumption", rated_power_w=100_000, multiplier=10), serial="B"),
        ],
    )
    svc = service(s, now=JUNE)
    svc.write_evidence("s1", "2025-03", d / "ev")
    (d / "key.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    return {"dir": d, "svc": svc}


def _copy(src: dict[str, Any], tmp_path: Path) -> Path:
    ev = tmp_path / "ev"
    shutil.copytree(src["dir"] / "ev", ev)
    return ev


def test_signature_object_extra_fields_and_framing_are_rejected(two_devices: dict[str, Any], tmp_path: Path) -> None:
    ev, key = _copy(two_devices, tmp_path), two_devices["dir"] / "key.pem"
    data = (ev / "report.json").read_bytes()
    rep = json.loads(data)
    rep["signature"]["note"] = "approved by the certifier"
    (tmp_path / "extra.json").write_bytes(canonical(rep))
    rc, out = verify(tmp_path / "extra.json", public_key=key)
    assert rc == 1 and "FAIL signature: signature object carries unsigned extra field(s) note" in out
    for name, framed, expected in (
        ("after.json", data + b'\n{"schema":"x"}', "15 character(s) after the JSON document"),
        ("bom.json", b"\xef\xbb\xbf" + data, "1 character(s) before the JSON document"),
    ):
        (tmp_path / name).write_bytes(framed)
        rc, out = verify(tmp_path / name, public_key=key)
        assert rc == 1 and f"FAIL json.framing: {expected}" in out, out
    (tmp_path / "nl.json").write_bytes(data + b"\n")
    assert verify(tmp_path / "nl.json", public_key=key)[0] == 0
    (tmp_path / "dup.json").write_bytes(data[:-1] + b',"schema":"gia-monthly-report/1"}')
    rc, out = verify(tmp_path / "dup.json", public_key=key)
    assert rc == 2 and "duplicate key 'schema'" in out


@pytest.mark.parametrize("missing", ["intervals.csv", "previous_report.json"])
def test_missing_evidence_files_are_failed_rules(two_devices: dict[str, Any], tmp_path: Path, missing: str) -> None:
    ev = _copy(two_devices, tmp_path)
    (ev / missing).unlink()
    rc, out = verify(ev / "report.json", ev, public_key=two_devices["dir"] / "key.pem")
    assert rc == 1
    assert f"FAIL evidence.files: the bundle has no {missing}" in out


def test_evidence_lines_must_belong_to_their_channel(two_devices: dict[str, Any], tmp_path: Path) -> None:
    ev = _copy(two_devices, tmp_path)
    lines = [json.loads(x) for x in (ev / "readings.jsonl").read_text().splitlines()]
    n1 = sum(1 for x in lines if x["channel"] == "m1.grid_import")
    lines[n1 + 400]["channel"] = "m1.grid_import"  # an m2 reading (valid chain hash) counted as m1's
    lines[10]["time"] = "2025-03-01T00:00:00Z"  # the readable time is not the signed ts
    (ev / "readings.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rc, out = verify(ev / "report.json", ev, public_key=two_devices["dir"] / "key.pem")
    assert rc == 1
    assert f"FAIL evidence.line: line {n1 + 401} (channel m1.grid_import, seq" in out
    assert "device 'm2' != 'm1'" in out
    assert "FAIL evidence.line: line 11 (channel m1.grid_import" in out and "time '2025-03-01T00:00:00Z' != ts" in out


def test_register_values_are_named_for_what_they_are(two_devices: dict[str, Any]) -> None:
    rep = json.loads((two_devices["dir"] / "ev" / "report.json").read_bytes())
    assert "register_wh" not in json.dumps(rep)
    m2 = rep["channels"][1]
    # the CT meter's register counts 10 x (1000 + 100 k); its energy is counts x multiplier 10
    assert m2["opening"]["register_value"] == 10 * constant_400w(8, MARCH_START)
    assert m2["energy_wh"] == 10 * 10 * FULL


def test_backup_leaves_the_private_key_out_unless_asked_and_then_encrypts_it(tmp_path: Path) -> None:
    from gateway.runtime.backup import BackupError, create_bundle, restore_bundle

    s = _site(tmp_path / "site")
    service(s, now=JUNE)  # gives the site its key
    cfg = tmp_path / "site" / "gia.yaml"
    cfg.write_text("site: {id: s1}\n")
    plain = tmp_path / "plain.tar.gz"
    create_bundle(plain, config=cfg, data_dir=s.data_dir, ledger_path=s.ledger_path)
    with tarfile.open(plain) as tar:
        names = tar.getnames()
        assert "keys/site-public.pem" in names
        assert not any("PRIVATE" in (tar.extractfile(m) or io.BytesIO()).read().decode(errors="ignore")
                       for m in tar.getmembers() if m.isfile() and m.name.startswith("keys"))  # fmt: skip
    with pytest.raises(BackupError, match="needs a passphrase"):
        create_bundle(
            tmp_path / "x.tar.gz", config=cfg, data_dir=s.data_dir, ledger_path=s.ledger_path, include_key=True
        )
    enc = tmp_path / "enc.tar.gz"
    create_bundle(
        enc, config=cfg, data_dir=s.data_dir, ledger_path=s.ledger_path, include_key=True, passphrase=b"correct horse"
    )
    with tarfile.open(enc) as tar:
        member = tar.extractfile("keys/site-ed25519.pem.enc")
        assert member is not None and b"BEGIN ENCRYPTED PRIVATE KEY" in member.read()
    fresh = tmp_path / "fresh"
    with pytest.raises(BackupError, match="encrypted: pass --passphrase-file"):
        restore_bundle(enc, config=fresh / "gia.yaml", data_dir=fresh, ledger_path=fresh / "ledger.db", force=False)
    with pytest.raises(BackupError, match="does not decrypt"):
        restore_bundle(enc, config=fresh / "gia.yaml", data_dir=fresh, ledger_path=fresh / "ledger.db", force=True,
                       passphrase=b"wrong passphrase")  # fmt: skip
    restore_bundle(enc, config=fresh / "gia.yaml", data_dir=fresh, ledger_path=fresh / "ledger.db", force=True,
                   passphrase=b"correct horse")  # fmt: skip
    restored = KeyStore(fresh / "keys", create=False)
    assert key_id(restored.public_key()) == service(s).public_keys()[0]["key_id"]
    assert oct((fresh / "keys" / "site-ed25519.pem").stat().st_mode & 0o777) == "0o600"


def test_gia_verify_loads_only_what_it_needs(two_devices: dict[str, Any]) -> None:
    d = two_devices["dir"]
    code = (
        "import sys\n"
        f"sys.argv = ['gia', 'verify', {str(d / 'ev' / 'report.json')!r}, '--public-key', {str(d / 'key.pem')!r},"
        f" '--evidence', {str(d / 'ev')!r}]\n"
        "from gateway.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'pydantic', 'pydantic_settings',"
        " 'yaml', 'fastapi', 'uvicorn', 'pymodbus', 'aiomqtt', 'paho', 'influxdb_client', 'fpdf', 'sklearn',"
        " 'forecasting'})\n"
        # the standard-library-only vocabulary the method shares with the gateway is allowed: the error root
        # and the quantity model (drivers/), the channel type and balance formulas (gateway/site/)
        "light = {'gateway.cli', 'gateway.site', 'gateway.site.channels', 'gateway.site.balance', 'drivers',"
        " 'drivers.errors', 'drivers.model'}\n"
        "agent = sorted(m for m in sys.modules if m.startswith(('gateway.', 'drivers'))"
        " and not m.startswith('gateway.cert') and m not in light)\n"
        "print(code, heavy, agent)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 [] []", out.stdout


def test_verify_key_pem_is_read_before_anything_else(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text("{}")
    (tmp_path / "k.pem").write_text("not a key")
    rc, out = verify(tmp_path / "r.json", public_key=tmp_path / "k.pem")
    assert rc == 2 and "not a PEM public key" in out
    with pytest.raises(Exception, match="not a PEM"):
        load_public_pem(b"x")


def _serial_site(root: Path, site: str, configured: str | None, read: list[tuple[datetime, int]]) -> SiteInput:
    """A site whose meter map reads the serial number: `read` = (time, serial) samples in the ledger."""
    from drivers.model import Sample

    d = root / site
    samples = register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)
    samples += [Sample("m1", "serial_number", value, "", ts) for ts, value in read]
    make_ledger(d / "ledger.db", samples).close()
    s = settings(d, [device("m1", channel("grid_import", rated_power_w=1000), serial=configured)], site=site)
    svc = service(s, now=JUNE)
    svc.write_evidence(site, "2025-03", d / "ev")
    (d / "key.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    return SiteInput(site, svc.report_json(site, "2025-03"), svc.public_keys()[0]["public_key_pem"].encode())


def test_serials_read_from_the_meter_are_recorded_checked_and_used_by_the_area(tmp_path: Path) -> None:
    mid = datetime(2025, 3, 15, tzinfo=UTC)
    a = _serial_site(tmp_path, "a", "sn-123", [(MARCH_START + timedelta(hours=1), 123), (mid, 123)])
    ch = json.loads(a.report)["channels"][0]
    assert ch["meter"]["serial"] == "SN-123" and ch["meter"]["serial_read"] == ["123"]
    assert rule_of(ch, "meter_serial") == ("fail", "configured serial SN-123, the meter reports 123")
    rc, out = verify(
        tmp_path / "a" / "ev" / "report.json", tmp_path / "a" / "ev", public_key=tmp_path / "a" / "key.pem"
    )
    assert rc == 0, out  # the serials the report records are re-read from serials.jsonl
    (tmp_path / "a" / "ev" / "serials.jsonl").unlink()
    rc, out = verify(
        tmp_path / "a" / "ev" / "report.json", tmp_path / "a" / "ev", public_key=tmp_path / "a" / "key.pem"
    )
    assert rc == 1 and "the bundle has no serials.jsonl" in out
    changed = _serial_site(tmp_path, "b", "123", [(MARCH_START, 123), (mid, 777)])
    ch = json.loads(changed.report)["channels"][0]
    assert rule_of(ch, "meter_serial") == (
        "fail",
        "the meter's serial changed (123 -> 777) without a recorded replacement",
    )
    # the area keys a channel by the serial the meter reports: site c configured another serial, same meter
    # as site d's
    c = _serial_site(tmp_path, "c", "ZZZ", [(MARCH_START, 555)])
    d = _serial_site(tmp_path, "d", "555", [])
    assert json.loads(c.report)["quality"]["grade"] == "provisional"  # configured serial disagrees
    with pytest.raises(AreaError, match=r"meter:555:energy_import_wh"):
        aggregate("park", "2025-03", [d, c])  # even though c, provisional, would not be summed


def rule_of(ch: dict[str, Any], name: str) -> tuple[str, str]:
    v = next(v for v in ch["validation"] if v["rule"] == name)
    return v["status"], v["detail"]
