"""Area reports: several sites' signed monthly reports combined into area totals, signed by the aggregator.

`AREA.yaml`::

    area: riga-north-park
    name: Riga North industrial park
    renewable_share_threshold: "0.5"      # optional, default 0.5
    threshold_basis: market               # physical | market | hourly
    signing_key: area-key.pem             # the aggregator's private key (created on first use, 0600)
    policy: policy.json                   # optional: grading thresholds; default the scheme's defaults
    sites:
      - {site: mill, report: reports/mill/{month}.json, public_key: keys/mill.pem}
      - {site: bakery, report: reports/bakery/{month}.json, public_key: keys/bakery.pem}

The `public_key` of each site is the key the aggregator *pinned* for it (enrolment), never a key found
beside the reports. Rules:

* every site report is verified against its site's pinned key (following signed key transitions) and
  graded under the area's policy; only reports that verify and grade `verified` under it are summed —
  the others are listed in `missing[]` with the reason;
* a site appears once; every metering channel belongs to one site: channels are identified by their
  meter serial (normalised: 'sn-123 ' is 'SN-123') and register, and a serial listed by two sites is an
  error; channels without a serial cannot be checked that way and are listed in `unserialised_channels[]`;
* a granular certificate id (the site reports list the ids they cancelled in `matching.certificates.ids`)
  may appear in one site only: an id listed by two sites is an error (a certificate is cancelled once);
* the 24/7 figures are sums of the sites' (hourly matching is per site: no pooling between sites): the
  hourly-matched share (CFE %) over the area's load, and the share of site-hours fully matched;
* per site only the report's SHA-256, key id and grade are published: the figures stay behind the hashes;
* the area report is signed (Ed25519, RFC 8785, the same `signature` object as site reports) by the
  aggregator's key; `verify_area` checks that signature against the aggregator key the certifier
  pinned, then re-aggregates from the site reports against the site keys the certifier pinned.

`aggregate`, `sign_area_report` and `verify_area` are importable for the area hub. Standard library +
the verifier's modules only, except `load_area_file` (PyYAML), which only the CLI builder needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from drivers.errors import GiaError
from gateway.certification.exact import dec_ge, ratio
from gateway.certification.keys import PinnedKey
from gateway.certification.policy import Policy, load_policy, policy_from_mapping
from gateway.certification.signing import KeyFileError, KeyStore, key_id, load_public_pem, verify_signature
from gateway.certification.verify import Outcome, Unusable, parse_report_strict, verify_report
from gateway.site.channels import normalise_serial

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


class AreaError(GiaError):
    """The area report cannot be built: the message lists every problem."""


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


def channel_key(site: str, ch: dict[str, Any]) -> str | None:
    """A channel's identity across sites: meter serial (as read from the meter when its map reads it, else
    as configured; normalised) + register; None without a serial."""
    meter = ch.get("meter", {})
    read = meter.get("serial_read") or []
    serial = normalise_serial(read[-1] if read else meter.get("serial"))
    return f"meter:{serial}:{ch['quantity']}" if serial else None


def aggregate(
    area: str,
    month: str,
    inputs: Sequence[SiteInput],
    *,
    name: str = "",
    threshold: str = "0.5",
    threshold_basis: str = "market",
    policy: Policy | None = None,
) -> dict[str, Any]:
    """The unsigned area report body. Raises `AreaError` for a definition problem (a site twice, a
    meter in two sites, a report for another site or month); reports that do not verify or do not grade
    `verified` under `policy` are listed in `missing[]`, not summed."""
    policy = policy or Policy()
    problems: list[str] = []
    seen_sites: set[str] = set()
    owners: dict[str, str] = {}
    sites: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    unserialised: list[dict[str, str]] = []
    totals = dict.fromkeys(_SUMMED, 0)
    matching: dict[str, int | None] = dict.fromkeys(_SUMMED_MATCHING, 0)
    cert_owners: dict[str, str] = {}
    co2_loc = co2_mkt = Decimal(0)
    co2_hourly: Decimal | None = Decimal(0)
    for inp in inputs:
        if inp.site in seen_sites:
            problems.append(f"site {inp.site!r} listed twice")
            continue
        seen_sites.add(inp.site)
        sha = hashlib.sha256(inp.report).hexdigest()
        try:
            keys = inp.keys()
            outcome = verify_report(inp.report, trusted=keys, policy=policy)
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
        sites.append(
            {
                "site": inp.site,
                "report_sha256": sha,
                "key_id": outcome.key_id,
                "grade": outcome.policy_grade,
                "channels": len(rep["channels"]),
            }
        )
    if problems:
        raise AreaError("\n".join(problems))
    cons = totals["consumption_wh"]
    shares = {
        "renewable_share": ratio(totals["renewable_consumed_on_site_wh"], cons) if cons > 0 else None,
        "renewable_share_market": ratio(
            totals["renewable_consumed_on_site_wh"] + totals["guarantees_of_origin_applied_wh"], cons
        )
        if cons > 0
        else None,
        "hourly_matched_share": ratio(totals["hourly_matched_wh"], totals["hourly_load_wh"])
        if totals["hourly_load_wh"] > 0
        else None,
    }
    full, with_load = matching["hours_fully_matched"], matching["hours_with_load"]
    shares["hours_fully_matched_share"] = ratio(full, with_load) if full is not None and with_load else None
    judged = shares[
        {"physical": "renewable_share", "market": "renewable_share_market", "hourly": "hourly_matched_share"}[
            threshold_basis
        ]
    ]
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
            **totals,
            **(matching if sites else dict.fromkeys(_SUMMED_MATCHING)),
            "co2_location_kg": str(co2_loc),
            "co2_market_kg": str(co2_mkt),
            "co2_location_hourly_kg": str(co2_hourly) if co2_hourly is not None and sites else None,
        },
        **shares,
        "verified_consumption_share": "1.000000" if cons > 0 else None,
        "renewable_share_threshold": threshold,
        "threshold_basis": threshold_basis,
        "threshold_met": dec_ge(judged, threshold) if judged is not None else None,
        "policy": policy.to_json(),
        "method": "sums of site indicators from signed site reports that verify against the sites' pinned keys"
        " and grade verified under the policy; the rest are listed in missing[]; each metering channel counted"
        " in one site (normalised meter serial + register) and each granular certificate id in one site; hourly"
        " matching is per site (no pooling); the share of fully matched hours counts site-hours",
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
    the certifier holds, each verified against the keys pinned in `inputs`; compare everything."""
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
    absent = {s["site"] for s in area_report.get("sites", [])} - {i.site for i in inputs}
    if absent:
        out.fail("area.sites", f"site reports not provided for {sorted(absent)}")
        return out
    try:
        again = aggregate(
            area_report["area"],
            area_report["month"],
            inputs,
            name=area_report.get("name", ""),
            threshold=area_report["renewable_share_threshold"],
            threshold_basis=area_report["threshold_basis"],
            policy=policy or policy_from_mapping(area_report["policy"]),
        )
    except AreaError as exc:
        for line in str(exc).splitlines():
            out.fail("area.inputs", line)
        return out
    except (KeyError, TypeError, ValueError) as exc:
        out.fail("area.schema", f"area report is missing or mistypes a field ({exc})")
        return out
    for key, value in again.items():
        out.compare(f"area.{key}", area_report.get(key), value)
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
    DIR holds the site reports as `<site>.json`; site keys come only from `--trusted-keys`."""
    if public_key is None:
        print("unusable input: an area report needs --public-key AGGREGATOR.pem (the key you pinned)", file=stdout)
        return 2
    if not trusted:
        print("unusable input: an area report needs --trusted-keys FILE with the sites' pinned keys", file=stdout)
        return 2
    if evidence is None or not evidence.is_dir():
        print("unusable input: an area report needs --evidence DIR with the site reports as <site>.json", file=stdout)
        return 2
    area = json.loads(area_path.read_bytes())
    inputs = []
    names = [s["site"] for s in area.get("sites", [])] + [m["site"] for m in area.get("missing", [])]
    for site in names:
        rp = evidence / f"{site}.json"
        if not rp.is_file():
            print(f"unusable input: {rp.name} missing in {evidence}", file=stdout)
            return 2
        inputs.append(SiteInput(site, rp.read_bytes(), None, tuple(k for k in trusted if k.site in (None, site))))
    outcome = verify_area(area, inputs, aggregator_key=public_key, policy=policy)
    for f in outcome.failures:
        print(str(f), file=stdout)
    if outcome.ok:
        print(
            f"OK area {area['area']} {area['month']}: signature valid, key {outcome.key_id};"
            f" {len(area.get('sites', []))} site reports verified and re-added, {len(area.get('missing', []))} listed"
            " as not summed",
            file=stdout,
        )
        return 0
    print(f"INVALID: {len(outcome.failures)} rule(s) failed", file=stdout)
    return 1


__all__ = [
    "AREA_SCHEMA",
    "AreaError",
    "SiteInput",
    "aggregate",
    "sign_area_report",
    "verify_area",
]
