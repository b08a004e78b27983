"""Signatures, immutability, key handling, evidence bundles and tampering caught by `gia verify`."""

from __future__ import annotations

import base64
import io
import json
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.certification import service as svc_mod
from gateway.certification.exact import FloatInSignedData, assert_no_float
from gateway.certification.service import MalformedMonth, MonthInFuture, ReportService, UnknownSite
from gateway.certification.signing import canonical, key_id, signing_bytes
from gateway.certification.source import record_meter_replacement
from gateway.certification.verify import verify_paths

from .helpers import MARCH_START, channel, constant_400w, device, make_ledger, register_samples, service, settings

T0 = MARCH_START - timedelta(hours=2)
T1 = datetime(2025, 4, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("site")
    state = {"pv": 0}

    def pv(k: int, ts: datetime) -> int:
        if 9 <= ts.hour < 13:
            state["pv"] += 150
        return state["pv"]

    samples = register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)
    samples += register_samples("m1", "energy_export_wh", T0, T1, value=lambda k, ts: 7 + k // 3)
    samples += register_samples("pv", "energy_export_wh", T0, T1, value=pv)
    make_ledger(d / "ledger.db", samples).close()
    s = settings(
        d,
        [
            device("m1", channel("grid_import"), channel("grid_export", "energy_export_wh"), serial="LV-001"),
            device("pv", channel("generation", "energy_export_wh", source="pv", renewable=True, rated_power_w=1000)),
        ],
        location={"latitude": 56.95, "longitude": 24.11},
    )
    svc = service(s)
    svc.write_evidence("s1", "2025-03", d / "evidence")
    (d / "site.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    return {"dir": d, "svc": svc, "settings": s}


def _verify(report: Path, key: Path, evidence: Path | None) -> tuple[int, str]:
    buf = io.StringIO()
    rc = verify_paths(report, public_key=key, evidence=evidence, stdout=buf)
    return rc, buf.getvalue()


def _copy(site: dict[str, Any], tmp_path: Path) -> Path:
    ev = tmp_path / "ev"
    shutil.copytree(site["dir"] / "evidence", ev)
    return ev


def test_untampered_bundle_verifies(site: dict[str, Any]) -> None:
    ev = site["dir"] / "evidence"
    rc, out = _verify(ev / "report.json", site["dir"] / "site.pem", ev)
    assert rc == 0, out
    assert "OK s1 2025-03" in out


def test_evidence_zip_verifies(site: dict[str, Any], tmp_path: Path) -> None:
    z = tmp_path / "ev.zip"
    z.write_bytes(site["svc"].evidence_zip("s1", "2025-03"))
    rc, out = _verify(site["dir"] / "evidence" / "report.json", site["dir"] / "site.pem", z)
    assert rc == 0, out


def test_report_is_signed_canonical_and_immutable(site: dict[str, Any]) -> None:
    svc: ReportService = site["svc"]
    data = svc.report_json("s1", "2025-03")
    rep = json.loads(data)
    assert data == canonical(rep)
    sig = rep["signature"]
    assert sig["alg"] == "Ed25519"
    assert sig["key_id"] == svc.public_keys()[0]["key_id"]
    pub = svc.keys.public_key()
    assert key_id(pub) == sig["key_id"]
    pub.verify(base64.b64decode(sig["value"]), signing_bytes(rep))
    assert_no_float(rep)
    # a new service instance (fresh process) returns the very same bytes
    again = service(site["settings"], now=datetime(2026, 1, 1, tzinfo=UTC)).report_json("s1", "2025-03")
    assert again == data


def test_key_file_is_private_and_never_exported(site: dict[str, Any]) -> None:
    key_file = site["dir"] / "keys" / "site-ed25519.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    info = site["svc"].public_keys()[0]
    assert "PRIVATE" not in json.dumps(info)
    assert set(info) == {"site", "alg", "key_id", "fingerprint", "public_key_pem"}


def test_no_float_guard() -> None:
    with pytest.raises(FloatInSignedData, match=r"\$.a\[1\]"):
        assert_no_float({"a": [1, 0.5]})
    with pytest.raises(FloatInSignedData):
        canonical({"x": 1.0})


@pytest.mark.parametrize("number", ["0.5", "5e2", "NaN", "-Infinity", "1.0"])
def test_a_float_in_a_verified_report_fails_the_no_float_rule_with_its_path(site: dict[str, Any], number: str) -> None:
    """The verifier counts floats while parsing instead of walking every report a second time: a float
    anywhere (fraction, exponent, NaN, Infinity) still fails `no_float`, naming where it is; a report
    without one does not."""
    from gateway.certification.verify import verify_report

    svc: ReportService = site["svc"]
    data = svc.report_json("s1", "2025-03")
    pub = svc.keys.public_key()
    assert not [f for f in verify_report(data, public_key=pub).failures if f.rule == "no_float"]
    rep = json.loads(data)
    rep["indicators"]["consumption_wh"] = "@@"
    bad = json.dumps(rep).replace('"@@"', number).encode()
    failures = [f for f in verify_report(bad, public_key=pub).failures if f.rule == "no_float"]
    assert len(failures) == 1 and "$.indicators.consumption_wh" in failures[0].message, failures


def test_service_errors(site: dict[str, Any]) -> None:
    svc: ReportService = site["svc"]
    with pytest.raises(UnknownSite):
        svc.report_json("other", "2025-03")
    with pytest.raises(MalformedMonth):
        svc.report_json("s1", "2025-3")
    with pytest.raises(MonthInFuture):
        svc.report_json("s1", "2030-01")
    assert issubclass(MalformedMonth, svc_mod.ReportError)


def test_csv_and_pdf_exports(site: dict[str, Any]) -> None:
    svc: ReportService = site["svc"]
    rows = svc.report_csv("s1", "2025-03").decode().splitlines()
    assert rows[0].startswith("site,month,channel,role")
    assert len(rows) == 4
    assert ",m1.grid_import,grid_import," in rows[1]
    assert ",297200,297200,0,0," in rows[1]
    pdf = svc.report_pdf("s1", "2025-03")
    assert pdf.startswith(b"%PDF")


def test_interval_csv_sums_to_channel_totals(site: dict[str, Any]) -> None:
    ev = site["dir"] / "evidence"
    rep = json.loads((ev / "report.json").read_bytes())
    sums: dict[str, int] = {}
    for line in (ev / "intervals.csv").read_text().splitlines()[1:]:
        ch, start, _end, wh, _q = line.split(",")
        assert start.endswith("Z")
        sums[ch] = sums.get(ch, 0) + int(wh)
    assert sums == {c["id"]: c["energy_wh"] for c in rep["channels"]}


def _lines(ev: Path) -> list[str]:
    return (ev / "readings.jsonl").read_text().splitlines()


def _write_lines(ev: Path, lines: list[str]) -> None:
    (ev / "readings.jsonl").write_text("\n".join(lines) + "\n")


def test_changed_reading_is_caught(site: dict[str, Any], tmp_path: Path) -> None:
    ev = _copy(site, tmp_path)
    lines = _lines(ev)
    obj = json.loads(lines[500])
    obj["value"] += 1
    lines[500] = json.dumps(obj)
    _write_lines(ev, lines)
    rc, out = _verify(ev / "report.json", site["dir"] / "site.pem", ev)
    assert rc == 1
    assert f"FAIL evidence.chain: seq {obj['seq']}" in out


def test_deleted_reading_is_caught(site: dict[str, Any], tmp_path: Path) -> None:
    ev = _copy(site, tmp_path)
    lines = _lines(ev)
    del lines[700]
    _write_lines(ev, lines)
    rc, out = _verify(ev / "report.json", site["dir"] / "site.pem", ev)
    assert rc == 1
    assert "FAIL evidence.entries: report says" in out
    assert "FAIL evidence.merkle_root" in out


def test_reordered_readings_are_caught(site: dict[str, Any], tmp_path: Path) -> None:
    ev = _copy(site, tmp_path)
    lines = _lines(ev)
    lines[300], lines[301] = lines[301], lines[300]
    _write_lines(ev, lines)
    rc, out = _verify(ev / "report.json", site["dir"] / "site.pem", ev)
    assert rc == 1
    assert "FAIL evidence.order" in out


def _edit_report(ev: Path, fn: Any) -> None:
    rep = json.loads((ev / "report.json").read_bytes())
    fn(rep)
    (ev / "report.json").write_bytes(canonical(rep))


def test_edited_total_is_caught(site: dict[str, Any], tmp_path: Path) -> None:
    ev = _copy(site, tmp_path)

    def edit(rep: dict[str, Any]) -> None:
        rep["channels"][0]["energy_wh"] += 1000

    _edit_report(ev, edit)
    rc, out = _verify(ev / "report.json", site["dir"] / "site.pem", ev)
    assert rc == 1
    assert "FAIL signature" in out
    assert "FAIL energy_split: m1.grid_import: energy_wh 298200 != measured + interpolated + estimated 297200" in out
    assert "FAIL channel.m1.grid_import.energy_wh: report says 298200, recomputed 297200" in out


def test_edited_share_is_caught(site: dict[str, Any], tmp_path: Path) -> None:
    ev = _copy(site, tmp_path)
    real = json.loads((ev / "report.json").read_bytes())["indicators"]["renewable_share"]

    def edit(rep: dict[str, Any]) -> None:
        rep["indicators"]["renewable_share"] = "0.990000"

    _edit_report(ev, edit)
    rc, out = _verify(ev / "report.json", site["dir"] / "site.pem", ev)
    assert rc == 1
    assert f'FAIL indicators.renewable_share: report says "0.990000", recomputed "{real}"' in out


def test_report_signed_by_another_key_is_caught(site: dict[str, Any], tmp_path: Path) -> None:
    ev = _copy(site, tmp_path)
    other = Ed25519PrivateKey.generate()

    def edit(rep: dict[str, Any]) -> None:
        rep["indicators"]["grid_import_wh"] -= 1
        body = {k: v for k, v in rep.items() if k != "signature"}
        rep["signature"] = {
            "alg": "Ed25519",
            "key_id": key_id(other.public_key()),
            "value": base64.b64encode(other.sign(signing_bytes(body))).decode(),
        }

    _edit_report(ev, edit)
    rc, out = _verify(ev / "report.json", site["dir"] / "site.pem", ev)
    assert rc == 1
    # the report names a key that is not the one in force (the pinned key, announced in the events chain)
    assert "FAIL signature: report signed by key " + key_id(other.public_key()) in out
    assert "the key in force at its events head is" in out


def test_unusable_input_exits_2(site: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "r.json"
    bad.write_text("not json")
    rc, out = _verify(bad, site["dir"] / "site.pem", None)
    assert rc == 2
    assert "unusable input" in out
    rc, _ = _verify(tmp_path / "missing.json", site["dir"] / "site.pem", None)
    assert rc == 2


def test_verify_imports_no_agent_runtime() -> None:
    code = (
        "import sys, gateway.certification.verify, gateway.certification.area\n"
        "bad = [m for m in ('pymodbus', 'aiomqtt', 'influxdb_client', 'fastapi', 'sklearn', 'pydantic',"
        " 'typer', 'yaml', 'fpdf') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_concurrent_first_use_creates_one_key(tmp_path: Path) -> None:
    import threading

    from gateway.certification.signing import KeyStore

    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(KeyStore(tmp_path / "keys").public_info()["key_id"]))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["site-ed25519.pem"]
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


@pytest.fixture(scope="module")
def with_events(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A month with a clock jump and a meter replacement: both are ledger events the report commits to."""
    d = tmp_path_factory.mktemp("events")
    swap = datetime(2025, 3, 20, 10, tzinfo=UTC)
    k_swap = int((swap - T0) / timedelta(minutes=15))

    def value(k: int, ts: datetime) -> int:
        return constant_400w(k, ts) if k <= k_swap else 570 + 100 * (k - k_swap - 1)

    led = make_ledger(d / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=value))
    led.record_event("clock_jump", '{"from": "2025-03-05T02:00:00Z", "by_s": 3600}', ts_ms=1741140000000)
    record_meter_replacement(
        led,
        device="m1",
        at=swap + timedelta(minutes=5),
        registers={"energy_import_wh": (constant_400w(k_swap, swap) + 20, 500)},
        old_serial="OLD-1",
        new_serial="NEW-2",
    )
    led.close()
    svc = service(settings(d, [device("m1", channel("grid_import", rated_power_w=1000))]))
    svc.write_evidence("s1", "2025-03", d / "evidence")
    (d / "site.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    return {"dir": d, "svc": svc}


def _events(ev: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ev / "events.jsonl").read_text().splitlines()]


def test_report_commits_to_the_events_chain(with_events: dict[str, Any], tmp_path: Path) -> None:
    src = with_events["dir"] / "evidence"
    rep = json.loads((src / "report.json").read_bytes())
    events = _events(src)
    assert [e["kind"] for e in events] == ["clock_jump", "meter_replacement", "key_transition"]
    assert rep["evidence"]["events_head_id"] == 3 and rep["evidence"]["events_head"] == events[-1]["hash"]
    rc, out = _verify(src / "report.json", with_events["dir"] / "site.pem", src)
    assert rc == 0, out
    z = tmp_path / "ev.zip"
    z.write_bytes(with_events["svc"].evidence_zip("s1", "2025-03"))
    assert _verify(src / "report.json", with_events["dir"] / "site.pem", z)[0] == 0


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ("delete the clock jump", "FAIL evidence.events: event 1 is missing"),
        ("edit the clock jump", "FAIL evidence.events: event 1 (clock_jump) does not match its chain hash"),
        ("drop the last event", "FAIL evidence.events_head_id: report says 3, recomputed 2"),
        ("no events file", "the bundle has no events.jsonl"),
    ],
)
def test_tampered_events_are_caught(with_events: dict[str, Any], tmp_path: Path, tamper: str, expected: str) -> None:
    ev = tmp_path / "ev"
    shutil.copytree(with_events["dir"] / "evidence", ev)
    events = _events(ev)
    if tamper == "delete the clock jump":
        events = events[1:]
    elif tamper == "edit the clock jump":
        events[0]["detail"] = '{"from": "2025-03-05T02:00:00Z", "by_s": 60}'
    elif tamper == "drop the last event":
        events = events[:-1]
    if tamper == "no events file":
        (ev / "events.jsonl").unlink()
    else:
        (ev / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rc, out = _verify(ev / "report.json", with_events["dir"] / "site.pem", ev)
    assert rc == 1, out
    assert expected in out, out
