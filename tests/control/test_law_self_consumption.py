"""`follow: self_consumption`: charge from the measured surplus, discharge into the measured deficit.

In hourly matching a Wh discharged into a real deficit counts the same in any hour, so the plan's
discharge cap (`envelope`) costs matched energy whenever a forecast missed a deficit; this mode leaves
the limits and the SoC window to the envelope and nothing else (docs/control.md, measured figures).
"""

from __future__ import annotations

from gateway.control.config import BatteryActuatorConfig
from gateway.control.envelope import Envelope, EnvelopeState, apply
from gateway.control.law import battery_target


def test_self_consumption_discharges_into_the_deficit_the_plan_did_not_foresee() -> None:
    # the plan expected a surplus (it schedules charging), the site has an 8 kW deficit
    assert battery_target(-30_000, follow="self_consumption", surplus_w=-8_000, max_charge_w=40_000) == (
        8_000,
        "self_consumption",
    )
    assert battery_target(-30_000, follow="envelope", surplus_w=-8_000, max_charge_w=40_000) == (0.0, "envelope")
    # charging still only from the measured surplus, at most the charge limit
    assert battery_target(5_000, follow="self_consumption", surplus_w=60_000, max_charge_w=40_000) == (
        -40_000,
        "self_consumption",
    )
    # without a grid reading there is no measured surplus: the plan's power, said so
    assert battery_target(5_000, follow="self_consumption", surplus_w=None, max_charge_w=40_000)[1].startswith(
        "setpoint"
    )


def test_the_envelope_still_bounds_what_self_consumption_asks_for() -> None:
    env = Envelope(max_charge_w=40_000, max_discharge_w=50_000, min_soc_pct=15, max_soc_pct=95)
    target, _ = battery_target(0.0, follow="self_consumption", surplus_w=-120_000, max_charge_w=40_000)
    assert apply(env, EnvelopeState(), target, now_s=0.0, soc_pct=60.0).power_w == 50_000
    assert apply(env, EnvelopeState(), target, now_s=0.0, soc_pct=15.0).power_w == 0.0  # SoC floor


def test_the_mode_is_configurable() -> None:
    cfg = BatteryActuatorConfig.model_validate(
        {"id": "battery", "device": "battery", "max_charge_w": 1, "max_discharge_w": 1, "follow": "self_consumption",
         "grid": {"device": "grid", "quantity": "power_w"}}
    )  # fmt: skip
    assert cfg.follow == "self_consumption"
