"""Area definitions, shared generators and the criteria set (issue #17), on real signed site reports; the
allocation arithmetic as hypothesis properties; the yearly roll-up.

Worked case: a producer P with a wind turbine shared by the area (600 W), its own hall (400 W) and an
export of the rest (200 W); two consumers B (400 W) and C (an uneven load: 200 W at night, 1000 W by day).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.certification.area import (
    AreaDefinitionError,
    AreaError,
    SharedGenerator,
    SiteInput,
    _account,
    _allocate,
    _Site,
    aggregate,
    definition_from_mapping,
    rollup,
    sign_area_report,
    verify_area,
    verify_rollup,
)
from gateway.certification.signing import KeyStore, canonical

from .helpers import (
    MARCH_START,
    Q15,
    channel,
    device,
    make_ledger,
    register_samples,
    service,
)
from .helpers import (
    settings as site_settings,
)

T0 = MARCH_START - timedelta(hours=2)
T1 = datetime(2025, 4, 1, tzinfo=UTC)
HOURS = 743  # March 2025 in Riga


def _rate(wh_per_q: int) -> Any:
    return lambda k, ts: 1000 + wh_per_q * k


def _uneven_register() -> list[int]:
    """Cumulative register of a load at 50 Wh per quarter hour from 18:00 to 06:00 UTC, 250 Wh by day."""
    out, total = [], 1000
    for j in range(int((T1 - T0) / Q15) + 1):
        out.append(total)
        total += 250 if 6 <= (T0 + j * Q15).hour < 18 else 50
    return out


UNEVEN = _uneven_register()


def _site(
    root: Path, site: str, devices: list[Any], samples: list[Any], guarantees: list[Any] | None = None
) -> SiteInput:
    d = root / site
    make_ledger(d / "ledger.db", samples).close()
    cert: dict[str, Any] = {"hourly_profiles": True}
    if guarantees:
        cert["guarantees_of_origin"] = guarantees
    s = site_settings(d, devices, site=site, certification=cert)
    svc = service(s)
    return SiteInput(site, svc.report_json(site, "2025-03"), svc.public_keys()[0]["public_key_pem"].encode())


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SiteInput]:
    root = tmp_path_factory.mktemp("area")
    p_samples = (
        register_samples("wt", "energy_export_wh", T0, T1, value=_rate(150))
        + register_samples("hall", "energy_import_wh", T0, T1, value=_rate(100))
        + register_samples("grid", "energy_export_wh", T0, T1, value=_rate(50))
        + register_samples("grid", "energy_import_wh", T0, T1, value=_rate(0))
    )
    p = _site(
        root,
        "p",
        [
            device(
                "wt", channel("generation", "energy_export_wh", source="wind", renewable=True, rated_power_w=1000),
                serial="WT-1",
            ),
            device("hall", channel("consumption", rated_power_w=1000), serial="HALL-P"),
            device(
                "grid",
                channel("grid_import", rated_power_w=2000),
                channel("grid_export", "energy_export_wh", rated_power_w=2000),
                serial="GRID-P",
            ),
        ],
        p_samples,
    )  # fmt: skip
    b = _site(
        root,
        "b",
        [device("grid", channel("grid_import", rated_power_w=2000), serial="GRID-B")],
        register_samples("grid", "energy_import_wh", T0, T1, value=_rate(100)),
    )
    c = _site(
        root,
        "c",
        [device("grid", channel("grid_import", rated_power_w=2000), serial="GRID-C")],
        register_samples("grid", "energy_import_wh", T0, T1, value=lambda k, ts: UNEVEN[k]),
        guarantees=[{"id": "GO-77", "month": "2025-03", "energy_wh": 100_000, "source": "hydro", "registry": "AST"}],
    )
    return {"p": p, "b": b, "c": c}


def _report(inp: SiteInput) -> dict[str, Any]:
    return dict(json.loads(inp.report))


CONTRACTED = {
    "shared_generators": [
        {"id": "wind", "site": "p", "channel": "wt.generation", "allocation": "contracted",
         "shares": {"p": "0.4", "b": "0.3", "c": "0.3"}},
    ],
    "criteria": [
        {"name": "renewable_share", "basis": "market", "threshold": "0.3"},
        {"name": "renewable_share", "basis": "hourly", "threshold": "0.3"},
        {"name": "renewable_share", "basis": "physical", "threshold": "0.3"},
        {"name": "co2_intensity", "basis": "location", "threshold": "100"},
        {"name": "co2_intensity", "basis": "market", "threshold": "100"},
        {"name": "verified_consumption_share", "threshold": "0.9"},
        {"name": "data_completeness", "threshold": "1"},
    ],
}  # fmt: skip


def test_reports_carry_hourly_profiles_that_add_up(area: dict[str, SiteInput]) -> None:
    for inp in area.values():
        rep = _report(inp)
        assert rep["method"]["hourly_profiles"] is True and rep["quality"]["grade"] == "verified"
        for ch in rep["channels"]:
            assert len(ch["hourly_wh"]) == HOURS and sum(ch["hourly_wh"]) == ch["energy_wh"]


def test_contracted_shares_add_up_and_nothing_is_counted_twice(area: dict[str, SiteInput]) -> None:
    inputs = list(area.values())
    body = aggregate("park", "2025-03", inputs, definition=definition_from_mapping(CONTRACTED))
    reps = {k: _report(v) for k, v in area.items()}
    # totals are the sites' own figures added up, to the Wh: allocations never change them
    for key in ("consumption_wh", "generation_wh", "grid_import_wh", "grid_export_wh"):
        assert body["totals"][key] == sum(r["indicators"][key] for r in reps.values())
    output = HOURS * 600  # 600 W for 743 h
    assert {a["site"]: a["allocated_wh"] for a in body["allocations"]} == {
        "p": output * 4 // 10,
        "b": output * 3 // 10,
        "c": output * 3 // 10,
    }
    acc = body["accounting"]
    # p consumed 400 W of its 600 W wind itself: it gives that up and claims back its 40 % (240 W)
    p_own = reps["p"]["indicators"]["renewable_consumed_on_site_wh"]
    assert p_own == HOURS * 400
    # every Wh once: contractual renewable <= renewable generation + certificates
    assert acc["contractual_renewable_wh"] <= body["totals"]["renewable_generation_wh"] + 100_000
    assert acc["contractual_renewable_wh"] == HOURS * 600 + 100_000  # b and c take all of theirs
    assert acc["unclaimed_wh"] == 0
    assert body["renewable_share_market"] == str(
        (Decimal(HOURS * 600 + 100_000) / body["totals"]["consumption_wh"]).quantize(Decimal("0.000001"))
    )
    # the physical share is what the meters show: p's own use of its wind only
    assert body["renewable_share"] == str(
        (Decimal(p_own) / body["totals"]["consumption_wh"]).quantize(Decimal("0.000001"))
    )
    # hourly: p's 240 W covers p's 400 W hall in part; b gets 180 W of 400 W; c 180 W of its load
    assert acc["hourly_matched_wh"] == HOURS * 240 + HOURS * 180 + HOURS * 180
    crit = {(c["name"], c["basis"]): c for c in body["criteria"]}
    assert crit[("data_completeness", None)]["value"] == "1.000000" and crit[("data_completeness", None)]["met"]
    assert crit[("verified_consumption_share", None)]["value"] == "1.000000"
    assert crit[("co2_intensity", "market")]["comparison"] == "<="
    assert Decimal(crit[("co2_intensity", "market")]["value"]) < Decimal(crit[("co2_intensity", "location")]["value"])
    assert verify_area(body, inputs).ok


def test_hourly_pro_rata_follows_each_hours_consumption(area: dict[str, SiteInput]) -> None:
    definition = definition_from_mapping(
        {
            "shared_generators": [
                {"id": "wind", "site": "p", "channel": "wt.generation", "allocation": "hourly_pro_rata"}
            ]
        }
    )
    inputs = list(area.values())
    body = aggregate("park", "2025-03", inputs, definition=definition)
    got = {a["site"]: a["allocated_wh"] for a in body["allocations"]}
    assert sum(got.values()) <= HOURS * 600
    assert sum(got.values()) >= HOURS * 600 - 3 * HOURS  # at most 1 Wh per site and hour lost to flooring
    # c's load is 200 W at night and 1000 W by day: by day it gets the larger part of the wind
    loads = {k: _Site(k, _report(v)).load_h() for k, v in area.items()}
    per_hour = {k: [] for k in area}  # type: dict[str, list[int]]
    for h in range(HOURS):
        tot = sum(loads[k][h] for k in area)
        for k in area:
            per_hour[k].append(600 * loads[k][h] // tot)
    assert got == {k: sum(v) for k, v in per_hour.items()}
    assert verify_area(body, inputs).ok
    # a participant missing: nothing allocated this month (the others would take its part)
    partial = aggregate("park", "2025-03", [area["p"], area["b"]], definition=definition, expected=["p", "b", "c"])
    assert [a["allocated_wh"] for a in partial["allocations"]] == [0]
    assert any("c missing" in n for n in partial["allocation_notes"])
    assert partial["missing"] == [{"site": "c", "report_sha256": None, "grade": None, "reason": "no report received"}]
    assert partial["data_completeness"] == "0.666667"
    assert verify_area(partial, [area["p"], area["b"]]).ok


def test_a_report_without_hourly_profiles_is_allocated_monthly_only(area: dict[str, SiteInput], tmp_path: Path) -> None:
    # site b without the option: its report carries no hourly profile
    d = tmp_path / "b2"
    make_ledger(d / "ledger.db", register_samples("grid", "energy_import_wh", T0, T1, value=_rate(100))).close()
    s = site_settings(d, [device("grid", channel("grid_import", rated_power_w=2000), serial="GRID-B")], site="b")
    service_b = service(s)
    b = SiteInput("b", service_b.report_json("b", "2025-03"), service_b.public_keys()[0]["public_key_pem"].encode())
    assert "hourly_wh" not in _report(b)["channels"][0]
    body = aggregate("park", "2025-03", [area["p"], b, area["c"]], definition=definition_from_mapping(CONTRACTED))
    assert all(not a["hourly"] for a in body["allocations"]) and sum(a["allocated_wh"] for a in body["allocations"])
    assert any("no hourly profiles" in n for n in body["allocation_notes"])


def test_a_certificate_cancelled_for_two_sites_is_refused(area: dict[str, SiteInput], tmp_path: Path) -> None:
    twice = _site(
        tmp_path,
        "d",
        [device("grid", channel("grid_import", rated_power_w=2000), serial="GRID-D")],
        register_samples("grid", "energy_import_wh", T0, T1, value=_rate(100)),
        guarantees=[{"id": "GO-77", "month": "2025-03", "energy_wh": 50_000, "source": "hydro", "registry": "AST"}],
    )
    with pytest.raises(AreaError, match=r"certificate GO-77 \(AST\) of site 'd' is already counted in site 'c'"):
        aggregate("park", "2025-03", [area["c"], twice])


def test_definition_errors_name_the_field() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"shared_generators": [{"id": "w", "site": "p", "channel": "x", "allocation": "contracted",
                                 "shares": {"a": "0.6", "b": "0.5"}}]}, "add up to 1.1"),
        ({"shared_generators": [{"id": "w", "site": "p", "channel": "x", "allocation": "lottery"}]}, "allocation"),
        ({"shared_generators": [{"id": "w", "site": "p", "channel": "x", "allocation": "hourly_pro_rata"},
                                {"id": "v", "site": "p", "channel": "x", "allocation": "hourly_pro_rata"}]},
         "shared twice"),
        ({"criteria": [{"name": "renewable_share", "basis": "location", "threshold": "0.5"}]}, "basis"),
        ({"criteria": [{"name": "renewable_share", "basis": "market", "threshold": 0.5}]}, "quoted string"),
        ({"criteria": [{"name": "happiness", "threshold": "1"}]}, "not one of"),
        ({"timezone": "Mars/Olympus"}, "IANA"),
    ]  # fmt: skip
    for data, match in bad:
        with pytest.raises(AreaDefinitionError, match=match):
            definition_from_mapping(data)


def test_yearly_rollup_adds_the_months_up_and_verifies(area: dict[str, SiteInput], tmp_path: Path) -> None:
    signer = KeyStore(tmp_path / "hub")
    definition = definition_from_mapping(CONTRACTED)
    march = canonical(
        sign_area_report(aggregate("park", "2025-03", list(area.values()), definition=definition), signer)
    )
    feb_body = aggregate("park", "2025-03", [area["p"], area["b"]], definition=definition, expected=["c"])
    feb_body.update(month="2025-02", period={"month": "2025-02"})  # a second month (a stand-in with other figures)
    feb = canonical(sign_area_report(feb_body, signer))
    year = sign_area_report(rollup("park", "2025", [march, feb], definition=definition), signer)
    m, f = json.loads(march), json.loads(feb)
    assert year["totals"]["consumption_wh"] == m["totals"]["consumption_wh"] + f["totals"]["consumption_wh"]
    assert year["accounting"]["sites_expected"] == 6 and year["data_completeness"] == "0.833333"
    assert [x["month"] for x in year["months"]] == ["2025-02", "2025-03"] and len(year["months_missing"]) == 10
    assert verify_rollup(year, [march, feb], aggregator_key=signer.public_key()).ok
    forged = {**year, "totals": {**year["totals"], "consumption_wh": 1}}
    assert [f.rule for f in verify_rollup(forged, [march, feb], aggregator_key=signer.public_key()).failures] == [
        "area.signature",
        "area.totals",
    ]
    assert not verify_rollup(year, [march], aggregator_key=signer.public_key()).ok


# -- properties of the allocation arithmetic ----------------------------------------------------------
def _synthetic(site: str, load: list[int], ren: list[int], shared: list[int] | None, go: int) -> dict[str, Any]:
    """A report's facts as the accounting reads them: channels with hourly profiles and indicators."""
    gen = [r + (shared[h] if shared else 0) for h, r in enumerate(ren)]
    cons = sum(load)
    ren_gen = sum(gen)
    export = sum(max(0, g - x) for g, x in zip(gen, load, strict=True))
    imp = sum(max(0, x - g) for g, x in zip(gen, load, strict=True))
    channels = [{"id": "load", "role": "consumption", "renewable": None, "energy_wh": cons, "hourly_wh": load}]
    channels.append({"id": "own", "role": "generation", "renewable": True, "energy_wh": sum(ren), "hourly_wh": ren})
    if shared is not None:
        channels.append(
            {"id": "shared", "role": "generation", "renewable": True, "energy_wh": sum(shared), "hourly_wh": shared}
        )
    ind = {
        "consumption_wh": cons,
        "renewable_consumed_on_site_wh": max(0, ren_gen - export),
        "guarantees_of_origin_applied_wh": min(go, imp),
        "grid_import_wh": imp,
        "hourly_matched_wh": sum(min(x, g) for x, g in zip(load, gen, strict=True)),
        "hourly_load_wh": cons,
        "co2_factors": {"market": {"value": "0.1"}},
    }
    return {"channels": channels, "indicators": ind, "period": {"start": "2025-02-28T22:00:00Z"}}


HOURLY = st.lists(st.integers(0, 5000), min_size=6, max_size=6)


@settings(max_examples=120, deadline=None)
@given(
    loads=st.lists(HOURLY, min_size=3, max_size=3),
    own=st.lists(HOURLY, min_size=3, max_size=3),
    shared=HOURLY,
    gos=st.lists(st.integers(0, 20_000), min_size=3, max_size=3),
    mode=st.sampled_from(["contracted", "hourly_pro_rata"]),
    shares=st.lists(st.sampled_from(["0", "0.1", "0.25", "0.3", "0.333333"]), min_size=3, max_size=3),
)
def test_every_wh_of_a_shared_generator_goes_to_one_site_at_most(
    loads: list[list[int]], own: list[list[int]], shared: list[int], gos: list[int], mode: str, shares: list[str]
) -> None:
    names = ["h", "x", "y"]
    summed = {
        n: _Site(n, _synthetic(n, loads[i], own[i], shared if n == "h" else None, gos[i])) for i, n in enumerate(names)
    }
    gen = SharedGenerator(
        "g", "h", "shared", mode, tuple(zip(names, shares, strict=True)) if mode == "contracted" else ()
    )
    start = {n: "2025-02-28T22:00:00Z" for n in names}
    a = _allocate(gen, summed, names, start)
    assert a.hourly is not None
    for h in range(6):  # hour by hour, never more than the generator gave
        assert sum(v[h] for v in a.hourly.values()) <= shared[h]
    assert sum(a.monthly.values()) <= sum(shared)
    per_site, _co2 = _account(summed, [a])
    for n, v in per_site.items():
        ind = summed[n].ind
        assert 0 <= v["allocated_wh"] - v["unclaimed_wh"] <= v["allocated_wh"]
        assert v["hourly_matched_wh"] <= v["hourly_load_wh"]
        # a site's contractual renewable never exceeds its consumption unless its own figures already do
        own_part = v["contractual_renewable_wh"] - (v["allocated_wh"] - v["unclaimed_wh"])
        assert v["contractual_renewable_wh"] <= max(ind["consumption_wh"], own_part)
    # nothing counted twice: the area's contractual renewable is at most its own renewable, the shared
    # output and the certificates
    total_own = sum(sum(o) for o in own)
    total_go = sum(s.ind["guarantees_of_origin_applied_wh"] for s in summed.values())
    assert sum(v["contractual_renewable_wh"] for v in per_site.values()) <= total_own + sum(shared) + total_go
    # hourly matched supply never uses a Wh of the shared output twice
    assert sum(v["hourly_matched_wh"] for v in per_site.values()) <= sum(
        min(sum(loads[i][h] for i in range(3)), sum(own[i][h] for i in range(3)) + shared[h]) for h in range(6)
    )
