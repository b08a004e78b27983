"""Worked cases of the hourly matching with storage, certificates and hourly factors (issue #19, Accounting).

The site (March 2025 in Riga: 743 hours from 2025-02-28T22:00Z; hour k of the month, hour of day k % 24,
which occurs 31 times for 0..22 and 30 times for 23): a grid meter, a wind turbine and a battery; the
load is 100 kWh every hour (derived at the connection point: import - export + generation + discharge -
charge). Every figure below is computed by hand, and every report is recomputed by `gia verify` from its
evidence bundle.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.model import Sample
from gateway.certification.area import AreaError, SiteInput, aggregate
from gateway.certification.certificates import CERTIFICATES, ImportFileError, import_detail
from gateway.certification.imports import import_certificates, import_grid_factors
from gateway.certification.signing import KeyStore, canonical
from gateway.certification.verify import verify_paths
from gateway.ledger.store import Ledger

from .helpers import MARCH_START, channel, device, make_ledger, service, settings

T0 = MARCH_START - timedelta(hours=2)
T1 = datetime(2025, 4, 1, tzinfo=UTC)
HOURS = 743
KWH = 1000
Hour = Callable[[int], dict[str, int]]


def wind_night_battery_morning(hod: int) -> dict[str, int]:
    """Wind 300 kWh in hours 0-1 of the day, the battery charges 100 kWh from it in each and gives back
    90 kWh in hours 2 and 3 (a measured 10 % loss)."""
    return {
        "load": 100 * KWH,
        "wind": 300 * KWH if hod in (0, 1) else 0,
        "charge": 100 * KWH if hod in (0, 1) else 0,
        "discharge": 90 * KWH if hod in (2, 3) else 0,
    }


def grid_charged(hod: int) -> dict[str, int]:
    """The same wind, but the battery charges in hours 10-11 (no surplus: from the grid) and discharges in
    hours 12-13."""
    return {
        "load": 100 * KWH,
        "wind": 300 * KWH if hod in (0, 1) else 0,
        "charge": 100 * KWH if hod in (10, 11) else 0,
        "discharge": 90 * KWH if hod in (12, 13) else 0,
    }


def _samples(pattern: Hour) -> list[Sample]:
    """Register readings every 15 min from T0 to T1; each hour's energy spread evenly over its quarters."""
    regs = dict.fromkeys(("imp", "exp", "wind", "charge", "discharge"), 1_000_000)
    out: list[Sample] = []
    ts = T0
    while ts <= T1:
        for name, dev, q in (
            ("imp", "grid", "energy_import_wh"),
            ("exp", "grid", "energy_export_wh"),
            ("wind", "wind", "energy_export_wh"),
            ("charge", "battery", "energy_import_wh"),
            ("discharge", "battery", "energy_export_wh"),
        ):
            out.append(Sample(dev, q, regs[name], "Wh", ts))
        k = int((ts - MARCH_START) / timedelta(hours=1)) if ts >= MARCH_START else -1
        p = pattern(k % 24 if k >= 0 else 5)
        net = p["load"] - p["wind"] + p["charge"] - p["discharge"]
        step = {
            "imp": max(0, net),
            "exp": max(0, -net),
            "wind": p["wind"],
            "charge": p["charge"],
            "discharge": p["discharge"],
        }
        for name, wh in step.items():
            regs[name] += wh // 4
        ts += timedelta(minutes=15)
    return out


DEVICES = [
    device("grid", channel("grid_import", rated_power_w=1_000_000), channel("grid_export", "energy_export_wh",
           rated_power_w=1_000_000), serial="G-1"),
    device("wind", channel("generation", "energy_export_wh", source="wind", renewable=True,
           rated_power_w=1_000_000), serial="W-1"),
    device("battery", channel("storage_charge", rated_power_w=200_000), channel("storage_discharge",
           "energy_export_wh", rated_power_w=200_000), serial="B-1"),
]  # fmt: skip

CERTS = (
    "certificate_id,production_device,hour_start,energy_wh,source\n"
    "GC-1,park-wind-7,2025-03-01T02:00:00Z,60000,wind\n"  # hour k=4: 100 kWh of load left
    "GC-2,park-wind-7,2025-03-01T02:00:00Z,70000,wind\n"  # same hour: only 40 kWh left, 30 kWh excess
    "GC-3,park-wind-8,2025-03-01T00:00:00Z,25000,wind\n"  # hour k=2: 10 kWh left after the battery's 90
    "GC-9,park-wind-8,2025-04-01T00:00:00Z,5000,wind\n"  # April: not this report's
)
FACTORS = "hour_start,value\n2025-03-01T00:00:00Z,500\n2025-03-01T03:00:00Z,200\n2025-05-01T00:00:00Z,1\n"


def _build(root: Path, pattern: Hour, *, site: str = "s1", certs: str | None = None) -> dict[str, Any]:
    led = make_ledger(root / "ledger.db", _samples(pattern))
    if certs is not None:
        import_certificates(led, certs.encode(), "march.csv")
    if site == "s1":
        import_grid_factors(
            led, FACTORS.encode(), "lv-hourly.csv", unit="g CO2/kWh", source="test series", basis="grid", status="final"
        )
    led.close()
    s = settings(root, DEVICES, site=site)
    svc = service(s)
    svc.write_evidence(site, "2025-03", root / "evidence")
    (root / "site.pem").write_text(svc.public_keys()[0]["public_key_pem"])
    report = json.loads((root / "evidence" / "report.json").read_bytes())
    return {"root": root, "svc": svc, "report": report, "settings": s}


@pytest.fixture(scope="module")
def wind(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _build(tmp_path_factory.mktemp("wind"), wind_night_battery_morning, certs=CERTS)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _build(tmp_path_factory.mktemp("grid"), grid_charged, site="s2", certs="certificate_id,production_device,"
                  "hour_start,energy_wh\nGC-2,park-wind-7,2025-03-01T05:00:00Z,1000\n")  # fmt: skip


def _verify(site: dict[str, Any], evidence: Path | None = None) -> tuple[int, str]:
    buf = io.StringIO()
    ev = evidence or site["root"] / "evidence"
    rc = verify_paths(ev / "report.json", public_key=site["root"] / "site.pem", evidence=ev, stdout=buf)
    return rc, buf.getvalue()


def test_wind_charged_battery_raises_matched_energy_by_its_renewable_discharge_after_losses(
    wind: dict[str, Any],
) -> None:
    rep = wind["report"]
    ind, m = rep["indicators"], rep["matching"]
    (unit,) = m["storage"]
    # 31 days with the pattern: 200 kWh charged (all from the wind surplus), 180 kWh discharged per day
    assert unit["charge_wh"] == 6_200_000
    assert unit["charge_renewable_wh"] == 6_200_000
    assert unit["discharge_wh"] == 5_580_000
    assert unit["losses_wh"] == 620_000 and unit["losses_measured"] is True
    assert unit["delivered_share"] == "0.900000"
    # each 100 kWh charge record delivers floor(100 kWh x 5580/6200) = 90 kWh: all of it renewable
    assert unit["discharge_renewable_wh"] == 5_580_000
    assert unit["discharge_unallocated_wh"] == 0 and unit["closing_renewable_wh"] == 0
    assert unit["allocation_records"] == 62
    assert ind["hourly_load_wh"] == HOURS * 100 * KWH
    assert ind["hourly_matched_onsite_wh"] == 6_200_000  # 62 windy hours x 100 kWh
    assert ind["hourly_matched_storage_wh"] == 5_580_000  # the rise: the renewable discharge after losses
    assert ind["hourly_matched_share_onsite"] == "0.083445"  # 6 200 000 / 74 300 000
    assert ind["hourly_matched_share_storage"] == "0.158546"  # 11 780 000 / 74 300 000
    # fully matched: the 62 windy hours, and hours k=2 and k=4, which the certificates complete (below)
    assert ind["hours_with_load"] == HOURS and ind["hours_fully_matched"] == 64
    assert ind["hours_fully_matched_share"] == "0.086137"  # 64 / 743
    lines = (wind["root"] / "evidence" / "storage_allocation.csv").read_text().splitlines()
    assert lines[0] == "unit,charge_hour,discharge_hour,source,energy_wh"
    assert lines[1] == "battery,2025-02-28T22:00:00Z,2025-03-01T00:00:00Z,renewable,90000"
    assert lines[2] == "battery,2025-02-28T23:00:00Z,2025-03-01T01:00:00Z,renewable,90000"
    assert rep["quality"]["grade"] == "verified"
    rc, out = _verify(wind)
    assert rc == 0, out


def test_contracted_certificates_cancel_once_against_the_load_left_in_their_hour(wind: dict[str, Any]) -> None:
    ind, certs = wind["report"]["indicators"], wind["report"]["matching"]["certificates"]
    # hour k=4: GC-1 60 kWh + GC-2 40 of its 70 kWh; hour k=2: GC-3 10 of its 25 kWh; GC-9 is April's
    assert ind["hourly_matched_contracted_wh"] == 110_000
    assert certs["offered_wh"] == 155_000 and certs["cancelled_wh"] == 110_000 and certs["excess_wh"] == 45_000
    assert certs["ids"] == ["GC-1", "GC-2", "GC-3"]
    assert certs["imports"][0]["file_name"] == "march.csv"
    assert ind["hourly_matched_wh"] == 6_200_000 + 5_580_000 + 110_000
    assert ind["hourly_matched_share"] == "0.160027"  # 11 890 000 / 74 300 000
    rows = (wind["root"] / "evidence" / "certificates.csv").read_text().splitlines()
    e = certs["imports"][0]["event_id"]
    assert rows[1:] == [
        f"GC-1,park-wind-7,2025-03-01T02:00:00Z,60000,60000,{e},2",
        f"GC-2,park-wind-7,2025-03-01T02:00:00Z,70000,40000,{e},3",
        f"GC-3,park-wind-8,2025-03-01T00:00:00Z,25000,10000,{e},4",
    ]


def test_hourly_grid_factors_beside_the_annual_one(wind: dict[str, Any]) -> None:
    ind, gf = wind["report"]["indicators"], wind["report"]["matching"]["grid_factors"]
    # import: 10 kWh in hours 2-3 of each day (62 h), 100 kWh in hours 4-23 (619 h) = 62 520 000 Wh;
    # annual: x 0.0491 = 3069.732 kg; hour k=2 (10 kWh) at 0.5 and hour k=5 (100 kWh) at 0.2 t/MWh instead
    assert ind["co2_location_kg"] == "3069.732"
    assert ind["co2_location_hourly_kg"] == "3089.331"  # + 10 x (0.5 - 0.0491) + 100 x (0.2 - 0.0491)
    assert gf["hours_from_file"] == 2 and gf["hours_annual_fallback"] == HOURS - 2
    assert gf["hourly_t_co2_per_mwh"][2] == "0.500" and gf["hourly_t_co2_per_mwh"][5] == "0.200"
    assert gf["imports"][0]["source"] == "test series" and gf["status"] == "final"


def test_grid_charged_storage_adds_nothing(grid: dict[str, Any]) -> None:
    ind, (unit,) = grid["report"]["indicators"], grid["report"]["matching"]["storage"]
    assert unit["charge_renewable_wh"] == 0 and unit["charge_grid_wh"] == 6_200_000
    assert unit["discharge_renewable_wh"] == 0 and unit["discharge_grid_wh"] == 5_580_000
    assert ind["hourly_matched_storage_wh"] == 0
    assert ind["hourly_matched_onsite_wh"] == 6_200_000
    assert ind["hourly_matched_share_storage"] == ind["hourly_matched_share_onsite"] == "0.083445"
    rc, out = _verify(grid)
    assert rc == 0, out


def test_a_certificate_used_twice_is_rejected(wind: dict[str, Any], grid: dict[str, Any], tmp_path: Path) -> None:
    led = Ledger(tmp_path / "l.db")
    try:
        with pytest.raises(ImportFileError, match="GC-1 already appears on line 2"):
            import_certificates(led, (CERTS + "GC-1,park-wind-7,2025-03-02T02:00:00Z,1,wind\n").encode(), "dup.csv")
        import_certificates(led, CERTS.encode(), "march.csv")
        with pytest.raises(ImportFileError, match=r"GC-2 \(line 2, imported by event 1\)"):
            import_certificates(
                led,
                b"certificate_id,production_device,hour_start,energy_wh\nGC-2,x,2025-04-02T00:00:00Z,5\n",
                "apr.csv",
            )
    finally:
        led.close()
    # across sites: GC-2 is cancelled by s1 (in March) and listed by s2 as well
    with pytest.raises(AreaError, match="granular certificate GC-2 is cancelled by site 's2' and by site 's1'"):
        aggregate(
            "park",
            "2025-03",
            [
                SiteInput("s1", (wind["root"] / "evidence" / "report.json").read_bytes(),
                          (wind["root"] / "site.pem").read_bytes()),
                SiteInput("s2", (grid["root"] / "evidence" / "report.json").read_bytes(),
                          (grid["root"] / "site.pem").read_bytes()),
            ],
        )  # fmt: skip


def test_a_duplicate_slipped_into_the_chain_counts_once_and_is_listed(tmp_path: Path) -> None:
    """Should the events chain hold an id twice (the import refuses it; a hand-made record does not),
    the first import counts, the later occurrence is rejected and listed, and `gia verify` agrees."""
    site = _build(tmp_path, grid_charged, site="s3", certs=CERTS)
    led = Ledger(site["settings"].ledger_path)
    dup = "certificate_id,production_device,hour_start,energy_wh\nGC-1,park-wind-7,2025-03-01T06:00:00Z,99\n"
    led.record_event(CERTIFICATES, import_detail(dup.encode(), "again.csv"), ts_ms=int(T1.timestamp() * 1000))
    led.close()
    shutil.rmtree(tmp_path / "evidence")
    svc = service(site["settings"])
    rep = json.loads(svc.reissue("s3", "2025-03", "certificate file re-imported"))
    certs = rep["matching"]["certificates"]
    assert certs["ids"] == ["GC-1", "GC-2", "GC-3"]
    assert certs["rejected"] == [
        {
            "certificate_id": "GC-1",
            "import_event": certs["rejected"][0]["import_event"],
            "line": 2,
            "reason": f"certificate id already imported by event {certs['imports'][0]['event_id']}: a certificate"
            " is cancelled once",
        }
    ]
    svc.write_evidence("s3", "2025-03", tmp_path / "evidence")
    rc, out = _verify({"root": tmp_path})
    assert rc == 0, out


def test_a_tampered_allocation_fails_verification(wind: dict[str, Any], tmp_path: Path) -> None:
    ev = tmp_path / "ev"
    shutil.copytree(wind["root"] / "evidence", ev)
    alloc = ev / "storage_allocation.csv"
    alloc.write_text(
        alloc.read_text().replace(",grid,", ",renewable,").replace(",renewable,90000\n", ",renewable,95000\n", 1)
    )
    rc, out = _verify(wind, ev)
    assert rc == 1 and "FAIL evidence.storage_allocation: storage_allocation.csv line 2" in out, out
    # a dishonest gateway signing a larger renewable discharge with the site's own key
    shutil.copy(wind["root"] / "evidence" / "storage_allocation.csv", alloc)
    rep = json.loads((ev / "report.json").read_bytes())
    unit = rep["matching"]["storage"][0]
    unit["hourly_discharge_renewable_wh"][2] += 5000
    unit["discharge_renewable_wh"] += 5000
    rep.pop("signature")
    (ev / "report.json").write_bytes(canonical(KeyStore(wind["root"] / "keys", create=False).sign_report(rep)))
    rc, out = _verify(wind, ev)
    assert rc == 1, out
    assert "FAIL matching.storage[battery].hourly_discharge_renewable_wh" in out
    assert "FAIL matching.storage[battery].discharge_renewable_wh: report says 5585000, recomputed 5580000" in out
