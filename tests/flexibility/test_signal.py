"""Signal computation: quantile combination, hysteresis, stale/missing forecasts, payload and S2 validity."""

from __future__ import annotations

from datetime import timedelta

import pytest
from s2python.common import PowerForecast
from s2python.pebc import PEBCInstruction, PEBCPowerConstraints
from s2python.s2_parser import S2Parser

from gateway.flexibility.config import Thresholds
from gateway.flexibility.service import FlexibilityService
from gateway.flexibility.signal import combine, levels
from gateway.sinks.mqtt.topics import Topics

from .helpers import NOW, START, config, forecast, forecasts

H = 24
LOAD = [300_000.0] * H
WIND = [100_000.0] * 6 + [600_000.0] * 6 + [100_000.0] * 6 + [600_000.0] * 6
PV = [0.0] * H


def test_comonotonic_is_wider_than_independent_and_both_bracket_p50() -> None:
    gen = [(80.0, 100.0, 120.0), (40.0, 50.0, 70.0)]
    load = (90.0, 100.0, 115.0)
    co = combine(gen, load, "comonotonic")
    ind = combine(gen, load, "independent")
    assert co == (120.0 - 115.0, 50.0, 190.0 - 90.0)
    assert ind[1] == co[1]
    assert co[0] < ind[0] < ind[1] < ind[2] < co[2]


def test_hysteresis_does_not_flap_on_a_wobbling_surplus() -> None:
    th = Thresholds(absorb_above_w=0, reduce_below_w=0, hysteresis_w=20_000)
    wobble = [(x, x + 5_000, x + 10_000) for x in [12_000, -8_000, 9_000, -9_000, 8_000, -25_000, 0, 15_000]]
    got = levels(wobble, th)
    assert got == ["absorb", "absorb", "absorb", "absorb", "absorb", "reduce", "reduce", "absorb"]
    no_band = levels(wobble, Thresholds(hysteresis_w=0))
    assert no_band.count("absorb") == 4  # without hysteresis it flips at every sign change
    reduce = levels([(-50_000, -40_000, -30_000), (-30_000, -15_000, -5_000), (-20_000, 0, 15_000)], th)
    assert reduce == ["reduce", "reduce", "neutral"]


def test_signal_levels_follow_the_surplus_and_payload_has_the_contract_fields() -> None:
    svc = FlexibilityService(config(), site="demo", timezone="Europe/Riga")
    sig = svc.update(forecasts(LOAD, WIND, PV), NOW, 50.0)
    assert sig.usable and len(sig.intervals) == H
    assert [iv.level for iv in sig.intervals[:6]] == ["reduce"] * 6
    assert [iv.level for iv in sig.intervals[6:12]] == ["absorb"] * 6
    payload = svc.signal_payload(NOW)
    assert payload is not None
    assert payload["generated_at"] == "2026-03-10T07:20:00Z" and payload["status"] == "ok"
    first = payload["intervals"][0]
    assert set(first) >= {"start", "end", "level", "surplus_w", "upward_w", "downward_w"}
    assert first["start"] == "2026-03-10T07:00:00Z" and first["end"] == "2026-03-10T08:00:00Z"
    assert set(first["surplus_w"]) == {"p10", "p50", "p90"}
    assert first["surplus_w"]["p10"] <= first["surplus_w"]["p50"] <= first["surplus_w"]["p90"]
    assert payload["forecast"]["wind"]["kind"] == "model"
    assert payload["plan"]["status"] == "optimal"
    battery = payload["plan"]["assets"]["battery"]
    # charges in the windy hours (negative = charging) and discharges in the calm ones
    assert min(battery["power_w"][6:12]) < 0 and max(battery["power_w"][12:18]) > 0


def test_s2_messages_validate_against_s2python() -> None:
    svc = FlexibilityService(config(), site="demo")
    svc.update(forecasts(LOAD, WIND, PV), NOW, 50.0)
    raw = svc.s2_messages()
    msgs = {k: v for k, v in raw.items() if v is not None}
    assert set(msgs) == set(raw) == {"PowerForecast", "PEBC.PowerConstraints.battery", "PEBC.Instruction.battery"}
    pf = S2Parser.parse_as_message(msgs["PowerForecast"], PowerForecast)
    assert len(pf.elements) == H
    v = pf.elements[0].power_values[0]
    # net = load - generation = -surplus (S2: consumption positive); the 95 % band is wider than the 68 %
    assert v.value_expected == pytest.approx(300_000 - 100_000, abs=1)
    bands = (v.value_lower_95PPR, v.value_lower_68PPR, v.value_expected, v.value_upper_68PPR, v.value_upper_95PPR)
    assert all(b is not None for b in bands)
    assert list(bands) == sorted(bands, key=float) and len(set(bands)) == 5  # type: ignore[arg-type]
    S2Parser.parse_as_message(msgs["PEBC.PowerConstraints.battery"], PEBCPowerConstraints)
    ins = S2Parser.parse_as_message(msgs["PEBC.Instruction.battery"], PEBCInstruction)
    els = ins.power_envelopes[0].power_envelope_elements
    assert sum(e.duration.root for e in els) == H * 3600 * 1000
    assert all(-100_000 <= e.lower_limit <= 0 and e.upper_limit == 100_000 for e in els)
    for m in msgs.values():
        assert type(S2Parser.parse_as_any_message(m)).__name__ in {
            "PowerForecast",
            "PEBCPowerConstraints",
            "PEBCInstruction",
        }


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: {k: v for k, v in forecasts(LOAD, WIND, PV).items() if k != "pv"}, "missing pv forecast"),
        (lambda: forecasts(LOAD, WIND, PV, generated_at=NOW - timedelta(hours=3)), "stale load forecast"),
        (lambda: {**forecasts(LOAD, WIND, PV), "wind": forecast("wind", [], kind="empty")}, "wind forecast is empty"),
        (lambda: forecasts(LOAD, WIND, PV, start=START + timedelta(hours=2)), "do not cover the current interval"),
    ],
)
def test_unusable_forecasts_give_neutral_with_a_reason(make: object, reason: str) -> None:
    svc = FlexibilityService(config(), site="demo")
    svc.update(forecasts(LOAD, WIND, PV), NOW - timedelta(minutes=30), 50.0)  # a good plan first
    sig = svc.update(make(), NOW, 50.0)  # type: ignore[operator]
    assert not sig.usable and reason in sig.reason
    assert {iv.level for iv in sig.intervals} == {"neutral"}
    assert all(iv.surplus is None and iv.upward_w is None for iv in sig.intervals)
    payload = svc.signal_payload(NOW)
    assert payload is not None and payload["status"] == "neutral" and payload["plan"] is None
    msgs = svc.s2_messages()
    assert msgs["PowerForecast"] is None  # clears the retained forecast
    instruction = msgs["PEBC.Instruction.battery"]
    assert instruction is not None
    env = S2Parser.parse_as_message(instruction, PEBCInstruction).power_envelopes[0]
    assert [(e.lower_limit, e.upper_limit) for e in env.power_envelope_elements] == [(-100_000, 100_000)]
    topics = Topics.for_site("gia/{site}", "demo")
    assert svc.mqtt_messages(topics)["gia/demo/flex/s2/PowerForecast"] == b""


def test_an_old_signal_is_served_as_neutral_not_as_current() -> None:
    svc = FlexibilityService(config(), site="demo")
    assert svc.signal_payload(NOW) is None
    svc.update(forecasts(LOAD, WIND, PV), NOW, 50.0)
    later = svc.signal_payload(NOW + timedelta(hours=3))
    assert later is not None and later["status"] == "neutral"
    assert "signal not updated since 2026-03-10T07:20:00Z" in later["reason"]
    assert all(iv["level"] == "neutral" for iv in later["intervals"])


def test_unknown_soc_leaves_the_battery_idle_and_says_so() -> None:
    svc = FlexibilityService(config(), site="demo")
    svc.update(forecasts(LOAD, WIND, PV), NOW, None)
    payload = svc.signal_payload()
    assert payload is not None and payload["status"] == "ok"
    assert "battery" not in payload["plan"]["assets"]
    assert "state of charge unknown" in payload["plan"]["reason"]


def test_levels_carry_over_between_updates() -> None:
    # surplus exactly at the threshold: a fresh service says neutral, one that was in absorb stays there
    flat = forecasts([300_000.0] * H, [305_000.0] * H, [0.0] * H, spread=0.0)
    svc = FlexibilityService(config(thresholds={"hysteresis_w": 20_000}), site="demo")
    assert svc.update(flat, NOW, 50.0).intervals[0].level == "neutral"
    svc2 = FlexibilityService(config(thresholds={"hysteresis_w": 20_000}), site="demo")
    svc2.update(forecasts([300_000.0] * H, [350_000.0] * H, [0.0] * H, spread=0.0), NOW, 50.0)
    assert svc2.update(flat, NOW + timedelta(minutes=10), 50.0).intervals[0].level == "absorb"


def test_quarter_hour_forecasts_are_averaged_onto_hours() -> None:
    q = [100_000.0, 200_000.0, 300_000.0, 400_000.0] * H
    fc = forecasts([0.0] * (4 * H), q, [0.0] * (4 * H), resolution_s=900, spread=0.0)
    sig = FlexibilityService(config(), site="demo").update(fc, NOW, 50.0)
    assert sig.intervals[0].surplus == (250_000.0, 250_000.0, 250_000.0)


def test_influx_lines_are_line_protocol_for_every_interval() -> None:
    svc = FlexibilityService(config(), site="demo")
    svc.update(forecasts(LOAD, WIND, PV), NOW, 50.0)
    lines = svc.influx_lines()
    site_lines = [ln for ln in lines if ln.startswith("flex,device=site,site=demo ")]
    assert len(site_lines) == H
    assert site_lines[0].endswith(f" {int(START.timestamp() * 1000)}")
    assert 'level="reduce",level_code=-1i,surplus_p10_w=' in site_lines[0]
    assert any(ln.startswith("flex,device=battery,site=demo power_w=") for ln in lines)
