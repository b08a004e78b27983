"""Hypothesis properties of the storage-aware hourly matching (`gateway.certification.matching`).

On random hourly loads, renewable generation, certificates and one or two storage units charging and
discharging at random:

* the allocation never gives a discharge more renewable energy than was charged from renewables, before
  it (first-in first-out respects time), and never more than the charge delivers after losses;
* conservation in the FIFO: every discharged Wh is allocated renewable, grid or unallocated exactly once;
  what the charge records deliver is allocated or left in the queue at the end; charge = delivered +
  losses (rounding down only ever adds to the losses);
* losses never create renewable energy: raising the losses (less discharge for the same charges) never
  raises the renewable part discharged per Wh, and a lossless-looking unit (discharge >= charge) gets no
  renewable credit at all;
* matched energy per hour is at most the load, at least the on-site match, and storage or certificates
  never lower it; nothing signed is a float.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.certification.exact import assert_no_float
from gateway.certification.matching import HourlyInputs, StorageHours, fifo, match, matching_block, tag_charges

wh = st.integers(0, 50_000)


@st.composite
def sites(draw: st.DrawFn) -> HourlyInputs:
    n = draw(st.integers(1, 72))
    load = draw(st.lists(wh, min_size=n, max_size=n))
    ren = draw(st.lists(st.integers(0, 80_000), min_size=n, max_size=n))
    units = []
    for u in range(draw(st.integers(0, 2))):
        charge = draw(st.lists(st.integers(0, 30_000), min_size=n, max_size=n))
        discharge = draw(st.lists(st.integers(0, 30_000), min_size=n, max_size=n))
        units.append(StorageHours(f"b{u}", (f"b{u}.c",), (f"b{u}.d",), charge, discharge))
    certs = draw(st.lists(st.integers(0, 20_000), min_size=n, max_size=n))
    return HourlyInputs(0, load, ren, [0] * n, units, certs)


@settings(max_examples=200, deadline=None)
@given(sites())
def test_allocation_is_causal_bounded_and_conserves_energy(inp: HourlyInputs) -> None:
    tags = tag_charges(inp.load, inp.renewable, inp.storage)
    for h in range(len(inp.load)):  # the surplus is shared, never counted twice
        assert sum(t[h] for t in tags) <= max(0, inp.renewable[h] - inp.load[h])
    for unit, tag in zip(inp.storage, tags, strict=True):
        r = fifo(unit, tag)
        c, d = sum(unit.charge), sum(unit.discharge)
        ren_charged = sum(r.charge_renewable)
        assert sum(r.discharge_renewable) <= ren_charged
        if r.losses_measured:
            assert r.losses_wh == c - d > 0
            assert sum(r.discharge_renewable) <= ren_charged * d // c  # losses deducted, rounded down
        else:
            assert sum(r.discharge_renewable) == 0  # no measurable losses, no credit
        # conservation: each discharged Wh once
        for h in range(len(unit.charge)):
            assert r.discharge_renewable[h] + r.discharge_grid[h] + r.discharge_unallocated[h] == unit.discharge[h]
        allocated = sum(a.wh for a in r.allocations if a.source != "unallocated")
        delivered = allocated + r.closing_renewable_wh + r.closing_grid_wh
        assert delivered <= (d if r.losses_measured else 0)
        if r.losses_measured:  # floor per part: at most one Wh short per charge record part
            assert d - 2 * sum(1 for x in unit.charge if x) <= delivered
        # causality: no discharge draws on a later charge; cumulative renewable out <= renewable in
        out_ren = [0] * len(unit.charge)
        for a in r.allocations:
            if a.charge_hour is not None:
                assert a.charge_hour <= a.discharge_hour
            if a.source == "renewable":
                out_ren[a.discharge_hour] += a.wh
        cum_in = cum_out = 0
        for h in range(len(unit.charge)):
            cum_in += r.charge_renewable[h]
            cum_out += out_ren[h]
            assert cum_out <= cum_in


@settings(max_examples=150, deadline=None)
@given(sites(), st.integers(1, 99))
def test_more_losses_never_mean_more_renewable(inp: HourlyInputs, pct: int) -> None:
    """Scaling every discharge down (more losses for the same charges) never raises the renewable part of
    what is discharged beyond what the charges deliver, and a discharge never gains renewable share."""
    tags = tag_charges(inp.load, inp.renewable, inp.storage)
    for unit, tag in zip(inp.storage, tags, strict=True):
        lossy = StorageHours(unit.unit, (), (), unit.charge, [x * pct // 100 for x in unit.discharge])
        a, b = fifo(unit, tag), fifo(lossy, tag)
        if b.losses_measured:
            assert sum(b.discharge_renewable) <= sum(b.charge_renewable) * sum(lossy.discharge) // sum(unit.charge)
        if a.losses_measured and b.losses_measured:
            # the renewable credit per discharged Wh cannot grow when the unit loses more
            ra, rb = sum(a.discharge_renewable), sum(b.discharge_renewable)
            da, db = sum(unit.discharge), sum(lossy.discharge)
            assert rb * da <= ra * db + da * len(unit.charge)


@settings(max_examples=200, deadline=None)
@given(sites())
def test_matching_is_bounded_by_load_and_never_below_onsite(inp: HourlyInputs) -> None:
    m = match(inp)
    for h, load in enumerate(inp.load):
        assert m.onsite[h] == min(load, inp.renewable[h])
        assert m.onsite[h] <= m.matched[h] <= load
        assert 0 <= m.contracted[h] <= inp.certificates[h]
        assert m.storage[h] <= sum(u.discharge_renewable[h] for u in m.units)
    block = matching_block(m, certificates=None, grid_factors=None, annual_factor="0.0491")
    assert_no_float(block)
