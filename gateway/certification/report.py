"""Assemble the monthly report (schema `gia-monthly-report/1`) from computed channels. Pure.

Both the gateway (from the ledger) and `gia verify` (from the evidence bundle) call `site_indicators`,
`report_quality` and `evidence_summary`, so the verifier recomputes with the same arithmetic. Standard
library only.

Energy balance conventions (certification.md, "Site indicators"):

* consumption = grid import + generation - grid export + storage discharge - storage charge when the site
  has grid channels; otherwise the sum of `consumption` channels;
* self-consumption = generation - export (same connection point, never below 0);
* renewable energy consumed on site = renewable generation - export, never below 0: exports are counted
  as renewable first, the conservative choice for a renewable share;
* market-based share adds imports backed by Guarantees of Origin cancelled for the month (at most the
  grid import); the hourly-matched share is sum_h min(load_h, renewable_h) / sum_h load_h, where
  renewable_h counts on-site renewable generation, the renewable part of storage discharge and
  contracted granular certificates (`matching.py`, reports with `method.hourly_matching`); reports
  without that marker were matched on on-site generation alone and are recomputed that way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.certification.certificates import (
    CANCELLATION_HEADER,
    CertificateSelection,
    FactorSelection,
    cancellation_lines,
    certificates_meta,
)
from gateway.certification.compute import (
    ChannelResult,
    Params,
    Replacement,
    Series,
    compute_channel,
    night_flags,
)
from gateway.certification.exact import dec_ge, iso_ms, ratio, wh_times_factor_kg
from gateway.certification.matching import (
    MATCHING_METHOD,
    METHOD_TEXT,
    HourlyInputs,
    Matched,
    StorageHours,
    allocation_csv,
    match,
    matching_block,
    matching_indicators,
    storage_units,
)
from gateway.certification.merkle import merkle_root
from gateway.certification.policy import Policy, balance_check, grade_report, lenient_parameters, policy_of_method
from gateway.site.balance import energy_balance
from gateway.site.channels import LOAD_SIGN, ChannelSpec

SCHEMA: Final = "gia-monthly-report/1"


def _series_sum(results: Sequence[ChannelResult], n: int, pick: Any) -> list[int]:
    out = [0] * n
    for r in results:
        sign = pick(r)
        if sign:
            for k, x in enumerate(r.interval_wh):
                out[k] += sign * x
    return out


def _hourly(values: list[int], per_hour: int) -> list[int]:
    return [sum(values[k : k + per_hour]) for k in range(0, len(values), per_hour)]


def site_indicators(
    results: Sequence[ChannelResult],
    *,
    interval_s: int,
    month: str,
    factors: dict[str, Any],
    guarantees: list[dict[str, Any]],
    threshold: str,
    threshold_basis: str,
    balance_tolerance: str = "0.02",
    matched: Matched | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(indicators, producer block or None). `factors` = {"location": {...}, "market": {...}}.

    `matched`: the hourly matching with storage and certificates (`matching.match`); without it the
    hourly figures are matched on on-site generation alone (reports from before `method.hourly_matching`).

    `balance_check`: where the site has both grid channels (consumption derived from the connection
    point) and consumption meters, the two must agree within `balance_tolerance`; auxiliary channels
    (a generator's own use) count on the metered side, since they draw through the connection point.
    """
    balance = energy_balance({r.spec.id: r.energy_wh for r in results}, [r.spec for r in results])
    imp, exp, gen = balance["grid_import_wh"], balance["grid_export_wh"], balance["generation_wh"]
    ren, charge, discharge = (
        balance["renewable_generation_wh"],
        balance["storage_charge_wh"],
        balance["storage_discharge_wh"],
    )
    aux, metered, consumption = balance["auxiliary_wh"], balance["metered_consumption_wh"], balance["consumption_wh"]
    by_source, self_cons = balance["generation_by_source_wh"], balance["self_consumption_wh"]
    ren_onsite = balance["renewable_consumed_on_site_wh"]
    has_grid = any(r.spec.role in ("grid_import", "grid_export") for r in results)
    has_meters = any(r.spec.role == "consumption" for r in results)
    balance = balance_check(consumption, metered + aux, balance_tolerance, applies=has_grid and has_meters)
    go_wh = sum(int(g["energy_wh"]) for g in guarantees)
    go_applied = min(go_wh, imp)

    n = max((len(r.interval_wh) for r in results), default=0)
    if has_grid:
        load = _series_sum(results, n, lambda r: LOAD_SIGN.get(r.spec.role, 0))
    else:
        load = _series_sum(results, n, lambda r: 1 if r.spec.role == "consumption" else 0)
    ren_iv = _series_sum(results, n, lambda r: 1 if r.spec.role == "generation" and r.spec.renewable else 0)
    m = matched
    del matched
    per_hour = max(1, 3600 // interval_s)
    load_h = [max(0, x) for x in _hourly(load, per_hour)]
    ren_h = _hourly(ren_iv, per_hour)
    matched_wh = sum(min(lh, rh) for lh, rh in zip(load_h, ren_h, strict=True))

    share_physical = ratio(ren_onsite, consumption) if consumption > 0 else None
    share_market = ratio(ren_onsite + go_applied, consumption) if consumption > 0 else None
    share_hourly = ratio(matched_wh, sum(load_h)) if sum(load_h) > 0 else None
    extra: dict[str, Any] = {}
    if m is not None:
        extra = matching_indicators(m, annual_factor=str(factors["location"]["value"]))
        share_hourly = extra["hourly_matched_share"]
    judged = {"physical": share_physical, "market": share_market, "hourly": share_hourly}[threshold_basis]
    market_factor = factors["market"]
    indicators = {
        "consumption_wh": consumption,
        "metered_consumption_wh": metered,
        "generation_wh": gen,
        "generation_by_source_wh": dict(sorted(by_source.items())),
        "renewable_generation_wh": ren,
        "renewable_consumed_on_site_wh": ren_onsite,
        "grid_import_wh": imp,
        "grid_export_wh": exp,
        "storage_charge_wh": charge,
        "storage_discharge_wh": discharge,
        "auxiliary_wh": aux,
        "self_consumption_wh": self_cons,
        "guarantees_of_origin_wh": go_wh,
        "guarantees_of_origin_applied_wh": go_applied,
        "guarantees_of_origin": guarantees,
        "renewable_share": share_physical,
        "renewable_share_market": share_market,
        "hourly_matched_share": share_hourly,
        "hourly_matched_wh": matched_wh,
        "hourly_load_wh": sum(load_h),
        "renewable_share_threshold": threshold,
        "threshold_basis": threshold_basis,
        "threshold_met": dec_ge(judged, threshold) if judged is not None else None,
        "co2_location_kg": wh_times_factor_kg(imp, factors["location"]["value"]),
        "co2_market_kg": wh_times_factor_kg(imp - go_applied, market_factor["value"]),
        "co2_factors": factors,
        "balance_check": balance,
        "month": month,
        **extra,
    }
    producer = None
    if gen > 0 or any(r.spec.role == "generation" for r in results):
        gen_iv = _series_sum(results, n, lambda r: 1 if r.spec.role == "generation" else 0)
        exp_iv = _series_sum(results, n, lambda r: 1 if r.spec.role == "grid_export" else 0)
        producer = {
            "generation_wh": gen,
            "net_injected_wh": exp,
            "auxiliary_wh": aux,
            "guarantees_of_origin_eligible_mwh": exp // 1_000_000,
            "hourly_generation_wh": _hourly(gen_iv, per_hour),
            "hourly_export_wh": _hourly(exp_iv, per_hour),
        }
    return indicators, producer


@dataclass(slots=True)
class MatchingOutcome:
    """The hourly matching of a report: what it says (`block`) and the evidence files behind it."""

    matched: Matched
    block: dict[str, Any]
    allocation_csv: str | None
    cancellation_csv: str | None


def hourly_inputs(
    results: Sequence[ChannelResult],
    *,
    interval_s: int,
    start_ms: int,
    certificates: CertificateSelection | None = None,
    factors: FactorSelection | None = None,
) -> HourlyInputs:
    """The matching's hourly inputs from the channels' intervals (the hours of the period, a last partial
    hour included), the period's certificates and hourly factors."""
    n = max((len(r.interval_wh) for r in results), default=0)
    per_hour = max(1, 3600 // interval_s)
    has_grid = any(r.spec.role in ("grid_import", "grid_export") for r in results)
    if has_grid:
        load = _series_sum(results, n, lambda r: LOAD_SIGN.get(r.spec.role, 0))
    else:
        load = _series_sum(results, n, lambda r: 1 if r.spec.role == "consumption" else 0)
    ren = _series_sum(results, n, lambda r: 1 if r.spec.role == "generation" and r.spec.renewable else 0)
    imp = _series_sum(results, n, lambda r: 1 if r.spec.role == "grid_import" else 0)
    by_id = {r.spec.id: r for r in results}
    units = []
    for unit, charge_ids, discharge_ids in storage_units(r.spec for r in results):
        c = _series_sum([by_id[i] for i in charge_ids], n, lambda r: 1)
        d = _series_sum([by_id[i] for i in discharge_ids], n, lambda r: 1)
        units.append(
            StorageHours(unit, tuple(charge_ids), tuple(discharge_ids), _hourly(c, per_hour), _hourly(d, per_hour))
        )
    hours = len(_hourly(load, per_hour))
    return HourlyInputs(
        start_ms,
        [max(0, x) for x in _hourly(load, per_hour)],
        _hourly(ren, per_hour),
        _hourly(imp, per_hour),
        units,
        certificates.hourly(start_ms, hours) if certificates is not None else [0] * hours,
        factors.hourly[:hours] if factors is not None else None,
    )


def compute_matching(
    results: Sequence[ChannelResult],
    *,
    interval_s: int,
    start_ms: int,
    annual_factor: str,
    certificates: CertificateSelection | None = None,
    factors: FactorSelection | None = None,
) -> MatchingOutcome:
    """The hourly matching from the channels' intervals, with the evidence files behind it."""
    inputs = hourly_inputs(
        results, interval_s=interval_s, start_ms=start_ms, certificates=certificates, factors=factors
    )
    m = match(inputs)
    meta = None
    cancel = None
    if certificates is not None:
        remaining = m.remaining_after_storage()
        meta = certificates_meta(certificates, start_ms, remaining)
        cancel = CANCELLATION_HEADER + "".join(cancellation_lines(certificates, start_ms, remaining))
    block = matching_block(
        m, certificates=meta, grid_factors=factors.meta if factors is not None else None, annual_factor=annual_factor
    )
    return MatchingOutcome(m, block, allocation_csv(m) if m.units else None, cancel)


def report_quality(
    channels: Sequence[Mapping[str, Any]],
    *,
    indicators: Mapping[str, Any],
    complete: bool,
    method: Mapping[str, Any],
) -> dict[str, Any]:
    """The report's grades under the site's own thresholds (its `method`), from the channels' facts.

    Claims (`policy.CLAIMS`): channel totals, the energy balance and what is computed from totals, and
    the interval allocation (hourly-matched share, hourly profiles; the threshold when judged hourly).
    The report's grade is the worst of them; an open or unsettled month is at best provisional. Where
    the site's thresholds are more lenient than the scheme's published defaults, they are listed
    (`lenient_vs_scheme`): a certifier grading under the scheme sees the difference at once.
    """
    own = policy_of_method(method)
    g = grade_report(list(channels), indicators=indicators, complete=complete, policy=own)
    thresholds = {k: v for k, v in own.to_json().items() if k != "name"}
    return {
        "grade": g["grade"],
        "claims": g["claims"],
        "reasons": g["reasons"],
        "thresholds": thresholds,
        "lenient_vs_scheme": lenient_parameters(method, Policy()),
        "channels": g["channels"],
    }


def evidence_summary(
    day_roots: Sequence[list[tuple[str, int, bytes]]],
    *,
    head_seq: int,
    head_hash: bytes,
    events_head: tuple[int, bytes] | None = None,
) -> dict[str, Any]:
    """Chain head plus Merkle roots: per (channel, UTC day), per day over the channels, per month.

    With `events_head`, the report also commits to the ledger's events chain (clock jumps, meter
    replacements): deleting or editing an event after signing, on the gateway or in the bundle, then
    shows against the signed head. Reports of ledgers without an events chain omit the two fields.
    """
    by_day: dict[str, list[tuple[int, bytes]]] = {}
    for channel_roots in day_roots:
        for day, n, root in channel_roots:
            by_day.setdefault(day, []).append((n, root))
    days = []
    roots = []
    for day in sorted(by_day):
        root = merkle_root([r for _, r in by_day[day]])
        roots.append(root)
        days.append({"day": day, "entries": sum(n for n, _ in by_day[day]), "merkle_root": root.hex()})
    events: dict[str, Any] = {}
    if events_head is not None:
        events = {
            "events_chain": "hash_n = SHA-256(hash_{n-1} || RFC8785({id, ts, kind, device, detail}));"
            " hash_0 = 32 zero bytes; ids run 1, 2, 3...",
            "events_head": events_head[1].hex(),
            "events_head_id": events_head[0],
        }
    return {
        **events,
        "chain": "hash_n = SHA-256(hash_{n-1} || RFC8785(entry)); hash_0 = 32 zero bytes",
        "merkle": "16-ary: node = SHA-256(0x01 || up to 16 children), a lone last child carried up; per"
        " channel and UTC day over"
        " the chain hashes of the readings used (time order); per day over the channel roots (report"
        " channel order); month root over the day roots",
        "chain_head": head_hash.hex(),
        "chain_head_seq": head_seq,
        "entries": sum(d["entries"] for d in days),
        "merkle_root": merkle_root(roots).hex(),
        "days": days,
    }


def period_json(
    month: str,
    timezone: str,
    start_ms: int,
    end_ms: int,
    *,
    complete: bool,
    as_of_ms: int | None,
    settles_at_ms: int | None = None,
) -> dict[str, Any]:
    """`complete`: the month is closed (ended and settled); otherwise figures run to `as_of`."""
    return {
        "month": month,
        "timezone": timezone,
        "start": iso_ms(start_ms),
        "end": iso_ms(end_ms),
        "hours": (end_ms - start_ms) // 3_600_000,
        "complete": complete,
        "as_of": iso_ms(as_of_ms) if as_of_ms is not None else None,
        "settles_at": iso_ms(settles_at_ms) if settles_at_ms is not None else None,
    }


def compute_all(
    specs: Sequence[ChannelSpec],
    series: dict[str, Series],
    *,
    start_ms: int,
    end_ms: int,
    params: Params,
    replacements: dict[str, list[Replacement]],
    bad_readings: dict[str, int],
    serials: dict[str, list[int]] | None = None,
) -> list[ChannelResult]:
    """Every channel over [start_ms, end_ms) (end = as_of for an open month)."""
    night = night_flags(params, start_ms, end_ms) if any(s.source == "pv" for s in specs) else None
    return [
        compute_channel(
            spec,
            series.get(spec.id, Series()),
            start_ms=start_ms,
            end_ms=end_ms,
            params=params,
            replacements=replacements.get(spec.id, []),
            bad_readings=bad_readings.get(spec.id, 0),
            night=night,
            serials=(serials or {}).get(spec.id),
        )
        for spec in specs
    ]


def method_json(params: Params, *, threshold: str, threshold_basis: str, matching: bool = False) -> dict[str, Any]:
    extra = {"hourly_matching": MATCHING_METHOD, "hourly_matching_rule": METHOD_TEXT} if matching else {}
    return {
        **params.to_json(),
        **extra,
        "renewable_share_threshold": threshold,
        "threshold_basis": threshold_basis,
        "totals": "register advance between boundary readings (never an integral of power); steps failing"
        " validation (a decrease, an advance above capacity_factor x rated power, a single reading that"
        " disagrees with both neighbours) are excluded and estimated, flagged",
        "verified_when": "totals: both boundaries measured (or interpolated between measured readings at most"
        " max_interpolation_s apart), energy coverage >= min_energy_coverage, estimated <= max_estimated_share,"
        " no validation failure (a channel without rated power cannot pass the capacity rule); intervals: also"
        " time coverage >= min_time_coverage and energy in measured intervals >= min_interval_energy_share;"
        " report: the worst grade of its claims; unverified when a boundary is missing",
        "closed_when": "settlement_delay_h after the month's end and once every channel has a reading after it",
    }


def assemble(
    *,
    site: dict[str, Any],
    period: dict[str, Any],
    params: Params,
    threshold: str,
    threshold_basis: str,
    factors: dict[str, Any],
    guarantees: list[dict[str, Any]],
    results: Sequence[ChannelResult],
    evidence: dict[str, Any],
    previous_sha256: str | None,
    generated_at: str,
    generator: str,
    reissue_of: str | None = None,
    reissue_reason: str | None = None,
    key_transitions: list[dict[str, Any]] | None = None,
    matching: MatchingOutcome | None = None,
) -> dict[str, Any]:
    """The unsigned report body (`matching`: the hourly matching with storage and certificates)."""
    indicators, producer = site_indicators(
        results,
        interval_s=params.interval_s,
        month=period["month"],
        factors=factors,
        guarantees=guarantees,
        threshold=threshold,
        threshold_basis=threshold_basis,
        balance_tolerance=params.balance_tolerance,
        matched=matching.matched if matching is not None else None,
    )
    method = method_json(params, threshold=threshold, threshold_basis=threshold_basis, matching=matching is not None)
    channels = [r.json for r in results]
    extra = {"matching": matching.block} if matching is not None else {}
    return {
        "schema": SCHEMA,
        "site": site,
        "period": period,
        "generated_at": generated_at,
        "generator": generator,
        "method": method,
        "channels": channels,
        "indicators": indicators,
        "producer": producer,
        "quality": report_quality(channels, indicators=indicators, complete=period["complete"], method=method),
        "evidence": evidence,
        "previous_report_sha256": previous_sha256,
        "reissue_of": reissue_of,
        "reissue_reason": reissue_reason,
        "key_transitions": key_transitions or [],
        **extra,
    }
