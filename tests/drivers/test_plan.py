"""The request planner: merged reads within limits, a value always with its scale factor."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.plan import Field, naive_plan, plan_reads


def f(key: str, address: int, words: int = 2, *needs: Field) -> Field:
    return Field(key, "holding", address, words, tuple(needs))


def test_contiguous_fields_merge_into_one_request() -> None:
    fields = [f(f"v{i}", 2 * i) for i in range(40)]
    plan = plan_reads(fields)
    assert len(plan) == 1 and plan[0].address == 0 and plan[0].count == 80


def test_limit_splits_requests() -> None:
    fields = [f(f"v{i}", 2 * i) for i in range(100)]
    plan = plan_reads(fields, max_registers=125)
    assert [r.count for r in plan] == [124, 76]
    plan = plan_reads(fields, max_registers=20)
    assert all(r.count <= 20 for r in plan) and len(plan) == 10


def test_gaps_larger_than_max_gap_split() -> None:
    plan = plan_reads([f("a", 0), f("b", 20)], max_gap=8)
    assert len(plan) == 2
    plan = plan_reads([f("a", 0), f("b", 20)], max_gap=18)
    assert len(plan) == 1 and plan[0].count == 22


def test_register_types_never_merge() -> None:
    plan = plan_reads([Field("a", "holding", 0, 1), Field("b", "input", 1, 1)])
    assert {r.rtype for r in plan} == {"holding", "input"}


def test_value_and_scale_factor_share_a_request() -> None:
    sf = f("sf:W_SF", 120, 1)
    fields = [f("w", 0, 1, sf), f("v", 60, 1)]
    plan = plan_reads(fields, max_registers=125, max_gap=0)
    w_req = next(r for r in plan if any(x.key == "w" for x in r.fields))
    assert any(x.key == "sf:W_SF" for x in w_req.fields)


def test_one_request_per_field_quirk() -> None:
    fields = [f(f"v{i}", 2 * i) for i in range(10)]
    assert len(plan_reads(fields, one_request_per_field=True)) == 10
    assert len(naive_plan(fields)) == 10


@given(
    st.lists(
        st.tuples(st.integers(0, 2000), st.sampled_from([1, 2, 4])), min_size=1, max_size=60, unique_by=lambda t: t[0]
    ),
    st.integers(1, 125),
    st.integers(0, 20),
)
def test_every_field_is_covered_within_limits(specs: list[tuple[int, int]], max_regs: int, gap: int) -> None:
    words = [min(w, max_regs) for _, w in specs]
    fields = [f(f"k{a}", a, w) for (a, _), w in zip(specs, words, strict=True)]
    plan = plan_reads(fields, max_registers=max_regs, max_gap=gap)
    covered = {x.key for r in plan for x in r.fields}
    assert covered == {x.key for x in fields}
    for r in plan:
        assert r.count <= max_regs
        for x in r.fields:
            assert r.address <= x.address and x.end <= r.end
