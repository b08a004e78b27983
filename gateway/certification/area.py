"""Area reports: several sites' signed monthly reports combined into area figures, signed by the aggregator.

`AREA.yaml` (the CLI builder, `gia area-report`; the area hub passes the same things from its database)::

    area: riga-north-park
    name: Riga North industrial park
    renewable_share_threshold: "0.5"      # optional, default 0.5
    threshold_basis: market               # physical | market | hourly
    signing_key: area-key.pem             # the aggregator's private key (created on first use, 0600)
    policy: policy.json                   # optional: grading thresholds; default the scheme's defaults
    definition:                           # optional: shared generators and the criteria set (see below)
      shared_generators:
        - {id: kaigu-wind, site: mill, channel: wt.generation, allocation: contracted,
           shares: {mill: "0.5", bakery: "0.5"}}
      criteria:
        - {name: renewable_share, basis: market, threshold: "0.5"}
    sites:
      - {site: mill, report: reports/mill/{month}.json, public_key: keys/mill.pem}
      - {site: bakery, report: reports/bakery/{month}.json, public_key: keys/bakery.pem}

The `public_key` of each site is the key the aggregator *pinned* for it (enrolment), never a key found
beside the reports. Rules:

* every site report is verified against its site's pinned key (following signed key transitions) and
  graded under the area's policy; only reports that verify and grade `verified` under it are summed —
  the others, and expected sites without a report, are listed in `missing[]` with the reason;
* a site appears once; every metering channel belongs to one site: channels are identified by their
  meter serial (normalised: 'sn-123 ' is 'SN-123') and register, and a serial listed by two sites is an
  error; channels without a serial cannot be checked that way and are listed in `unserialised_channels[]`;
  a certificate (Guarantee of Origin: registry + id) cancelled for two sites is an error too;
* a granular certificate id (the site reports list the ids they cancelled in `matching.certificates.ids`)
  may appear in one site only: an id listed by two sites is an error (a certificate is cancelled once);
* the 24/7 figures are sums of the sites' (hourly matching is per site: no pooling between sites): the
  hourly-matched share (CFE %) over the area's load, and the share of site-hours fully matched; a site that
  takes part in an hourly allocation is matched again from its hourly profiles (on-site generation plus its
  allocation; its storage and certificate matching are then not counted: a known limit);
* per site only the report's SHA-256, key id, grade and log index are published: the figures stay behind
  the hashes;
* `totals` are the plain sums of the summed sites' indicators (integer Wh): they add up to the sites'
  figures to the Wh;
* **shared generators** (`allocations[]`): a generator metered in one site's report (its *host*) whose
  output several sites share, either by contracted shares of the month's output or hour by hour pro rata
  to the participants' consumption that hour (which needs every participant's `channels[].hourly_wh`:
  `certification.hourly_profiles: true` on the sites). Every Wh of the generator goes to one site: the
  host's own renewable figure gives up the part of the shared output it consumed itself
  (`min(output, renewable consumed on site)`, the largest it can be) and gets back its allocation; a site
  claims at most what its consumption leaves room for after its own renewable and certificates — the rest
  stays unclaimed, never moved to another site. Allocations change the *market-based* figures and the
  *hourly-matched* ones, never the metered totals or the physical share;
* **criteria** (`criteria[]`, named, with thresholds): `renewable_share` (basis physical / market /
  hourly, a minimum), `co2_intensity` (basis location / market, kg CO2 per MWh consumed, a maximum),
  `verified_consumption_share` (consumption in summed reports / consumption in every report whose
  signature verified), `data_completeness` (summed sites / expected sites);
* the area report is signed (Ed25519, RFC 8785, the same `signature` object as site reports) by the
  aggregator's key; `verify_area` checks that signature against the aggregator key the certifier
  pinned, then re-aggregates from the site reports against the site keys the certifier pinned, with the
  definition the signed report carries;
* a yearly roll-up (`rollup`) adds a year's monthly area reports up; `verify_rollup` re-adds them from
  the monthly reports, each checked against the aggregator's key.

`aggregate`, `rollup`, `sign_area_report`, `verify_area` and `verify_rollup` are importable for the area
hub. Standard library + the verifier's modules only, except `load_area_file` (PyYAML), which only the
CLI builder needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from drivers.errors import GiaError
from gateway.certification.exact import KG_PLACES, dec_ge, dec_le, ratio, wh_times_factor_kg
from gateway.certification.keys import PinnedKey
from gateway.certification.policy import Policy, load_policy, policy_from_mapping
from gateway.certification.signing import KeyFileError, KeyStore, key_id, load_public_pem, verify_signature
from gateway.certification.verify import Outcome, Unusable, parse_report_strict, verify_report
from gateway.site.channels import LOAD_SIGN, normalise_serial

AREA_SCHEMA: Final = "gia-area-report/1"
_SUMMED: Final = (
    "consumption_wh",
    "generation_wh",
    "renewable_generation_wh",
    "renewable_consumed_on_site_wh",
    "grid_import_wh",
    "grid_export_wh",
    "self_consumption_wh",
    "guarantees_of_origin_applied_wh",
    "hourly_matched_wh",
    "hourly_load_wh",
)
#: Sums of the hourly matching's figures (site reports with `method.hourly_matching`); the area figure is
#: null when a summed site's report predates them (it was matched on on-site generation alone).
_SUMMED_MATCHING: Final = (
    "hourly_matched_onsite_wh",
    "hourly_matched_storage_wh",
    "hourly_matched_contracted_wh",
    "hours_with_load",
    "hours_fully_matched",
)
#: Figures of the area's own (allocation-aware) accounting, summed over sites (and over months by `rollup`).
_ACCOUNTED: Final = (
    "contractual_renewable_wh",
    "allocated_wh",
    "unclaimed_wh",
    "contractual_grid_wh",
    "hourly_matched_wh",
    "hourly_load_wh",
    "verified_consumption_wh",
    "reported_consumption_wh",
    "sites_summed",
    "sites_expected",
)

#: criterion name -> (bases allowed, "min" or "max")
CRITERIA: Final[dict[str, tuple[tuple[str | None, ...], str]]] = {
    "renewable_share": (("physical", "market", "hourly"), "min"),
    "co2_intensity": (("location", "market"), "max"),
    "verified_consumption_share": ((None,), "min"),
    "data_completeness": ((None,), "min"),
}
ALLOCATIONS: Final = ("contracted", "hourly_pro_rata")


class AreaError(GiaError):
    """The area report cannot be built: the message lists every problem."""


class AreaDefinitionError(AreaError, ValueError):
    """An area definition (shared generators, criteria) is unusable: the message names the field."""

    exit_code = 2


# -- the area definition ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SharedGenerator:
    id: str
    site: str  # the host: the site whose reports meter it
    channel: str  # its channel id in the host's reports
    allocation: str  # contracted | hourly_pro_rata
    shares: tuple[tuple[str, str], ...] = ()  # contracted: (site, decimal share)
    participants: tuple[str, ...] = ()  # hourly_pro_rata: the sharing sites (empty: every expected site)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site,
            "channel": self.channel,
            "allocation": self.allocation,
            "shares": dict(self.shares),
            "participants": list(self.participants),
        }


@dataclass(frozen=True, slots=True)
class Criterion:
    name: str
    basis: str | None
    threshold: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "basis": self.basis, "threshold": self.threshold}


@dataclass(frozen=True, slots=True)
class AreaDefinition:
    """What an area is beyond its sites: shared generators, the criteria set, the report deadline."""

    shared_generators: tuple[SharedGenerator, ...] = ()
    criteria: tuple[Criterion, ...] = ()
    deadline_days: int = 10
    timezone: str = "Europe/Riga"

    def to_json(self) -> dict[str, Any]:
        return {
            "shared_generators": [g.to_json() for g in self.shared_generators],
            "criteria": [c.to_json() for c in self.criteria],
            "deadline_days": self.deadline_days,
            "timezone": self.timezone,
        }


def _decimal(text: Any, what: str, *, lo: str | None = None, hi: str | None = None) -> str:
    if not isinstance(text, str):
        raise AreaDefinitionError(f"{what}: a decimal written as a quoted string such as '0.5', got {text!r}")
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise AreaDefinitionError(f"{what}: {text!r} is not a decimal number") from None
    if not d.is_finite() or (lo is not None and d < Decimal(lo)) or (hi is not None and d > Decimal(hi)):
        raise AreaDefinitionError(f"{what}: {text!r} must be a number from {lo or '-inf'} to {hi or 'inf'}")
    return text


def definition_from_mapping(data: Mapping[str, Any] | None) -> AreaDefinition:
    """An area definition from its JSON (as embedded in area reports); raises `AreaDefinitionError`."""
    if not data:
        return AreaDefinition()
    if not isinstance(data, Mapping):
        raise AreaDefinitionError("definition: an object of shared_generators, criteria, deadline_days, timezone")
    unknown = sorted(set(data) - {"shared_generators", "criteria", "deadline_days", "timezone"})
    if unknown:
        raise AreaDefinitionError(f"definition: unknown field(s) {', '.join(unknown)}")
    gens: list[SharedGenerator] = []
    seen_ids: set[str] = set()
    seen_channels: set[tuple[str, str]] = set()
    for i, g in enumerate(data.get("shared_generators") or []):
        where = f"shared_generators[{i}]"
        try:
            gid, site, chan, alloc = str(g["id"]), str(g["site"]), str(g["channel"]), str(g["allocation"])
        except (KeyError, TypeError):
            raise AreaDefinitionError(f"{where}: needs id, site, channel and allocation") from None
        if alloc not in ALLOCATIONS:
            raise AreaDefinitionError(f"{where}.allocation: {alloc!r} is not one of {', '.join(ALLOCATIONS)}")
        if gid in seen_ids:
            raise AreaDefinitionError(f"{where}.id: {gid!r} is defined twice")
        if (site, chan) in seen_channels:
            raise AreaDefinitionError(f"{where}: channel {chan!r} of site {site!r} is shared twice (counted twice)")
        seen_ids.add(gid)
        seen_channels.add((site, chan))
        shares_in = g.get("shares") or {}
        participants = tuple(str(p) for p in g.get("participants") or [])
        if not isinstance(shares_in, Mapping):
            raise AreaDefinitionError(f"{where}.shares: an object of site -> share")
        shares = tuple(
            sorted((str(k), _decimal(v, f"{where}.shares.{k}", lo="0", hi="1")) for k, v in shares_in.items())
        )
        if alloc == "contracted":
            if not shares:
                raise AreaDefinitionError(f"{where}.shares: a contracted allocation needs the sites' shares")
            total = sum(Decimal(v) for _, v in shares)
            if total > 1:
                raise AreaDefinitionError(f"{where}.shares: add up to {total}, more than the whole output (1)")
            if participants:
                raise AreaDefinitionError(f"{where}.participants: only for hourly_pro_rata (contracted uses shares)")
        elif shares:
            raise AreaDefinitionError(f"{where}.shares: only for contracted (hourly_pro_rata uses participants)")
        if len(set(participants)) != len(participants):
            raise AreaDefinitionError(f"{where}.participants: a site is listed twice")
        gens.append(SharedGenerator(gid, site, chan, alloc, shares, participants))
    crits: list[Criterion] = []
    seen: set[tuple[str, str | None]] = set()
    for i, c in enumerate(data.get("criteria") or []):
        where = f"criteria[{i}]"
        try:
            name = str(c["name"])
            basis = c.get("basis")
            threshold = c["threshold"]
        except (KeyError, TypeError, AttributeError):
            raise AreaDefinitionError(f"{where}: needs name, threshold (and basis)") from None
        if name not in CRITERIA:
            raise AreaDefinitionError(f"{where}.name: {name!r} is not one of {', '.join(CRITERIA)}")
        bases, _direction = CRITERIA[name]
        if basis not in bases:
            allowed = ", ".join(str(b) for b in bases if b) or "none (omit basis)"
            raise AreaDefinitionError(f"{where}.basis: {basis!r} for {name}; allowed: {allowed}")
        hi = None if name == "co2_intensity" else "1"
        threshold = _decimal(threshold, f"{where}.threshold", lo="0", hi=hi)
        if (name, basis) in seen:
            raise AreaDefinitionError(f"{where}: {name} ({basis}) is defined twice")
        seen.add((name, basis))
        crits.append(Criterion(name, basis, threshold))
    deadline = data.get("deadline_days", 10)
    if isinstance(deadline, bool) or not isinstance(deadline, int) or not 0 <= deadline <= 366:
        raise AreaDefinitionError(f"deadline_days: an integer from 0 to 366, got {deadline!r}")
    tz = data.get("timezone", "Europe/Riga")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(str(tz))
    except (ValueError, KeyError, OSError):
        raise AreaDefinitionError(f"timezone: {tz!r} is not an IANA time zone such as 'Europe/Riga'") from None
    return AreaDefinition(tuple(gens), tuple(crits), deadline, str(tz))


# -- inputs -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SiteInput:
    """A site's report for the month, and the key(s) the aggregator pinned for that site."""

    site: str
    report: bytes
    public_key_pem: bytes | None = None
    pinned: tuple[PinnedKey, ...] = ()

    def keys(self) -> list[PinnedKey]:
        out = list(self.pinned)
        if self.public_key_pem is not None:
            pub = load_public_pem(self.public_key_pem)
            out.append(PinnedKey(key_id(pub), pub, self.site))
        return out


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an aggregator that verified a site report itself concluded, for `aggregate(verified=...)`.

    Why: the area hub verifies every report when it ingests it (pinned key chain, every verifier rule,
    the grade under the area's policy) and stores the verdict beside the report's bytes and SHA-256;
    verifying every summed report again when it builds the area report doubled the hub's cost. The hub
    may trust its own database's verdicts; a certifier never does (`verify_area` passes none and
    re-verifies everything offline against the keys it pinned). `sha256` is the digest the verdict was
    made on: bytes that do not hash to it are not summed (the stored report was altered)."""

    sha256: str  # hex SHA-256 of the report bytes the verdict is about
    key_id: str  # the pinned key the signature verified with
    grade: str | None  # the grade under the policy passed to `aggregate` (the same policy, or no verdict)


def channel_key(site: str, ch: dict[str, Any]) -> str | None:
    """A channel's identity across sites: meter serial (as read from the meter when its map reads it, else
    as configured; normalised) + register; None without a serial."""
    meter = ch.get("meter", {})
    read = meter.get("serial_read") or []
    serial = normalise_serial(read[-1] if read else meter.get("serial"))
    return f"meter:{serial}:{ch['quantity']}" if serial else None


# -- the area's accounting --------------------------------------------------------------------------
@dataclass(slots=True)
class _Site:
    site: str
    rep: dict[str, Any]

    @property
    def ind(self) -> dict[str, Any]:
        return dict(self.rep["indicators"])

    def channel(self, cid: str) -> dict[str, Any] | None:
        return next((c for c in self.rep["channels"] if c["id"] == cid), None)

    def has_profiles(self) -> bool:
        return all(isinstance(c.get("hourly_wh"), list) for c in self.rep["channels"])

    def hours(self) -> int:
        return max((len(c.get("hourly_wh", [])) for c in self.rep["channels"]), default=0)

    def load_h(self) -> list[int]:
        """Hourly load as the site's report computes it (`report.site_indicators`): at the connection point
        (signed roles) when the site has grid channels, else its consumption meters; never below 0."""
        chans = self.rep["channels"]
        has_grid = any(c["role"] in ("grid_import", "grid_export") for c in chans)
        out = [0] * self.hours()
        for c in chans:
            sign = LOAD_SIGN.get(c["role"], 0) if has_grid else (1 if c["role"] == "consumption" else 0)
            if sign:
                for h, x in enumerate(c["hourly_wh"]):
                    out[h] += sign * x
        return [max(0, x) for x in out]

    def renewable_h(self, exclude: set[str]) -> list[int]:
        out = [0] * self.hours()
        for c in self.rep["channels"]:
            if c["role"] == "generation" and c.get("renewable") and c["id"] not in exclude:
                for h, x in enumerate(c["hourly_wh"]):
                    out[h] += x
        return out


@dataclass(slots=True)
class _Alloc:
    generator: SharedGenerator
    output_wh: int = 0
    monthly: dict[str, int] = field(default_factory=dict)  # site -> Wh allocated for the month
    hourly: dict[str, list[int]] | None = None  # site -> Wh per hour (when hourly data allow it)
    notes: list[str] = field(default_factory=list)


def _allocate(
    gen: SharedGenerator, summed: Mapping[str, _Site], expected: Sequence[str], start: Mapping[str, str]
) -> _Alloc:
    """One shared generator's allocation for the month (monthly and, where the data allow, hourly)."""
    a = _Alloc(gen)
    host = summed.get(gen.site)
    if host is None:
        a.notes.append(f"host site {gen.site!r} has no summed report this month: output unknown, nothing allocated")
        return a
    ch = host.channel(gen.channel)
    if ch is None or ch["role"] != "generation" or not ch.get("renewable"):
        a.notes.append(f"site {gen.site!r} reports no renewable generation channel {gen.channel!r}: nothing allocated")
        return a
    a.output_wh = max(0, int(ch["energy_wh"]))
    if gen.allocation == "contracted":
        holders = [s for s, _ in gen.shares]
        for s, share in gen.shares:
            if s in summed:
                a.monthly[s] = int(Decimal(share) * a.output_wh)  # floor: G >= 0
            else:
                a.notes.append(f"{s}: no summed report this month: its share is not claimed")
    else:
        holders = list(gen.participants or expected)
        absent = [s for s in holders if s not in summed]
        if absent:
            a.notes.append(
                f"hourly pro-rata needs every participant's verified report: {', '.join(absent)} missing, nothing"
                " allocated this month"
            )
            return a
    present = [s for s in holders if s in summed]
    involved = [gen.site, *present]
    lacking = [s for s in dict.fromkeys(involved) if not summed[s].has_profiles()]
    starts = {start[s] for s in involved}
    if lacking or len(starts) > 1:
        why = (
            f"{', '.join(lacking)} report(s) carry no hourly profiles (certification.hourly_profiles)"
            if lacking
            else "the sites' months start at different instants (time zones differ)"
        )
        if gen.allocation == "hourly_pro_rata":
            a.notes.append(f"{why}: hourly pro-rata cannot be computed, nothing allocated")
        else:
            a.notes.append(f"{why}: allocated monthly only, not hour by hour")
        return a
    g_h = [max(0, x) for x in ch["hourly_wh"]]
    hourly: dict[str, list[int]] = {}
    if gen.allocation == "contracted":
        for s, share in gen.shares:
            if s in summed:
                hourly[s] = [int(Decimal(share) * x) for x in g_h]
    else:
        loads = {s: summed[s].load_h() for s in present}
        for s in present:
            hourly[s] = [
                (x * loads[s][h]) // tot if (tot := sum(loads[q][h] for q in present)) > 0 else 0
                for h, x in enumerate(g_h)
            ]
        a.monthly = {s: sum(v) for s, v in hourly.items()}
    a.hourly = hourly
    return a


def _account(
    summed: Mapping[str, _Site], allocs: Sequence[_Alloc]
) -> tuple[dict[str, dict[str, int]], dict[str, Decimal]]:
    """Per site: contractual renewable, allocation claimed / unclaimed, contractual grid energy, and the
    hourly-matched figures; plus market-based CO2 per site (kg)."""
    hosted: dict[str, int] = {}
    for a in allocs:
        if a.monthly:  # an output nobody receives stays with its host
            hosted[a.generator.site] = hosted.get(a.generator.site, 0) + a.output_wh
    hourly_allocs = [a for a in allocs if a.hourly is not None]
    out: dict[str, dict[str, int]] = {}
    co2: dict[str, Decimal] = {}
    for s, site in summed.items():
        ind = site.ind
        cons, ren_onsite = int(ind["consumption_wh"]), int(ind["renewable_consumed_on_site_wh"])
        go, imp = int(ind["guarantees_of_origin_applied_wh"]), int(ind["grid_import_wh"])
        hosted_onsite = min(hosted.get(s, 0), max(0, ren_onsite))
        own = ren_onsite - hosted_onsite + go
        allocated = sum(a.monthly.get(s, 0) for a in allocs)
        claimed = min(allocated, max(0, cons - own))
        grid = max(0, imp - go + hosted_onsite - claimed)
        # hourly matching: from the profiles wherever an allocation runs hour by hour, else the site's own
        if any(s in (a.hourly or {}) or a.generator.site == s for a in hourly_allocs):
            load = site.load_h()
            supply = site.renewable_h({a.generator.channel for a in hourly_allocs if a.generator.site == s})
            for a in hourly_allocs:
                for h, x in enumerate((a.hourly or {}).get(s, [])):
                    supply[h] += x
            matched, load_wh = sum(min(x, y) for x, y in zip(load, supply, strict=True)), sum(load)
        else:
            matched, load_wh = int(ind["hourly_matched_wh"]), int(ind["hourly_load_wh"])
        out[s] = {
            "contractual_renewable_wh": own + claimed,
            "allocated_wh": allocated,
            "unclaimed_wh": allocated - claimed,
            "contractual_grid_wh": grid,
            "hourly_matched_wh": matched,
            "hourly_load_wh": load_wh,
        }
        co2[s] = Decimal(wh_times_factor_kg(grid, str(ind["co2_factors"]["market"]["value"])))
    return out, co2


def _intensity(kg: Decimal, wh: int) -> str | None:
    """kg CO2 per MWh consumed, to the gram."""
    if wh <= 0:
        return None
    return str((kg * Decimal(1_000_000) / Decimal(wh)).quantize(KG_PLACES))


def _criteria(definition: AreaDefinition, values: Mapping[tuple[str, str | None], str | None]) -> list[dict[str, Any]]:
    out = []
    for c in definition.criteria:
        value = values.get((c.name, c.basis))
        direction = CRITERIA[c.name][1]
        met = dec_ge(value, c.threshold) if direction == "min" else dec_le(value, c.threshold)
        out.append({"name": c.name, "basis": c.basis, "threshold": c.threshold, "value": value, "met": met,
                    "comparison": ">=" if direction == "min" else "<="})  # fmt: skip
    return out


def _figures(acc: Mapping[str, int], totals: Mapping[str, Any], co2_market_kg: Decimal) -> dict[str, Any]:
    """The area's shares and intensities from summed figures (the same for a month and a year)."""
    cons = int(totals["consumption_wh"])
    return {
        "renewable_share": ratio(int(totals["renewable_consumed_on_site_wh"]), cons) if cons > 0 else None,
        "renewable_share_market": ratio(acc["contractual_renewable_wh"], cons) if cons > 0 else None,
        "hourly_matched_share": ratio(acc["hourly_matched_wh"], acc["hourly_load_wh"])
        if acc["hourly_load_wh"] > 0
        else None,
        "co2_intensity_location_kg_per_mwh": _intensity(Decimal(totals["co2_location_kg"]), cons),
        "co2_intensity_market_kg_per_mwh": _intensity(co2_market_kg, cons),
        "verified_consumption_share": ratio(acc["verified_consumption_wh"], acc["reported_consumption_wh"])
        if acc["reported_consumption_wh"] > 0
        else None,
        "data_completeness": ratio(acc["sites_summed"], acc["sites_expected"]) if acc["sites_expected"] else None,
    }


def _criterion_values(fig: Mapping[str, Any]) -> dict[tuple[str, str | None], str | None]:
    return {
        ("renewable_share", "physical"): fig["renewable_share"],
        ("renewable_share", "market"): fig["renewable_share_market"],
        ("renewable_share", "hourly"): fig["hourly_matched_share"],
        ("co2_intensity", "location"): fig["co2_intensity_location_kg_per_mwh"],
        ("co2_intensity", "market"): fig["co2_intensity_market_kg_per_mwh"],
        ("verified_consumption_share", None): fig["verified_consumption_share"],
        ("data_completeness", None): fig["data_completeness"],
    }


_BASIS_KEY: Final = {
    "physical": "renewable_share",
    "market": "renewable_share_market",
    "hourly": "hourly_matched_share",
}
_METHOD: Final = (
    "totals: sums of site indicators from signed site reports that verify against the sites' pinned keys and grade"
    " verified under the policy; the rest are listed in missing[]; each metering channel counted in one site"
    " (normalised meter serial + register), each certificate (registry + id) in one site. Shared generators: the"
    " host gives up the shared output it consumed itself (min(output, renewable consumed on site)) and every site"
    " claims its allocation up to the room its consumption leaves after its own renewable and certificates;"
    " unclaimed energy is never moved; allocations change the market-based and hourly-matched figures only; an"
    " allocated output must not also be issued as Guarantees of Origin. Hourly matching: per site, hour by hour,"
    " own renewable generation plus hourly allocations against load; no other pooling; each granular certificate"
    " id in one site; the share of fully matched hours counts site-hours"
)


def aggregate(
    area: str,
    month: str,
    inputs: Sequence[SiteInput],
    *,
    name: str = "",
    threshold: str = "0.5",
    threshold_basis: str = "market",
    policy: Policy | None = None,
    definition: AreaDefinition | None = None,
    expected: Sequence[str] | None = None,
    absent_reason: str | Mapping[str, str] = "no report received",
    log: Mapping[str, Any] | None = None,
    log_indexes: Mapping[str, int] | None = None,
    verified: Mapping[str, Verdict] | None = None,
) -> dict[str, Any]:
    """The unsigned area report body. Raises `AreaError` for a definition problem (a site twice, a
    meter or a certificate in two sites, a report for another site or month); reports that do not verify
    or do not grade `verified` under `policy` are listed in `missing[]`, not summed, and so are `expected`
    sites without a report (`absent_reason`). `log` (`tree_size`, `root`) and `log_indexes` (site -> leaf
    index) come from the hub's transparency log and are carried as given.

    `verified` (site -> `Verdict`): verdicts the caller made itself on these very reports under this
    `policy` (the area hub's ingestion); a site with one is not verified again, but its bytes must hash to
    the verdict's `sha256`, else the report is listed in `missing[]` and not summed. Sites without one are
    verified here. Only an aggregator trusting its own verdicts passes it; `verify_area` never does."""
    policy = policy or Policy()
    definition = definition or AreaDefinition()
    problems: list[str] = []
    seen_sites: set[str] = set()
    owners: dict[str, str] = {}
    certificates: dict[tuple[str, str], str] = {}
    sites: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    unserialised: list[dict[str, str]] = []
    totals = dict.fromkeys(_SUMMED, 0)
    matching: dict[str, int | None] = dict.fromkeys(_SUMMED_MATCHING, 0)
    cert_owners: dict[str, str] = {}
    co2_loc = co2_mkt = Decimal(0)
    co2_hourly: Decimal | None = Decimal(0)
    summed: dict[str, _Site] = {}
    starts: dict[str, str] = {}
    reported_cons = 0
    for inp in inputs:
        if inp.site in seen_sites:
            problems.append(f"site {inp.site!r} listed twice")
            continue
        seen_sites.add(inp.site)
        sha = hashlib.sha256(inp.report).hexdigest()
        known = verified.get(inp.site) if verified is not None else None
        if known is not None and known.sha256 != sha:
            missing.append(
                {
                    "site": inp.site,
                    "report_sha256": sha,
                    "grade": None,
                    "reason": f"the report's bytes hash to {sha}, not to {known.sha256} on which it was verified"
                    " (the stored report was altered): not summed",
                }
            )
            continue
        try:
            if known is not None:
                outcome = Outcome(key_id=known.key_id, policy=policy.name, policy_grade=known.grade)
            else:
                outcome = verify_report(inp.report, trusted=inp.keys(), policy=policy)
            rep, _ = parse_report_strict(inp.report)
        except (Unusable, KeyFileError, ValueError) as exc:
            missing.append({"site": inp.site, "report_sha256": sha, "grade": None, "reason": f"unusable ({exc})"})
            continue
        if rep.get("site", {}).get("id") != inp.site:
            problems.append(f"{inp.site}: report is for site {rep.get('site', {}).get('id')!r}")
            continue
        if rep.get("period", {}).get("month") != month:
            problems.append(f"{inp.site}: report is for {rep.get('period', {}).get('month')}, not {month}")
            continue
        if outcome.key_id is not None:  # the site's own figure, graded or not: the base of the verified share
            reported_cons += int(rep["indicators"]["consumption_wh"])
        if not outcome.ok:
            reason = "; ".join(str(f) for f in outcome.failures[:3])
            missing.append({"site": inp.site, "report_sha256": sha, "grade": outcome.policy_grade, "reason": reason})
            continue
        for ch in rep["channels"]:  # every verified report, summed or not: a meter belongs to one site
            key = channel_key(inp.site, ch)
            if key is None:
                unserialised.append({"site": inp.site, "channel": ch["id"]})
                continue
            if key in owners:
                problems.append(
                    f"channel {ch['id']} ({key}) of site {inp.site!r} is already counted in site"
                    f" {owners[key]!r}: a channel belongs to exactly one site"
                )
            owners.setdefault(key, inp.site)
        certs = (rep.get("matching") or {}).get("certificates") or {}
        for cid in certs.get("ids", []):
            if cid in cert_owners and cert_owners[cid] != inp.site:
                problems.append(
                    f"granular certificate {cid} is cancelled by site {inp.site!r} and by site {cert_owners[cid]!r}:"
                    " a certificate is cancelled once"
                )
            cert_owners.setdefault(cid, inp.site)
        for go in rep["indicators"].get("guarantees_of_origin", []):
            cert = (str(go.get("registry", "")), str(go.get("id")))
            if cert in certificates and certificates[cert] != inp.site:
                problems.append(
                    f"certificate {cert[1]} ({cert[0] or 'no registry'}) of site {inp.site!r} is already counted in"
                    f" site {certificates[cert]!r}: a certificate is cancelled for one site"
                )
            certificates.setdefault(cert, inp.site)
        if not rep["period"]["complete"]:
            missing.append({"site": inp.site, "report_sha256": sha, "grade": outcome.policy_grade,
                            "reason": f"{month} is not closed in this report"})  # fmt: skip
            continue
        if outcome.policy_grade != "verified":
            missing.append(
                {
                    "site": inp.site,
                    "report_sha256": sha,
                    "grade": outcome.policy_grade,
                    "reason": f"graded {outcome.policy_grade} under policy {policy.name!r}: not summed",
                }
            )
            continue
        ind = rep["indicators"]
        for k in _SUMMED:
            totals[k] += int(ind[k])
        co2_loc += Decimal(ind["co2_location_kg"])
        co2_mkt += Decimal(ind["co2_market_kg"])
        for k in _SUMMED_MATCHING:
            have = matching[k]
            matching[k] = None if have is None or ind.get(k) is None else have + int(ind[k])
        hourly_kg = ind.get("co2_location_hourly_kg")
        co2_hourly = None if co2_hourly is None or hourly_kg is None else co2_hourly + Decimal(hourly_kg)
        summed[inp.site] = _Site(inp.site, rep)
        starts[inp.site] = str(rep["period"]["start"])
        entry = {
            "site": inp.site,
            "report_sha256": sha,
            "key_id": outcome.key_id,
            "grade": outcome.policy_grade,
            "channels": len(rep["channels"]),
        }
        if log_indexes is not None:
            entry["log_index"] = log_indexes.get(inp.site)
        sites.append(entry)
    expected_sites = list(dict.fromkeys([*(expected or []), *(i.site for i in inputs)]))
    for s in expected_sites:
        if s not in seen_sites:
            why = absent_reason if isinstance(absent_reason, str) else absent_reason.get(s, "no report received")
            missing.append({"site": s, "report_sha256": None, "grade": None, "reason": why})
    if problems:
        raise AreaError("\n".join(problems))
    allocs = [_allocate(g, summed, expected_sites, starts) for g in definition.shared_generators]
    per_site, co2_per_site = _account(summed, allocs)
    acc = {k: sum(v[k] for v in per_site.values()) for k in _ACCOUNTED[:6]}
    acc["verified_consumption_wh"] = totals["consumption_wh"]
    acc["reported_consumption_wh"] = reported_cons
    acc["sites_summed"] = len(summed)
    acc["sites_expected"] = len(expected_sites)
    co2_market_area = sum(co2_per_site.values(), Decimal(0))
    totals_json = {**totals, "co2_location_kg": str(co2_loc), "co2_market_kg": str(co2_mkt)}
    fig = _figures(acc, totals_json, co2_market_area)
    judged = fig[_BASIS_KEY[threshold_basis]]
    full, with_load = matching["hours_fully_matched"], matching["hours_with_load"]
    hours_full_share = ratio(full, with_load) if full is not None and with_load else None
    allocations = []
    for a in allocs:
        base = {
            "generator": a.generator.id,
            "host": a.generator.site,
            "channel": a.generator.channel,
            "allocation": a.generator.allocation,
            "output_wh": a.output_wh,
            "hourly": a.hourly is not None,
        }
        for s in sorted(a.monthly):
            allocations.append({**base, "site": s, "allocated_wh": a.monthly[s]})
        if not a.monthly:
            allocations.append({**base, "site": None, "allocated_wh": 0})
    return {
        "schema": AREA_SCHEMA,
        "area": area,
        "name": name,
        "month": month,
        "period": {"month": month},
        "sites": sites,
        "missing": missing,
        "unserialised_channels": unserialised,
        "totals": {
            **totals_json,
            **(matching if sites else dict.fromkeys(_SUMMED_MATCHING)),
            "co2_location_hourly_kg": str(co2_hourly) if co2_hourly is not None and sites else None,
        },
        "hours_fully_matched_share": hours_full_share,
        "accounting": {**acc, "co2_market_kg": str(co2_market_area)},
        "allocations": allocations,
        "allocation_notes": [f"{a.generator.id}: {n}" for a in allocs for n in a.notes],
        **{k: fig[k] for k in ("renewable_share", "renewable_share_market", "hourly_matched_share")},
        "co2_intensity_location_kg_per_mwh": fig["co2_intensity_location_kg_per_mwh"],
        "co2_intensity_market_kg_per_mwh": fig["co2_intensity_market_kg_per_mwh"],
        "verified_consumption_share": fig["verified_consumption_share"],
        "data_completeness": fig["data_completeness"],
        "criteria": _criteria(definition, _criterion_values(fig)),
        "renewable_share_threshold": threshold,
        "threshold_basis": threshold_basis,
        "threshold_met": dec_ge(judged, threshold) if judged is not None else None,
        "policy": policy.to_json(),
        "definition": definition.to_json(),
        "log": dict(log) if log is not None else None,
        "method": _METHOD,
    }


def rollup(
    area: str,
    year: str,
    monthly: Sequence[bytes],
    *,
    name: str = "",
    definition: AreaDefinition | None = None,
    log: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A year's monthly area reports added up (the unsigned body). Raises `AreaError` when a report is
    for another area or year, or a month appears twice. Months without an area report are listed."""
    definition = definition or AreaDefinition()
    problems = []
    by_month: dict[str, dict[str, Any]] = {}
    for data in monthly:
        try:
            r = {**json.loads(data), "_sha256": hashlib.sha256(data).hexdigest()}
        except (ValueError, TypeError) as exc:
            problems.append(f"a monthly area report is not JSON ({exc})")
            continue
        m = str(r.get("month"))
        if r.get("area") != area or not m.startswith(f"{year}-"):
            problems.append(f"area report {r.get('area')} {m} is not one of area {area} in {year}")
        elif m in by_month:
            problems.append(f"two area reports for {m}")
        by_month[m] = r
    if problems:
        raise AreaError("\n".join(problems))
    totals: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
    acc = dict.fromkeys(_ACCOUNTED, 0)
    co2_loc = co2_mkt = co2_acc = Decimal(0)
    matching: dict[str, int | None] = dict.fromkeys(_SUMMED_MATCHING, 0)
    co2_hourly: Decimal | None = Decimal(0)
    months = []
    for m in sorted(by_month):
        r = by_month[m]
        for k in _SUMMED:
            totals[k] += int(r["totals"][k])
        co2_loc += Decimal(r["totals"]["co2_location_kg"])
        co2_mkt += Decimal(r["totals"]["co2_market_kg"])
        for k in _SUMMED_MATCHING:  # null in a month whose summed sites predate the hourly matching
            have, add = matching[k], r["totals"].get(k)
            matching[k] = None if have is None or add is None else have + int(add)
        hourly_kg = r["totals"].get("co2_location_hourly_kg")
        co2_hourly = None if co2_hourly is None or hourly_kg is None else co2_hourly + Decimal(hourly_kg)
        for k in _ACCOUNTED:
            acc[k] += int(r["accounting"][k])
        co2_acc += Decimal(r["accounting"]["co2_market_kg"])
        months.append(
            {
                "month": m,
                "report_sha256": r["_sha256"],
                "sites": len(r.get("sites", [])),
                "missing": [x["site"] for x in r.get("missing", [])],
            }
        )
    totals_json = {**totals, "co2_location_kg": str(co2_loc), "co2_market_kg": str(co2_mkt)}
    fig = _figures(acc, totals_json, co2_acc)
    if by_month:
        totals_json = {
            **totals_json,
            **matching,
            "co2_location_hourly_kg": str(co2_hourly) if co2_hourly is not None else None,
        }
    absent = [f"{year}-{mm:02d}" for mm in range(1, 13) if f"{year}-{mm:02d}" not in by_month]
    return {
        "schema": AREA_SCHEMA,
        "area": area,
        "name": name,
        "year": year,
        "period": {"year": year},
        "months": months,
        "months_missing": absent,
        "totals": totals_json,
        "accounting": {**acc, "co2_market_kg": str(co2_acc)},
        **{k: fig[k] for k in fig},
        "criteria": _criteria(definition, _criterion_values(fig)),
        "definition": definition.to_json(),
        "log": dict(log) if log is not None else None,
        "method": "the year's monthly area reports added up: totals and accounting summed, shares and intensities"
        " recomputed from the sums (never averaged), criteria judged on the year",
    }


def sign_area_report(body: dict[str, Any], signer: KeyStore) -> dict[str, Any]:
    """The area report with the aggregator's signature (same object as a site report's)."""
    return signer.sign_report(body)


def load_area_file(path: Path, month: str) -> tuple[dict[str, Any], list[SiteInput]]:
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AreaError(f"{path}: cannot read area file ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("sites"), list) or "area" not in spec:
        raise AreaError(f"{path}: needs 'area:' and a 'sites:' list of {{site, report, public_key}}")
    base = path.resolve().parent
    inputs = []
    problems = []
    for i, s in enumerate(spec["sites"]):
        try:
            rp = base / str(s["report"]).replace("{month}", month)
            kp = base / str(s["public_key"])
            inputs.append(SiteInput(str(s["site"]), rp.read_bytes(), kp.read_bytes()))
        except (KeyError, TypeError):
            problems.append(f"sites[{i}]: needs site, report and public_key (the key you pinned for the site)")
        except OSError as exc:
            problems.append(f"sites[{i}]: {exc}")
    if problems:
        raise AreaError("\n".join(problems))
    return spec, inputs


def build_area_report(path: Path, month: str, *, signing_key: Path | None = None) -> dict[str, Any]:
    """`gia area-report AREA.yaml MONTH`: aggregate and sign with the aggregator's key."""
    spec, inputs = load_area_file(path, month)
    base = path.resolve().parent
    policy = Policy()
    if spec.get("policy"):
        try:
            policy = load_policy(base / str(spec["policy"]))
        except ValueError as exc:
            raise AreaError(str(exc)) from None
    body = aggregate(
        str(spec["area"]),
        month,
        inputs,
        name=str(spec.get("name", "")),
        threshold=str(spec.get("renewable_share_threshold", "0.5")),
        threshold_basis=str(spec.get("threshold_basis", "market")),
        policy=policy,
        definition=definition_from_mapping(spec.get("definition")),
    )
    key_path = signing_key or base / str(spec.get("signing_key", "area-key.pem"))
    return sign_area_report(body, _AggregatorKey(key_path))


class _AggregatorKey(KeyStore):
    """The aggregator's key in a file of its own (not a site key directory)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path.parent, create=True)
        self._file = path

    @property
    def path(self) -> Path:
        return self._file


def aggregator_public_pem(key_file: Path) -> str:
    """The aggregator's public key (PEM), creating the key on first use."""
    return str(_AggregatorKey(key_file).public_info()["public_key_pem"])


def verify_area(
    area_report: dict[str, Any],
    inputs: Sequence[SiteInput],
    *,
    aggregator_key: Ed25519PublicKey | None = None,
    policy: Policy | None = None,
) -> Outcome:
    """Check the aggregator's signature (when a key is given), then re-aggregate from the site reports
    the certifier holds, each verified against the keys pinned in `inputs`, with the definition the
    signed report carries; compare everything."""
    out = Outcome()
    if aggregator_key is not None:
        problem = verify_signature(area_report, aggregator_key)
        if problem is not None:
            out.fail("area.signature", problem)
        else:
            out.key_id = key_id(aggregator_key)
    listed = {s["site"]: s["report_sha256"] for s in area_report.get("sites", [])}
    listed.update({m["site"]: m.get("report_sha256") for m in area_report.get("missing", [])})
    for inp in inputs:
        sha = hashlib.sha256(inp.report).hexdigest()
        out.compare(f"area.site.{inp.site}.report_sha256", listed.get(inp.site), sha)
    given = {i.site for i in inputs}
    absent = {s["site"] for s in area_report.get("sites", [])} - given
    absent |= {m["site"] for m in area_report.get("missing", []) if m.get("report_sha256")} - given
    if absent:
        out.fail("area.sites", f"site reports not provided for {sorted(absent)}")
        return out
    try:
        no_report = [m for m in area_report.get("missing", []) if not m.get("report_sha256")]
        indexes = (
            {s["site"]: s.get("log_index") for s in area_report["sites"]}
            if any("log_index" in s for s in area_report.get("sites", []))
            else None
        )
        again = aggregate(
            area_report["area"],
            area_report["month"],
            inputs,
            name=area_report.get("name", ""),
            threshold=area_report["renewable_share_threshold"],
            threshold_basis=area_report["threshold_basis"],
            policy=policy or policy_from_mapping(area_report["policy"]),
            definition=definition_from_mapping(area_report.get("definition")),
            expected=[m["site"] for m in no_report],
            absent_reason={m["site"]: str(m["reason"]) for m in no_report},
            log=area_report.get("log"),
            log_indexes=indexes,
        )
    except AreaError as exc:
        for line in str(exc).splitlines():
            out.fail("area.inputs", line)
        return out
    except (KeyError, TypeError, ValueError) as exc:
        out.fail("area.schema", f"area report is missing or mistypes a field ({exc})")
        return out
    # the sites without a report must be listed in the same order as a fresh build lists them
    for key, value in again.items():
        out.compare(f"area.{key}", area_report.get(key), value)
    return out


def verify_rollup(
    yearly: dict[str, Any], monthly: Sequence[bytes], *, aggregator_key: Ed25519PublicKey | None = None
) -> Outcome:
    """Check a yearly roll-up's signature, each monthly area report's signature (the same key) and that
    the year adds up from them."""
    out = Outcome()
    if aggregator_key is not None:
        problem = verify_signature(yearly, aggregator_key)
        if problem is not None:
            out.fail("area.signature", problem)
        else:
            out.key_id = key_id(aggregator_key)
    have = {}
    for data in monthly:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            out.fail("area.months", f"a monthly area report is not JSON ({exc})")
            continue
        if aggregator_key is not None:
            problem = verify_signature(doc, aggregator_key)
            if problem is not None:
                out.fail("area.months", f"{doc.get('month')}: {problem}")
        have[str(doc.get("month"))] = hashlib.sha256(data).hexdigest()
    want = {m["month"]: m["report_sha256"] for m in yearly.get("months", [])}
    out.compare("area.months", want, have)
    try:
        again = rollup(
            yearly["area"],
            yearly["year"],
            monthly,
            name=yearly.get("name", ""),
            definition=definition_from_mapping(yearly.get("definition")),
            log=yearly.get("log"),
        )
    except AreaError as exc:
        for line in str(exc).splitlines():
            out.fail("area.inputs", line)
        return out
    except (KeyError, TypeError, ValueError) as exc:
        out.fail("area.schema", f"an area report is missing or mistypes a field ({exc})")
        return out
    for key, value in again.items():
        out.compare(f"area.{key}", yearly.get(key), value)
    return out


def verify_area_paths(
    area_path: Path,
    evidence: Path | None,
    *,
    public_key: Ed25519PublicKey | None,
    trusted: Sequence[PinnedKey],
    policy: Policy | None,
    stdout: Any,
) -> int:
    """`gia verify AREA_REPORT.json --public-key AGGREGATOR.pem --trusted-keys SITE-KEYS --evidence DIR`:
    DIR holds the site reports as `<site>.json` (a yearly roll-up: the monthly area reports as
    `<YYYY-MM>.json`); site keys come only from `--trusted-keys`."""
    if public_key is None:
        print("unusable input: an area report needs --public-key AGGREGATOR.pem (the key you pinned)", file=stdout)
        return 2
    area = json.loads(area_path.read_bytes())
    yearly = "year" in area.get("period", {})
    if not trusted and not yearly:
        print("unusable input: an area report needs --trusted-keys FILE with the sites' pinned keys", file=stdout)
        return 2
    if evidence is None or not evidence.is_dir():
        what = "the monthly area reports as <YYYY-MM>.json" if yearly else "the site reports as <site>.json"
        print(f"unusable input: an area report needs --evidence DIR with {what}", file=stdout)
        return 2
    if yearly:
        monthly = []
        for m in area.get("months", []):
            rp = evidence / f"{m['month']}.json"
            if not rp.is_file():
                print(f"unusable input: {rp.name} missing in {evidence}", file=stdout)
                return 2
            monthly.append(rp.read_bytes())
        outcome = verify_rollup(area, monthly, aggregator_key=public_key)
        what = f"{area['area']} {area['year']}"
        summary = f"{len(monthly)} monthly area reports verified and re-added"
    else:
        inputs = []
        names = [s["site"] for s in area.get("sites", [])] + [
            m["site"] for m in area.get("missing", []) if m.get("report_sha256")
        ]
        for site in names:
            rp = evidence / f"{site}.json"
            if not rp.is_file():
                print(f"unusable input: {rp.name} missing in {evidence}", file=stdout)
                return 2
            inputs.append(SiteInput(site, rp.read_bytes(), None, tuple(k for k in trusted if k.site in (None, site))))
        outcome = verify_area(area, inputs, aggregator_key=public_key, policy=policy)
        what = f"{area['area']} {area['month']}"
        summary = (
            f"{len(area.get('sites', []))} site reports verified and re-added, {len(area.get('missing', []))} listed"
            " as not summed"
        )
    for f in outcome.failures:
        print(str(f), file=stdout)
    if outcome.ok:
        met = [c for c in area.get("criteria", []) if c.get("met")]
        crit = f"; criteria met {len(met)}/{len(area.get('criteria', []))}" if area.get("criteria") else ""
        print(f"OK area {what}: signature valid, key {outcome.key_id}; {summary}{crit}", file=stdout)
        return 0
    print(f"INVALID: {len(outcome.failures)} rule(s) failed", file=stdout)
    return 1


__all__ = [
    "AREA_SCHEMA",
    "AreaDefinition",
    "AreaDefinitionError",
    "AreaError",
    "Criterion",
    "SharedGenerator",
    "SiteInput",
    "aggregate",
    "definition_from_mapping",
    "rollup",
    "sign_area_report",
    "verify_area",
    "verify_rollup",
]
