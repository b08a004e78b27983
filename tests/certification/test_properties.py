"""Hypothesis properties of the channel arithmetic on random reading streams.

Streams have gaps (seconds to days), rollovers, recorded meter replacements (consistent with the
readings around them), resets, and single glitch readings (a spike above the register, a dip to 0 or a
replayed older value) that no real register advance stands behind. For random consecutive periods cut
out of the stream:

* the periods' totals add up exactly to the total over their union (shared boundaries telescope, also
  across excluded readings);
* without resets or replacements, that total equals the true register advance, to the Wh, whatever the
  glitches (they are excluded, never counted); with replacements, the measured part is exact and only the
  swap steps are estimated; the total never exceeds the true advance by more than the swap estimates;
* per period, measured + interpolated + estimated = energy, all >= 0, estimated > 0 only with a reset, a
  replacement or an estimated boundary;
* the intervals add up to the period's energy and none is negative;
* no float anywhere in the channel's JSON.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.certification.compute import ChannelSpec, Params, Replacement, Series, compute_channel
from gateway.certification.exact import assert_no_float

MOD = 1_000_000
H = 3_600_000
RATED_W = 1_000_000  # 1 MW: at most 277 Wh per second of register advance
PARAMS = Params(interval_s=3600)
SPEC = ChannelSpec(
    id="c", role="grid_import", device="d", quantity="energy_import_wh", register_modulus_wh=MOD, rated_power_w=RATED_W
)


def _max_wh(dt_ms: int) -> int:
    """What a real register may advance over dt: the rated power (below the 1.2 x capacity bound)."""
    return RATED_W * dt_ms // H


@dataclass
class Stream:
    series: Series = field(default_factory=Series)
    replacements: list[Replacement] = field(default_factory=list)
    true_wh: int = 0
    swap_true_wh: int = 0  # register advance inside swap steps (estimated by the method)
    resets: list[int] = field(default_factory=list)  # ts of readings right after a reset
    glitches: int = 0


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    s = Stream()
    ts = 1_700_000_000_000 // H * H
    v = draw(st.integers(0, MOD - 1))
    n = draw(st.integers(2, 60))
    seq = 0
    last_special = -10  # reading index of the last glitch/swap/reset: keep them apart

    def add(t: int, value: int) -> None:
        nonlocal seq
        seq += 1
        s.series.ts.append(t)
        s.series.value.append(value)
        s.series.seq.append(seq)
        s.series.hash.append(bytes(32))

    add(ts, v)
    for i in range(1, n):
        dt = draw(
            st.one_of(
                st.integers(2_000, 15 * 60_000),
                st.integers(15 * 60_000, 3 * H),
                st.integers(3 * H, 48 * H),
            )
        )
        event = draw(st.sampled_from(["none"] * 7 + ["replace", "reset", "glitch"]))
        if i - last_special < 3:
            event = "none"
        inc = draw(st.integers(0, min(5_000, _max_wh(dt))))
        if event == "glitch" and 0 < v < MOD * 8 // 10 and v + inc < MOD:
            kind = draw(st.sampled_from(["spike", "zero", "replay"]))
            t_g = ts + draw(st.integers(1, dt - 1))
            if kind == "spike":
                g = MOD + draw(st.integers(0, 10**6))  # no register shows this: above its modulus
            elif kind == "zero" or len(s.series.value) < 2:
                g = 0
            else:
                g = s.series.value[-2]  # an older value, re-sent
            if g < v or g >= MOD:
                add(t_g, g)
                s.glitches += 1
                last_special = i
        ts += dt
        if event == "replace":
            half = dt // 2
            closing_extra = draw(st.integers(0, min(500, _max_wh(half))))
            new_inc = draw(st.integers(0, min(5_000, _max_wh(dt - half))))
            opening = draw(st.integers(0, MOD // 2))
            s.replacements.append(
                Replacement(
                    len(s.replacements) + 1,
                    ts - dt + half,
                    "d",
                    "energy_import_wh",
                    (v + closing_extra) % MOD,
                    opening,
                    old_serial=f"OLD-{i}",
                    new_serial=f"NEW-{i}",
                    recorded_ms=ts,
                )
            )
            s.true_wh += closing_extra + new_inc
            s.swap_true_wh += closing_extra + new_inc
            v = opening + new_inc
            last_special = i
        elif event == "reset" and v > 0 and v * 10 < MOD * 9:
            # the register restarted from 0 and counted up to below its old value: a visible decrease
            # (a drop from near the top would be indistinguishable from a rollover)
            v = inc % v
            s.resets.append(ts)
            last_special = i
        else:
            s.true_wh += inc
            v = (v + inc) % MOD
        add(ts, v)
    return s


def _check_period(j: dict[str, object], interval_wh: list[int], n_intervals: int) -> None:
    assert_no_float(j)
    assert j["measured_wh"] + j["interpolated_wh"] + j["estimated_wh"] == j["energy_wh"]  # type: ignore[operator]
    assert min(j["measured_wh"], j["interpolated_wh"], j["estimated_wh"]) >= 0  # type: ignore[type-var]
    assert sum(interval_wh) == j["energy_wh"]
    assert all(x >= 0 for x in interval_wh)
    assert len(interval_wh) == n_intervals


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), data=st.data())
def test_periods_telescope_and_split_is_consistent(stream: Stream, data: st.DataObject) -> None:
    first, last = stream.series.ts[0], stream.series.ts[-1]
    lo = first // H * H
    hi = (last // H + 1) * H
    cuts = sorted(set(data.draw(st.lists(st.integers(lo // H + 1, hi // H - 1), max_size=5)))) if hi - lo > H else []
    edges = [lo, *(c * H for c in cuts), hi]
    total = 0
    for a, b in itertools.pairwise(edges):
        r = compute_channel(SPEC, stream.series, start_ms=a, end_ms=b, params=PARAMS, replacements=stream.replacements)
        j = r.json
        _check_period(j, r.interval_wh, (b - a) // (PARAMS.interval_s * 1000))
        if j["estimated_wh"] > 0:
            assert (
                stream.resets
                or stream.replacements
                or j["opening"]["method"] == "estimated"
                or j["closing"]["method"] == "estimated"
            )
        total += j["energy_wh"]
    union = compute_channel(
        SPEC, stream.series, start_ms=lo, end_ms=hi, params=PARAMS, replacements=stream.replacements
    ).json
    assert total == union["energy_wh"]
    # the union's boundaries lie outside the data ("missing"): it counts exactly first..last reading
    if not stream.resets:  # (a reset back to an earlier value cannot be told from a glitch: it is excluded)
        assert len(union["excluded_readings"]) == stream.glitches
        assert [e["kind"] for e in union["register_events"] if e["kind"] != "rollover"] == ["meter_replacement"] * len(
            stream.replacements
        )
        assert union["measured_wh"] == stream.true_wh - stream.swap_true_wh
        if not stream.replacements:
            assert union["energy_wh"] == stream.true_wh
            assert union["estimated_wh"] == 0
    else:
        assert union["grade"] != "verified"


@settings(max_examples=60, deadline=None)
@given(stream=streams())
def test_exact_reading_boundaries_give_measured_totals(stream: Stream) -> None:
    first, last = stream.series.ts[0], stream.series.ts[-1]
    r = compute_channel(
        SPEC, stream.series, start_ms=first, end_ms=last + 1, params=PARAMS, replacements=stream.replacements
    ).json
    assert r["opening"]["method"] == "measured"
    assert r["closing"]["method"] == "measured"
    if not stream.resets and not stream.replacements:
        assert r["energy_wh"] == stream.true_wh == r["measured_wh"]
