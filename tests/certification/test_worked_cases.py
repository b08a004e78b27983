"""Worked cases with hand-computed results (400 W constant = 100 Wh per 15 min; March has 743 h)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.certification.periods import BadMonth, month_period
from gateway.certification.source import record_meter_replacement

from .helpers import (
    MARCH_END,
    MARCH_START,
    channel,
    constant_400w,
    device,
    make_ledger,
    register_samples,
    service,
    settings,
)

T0 = MARCH_START - timedelta(hours=2)
T1 = datetime(2025, 4, 1, tzinfo=UTC)
FULL_MONTH_WH = 743 * 400  # 297 200 Wh


def _report(tmp_path: Path, samples: list[Any], *, devices: list[Any] | None = None, **kw: Any) -> dict[str, Any]:
    led = make_ledger(tmp_path / "ledger.db", samples)
    for fn in kw.pop("events", []):
        fn(led)
    led.close()
    devs = devices or [device("m1", channel("grid_import", rated_power_w=1000))]
    svc = service(settings(tmp_path, devs, **kw))
    return dict(json.loads(svc.report_json("s1", "2025-03")))


def test_periods_riga_march_and_october() -> None:
    march = month_period("2025-03", "Europe/Riga")
    october = month_period("2025-10", "Europe/Riga")
    assert march.hours == 743
    assert october.hours == 745
    assert march.start_ms == int(MARCH_START.timestamp() * 1000)
    assert march.end_ms == int(MARCH_END.timestamp() * 1000)
    assert month_period("2025-06", "Europe/Riga").hours == 720
    with pytest.raises(BadMonth):
        month_period("2025-13", "Europe/Riga")


def test_full_month_constant_load_is_verified(tmp_path: Path) -> None:
    rep = _report(tmp_path, register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w))
    ch = rep["channels"][0]
    assert ch["energy_wh"] == FULL_MONTH_WH
    assert ch["measured_wh"] == FULL_MONTH_WH
    assert ch["opening"]["method"] == ch["closing"]["method"] == "measured"
    assert ch["coverage"] == {
        "time": "1.000000",
        "energy": "1.000000",
        "intervals": 2972,
        "intervals_measured": 2972,
        "interval_energy_measured_wh": FULL_MONTH_WH,
    }
    assert ch["interval_grade"] == "verified"
    assert ch["grade"] == "verified"
    assert rep["quality"]["grade"] == "verified"
    assert rep["period"]["hours"] == 743
    assert rep["indicators"]["consumption_wh"] == FULL_MONTH_WH
    # 297.2 kWh x 0.0491 kg/kWh = 14.59252 kg -> 14.593 to the gram
    assert rep["indicators"]["co2_location_kg"] == "14.593"


def test_october_has_745_hours(tmp_path: Path) -> None:
    t0, t1 = datetime(2025, 9, 30, 18, tzinfo=UTC), datetime(2025, 11, 1, 3, tzinfo=UTC)
    led = make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", t0, t1, value=constant_400w))
    led.close()
    svc = service(settings(tmp_path, [device("m1", channel("grid_import"))]), now=datetime(2025, 12, 1, tzinfo=UTC))
    rep = json.loads(svc.report_json("s1", "2025-10"))
    assert rep["period"]["start"] == "2025-09-30T21:00:00Z"
    assert rep["period"]["end"] == "2025-10-31T22:00:00Z"
    assert rep["channels"][0]["energy_wh"] == 745 * 400


def test_three_hour_gap_inside_month_keeps_total_and_grade(tmp_path: Path) -> None:
    gap_from, gap_to = datetime(2025, 3, 10, 0, tzinfo=UTC), datetime(2025, 3, 10, 3, tzinfo=UTC)

    def value(k: int, ts: datetime) -> int | None:
        return None if gap_from < ts < gap_to else constant_400w(k, ts)

    ch = _report(tmp_path, register_samples("m1", "energy_import_wh", T0, T1, value=value))["channels"][0]
    assert ch["energy_wh"] == FULL_MONTH_WH  # register advance across the gap is measured
    assert ch["measured_wh"] == FULL_MONTH_WH
    assert ch["grade"] == "verified"
    assert ch["coverage"]["intervals_measured"] == 2972 - 12  # the 12 intervals inside the gap
    assert ch["coverage"]["time"] == "0.995962"  # 2960 / 2972
    assert [g["duration_s"] for g in ch["gaps"]] == [10800]
    assert ch["gaps"][0]["from"] == "2025-03-10T00:00:00Z"


def test_gap_across_boundary_interpolates_the_opening(tmp_path: Path) -> None:
    def value(k: int, ts: datetime) -> int | None:
        return None if ts == MARCH_START else constant_400w(k, ts)  # reads at 21:45 and 22:15 only

    ch = _report(tmp_path, register_samples("m1", "energy_import_wh", T0, T1, value=value))["channels"][0]
    op = ch["opening"]
    assert op["method"] == "interpolated"
    # 21:45 is k=7 (1700 Wh), 22:15 is k=9 (1900 Wh): halfway -> 1800 Wh
    assert op["register_value"] == 1800
    assert [b["register_value"] for b in op["bracket"]] == [1700, 1900]
    assert ch["energy_wh"] == FULL_MONTH_WH
    assert ch["interpolated_wh"] == 100  # the 200 Wh step 21:45-22:15: half of it after 22:00
    assert ch["measured_wh"] == FULL_MONTH_WH - 100
    # interpolated between measured readings 30 min apart: the total stays verified (coverage 0.999664)
    assert ch["grade"] == "verified"
    assert ch["coverage"]["energy"] == "0.999664"


def test_reset_mid_month_is_estimated_and_provisional(tmp_path: Path) -> None:
    reset_at = datetime(2025, 3, 15, 12, tzinfo=UTC)
    k_reset = int((reset_at - T0) / timedelta(minutes=15))

    def value(k: int, ts: datetime) -> int:
        # the register restarts from 0 shortly before 12:00 and shows 60 Wh at 12:00
        return constant_400w(k, ts) if k < k_reset else 60 + 100 * (k - k_reset)

    ch = _report(tmp_path, register_samples("m1", "energy_import_wh", T0, T1, value=value))["channels"][0]
    assert ch["energy_wh"] == FULL_MONTH_WH - 100 + 60  # the reset step counts its new value (60 Wh)
    assert ch["estimated_wh"] == 60
    assert ch["grade"] == "provisional"
    assert any("register_reset failed" in r for r in ch["reasons"])
    assert [e["kind"] for e in ch["register_events"]] == ["reset"]
    assert ch["gaps"][0]["cause"] == "register decreased without a recorded replacement"


def test_meter_replacement_with_a_consistent_pair_is_estimated_across_the_swap(tmp_path: Path) -> None:
    swap = datetime(2025, 3, 20, 10, tzinfo=UTC)
    k_swap = int((swap - T0) / timedelta(minutes=15))

    def value(k: int, ts: datetime) -> int:
        # old meter up to 10:00; new meter from 10:15, starting at 500 Wh, 70 Wh counted by 10:15
        return constant_400w(k, ts) if k <= k_swap else 570 + 100 * (k - k_swap - 1)

    old_at_swap = constant_400w(k_swap, swap)

    def event(led: Any) -> None:
        record_meter_replacement(
            led,
            device="m1",
            at=swap + timedelta(minutes=5),
            registers={"energy_import_wh": (old_at_swap + 20, 500)},
            old_serial="OLD-1",
            new_serial="NEW-2",
            recorded_ms=int((swap + timedelta(hours=1)).timestamp() * 1000),
        )

    ch = _report(tmp_path, register_samples("m1", "energy_import_wh", T0, T1, value=value), events=[event])["channels"][
        0
    ]
    # The pair says 20 + 70 = 90 Wh across 10:00-10:15; the swap step is estimated from the neighbouring
    # steps instead (100 Wh per 15 min on both sides: (100 + 100) x 15 / 30 = 100 Wh), and flagged.
    assert ch["energy_wh"] == FULL_MONTH_WH
    assert ch["estimated_wh"] == 100
    assert ch["grade"] == "verified"  # 100 / 297 200 estimated is within 1 %
    ev = ch["register_events"]
    assert [e["kind"] for e in ev] == ["meter_replacement"]
    assert ev[0]["replacement"]["old_serial"] == "OLD-1"
    assert ev[0]["replacement"]["recorded_pair_advance"] == 90
    assert ev[0]["replacement"]["recorded_at"] == "2025-03-20T11:00:00Z"
    assert ev[0]["step_energy_wh"] == 100
    assert next(v for v in ch["validation"] if v["rule"] == "late_record")["status"] == "pass"


def test_rollover_adds_the_modulus(tmp_path: Path) -> None:
    def value(k: int, ts: datetime) -> int:
        return (990_000 + 100 * k) % 1_000_000

    devs = [device("m1", channel("grid_import", register_modulus_wh=1_000_000, rated_power_w=1000))]
    ch = _report(tmp_path, register_samples("m1", "energy_import_wh", T0, T1, value=value), devices=devs)["channels"][0]
    assert ch["energy_wh"] == FULL_MONTH_WH
    assert [e["kind"] for e in ch["register_events"]] == ["rollover"]
    assert ch["grade"] == "verified"


def test_pv_producing_at_night_fails_validation(tmp_path: Path) -> None:
    devs = [
        device("m1", channel("grid_import", rated_power_w=1000)),
        device("pv", channel("generation", "energy_export_wh", source="pv", renewable=True, rated_power_w=2000)),
    ]
    samples = register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)
    samples += register_samples("pv", "energy_export_wh", T0, T1, value=constant_400w)  # 400 W day and night
    rep = _report(tmp_path, samples, devices=devs, location={"latitude": 56.95, "longitude": 24.11})
    pv = rep["channels"][1]
    rule = next(v for v in pv["validation"] if v["rule"] == "pv_night")
    assert rule["status"] == "fail"
    assert rule["max_interval_wh"] == 100
    assert pv["grade"] == "provisional"
    assert rep["quality"]["grade"] == "provisional"
    # the grid channel is unaffected
    assert rep["channels"][0]["grade"] == "verified"


def test_pv_daytime_only_passes(tmp_path: Path) -> None:
    devs = [device("pv", channel("generation", "energy_export_wh", source="pv", renewable=True))]
    state = {"v": 0}

    def value(k: int, ts: datetime) -> int:
        if 9 <= ts.hour < 13:  # well inside daylight in Riga in March (UTC)
            state["v"] += 100
        return state["v"]

    rep = _report(
        tmp_path,
        register_samples("pv", "energy_export_wh", T0, T1, value=value),
        devices=devs,
        location={"latitude": 56.95, "longitude": 24.11},
    )
    rule = next(v for v in rep["channels"][0]["validation"] if v["rule"] == "pv_night")
    assert rule["status"] == "pass"


def test_shared_boundaries_and_chain_of_months(tmp_path: Path) -> None:
    t0, t1 = datetime(2025, 1, 31, 12, tzinfo=UTC), datetime(2025, 5, 1, 12, tzinfo=UTC)
    led = make_ledger(
        tmp_path / "ledger.db",
        register_samples("m1", "energy_import_wh", t0, t1, step=timedelta(minutes=7), value=lambda k, ts: 5 + 47 * k),
    )
    led.close()
    svc = service(settings(tmp_path, [device("m1", channel("grid_import"))]))
    import hashlib

    months = ["2025-02", "2025-03", "2025-04"]
    reps = [json.loads(svc.report_json("s1", m)) for m in months]
    for a, b in itertools.pairwise(reps):
        assert a["channels"][0]["closing"] == {**b["channels"][0]["opening"], "side": "closing"}
    total = sum(r["channels"][0]["energy_wh"] for r in reps)
    first = reps[0]["channels"][0]["opening"]["register_value"]
    last = reps[-1]["channels"][0]["closing"]["register_value"]
    assert total == last - first
    raw = [svc.report_json("s1", m) for m in months]
    assert reps[2]["previous_report_sha256"] == hashlib.sha256(raw[1]).hexdigest()
    assert reps[1]["previous_report_sha256"] == hashlib.sha256(raw[0]).hexdigest()


def test_open_month_is_provisional_and_not_stored(tmp_path: Path) -> None:
    led = make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w))
    led.close()
    svc = service(
        settings(tmp_path, [device("m1", channel("grid_import"))]), now=datetime(2025, 3, 20, 12, 7, tzinfo=UTC)
    )
    rep = json.loads(svc.report_json("s1", "2025-03"))
    assert rep["period"]["complete"] is False
    assert rep["period"]["as_of"] == "2025-03-20T12:00:00Z"
    assert rep["quality"]["grade"] == "provisional"
    assert rep["quality"]["reasons"][0].startswith("month not yet closed")
    assert not (tmp_path / "reports" / "s1" / "2025-03.json").exists()
