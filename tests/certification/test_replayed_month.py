"""The storage-aware share of a replayed month is the one its signed monthly report certifies.

The demo site is replayed over the civil month of March 2026 in Riga (743 h) under (a) the battery's own
self-consumption mode and (c) perfect foresight; the replayed flows become the registers of a ledger, the
gateway's ReportService signs the month, and the report's `hourly_matched_share_storage` equals the
replay's figure from the same certification code (bench/replay_report.py), so the gain a replay measures
is the gain the signed report shows. (The closed loop (b) takes ~750 LP solves: bench/flex_replay.py
builds its report.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.flex_replay import demo_series, flex_config
from bench.replay import NoiseModel, simulate
from bench.replay_report import certified, signed_report
from drivers.sim.site import PV_PEAK_W, TIMEZONE, WIND_RATED_W

pytestmark = [pytest.mark.cpu]

pytest.importorskip("scipy", reason="perfect foresight solves an LP: pip install -e '.[flex]'")


def test_signed_report_of_a_replayed_month_shows_the_replays_gain(tmp_path: Path) -> None:
    cfg = flex_config(connection_w=2_500_000)
    series, hours = demo_series("2026-03", cfg.horizon_h)
    assert hours == 743
    shares = {}
    for policy in ("default", "perfect"):
        res = simulate(
            series, cfg, policy, hours=hours, noise=NoiseModel(), wind_capacity_w=WIND_RATED_W, pv_capacity_w=PV_PEAK_W
        )
        replay = certified(res, series.start)
        report = signed_report(res, "2026-03", TIMEZONE, tmp_path / policy)
        ind = report["indicators"]
        assert ind["hourly_matched_share_storage"] == replay["hourly_matched_share_storage"]
        assert ind["hourly_matched_storage_wh"] == replay["hourly_matched_storage_wh"]
        assert ind["hourly_matched_share"] == ind["hourly_matched_share_storage"]  # no certificates here
        assert report["quality"]["grade"] == "verified"
        (unit,) = report["matching"]["storage"]
        assert unit["discharge_renewable_wh"] == sum(replay["storage"].discharge_renewable)
        shares[policy] = ind["hourly_matched_share_storage"]
    # perfect foresight beats the battery's own mode, in the signed figures as in the replay
    assert float(shares["perfect"]) > float(shares["default"])
