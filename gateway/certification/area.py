"""Area reports: several sites' signed monthly reports combined into area totals.

`AREA.yaml`::

    area: riga-north-park
    name: Riga North industrial park
    renewable_share_threshold: "0.5"      # optional, default 0.5
    threshold_basis: market               # physical | market | hourly
    sites:
      - {site: mill, report: reports/mill/{month}.json, public_key: keys/mill.pem}
      - {site: bakery, report: reports/bakery/{month}.json, public_key: keys/bakery.pem}

Rules: every site report is verified (signature by that site's key, internal consistency) before it is
counted; all are for the requested month; a site appears once; every metering channel belongs to exactly
one site (a meter serial + register listed by two sites is rejected: it would be counted twice). The area
report publishes totals and, per site, only the report's SHA-256, key id and grade: per-site figures stay
behind the hashes, with the certifier who holds the site reports.

Verification (`verify_area`) re-adds the totals from the site reports. Standard library + the verifier's
modules only, except `load_area_file` (PyYAML) which only the builder needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from drivers.errors import GiaError
from gateway.certification.exact import dec_ge, ratio
from gateway.certification.signing import KeyFileError, key_id, load_public_pem
from gateway.certification.verify import Outcome, Unusable, verify_report

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


class AreaError(GiaError):
    """The area report cannot be built: the message lists every problem."""


@dataclass(frozen=True, slots=True)
class SiteInput:
    site: str
    report: bytes
    public_key_pem: bytes


def channel_key(site: str, ch: dict[str, Any]) -> str:
    """A channel's identity across sites: meter serial + register; without a serial, site + channel id."""
    serial = ch.get("meter", {}).get("serial")
    return f"meter:{serial}:{ch['quantity']}" if serial else f"site:{site}:{ch['id']}"


def aggregate(
    area: str,
    month: str,
    inputs: list[SiteInput],
    *,
    name: str = "",
    threshold: str = "0.5",
    threshold_basis: str = "market",
) -> dict[str, Any]:
    problems: list[str] = []
    seen_sites: set[str] = set()
    owners: dict[str, str] = {}
    sites: list[dict[str, Any]] = []
    totals = dict.fromkeys(_SUMMED, 0)
    co2_loc = co2_mkt = Decimal(0)
    verified_consumption = 0
    for inp in inputs:
        if inp.site in seen_sites:
            problems.append(f"site {inp.site!r} listed twice")
            continue
        seen_sites.add(inp.site)
        try:
            pub = load_public_pem(inp.public_key_pem)
            outcome = verify_report(inp.report, public_key=pub)
            rep = json.loads(inp.report)
        except (Unusable, KeyFileError, ValueError) as exc:
            problems.append(f"{inp.site}: unusable report or key ({exc})")
            continue
        for f in outcome.failures:
            problems.append(f"{inp.site}: report does not verify: {f}")
        if rep["site"]["id"] != inp.site:
            problems.append(f"{inp.site}: report is for site {rep['site']['id']!r}")
        if rep["period"]["month"] != month:
            problems.append(f"{inp.site}: report is for {rep['period']['month']}, not {month}")
        if not rep["period"]["complete"]:
            problems.append(f"{inp.site}: {month} is not closed in this report (open month)")
        for ch in rep["channels"]:
            key = channel_key(inp.site, ch)
            if key in owners:
                problems.append(
                    f"channel {ch['id']} ({key}) of site {inp.site!r} is already counted in site"
                    f" {owners[key]!r}: a channel belongs to exactly one site"
                )
            owners.setdefault(key, inp.site)
        ind = rep["indicators"]
        for k in _SUMMED:
            totals[k] += int(ind[k])
        co2_loc += Decimal(ind["co2_location_kg"])
        co2_mkt += Decimal(ind["co2_market_kg"])
        if rep["quality"]["grade"] == "verified":
            verified_consumption += int(ind["consumption_wh"])
        sites.append(
            {
                "site": inp.site,
                "report_sha256": hashlib.sha256(inp.report).hexdigest(),
                "key_id": key_id(pub),
                "grade": rep["quality"]["grade"],
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
        "sites": sites,
        "totals": {**totals, "co2_location_kg": str(co2_loc), "co2_market_kg": str(co2_mkt)},
        **shares,
        "verified_consumption_share": ratio(verified_consumption, cons) if cons > 0 else None,
        "renewable_share_threshold": threshold,
        "threshold_basis": threshold_basis,
        "threshold_met": dec_ge(judged, threshold) if judged is not None else None,
        "method": "sums of site indicators from verified, signed site reports; each channel counted in one"
        " site; hourly matching is per site (no pooling across sites)",
    }


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
            problems.append(f"sites[{i}]: needs site, report and public_key")
        except OSError as exc:
            problems.append(f"sites[{i}]: {exc}")
    if problems:
        raise AreaError("\n".join(problems))
    return spec, inputs


def build_area_report(path: Path, month: str) -> dict[str, Any]:
    spec, inputs = load_area_file(path, month)
    return aggregate(
        str(spec["area"]),
        month,
        inputs,
        name=str(spec.get("name", "")),
        threshold=str(spec.get("renewable_share_threshold", "0.5")),
        threshold_basis=str(spec.get("threshold_basis", "market")),
    )


def verify_area(area_report: dict[str, Any], inputs: list[SiteInput]) -> Outcome:
    """Re-aggregate from the site reports the certifier holds; compare with the area report."""
    out = Outcome()
    listed = {s["site"]: s["report_sha256"] for s in area_report.get("sites", [])}
    for inp in inputs:
        sha = hashlib.sha256(inp.report).hexdigest()
        out.compare(f"area.site.{inp.site}.report_sha256", listed.get(inp.site), sha)
    missing = set(listed) - {i.site for i in inputs}
    if missing:
        out.fail("area.sites", f"site reports not provided for {sorted(missing)}")
        return out
    try:
        again = aggregate(
            area_report["area"],
            area_report["month"],
            inputs,
            name=area_report.get("name", ""),
            threshold=area_report["renewable_share_threshold"],
            threshold_basis=area_report["threshold_basis"],
        )
    except AreaError as exc:
        for line in str(exc).splitlines():
            out.fail("area.inputs", line)
        return out
    for key, value in again.items():
        out.compare(f"area.{key}", area_report.get(key), value)
    return out


def verify_area_paths(area_path: Path, evidence: Path | None, *, stdout: Any) -> int:
    """`gia verify AREA_REPORT.json --evidence DIR`: DIR holds <site>.json reports and <site>.pem keys."""
    if evidence is None or not evidence.is_dir():
        print("unusable input: an area report needs --evidence DIR with <site>.json and <site>.pem", file=stdout)
        return 2
    area = json.loads(area_path.read_bytes())
    inputs = []
    for s in area.get("sites", []):
        rp, kp = evidence / f"{s['site']}.json", evidence / f"{s['site']}.pem"
        if not rp.is_file() or not kp.is_file():
            print(f"unusable input: {rp.name} or {kp.name} missing in {evidence}", file=stdout)
            return 2
        inputs.append(SiteInput(s["site"], rp.read_bytes(), kp.read_bytes()))
    outcome = verify_area(area, inputs)
    for f in outcome.failures:
        print(str(f), file=stdout)
    if outcome.ok:
        print(f"OK area {area['area']} {area['month']}: {len(inputs)} site reports verified and re-added", file=stdout)
        return 0
    print(f"INVALID: {len(outcome.failures)} rule(s) failed", file=stdout)
    return 1
