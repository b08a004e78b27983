"""Worked cases of issue #14, part 1: what the site side could do to a figure, each with hand-computed
expectations (400 W constant = 100 Wh per 15 min unless said otherwise; March 2025 in Riga has 743 h).

1 a backdated meter replacement; the balance cross-check — 2 a config change after a month was stored —
3 an outage at midnight and the settlement delay (also the agent's publisher) — 4 a ledger of boundary
readings only — 5 a rebuilt report and reissues — 8 a single zero, spike or replayed reading, a level
shift, a channel without rated power.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.model import Sample
from gateway.certification.service import ReportService
from gateway.certification.signing import canonical
from gateway.certification.source import record_meter_replacement
from gateway.certification.verify import verify_paths
from gateway.ledger.store import Ledger

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
FULL = 743 * 400  # 297 200 Wh
JUNE = datetime(2025, 6, 1, tzinfo=UTC)


def verify(report: Path, key: Path, evidence: Path | None = None, *extra: Any) -> tuple[int, str]:
    buf = io.StringIO()
    kw = dict(extra[0]) if extra else {}
    rc = verify_paths(report, public_key=key, evidence=evidence, stdout=buf, **kw)
    return rc, buf.getvalue()


def publish(svc: ReportService, d: Path, month: str = "2025-03") -> tuple[Path, Path, Path]:
    """(report.json, evidence dir, pinned key) of a month, as a certifier receives them."""
    ev = d / f"ev-{month}"
    svc.write_evidence("s1", month, ev)
    key = d / "pinned.pem"
    key.write_text(svc.public_keys()[0]["public_key_pem"])
    return ev / "report.json", ev, key


def rule(ch: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in ch["validation"] if v["rule"] == name)


# -- 1. backdated meter replacement; balance cross-check ---------------------------------------------
def _grid_and_hall(d: Path, *, hall_w: int = 400) -> Any:
    samples = register_samples("grid", "energy_import_wh", T0, T1, value=constant_400w)
    samples += register_samples("hall", "energy_import_wh", T0, T1, value=lambda k, ts: hall_w * k // 4)
    make_ledger(d / "ledger.db", samples).close()
    return settings(
        d,
        [
            device("grid", channel("grid_import", rated_power_w=1000), serial="GRID-1"),
            device("hall", channel("consumption", rated_power_w=1000), serial="HALL-1"),
        ],
    )


def test_backdated_replacement_on_a_rising_step_is_rejected_and_changes_nothing(tmp_path: Path) -> None:
    s = _grid_and_hall(tmp_path)
    # 2025-03-10 12:05Z, inside the step 12:00 -> 12:15 where the register simply went up by 100 Wh
    swap = datetime(2025, 3, 10, 12, 5, tzinfo=UTC)
    k = int((datetime(2025, 3, 10, 12, tzinfo=UTC) - T0) / timedelta(minutes=15))
    v_a, v_b = constant_400w(k, swap), constant_400w(k + 1, swap)
    led = Ledger(s.ledger_path)
    record_meter_replacement(  # "closing" 100 MWh above the old meter's last reading: a made-up 100 MWh
        led, device="grid", at=swap, registers={"energy_import_wh": (v_a + 100_000_000, v_b - 50)},
        old_serial="GRID-1", new_serial="GRID-2",
    )  # fmt: skip
    led.close()
    svc = service(s, now=JUNE)
    report, ev, key = publish(svc, tmp_path)
    rep = json.loads(report.read_bytes())
    grid = rep["channels"][0]
    assert grid["energy_wh"] == FULL  # not 100 297 200
    assert grid["estimated_wh"] == 0
    assert [e["kind"] for e in grid["register_events"]] == ["meter_replacement_rejected"]
    problem = grid["register_events"][0]["replacement"]["problem"]
    # closing 100 000 000 counts above the reading at 12:00; possible: 1.2 x 1000 W x 300 s = 100 Wh, plus the
    # register's apparent resolution (every advance is a multiple of 100 Wh): 200
    assert (
        f"closing register {v_a + 100_000_000} is 100000000 counts above the old meter's last reading {v_a}" in problem
    )
    assert "more than the 200 possible in 300 s" in problem
    assert rule(grid, "meter_replacement")["status"] == "fail"
    assert rule(grid, "late_record")["status"] == "pass"  # a rejected record is not applied at all
    assert grid["grade"] == "provisional"
    assert rep["indicators"]["consumption_wh"] == FULL
    assert rep["indicators"]["balance_check"]["status"] == "pass"
    assert rep["quality"]["grade"] == "provisional"
    rc, out = verify(report, key, ev)
    assert rc == 0, out  # a valid report of a provisional figure
    assert "grade provisional" in out


def test_replacement_recorded_after_the_month_is_stored_never_changes_it(tmp_path: Path) -> None:
    s = _grid_and_hall(tmp_path)
    svc = service(s, now=JUNE)
    before = svc.report_json("s1", "2025-03")
    swap = datetime(2025, 3, 10, 12, 5, tzinfo=UTC)
    led = Ledger(s.ledger_path)
    record_meter_replacement(
        led, device="grid", at=swap, registers={"energy_import_wh": (1, 0)}, old_serial="GRID-1", new_serial="GRID-2"
    )
    led.close()
    assert service(s, now=JUNE + timedelta(days=30)).report_json("s1", "2025-03") == before
    report, ev, key = publish(service(s, now=JUNE), tmp_path)
    assert verify(report, key, ev)[0] == 0  # its evidence still verifies (events after its head ignored)


def test_replacement_without_the_new_serial_is_rejected(tmp_path: Path) -> None:
    s = _grid_and_hall(tmp_path)
    led = Ledger(s.ledger_path)
    record_meter_replacement(
        led, device="grid", at=datetime(2025, 3, 10, 12, 5, tzinfo=UTC), registers={"energy_import_wh": (0, 0)}
    )
    led.close()
    grid = service(s, now=JUNE).report("s1", "2025-03")["channels"][0]
    assert grid["register_events"][0]["replacement"]["problem"].startswith("no serial of the new meter recorded")


def test_balance_cross_check_fails_when_the_meters_disagree(tmp_path: Path) -> None:
    s = _grid_and_hall(tmp_path, hall_w=300)  # the hall meter counts 300 W of the 400 W imported
    svc = service(s, now=JUNE)
    report, ev, key = publish(svc, tmp_path)
    rep = json.loads(report.read_bytes())
    bal = rep["indicators"]["balance_check"]
    # derived 743 h x 400 W = 297 200; metered 743 h x 300 W = 222 900; limit 0.02 x 297 200 = 5 944
    assert (bal["derived_consumption_wh"], bal["metered_consumption_wh"]) == (FULL, 222_900)
    assert (bal["difference_wh"], bal["limit_wh"], bal["status"]) == (74_300, 5_944, "fail")
    assert [c["grade"] for c in rep["channels"]] == ["verified", "verified"]
    assert rep["quality"]["claims"]["energy_balance"] == "provisional"
    assert rep["quality"]["grade"] == "provisional"
    assert any(r.startswith("energy balance cross-check failed") for r in rep["quality"]["reasons"])
    assert verify(report, key, ev)[0] == 0
    # recomputed by gia verify: a report that says the check passed is caught
    forged = json.loads(report.read_bytes())
    forged["indicators"]["balance_check"]["status"] = "pass"
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    rc, out = verify(tmp_path / "forged.json", key)
    assert rc == 1 and "FAIL indicators.balance_check" in out


# -- 2. config change after storing -------------------------------------------------------------------
def test_evidence_and_pdf_of_a_stored_month_survive_a_config_change(tmp_path: Path) -> None:
    s = _grid_and_hall(tmp_path)
    svc = service(s, now=JUNE)
    data = svc.report_json("s1", "2025-03")
    zip_before, pdf_before, csv_before = (
        svc.evidence_zip("s1", "2025-03"),
        svc.report_pdf("s1", "2025-03"),
        svc.report_csv("s1", "2025-03"),
    )
    # the hall channel is removed and the grid meter gets another rated power
    s2 = settings(tmp_path, [device("grid", channel("grid_import", rated_power_w=5000), serial="GRID-1")])
    svc2 = service(s2, now=JUNE + timedelta(days=40))
    assert svc2.report_json("s1", "2025-03") == data
    assert svc2.evidence_zip("s1", "2025-03") == zip_before
    assert svc2.report_pdf("s1", "2025-03") == pdf_before
    assert svc2.report_csv("s1", "2025-03") == csv_before
    report, ev, key = publish(svc2, tmp_path)
    rc, out = verify(report, key, ev)
    assert rc == 0, out


# -- 3. settlement delay -------------------------------------------------------------------------------
def _600w(k: int, ts: datetime) -> int:
    return 10_000 + 50 * k  # 50 Wh per 5 min


def _midnight_site(d: Path) -> tuple[Any, list[Sample], list[Sample]]:
    """5-min readings; none at the month boundary (an outage 23:55-00:05 local time)."""
    start, end = T0, datetime(2025, 5, 1, tzinfo=UTC)
    samples = register_samples("m1", "energy_import_wh", start, end, step=timedelta(minutes=5), value=_600w)
    before = [x for x in samples if x.ts < MARCH_END]
    after = [x for x in samples if x.ts > MARCH_END]  # the 21:00Z reading is lost in the outage
    s = settings(d, [device("m1", channel("grid_import", rated_power_w=1000))])
    return s, before, after


def test_a_month_asked_for_at_midnight_is_provisional_and_not_stored(tmp_path: Path) -> None:
    s, before, after = _midnight_site(tmp_path)
    make_ledger(s.ledger_path, before).close()  # 00:00:30: nothing after midnight is in the ledger yet
    svc = service(s, now=MARCH_END + timedelta(seconds=30))
    rep = svc.report("s1", "2025-03")
    assert rep["period"]["complete"] is False
    assert rep["period"]["settles_at"] == "2025-04-02T21:00:00Z"  # end + 48 h
    assert rep["quality"]["grade"] == "provisional"
    assert svc.closed_report_json("s1", "2025-03") is None
    assert not (tmp_path / "reports" / "s1" / "2025-03.json").exists()
    assert svc.archive.latest("s1", "2025-03") is None
    # 49 h later, with the readings after midnight in: closed, the boundary interpolated from real readings
    led = Ledger(s.ledger_path)
    led.append(after)
    led.close()
    later = service(s, now=MARCH_END + timedelta(hours=49))
    march = json.loads(later.closed_report_json("s1", "2025-03") or b"null")
    ch = march["channels"][0]
    assert march["period"]["complete"] is True
    assert ch["closing"]["method"] == "interpolated"
    # readings 20:55Z (the 8939th 5-min step after T0, 745 h earlier) and 21:05Z, 100 Wh apart: 50 Wh before
    # the boundary
    assert ch["closing"]["register_value"] == 10_000 + 50 * (745 * 12 - 1) + 50 == 457_000
    assert ch["energy_wh"] == 743 * 600  # 445 800 Wh
    assert ch["interpolated_wh"] == 50
    assert ch["grade"] == "verified"
    april = json.loads(service(s, now=datetime(2025, 5, 4, tzinfo=UTC)).report_json("s1", "2025-04"))
    assert april["channels"][0]["opening"] == {**ch["closing"], "side": "opening"}
    assert april["channels"][0]["energy_wh"] == 720 * 600  # 9 Wh in neither month no more: none lost
    assert april["previous_report_sha256"] == hashlib.sha256(later.report_json("s1", "2025-03")).hexdigest()
    final = service(s, now=datetime(2025, 5, 4, tzinfo=UTC))
    report, ev, key = publish(final, tmp_path, "2025-04")
    rc, out = verify(report, key, ev)
    assert rc == 0, out  # April's evidence, with March as previous report: continuity holds


class _Clock:
    """A settable simulated clock; `speed` makes the publisher's hourly wait a few milliseconds."""

    speed = 1e6

    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    async def sleep_until(self, when: datetime) -> None:
        await asyncio.sleep(0)


async def test_the_agents_publisher_waits_for_settlement(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from gateway.certification.room import _publish_reports
    from gateway.certification.service import ReportService
    from gateway.sinks.outbox import LatestOutbox
    from gateway.site.resolve import resolve_site

    s, before, after = _midnight_site(tmp_path)
    make_ledger(s.ledger_path, before).close()
    from gateway.settings import MqttConfig

    from .helpers import site_key

    s = s.model_copy(update={"mqtt": MqttConfig(url="mqtt://127.0.0.1:1")})
    site_key(s)
    clock = _Clock(MARCH_END + timedelta(seconds=30))
    site = resolve_site(s, base_dir=tmp_path)
    reports = ReportService(s, site, now_ms=lambda: int(clock.now().timestamp() * 1000))
    outbox: LatestOutbox[str, bytes] = LatestOutbox()
    services = SimpleNamespace(settings=s, retained=outbox, clock=clock)  # what the certification room uses
    task = asyncio.create_task(_publish_reports(site, services, reports))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(1.0)
        topics = set(outbox.snapshot())
        assert "gia/s1/report/2025-03" not in topics  # ended 30 s ago: not settled, nothing published
        assert "gia/s1/report/2025-02" in topics  # February (2 h of readings) settled long ago
        keys = json.loads(outbox.snapshot()["gia/s1/keys/transition"])  # for the hub, retained
        assert [t["statement"]["reason"] for t in keys["transitions"]] == ["test site key"]
        led = Ledger(s.ledger_path)
        led.append(after)
        led.close()
        clock.t = MARCH_END + timedelta(hours=48, minutes=1)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if "gia/s1/report/2025-03" in outbox.snapshot():
                break
        body = outbox.snapshot()["gia/s1/report/2025-03"]
        assert json.loads(body)["period"]["complete"] is True
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- 4. boundary readings only -------------------------------------------------------------------------
def test_boundary_readings_only_give_a_measured_total_but_no_measured_interval(tmp_path: Path) -> None:
    samples = [
        Sample("m1", "energy_import_wh", 5_000, "Wh", MARCH_START),
        Sample("m1", "energy_import_wh", 5_000 + FULL, "Wh", MARCH_END),
    ]
    make_ledger(tmp_path / "ledger.db", samples).close()
    s = settings(
        tmp_path,
        [device("m1", channel("grid_import", rated_power_w=1000))],
        certification={"threshold_basis": "hourly"},
    )
    rep = service(s, now=JUNE).report("s1", "2025-03")
    ch = rep["channels"][0]
    assert (ch["energy_wh"], ch["measured_wh"]) == (FULL, FULL)  # two measured register readings
    assert ch["grade"] == "verified"
    assert ch["coverage"]["time"] == "0.000000"
    assert (ch["coverage"]["intervals"], ch["coverage"]["intervals_measured"]) == (2972, 0)
    assert ch["interval_grade"] == "unverified"
    assert rep["quality"]["claims"] == {
        "channel_totals": "verified",
        "energy_balance": "verified",
        "interval_allocation": "unverified",
        "threshold_met": "unverified",  # judged on the hourly basis: carries the interval grade
    }
    assert rep["quality"]["grade"] == "unverified"
    assert "m1.grid_import: intervals: not one of 2972 intervals is measured" in " ".join(rep["quality"]["reasons"])


def test_a_day_without_readings_keeps_the_total_verified_and_the_intervals_provisional(tmp_path: Path) -> None:
    gap = (datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC))

    def value(k: int, ts: datetime) -> int | None:
        return None if gap[0] < ts < gap[1] else constant_400w(k, ts)

    make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=value)).close()
    s = settings(tmp_path, [device("m1", channel("grid_import", rated_power_w=1000))])
    ch = service(s, now=JUNE).report("s1", "2025-03")["channels"][0]
    assert ch["grade"] == "verified"
    assert ch["coverage"]["intervals_measured"] == 2972 - 96
    assert ch["coverage"]["time"] == "0.967699"  # 2876 / 2972 < 0.99
    assert ch["interval_grade"] == "provisional"


# -- 5. one authoritative report per closed month ------------------------------------------------------
@pytest.fixture
def closed_march(tmp_path: Path) -> dict[str, Any]:
    make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)).close()
    s = settings(tmp_path, [device("m1", channel("grid_import", rated_power_w=1000), serial="SN-1")])
    svc = service(s, now=JUNE)
    return {"dir": tmp_path, "settings": s, "svc": svc, "data": svc.report_json("s1", "2025-03")}


def test_a_rebuild_of_an_unchanged_ledger_is_byte_identical(closed_march: dict[str, Any]) -> None:
    d, s, data = closed_march["dir"], closed_march["settings"], closed_march["data"]
    shutil.rmtree(d / "reports")
    assert service(s, now=JUNE + timedelta(days=3)).report_json("s1", "2025-03") == data
    assert (d / "reports" / "s1" / "2025-03.json").read_bytes() == data
    # even the archive row deleted by hand: rebuilt from the report_closed event's cut-off, identical
    db = sqlite3.connect(s.ledger_path)
    db.execute("DELETE FROM report_archive")
    db.commit()
    db.close()
    shutil.rmtree(d / "reports")
    assert service(s, now=JUNE + timedelta(days=5)).report_json("s1", "2025-03") == data


def test_a_reissue_names_what_it_replaces_and_verify_shows_the_chain(closed_march: dict[str, Any]) -> None:
    d, svc, data = closed_march["dir"], closed_march["svc"], closed_march["data"]
    reissued = svc.reissue("s1", "2025-03", "meter multiplier corrected")
    rep = json.loads(reissued)
    assert rep["reissue_of"] == hashlib.sha256(data).hexdigest()
    assert rep["reissue_reason"] == "meter multiplier corrected"
    assert svc.report_json("s1", "2025-03") == reissued  # the authoritative version now
    assert [a.version for a in svc.archive.versions("s1", "2025-03")] == [1, 2]
    report, ev, key = publish(svc, d)
    assert (ev / "replaced" / f"{rep['reissue_of']}.json").read_bytes() == data
    rc, out = verify(report, key, ev)
    assert rc == 0, out
    assert f"2025-03: reissue of report {rep['reissue_of']} (reason: meter multiplier corrected)" in out
    assert f"events chain: 2025-03 closed as report {rep['reissue_of']}" in out


def test_a_second_report_that_is_not_a_reissue_fails(closed_march: dict[str, Any]) -> None:
    d, svc = closed_march["dir"], closed_march["svc"]
    svc.reissue("s1", "2025-03", "test")
    report, ev, key = publish(svc, d)
    forged = json.loads(report.read_bytes())
    forged["reissue_of"] = forged["reissue_reason"] = None  # what a rebuild after deleting reports/ used to be
    report.write_bytes(canonical(svc.keys.sign_report(forged)))  # validly signed by the site's own key
    rc, out = verify(report, key, ev)
    assert rc == 1
    assert "FAIL reissue: the events chain records 2025-03 closed as report" in out
    assert "this report does not name it as the report it replaces (reissue_of)" in out


def test_reissue_needs_a_closed_month(tmp_path: Path) -> None:
    from gateway.certification.service import NotClosed

    make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=constant_400w)).close()
    s = settings(tmp_path, [device("m1", channel("grid_import", rated_power_w=1000))])
    svc = service(s, now=datetime(2025, 4, 1, 12, tzinfo=UTC))  # ended 15 h ago: within the settlement delay
    with pytest.raises(NotClosed):
        svc.reissue("s1", "2025-03", "too early")


# -- 8. one bad reading --------------------------------------------------------------------------------
def _one_bad(tmp_path: Path, bad: int | None, *, rated: int | None = 1000, shift: int = 0) -> dict[str, Any]:
    k_bad = int((datetime(2025, 3, 15, 12, tzinfo=UTC) - T0) / timedelta(minutes=15))

    def value(k: int, ts: datetime) -> int:
        if k == k_bad and bad is not None:
            return constant_400w(k - 5, ts) if bad == -1 else bad
        return constant_400w(k, ts) + (shift if k >= k_bad else 0)

    make_ledger(tmp_path / "ledger.db", register_samples("m1", "energy_import_wh", T0, T1, value=value)).close()
    kw = {"rated_power_w": rated} if rated is not None else {}
    s = settings(tmp_path, [device("m1", channel("grid_import", **kw))])
    return service(s, now=JUNE).report("s1", "2025-03")["channels"][0]


@pytest.mark.parametrize(("bad", "reason"), [(0, "dip"), (10_000_000, "spike"), (-1, "replayed")])
def test_a_single_bad_reading_is_excluded_and_the_total_stays_the_register_advance(
    tmp_path: Path, bad: int, reason: str
) -> None:
    ch = _one_bad(tmp_path, bad)
    assert ch["energy_wh"] == FULL  # not 1 447 100 / 10 297 199
    assert ch["measured_wh"] == FULL  # bridged by the two measured neighbours
    assert [(e["ts"], e["reason"]) for e in ch["excluded_readings"]] == [("2025-03-15T12:00:00Z", reason)]
    assert rule(ch, "reading_outlier")["status"] == "warn"
    # the two intervals around the excluded reading are interpolated: 2970 of 2972 measured
    assert (ch["coverage"]["intervals_measured"], ch["coverage"]["interval_energy_measured_wh"]) == (2970, FULL - 200)
    assert ch["grade"] == ch["interval_grade"] == "verified"


def test_a_level_shift_above_capacity_is_estimated_from_the_neighbours(tmp_path: Path) -> None:
    ch = _one_bad(tmp_path, None, shift=1_000_000)  # the register jumps 1 MWh in 15 min and stays there
    assert ch["energy_wh"] == FULL  # the jump step estimated at the neighbours' 100 Wh
    assert ch["estimated_wh"] == 100
    assert [e["kind"] for e in ch["register_events"]] == ["capacity"]
    assert ch["register_events"][0]["detail"] == {
        "register_advance": 1_000_100,
        "limit": 300,  # 1.2 x 1000 W x 15 min
        "cause": "advance above the capacity bound",
    }
    assert rule(ch, "step_capacity")["status"] == "fail"
    assert ch["grade"] == "provisional"


def test_a_channel_without_rated_power_cannot_be_verified(tmp_path: Path) -> None:
    ch = _one_bad(tmp_path, None, rated=None)
    assert ch["energy_wh"] == FULL
    assert rule(ch, "interval_capacity")["status"] == "fail"
    assert ch["grade"] == "provisional"
    assert any("no rated_power_w configured" in r for r in ch["reasons"])


def test_spike_without_rated_power_is_still_excluded(tmp_path: Path) -> None:
    ch = _one_bad(tmp_path, 10_000_000, rated=None)
    assert ch["energy_wh"] == FULL
    assert [e["reason"] for e in ch["excluded_readings"]] == ["spike"]


async def test_the_agents_publisher_says_why_a_month_is_not_published_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A month before the site's first reading is not published, and the log says so once (at info),
    not every round: a new site's log showed two warnings a minute for such months."""
    from types import SimpleNamespace

    from gateway.certification.room import _publish_reports
    from gateway.certification.service import ReportService
    from gateway.settings import MqttConfig
    from gateway.sinks.outbox import LatestOutbox
    from gateway.site.resolve import resolve_site

    from .helpers import site_key

    s, before, _after = _midnight_site(tmp_path)
    make_ledger(s.ledger_path, before).close()
    s = s.model_copy(update={"mqtt": MqttConfig(url="mqtt://127.0.0.1:1")})
    site_key(s)
    clock = _Clock(MARCH_START + timedelta(days=1))  # January (no readings) and February are looked at
    site = resolve_site(s, base_dir=tmp_path)
    reports = ReportService(s, site, now_ms=lambda: int(clock.now().timestamp() * 1000))
    outbox: LatestOutbox[str, bytes] = LatestOutbox()
    services = SimpleNamespace(settings=s, retained=outbox, clock=clock)
    asked: list[str] = []
    closed_report_json = reports.closed_report_json

    def counting(site_id: str, month: str) -> bytes | None:
        asked.append(month)
        return closed_report_json(site_id, month)

    reports.closed_report_json = counting  # type: ignore[method-assign,assignment]
    caplog.set_level(logging.INFO, logger="gateway.certification.room")
    task = asyncio.create_task(_publish_reports(site, services, reports))  # type: ignore[arg-type]
    try:
        for _ in range(500):  # the publisher's minute is 60 us at this clock's speed
            await asyncio.sleep(0.01)
            if asked.count("2025-01") >= 5:
                break
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert asked.count("2025-01") >= 5  # January was asked for round after round
    said = [r for r in caplog.records if "report 2025-01 not published" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO, [(r.levelname, r.getMessage()) for r in said]
