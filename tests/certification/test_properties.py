"""Hypothesis properties of the channel arithmetic on random reading streams.

Streams have gaps (seconds to days), rollovers, recorded meter replacements and resets. For random
consecutive periods cut out of the stream:

* the periods' totals add up exactly to the total over their union (shared boundaries telescope);
* without resets, that total equals the true register advance, to the Wh;
* per period, measured + interpolated + estimated = energy, all >= 0, estimated > 0 only with a reset;
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
PARAMS = Params(interval_s=3600)
SPEC = ChannelSpec(id="c", role="grid_import", device="d", quantity="energy_import_wh", register_modulus_wh=MOD)


@dataclass
class Stream:
    series: Series = field(default_factory=Series)
    replacements: list[Replacement] = field(default_factory=list)
    true_wh: int = 0
    resets: list[int] = field(default_factory=list)  # ts of readings right after a reset


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    s = Stream()
    ts = 1_700_000_000_000 // H * H
    v = draw(st.integers(0, MOD - 1))
    n = draw(st.integers(2, 60))
    for i in range(n):
        if i:
            ts += draw(
                st.one_of(
                    st.integers(1_000, 15 * 60_000),
                    st.integers(15 * 60_000, 3 * H),
                    st.integers(3 * H, 48 * H),
                )
            )
            inc = draw(st.integers(0, 5_000))
            event = draw(st.sampled_from(["none"] * 8 + ["replace", "reset"]))
            if event == "replace":
                closing_extra = draw(st.integers(0, 500))
                opening = draw(st.integers(0, MOD // 2))
                s.replacements.append(
                    Replacement(
                        len(s.replacements) + 1, ts - 1, "d", "energy_import_wh", (v + closing_extra) % MOD, opening
                    )
                )
                s.true_wh += closing_extra + inc
                v = (opening + inc) % MOD
            elif event == "reset" and v > 0 and v * 10 < MOD * 9:
                # the register restarted from 0 and counted up to below its old value: a visible decrease
                # (a drop from near the top would be indistinguishable from a rollover)
                v = inc % v
                s.resets.append(ts)
            elif event == "reset":
                s.true_wh += inc
                v = (v + inc) % MOD
            else:
                s.true_wh += inc
                v = (v + inc) % MOD
        s.series.ts.append(ts)
        s.series.value.append(v)
        s.series.seq.append(i + 1)
        s.series.hash.append(bytes(32))
    return s


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
        assert_no_float(j)
        assert j["measured_wh"] + j["interpolated_wh"] + j["estimated_wh"] == j["energy_wh"]
        assert min(j["measured_wh"], j["interpolated_wh"], j["estimated_wh"]) >= 0
        assert sum(r.interval_wh) == j["energy_wh"]
        assert all(x >= 0 for x in r.interval_wh)
        assert len(r.interval_wh) == (b - a) // (PARAMS.interval_s * 1000)
        if j["estimated_wh"] > 0:
            assert stream.resets or j["opening"]["method"] == "estimated" or j["closing"]["method"] == "estimated"
        total += j["energy_wh"]
    union = compute_channel(
        SPEC, stream.series, start_ms=lo, end_ms=hi, params=PARAMS, replacements=stream.replacements
    ).json
    assert total == union["energy_wh"]
    # the union's boundaries lie outside the data ("missing"): it counts exactly first..last reading
    if not stream.resets:
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
    if not stream.resets:
        assert r["energy_wh"] == stream.true_wh == r["measured_wh"]
