"""The safety envelope and the plan -> setpoint law: pure rules, tested without devices (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.control.envelope import Envelope, EnvelopeState, apply
from gateway.control.law import battery_target, plan_point
from tests.control.helpers import plan_payload

pytestmark = pytest.mark.fuzz
ENV = Envelope(max_charge_w=40_000, max_discharge_w=30_000, min_soc_pct=10, max_soc_pct=90, deadband_w=500,
               min_dwell_s=60, ramp_w_per_s=100)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(-1e6, 1e6, allow_nan=False),  # target
            st.floats(0.0, 120.0),  # seconds since the previous round
            st.one_of(st.none(), st.floats(0.0, 100.0)),  # SoC
        ),
        min_size=1,
        max_size=30,
    )
)
def test_no_setpoint_ever_leaves_the_limits_or_the_soc_window(steps: list[tuple[float, float, float | None]]) -> None:
    state, t = EnvelopeState(), 0.0
    for target, dt, soc in steps:
        t += dt
        before = state.last_w
        d = apply(ENV, state, target, now_s=t, soc_pct=soc)
        assert -ENV.max_charge_w <= d.power_w <= ENV.max_discharge_w
        if soc is None or soc <= ENV.min_soc_pct:
            assert d.power_w <= 0, "no discharge at or below the SoC floor (or with the SoC unknown)"
        if soc is None or soc >= ENV.max_soc_pct:
            assert d.power_w >= 0, "no charge at or above the SoC ceiling (or with the SoC unknown)"
        if before is not None and -ENV.max_charge_w <= before <= ENV.max_discharge_w and d.power_w != before:
            allowed = ENV.ramp_w_per_s * dt + 1e-6  # type: ignore[operator]
            forced = (soc is None) or soc <= ENV.min_soc_pct or soc >= ENV.max_soc_pct
            assert forced or abs(d.power_w - before) <= allowed


def test_dwell_deadband_and_ramp_say_why() -> None:
    state = EnvelopeState()
    assert apply(ENV, state, 10_000, now_s=0, soc_pct=50).power_w == 10_000
    assert apply(ENV, state, 10_300, now_s=100, soc_pct=50).power_w == 10_000  # within the deadband
    ramped = apply(ENV, state, 20_000, now_s=110, soc_pct=50)
    assert ramped.power_w == 11_000 and "ramped" in ramped.reasons[0]  # 100 W/s x 10 s
    held = apply(ENV, state, 5_000, now_s=130, soc_pct=50)
    assert held.power_w == 11_000 and "held 60 s" in held.reasons[0]  # changed 20 s ago
    floor = apply(ENV, state, 20_000, now_s=131, soc_pct=9)  # the SoC floor forces it at once
    assert floor.power_w == 0 and "no discharge" in floor.reasons[0]


def test_the_law_charges_only_from_the_measured_surplus_and_caps_discharge_at_the_plan() -> None:
    assert battery_target(-30_000, follow="envelope", surplus_w=12_000, max_charge_w=40_000) == (-12_000, "envelope")
    assert battery_target(-30_000, follow="envelope", surplus_w=-8_000, max_charge_w=40_000) == (0.0, "envelope")
    assert battery_target(5_000, follow="envelope", surplus_w=-8_000, max_charge_w=40_000) == (5_000, "envelope")
    assert battery_target(-30_000, follow="setpoint", surplus_w=-8_000, max_charge_w=40_000)[0] == -30_000
    assert battery_target(-30_000, follow="envelope", surplus_w=None, max_charge_w=40_000)[1].startswith("setpoint")


def test_no_plan_an_old_plan_or_a_neutral_signal_gives_no_target_with_the_reason() -> None:
    now = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    point = plan_point(plan_payload("battery", 7_000, now), "battery", now, max_age_s=3600)
    assert not isinstance(point, str) and point.power_w == 7_000
    assert "no flexibility signal" in str(plan_point(None, "battery", now, max_age_s=3600))
    old = plan_payload("battery", 7_000, now - timedelta(hours=3))
    assert "generated 3.0 h ago" in str(plan_point(old, "battery", now, max_age_s=3600))
    assert "neutral signal: stale" in str(
        plan_point({"status": "neutral", "reason": "stale load forecast"}, "battery", now, max_age_s=3600)
    )
    assert "no asset 'press'" in str(plan_point(plan_payload("battery", 1, now), "press", now, max_age_s=3600))
    assert "not understood" in str(plan_point({"status": "ok"}, "battery", now, max_age_s=3600))
