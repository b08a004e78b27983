"""Fuzzing the request planner with scale-factor dependencies, and the channel arithmetic of reports on
hostile reading series. Complements tests/drivers/test_plan.py (plain fields) and
tests/certification/test_properties.py (well-formed streams); decoders are fuzzed in
tests/drivers/test_decode.py.

Planner property: every field is read; each value is read in one request together with every scale
factor it needs; no request exceeds the limit or the 16-bit address space.
Report property: for any sorted series of register readings (duplicates, zeros, huge jumps, values
beyond the modulus, decreases) the channel result has no float, no negative energy or interval, and
measured + interpolated + estimated = energy.

Regression found here (fixed in gateway/certification/compute.py): a reading at or above the register
modulus (a wrong modulus, or a hostile MQTT payload) followed by a lower one was taken for a rollover
and certified as negative energy; it is now a reset.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.plan import Field, plan_reads
from drivers.modbus.registermap import RegisterType
from gateway.certification.compute import ChannelSpec, Params, Series, compute_channel
from gateway.certification.exact import assert_no_float
from tests.support.fuzz_budget import examples

pytestmark = [pytest.mark.fuzz]


@st.composite
def field_sets(draw: st.DrawFn) -> list[Field]:
    rtype: RegisterType = draw(st.sampled_from(["holding", "input"]))
    sfs = [Field(f"sf:{i}", rtype, draw(st.integers(0, 65535)), 1) for i in range(draw(st.integers(0, 4)))]
    fields = []
    for i in range(draw(st.integers(1, 40))):
        words = draw(st.sampled_from([1, 2, 4]))
        addr = draw(st.integers(0, 65536 - words))
        needs = tuple(draw(st.lists(st.sampled_from(sfs), max_size=2, unique=True))) if sfs else ()
        fields.append(Field(f"v{i}", rtype, addr, words, needs))
    return fields


@examples(300)
@given(fields=field_sets(), max_regs=st.integers(4, 125), gap=st.integers(0, 30))
def test_planner_keeps_values_with_their_scale_factors(fields: list[Field], max_regs: int, gap: int) -> None:
    try:
        plan = plan_reads(fields, max_registers=max_regs, max_gap=gap)
    except ValueError:
        # Documented refusal: a value and its scale factors cannot fit one request (the map is wrong).
        spans = [
            max(x.address + x.words for x in (f, *f.needs)) - min(x.address for x in (f, *f.needs)) for f in fields
        ]
        assert max(spans) > max_regs
        return
    for r in plan:
        assert 1 <= r.count <= max_regs
        assert r.address >= 0 and r.address + r.count <= 65536
        for x in r.fields:
            assert r.address <= x.address and x.address + x.words <= r.address + r.count
    for f in fields:
        homes = [r for r in plan if any(x.key == f.key for x in r.fields)]
        assert homes, f"{f.key} never read"
        assert any(all(any(x.key == n.key for x in r.fields) for n in f.needs) for r in homes), f


MOD = 1_000_000


@st.composite
def hostile_series(draw: st.DrawFn) -> Series:
    n = draw(st.integers(1, 80))
    ts0 = 1_750_000_000_000
    ts, vals = [], []
    t = ts0
    for _ in range(n):
        t += draw(st.sampled_from([0, 1, 999, 60_000, 900_000, 3_600_000, 86_400_000 * 3]))
        ts.append(t)
        vals.append(draw(st.one_of(st.integers(0, MOD - 1), st.just(0), st.integers(MOD, 10 * MOD))))
    return Series(ts, vals, list(range(1, n + 1)), [bytes(32)] * n)


@examples(200)
@given(series=hostile_series(), modulus=st.sampled_from([None, MOD]), interval=st.sampled_from([900, 3600]))
def test_channel_never_negative_never_float(series: Series, modulus: int | None, interval: int) -> None:
    spec = ChannelSpec(id="c", role="grid_import", device="d", quantity="energy_import_wh", register_modulus_wh=modulus)
    first, last = series.ts[0], series.ts[-1]
    start = first // 3_600_000 * 3_600_000
    end = (last // 3_600_000 + 1) * 3_600_000
    r = compute_channel(spec, series, start_ms=start, end_ms=end, params=Params(interval_s=interval))
    j = r.json
    assert_no_float(j)
    assert j["energy_wh"] >= 0
    assert min(j["measured_wh"], j["interpolated_wh"], j["estimated_wh"]) >= 0
    assert j["measured_wh"] + j["interpolated_wh"] + j["estimated_wh"] == j["energy_wh"]
    assert all(x >= 0 for x in r.interval_wh)
    assert sum(r.interval_wh) == j["energy_wh"]


def test_regression_value_above_modulus_then_lower_is_a_reset_not_negative() -> None:
    series = Series([1_750_000_000_000, 1_750_000_000_000], [MOD + 1, 0], [1, 2], [bytes(32)] * 2)
    spec = ChannelSpec(id="c", role="grid_import", device="d", quantity="energy_import_wh", register_modulus_wh=MOD)
    r = compute_channel(spec, series, start_ms=1_749_999_600_000, end_ms=1_750_003_200_000, params=Params())
    assert r.json["energy_wh"] >= 0
    assert [e["kind"] for e in r.json["register_events"]] == ["reset"]
