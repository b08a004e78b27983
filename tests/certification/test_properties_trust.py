"""Hypothesis properties of the trust rules: grading under a policy, lenient parameters, reissue chains,
key transitions. (Step exclusion is covered on random reading streams in `test_properties.py`.)

* a stricter policy never gives a better grade, for any channel facts;
* the interval grade is never better than the totals grade; the report's grade is the worst of its claims;
* a report's own parameters are never "lenient" against themselves, and every loosened one is listed;
* for any history of closings and reissues of a month, exactly the report naming the last closing (or,
  before any closing, a report naming nothing) passes the reissue rule;
* following key transitions trusts exactly the keys reachable from a pinned key by statements the
  replaced key signed, and the key in force is the last transition's.
"""

from __future__ import annotations

from dataclasses import fields, replace
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.certification.events import reissue_problem
from gateway.certification.exact import iso_ms
from gateway.certification.keys import follow, transition_detail
from gateway.certification.policy import (
    FIGURE_PARAMS,
    GRADES,
    THRESHOLDS,
    Policy,
    grade_channel,
    grade_report,
    lenient_parameters,
)
from gateway.certification.signing import key_id

T = 1_740_780_000_000  # a boundary instant
SHARES = st.sampled_from(["0", "0.5", "0.9", "0.95", "0.99", "0.995", "1"])


@st.composite
def boundaries(draw: st.DrawFn, side: str) -> dict[str, Any]:
    method = draw(st.sampled_from(["measured", "interpolated", "estimated", "missing"]))
    b: dict[str, Any] = {"ts": iso_ms(T), "method": method, "side": side, "reading": None, "bracket": []}
    if method == "measured":
        b["reading"] = {"ts": iso_ms(T + draw(st.integers(-900, 900)) * 1000)}
    elif method in ("interpolated", "estimated"):
        a, c = draw(st.integers(1, 20_000)), draw(st.integers(1, 20_000))
        b["bracket"] = [{"ts": iso_ms(T - a * 1000)}, {"ts": iso_ms(T + c * 1000)}]
    return b


@st.composite
def channel_facts(draw: st.DrawFn) -> dict[str, Any]:
    measured, interpolated, estimated = (draw(st.integers(0, 10_000)) for _ in range(3))
    n = draw(st.integers(0, 3000))
    n_meas = draw(st.integers(0, n))
    energy = measured + interpolated + estimated
    return {
        "id": "c",
        "opening": draw(boundaries("opening")),
        "closing": draw(boundaries("closing")),
        "energy_wh": energy,
        "measured_wh": measured,
        "interpolated_wh": interpolated,
        "estimated_wh": estimated,
        "coverage": {
            "intervals": n,
            "intervals_measured": n_meas,
            "interval_energy_measured_wh": draw(st.integers(0, energy)),
        },
        "validation": [
            {"rule": f"r{i}", "status": draw(st.sampled_from(["pass", "warn", "fail", "skip"])), "detail": ""}
            for i in range(draw(st.integers(0, 3)))
        ],
    }


@st.composite
def policy_pairs(draw: st.DrawFn) -> tuple[Policy, Policy]:
    """(lenient, strict): the strict one at least as strict in every field."""
    lenient, strict = Policy(), Policy()
    for name, direction in {**FIGURE_PARAMS, **THRESHOLDS}.items():
        if name in ("boundary_tolerance_s", "max_interpolation_s", "settlement_delay_h", "replacement_late_after_h"):
            a, b = sorted(draw(st.lists(st.integers(0, 100_000), min_size=2, max_size=2)))
        elif name in ("frozen_after_h", "pv_night_tolerance_wh"):
            a, b = sorted(draw(st.lists(st.integers(0, 100), min_size=2, max_size=2)))
        else:
            a, b = sorted(draw(st.lists(SHARES, min_size=2, max_size=2)), key=Decimal)
        # direction +1: larger is more lenient
        more, less = (b, a) if direction > 0 else (a, b)
        lenient, strict = replace(lenient, **{name: more}), replace(strict, **{name: less})
    return lenient, strict


def _rank(g: str) -> int:
    return GRADES.index(g)


@settings(max_examples=300, deadline=None)
@given(ch=channel_facts(), pols=policy_pairs())
def test_a_stricter_policy_never_grades_better(ch: dict[str, Any], pols: tuple[Policy, Policy]) -> None:
    lenient, strict = pols
    a, b = grade_channel(ch, lenient), grade_channel(ch, strict)
    assert _rank(b.total) >= _rank(a.total)
    assert _rank(b.intervals) >= _rank(a.intervals)
    for g in (a, b):
        assert _rank(g.intervals) >= _rank(g.total)  # intervals never better than the totals


@settings(max_examples=200, deadline=None)
@given(chs=st.lists(channel_facts(), min_size=1, max_size=4), basis=st.sampled_from(["physical", "market", "hourly"]))
def test_the_report_grade_is_the_worst_claim(chs: list[dict[str, Any]], basis: str) -> None:
    for i, ch in enumerate(chs):
        ch["id"] = f"c{i}"
    g = grade_report(chs, indicators={"threshold_basis": basis}, complete=True, policy=Policy())
    assert g["grade"] == GRADES[max(_rank(v) for v in g["claims"].values())]
    assert g["claims"]["channel_totals"] == GRADES[max(_rank(p["grade"]) for p in g["per_channel"])]
    assert g["claims"]["threshold_met"] == g["claims"]["interval_allocation" if basis == "hourly" else "energy_balance"]
    assert grade_report(chs, indicators={}, complete=False, policy=Policy())["grade"] == "provisional"


@settings(max_examples=100, deadline=None)
@given(pols=policy_pairs(), loosen=st.sets(st.sampled_from(sorted({**FIGURE_PARAMS, **THRESHOLDS}))))
def test_lenient_parameters_lists_exactly_what_is_looser(pols: tuple[Policy, Policy], loosen: set[str]) -> None:
    lenient, strict = pols
    own = {f.name: getattr(strict, f.name) for f in fields(Policy) if f.name != "name"}
    assert lenient_parameters(own, strict) == []
    method = {**own, **{k: getattr(lenient, k) for k in loosen}}
    listed = {p["parameter"] for p in lenient_parameters(method, strict)}
    looser = {k for k in loosen if getattr(lenient, k) != getattr(strict, k)}
    assert listed == looser


@settings(max_examples=200, deadline=None)
@given(history=st.lists(st.integers(0, 5), max_size=6), claim=st.one_of(st.none(), st.integers(0, 7)))
def test_only_a_reissue_of_the_last_closing_passes(history: list[int], claim: int | None) -> None:
    """`history`: the reports (by number) recorded as closing the month, in chain order."""
    closings = [{"report_sha256": f"sha{h}", "event_id": i + 1} for i, h in enumerate(history)]
    reissue_of = f"sha{claim}" if claim is not None else None
    problem = reissue_problem("2025-03", reissue_of, closings)
    if not history:
        assert (problem is None) == (reissue_of is None)
    else:
        assert (problem is None) == (reissue_of == f"sha{history[-1]}")


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.booleans(), min_size=1, max_size=5),  # per rotation: was the old key available?
    pinned_idx=st.sets(st.integers(0, 5), min_size=1, max_size=3),
)
def test_following_transitions_trusts_exactly_the_signed_chain(steps: list[bool], pinned_idx: set[int]) -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(len(steps) + 1)]
    ids = [key_id(k.public_key()) for k in keys]
    details = []
    for i, old_available in enumerate(steps):
        details.append(
            (
                i + 1,
                transition_detail(
                    site="s1",
                    new_key=keys[i + 1],
                    old_key=keys[i] if old_available else None,
                    old_key_id=ids[i],
                    reason=f"rotation {i}",
                    at=iso_ms(T + i),
                ),
            )
        )
    pinned = {ids[i]: keys[i].public_key() for i in pinned_idx if i < len(keys)}
    chain = follow(pinned, details, site="s1")
    expected = set(pinned)
    for i, old_available in enumerate(steps):
        if old_available and ids[i] in expected:
            expected.add(ids[i + 1])
    assert set(chain.trusted) == expected
    assert chain.current == ids[-1]
    assert chain.problems == []
    other = follow(pinned, details, site="another site")
    assert set(other.trusted) == set(pinned) and len(other.problems) == len(steps)
