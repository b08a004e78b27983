"""The effect, measured on a week of the demo site: following the signals raises the hourly-matched share."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bench.replay import NoiseModel, SiteSeries, hourly_means, simulate
from drivers.sim.site import PV_PEAK_W, TIMEZONE, WIND_RATED_W, DemoSite
from gateway.flexibility.config import FlexibilityConfig

pytestmark = [pytest.mark.cpu]

DAYS = 7


@pytest.fixture(scope="module")
def week() -> SiteSeries:
    start = datetime(2026, 3, 2, tzinfo=UTC)
    m = hourly_means(DemoSite().power_at, start, DAYS * 24 + 24, ("hall-a", "hall-b", "wind", "pv"), step_s=900)
    return SiteSeries(start, m["hall-a"] + m["hall-b"], m["wind"], m["pv"], TIMEZONE)


CFG = FlexibilityConfig.model_validate(
    {
        "enabled": True,
        "limits": {"grid_connection_w": 2_500_000},
        "assets": [
            {
                "kind": "battery",
                "id": "battery",
                "capacity_wh": 200_000,
                "max_charge_w": 100_000,
                "max_discharge_w": 100_000,
                "min_soc_pct": 10,
                "max_soc_pct": 100,
            },
            {
                "kind": "shiftable",
                "id": "process",
                "power_w": 50_000,
                "energy_wh_per_day": 400_000,
                "windows": ["06:00-22:00"],
            },
        ],
    }
)


@pytest.mark.slow
def test_signals_raise_the_hourly_matched_share_without_losing_process_energy(week: SiteSeries) -> None:
    kw = {"hours": DAYS * 24, "noise": NoiseModel(), "wind_capacity_w": WIND_RATED_W, "pv_capacity_w": PV_PEAK_W}
    idle = simulate(week, CFG, "idle", **kw)  # type: ignore[arg-type]
    default = simulate(week, CFG, "default", **kw)  # type: ignore[arg-type]
    signals = simulate(week, CFG, "signals", **kw)  # type: ignore[arg-type]
    assert signals.neutral_updates == 0 and signals.updates == DAYS * 24
    # the battery does not enter certification's hourly matching; moving the process does
    assert idle.share_cert == default.share_cert
    assert signals.share_cert > default.share_cert
    # counting storage, the self-consumption battery helps; the signals help at least as much
    assert default.share_storage > idle.share_storage
    assert signals.share_storage >= default.share_storage
    # the same process energy is delivered (all of it, every full day)
    assert signals.shiftable_wh == pytest.approx(default.shiftable_wh, rel=1e-3)
    assert signals.shiftable_wh >= signals.shiftable_target_wh - 1.0
