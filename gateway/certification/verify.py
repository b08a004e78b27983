"""`gia verify`: offline verification of a signed monthly report (and its evidence bundle).

A certifier runs this without the agent: it imports only the standard library, `cryptography`,
`rfc8785` and this package's pure modules (`compute`, `report`, `policy`, `keys`, `events`, `exact`,
`merkle`, `periods`, `signing`, `bundle`, `solar`) — the same arithmetic the gateway used, so
recomputed figures match to the Wh. It runs as `gia verify` (which loads nothing else) or as `python -m
gateway.certification.verify`.

Trust: the signature is checked only against keys the certifier pinned (`--public-key` or
`--trusted-keys`), never a key shipped with what is verified. Key transitions recorded in the site's
events chain (and carried in the report) are followed from a pinned key when the old key signed them;
the key that signs must be the one in force at the report's events head. The OK line prints it.

Grading: the report's own grade is re-derived from its facts with its own thresholds (consistency),
then the facts are graded under the certifier's policy (`--policy FILE`, default the scheme's published
defaults): a report whose self-declared grade is better than the policy gives fails. With the evidence,
a report computed with method parameters more lenient than the policy is recomputed under the policy's.

Rules (each failure is printed with the numbers on both sides):

1. `json.framing`, `no_float`, `schema` — exactly one JSON object (no bytes before it, at most a newline
   after it, no duplicate keys) of our schema with no float anywhere;
2. `signature` — Ed25519 over the RFC 8785 canonical report without `signature` (whose object holds
   only `alg`, `key_id`, `value`), by a trusted key in force;
3. `period` — start/end are the civil month in the report's time zone;
4. `energy_split`, `indicators.*`, `quality.*` — internal consistency (totals, balance cross-check,
   shares, CO2 from the embedded factors, grades from the facts);
5. `policy.grade`, `policy.channel.*` — the grades under the certifier's policy;
6. `previous_report`, `continuity.*` — with the previous report: its SHA-256 and shared boundaries;
7. with `--evidence`: every file present (`evidence.files`), `evidence.order`, `evidence.line` (each
   reading's device, quantity and time belong to its channel), `evidence.chain`, `evidence.entries`,
   `evidence.merkle_root`, `evidence.days`; every channel recomputed from the readings and the events
   chain's meter replacements (`channel.<id>.<field>`), the indicators, `intervals.csv`; the events chain
   (`evidence.events*`), the key transitions in it, and the reissue chain (`reissue`).

Exit status: 0 valid, 1 invalid (failed rules listed), 2 unusable input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from drivers.errors import GiaError
from gateway.certification import bundle
from gateway.certification import events as ev_mod
from gateway.certification.certificates import certificates_for_period, factors_for_period
from gateway.certification.compute import (
    ChannelResult,
    Params,
    Replacement,
    Series,
    channel_day_roots,
)
from gateway.certification.exact import FloatInSignedData, assert_no_float, iso_ms, parse_iso_ms
from gateway.certification.keys import (
    PinnedKey,
    TrustError,
    follow,
    load_trusted_keys,
    pinned_for,
    transitions_from_events,
)
from gateway.certification.matching import (
    HOUR_MS,
    MATCHING_METHOD,
    Matched,
    inputs_from_block,
    match,
    matching_block,
    storage_units,
)
from gateway.certification.periods import BadMonth, month_period
from gateway.certification.policy import (
    GRADES,
    Policy,
    PolicyError,
    grade_channel,
    grade_report,
    lenient_parameters,
    load_policy,
    policy_of_method,
)
from gateway.certification.report import (
    SCHEMA,
    compute_all,
    compute_matching,
    evidence_summary,
    report_quality,
    site_indicators,
)
from gateway.certification.signing import KeyFileError, key_id, load_public_pem, verify_signature
from gateway.site.channels import ChannelSpec


class Unusable(GiaError):
    """The input cannot be verified at all (exit 2)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Failure:
    rule: str
    message: str

    def __str__(self) -> str:
        return f"FAIL {self.rule}: {self.message}"


@dataclass(slots=True)
class Outcome:
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    key_id: str | None = None  # the trusted key the signature verified with
    policy: str | None = None
    policy_grade: str | None = None
    declared_grade: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, rule: str, message: str) -> None:
        self.failures.append(Failure(rule, message))

    def compare(self, rule: str, reported: Any, recomputed: Any) -> None:
        if reported != recomputed:
            self.fail(rule, f"report says {_short(reported)}, recomputed {_short(recomputed)}")


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True)
    return text if len(text) <= 300 else text[:297] + "..."


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} (parsers disagree on which one counts)")
        out[k] = v
    return out


def parse_report_strict(data: bytes) -> tuple[dict[str, Any], list[str]]:
    """(report, framing problems): one JSON object, nothing before it, at most a line end after it."""
    obj, problems, _ = _parse_counting_floats(data)
    return obj, problems


def _parse_counting_floats(data: bytes) -> tuple[dict[str, Any], list[str], int]:
    """`parse_report_strict` plus how many JSON numbers became floats (fractions, exponents, NaN, Infinity).

    Why: the bytes are the only way a float gets into a report being verified, so counting them while
    parsing replaces a second full walk of the parsed report (`assert_no_float`) on every report; that
    walk now runs only when the count is not zero, to name where the float is."""
    floats = 0

    def as_float(text: str) -> float:
        nonlocal floats
        floats += 1
        return float(text)

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unusable(f"report is not UTF-8 text ({exc})") from None
    lead = len(text) - len(text.lstrip(" \t\r\n\ufeff"))
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_float=as_float, parse_constant=as_float)
    try:
        obj, end = decoder.raw_decode(text, lead)
    except ValueError as exc:
        raise Unusable(f"report is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise Unusable("report is not a JSON object")
    problems = []
    if lead:
        problems.append(f"{lead} character(s) before the JSON document (a byte-order mark or padding)")
    tail = text[end:]
    if tail not in ("", "\n", "\r\n"):
        problems.append(f"{len(tail)} character(s) after the JSON document: {tail[:40]!r}")
    return obj, problems, floats


def parse_report(data: bytes) -> dict[str, Any]:
    return parse_report_strict(data)[0]


# -- internal consistency ------------------------------------------------------------------------------
def _pseudo_results(report: dict[str, Any], intervals: dict[str, list[int]] | None) -> list[ChannelResult]:
    out = []
    for ch in report["channels"]:
        spec = ChannelSpec.from_report(ch)
        iv = intervals.get(spec.id, []) if intervals is not None else []
        out.append(ChannelResult(spec, ch, iv, [], Series(), int(ch["energy_wh"]), ch["grade"]))
    return out


_HOURLY_KEYS = ("hourly_matched_share", "hourly_matched_wh", "hourly_load_wh", "threshold_met")


#: Fields of `matching.certificates` / `matching.grid_factors` the matching computes; the rest is their
#: provenance, which only the evidence (the events chain's imports) can recompute.
_CERT_COMPUTED = ("offered_wh", "cancelled_wh", "excess_wh")
_FACTOR_COMPUTED = ("unit", "hourly_t_co2_per_mwh", "hours_from_file", "hours_annual_fallback", "annual_fallback_value")


def _compare_block(out: Outcome, prefix: str, reported: Any, recomputed: Any) -> None:
    """Compare two JSON values, descending into objects and lists of objects for precise rule names."""
    if isinstance(recomputed, dict) and isinstance(reported, dict):
        for key in sorted(set(reported) | set(recomputed)):
            _compare_block(out, f"{prefix}.{key}", reported.get(key), recomputed.get(key))
    elif (
        isinstance(recomputed, list)
        and isinstance(reported, list)
        and recomputed
        and all(isinstance(x, dict) for x in recomputed)
        and len(reported) == len(recomputed)
    ):
        for k, (a, b) in enumerate(zip(reported, recomputed, strict=True)):
            _compare_block(out, f"{prefix}[{b.get('unit', k)}]", a, b)
    else:
        out.compare(prefix, reported, recomputed)


def _hours(report: dict[str, Any]) -> tuple[int, int]:
    """(period start, hours matched): the period, or up to `as_of` for a month that is not closed."""
    per = report["period"]
    start = parse_iso_ms(per["start"])
    end = parse_iso_ms(per["end"]) if per["complete"] else parse_iso_ms(per["as_of"])
    return start, -(-(end - start) // HOUR_MS)


def _check_matching_internal(out: Outcome, report: dict[str, Any]) -> Matched | None:
    """Re-run the hourly matching from the report's own hourly inputs; tie those to the channel totals."""
    block = report.get("matching")
    if not isinstance(block, dict) or block.get("method") != MATCHING_METHOD:
        out.fail(
            "matching",
            f"method.hourly_matching is {report['method'].get('hourly_matching')!r} but the report has no"
            f" {MATCHING_METHOD} matching block",
        )
        return None
    start, hours = _hours(report)
    inputs = inputs_from_block(block, start)
    lists = {
        "hourly_load_wh": inputs.load,
        "hourly_renewable_wh": inputs.renewable,
        "hourly_grid_import_wh": inputs.grid_import,
        "hourly_certificates_wh": inputs.certificates,
        **{f"storage[{u.unit}].hourly_charge_wh": u.charge for u in inputs.storage},
        **{f"storage[{u.unit}].hourly_discharge_wh": u.discharge for u in inputs.storage},
    }
    if inputs.factors is not None:
        lists["grid_factors.hourly_t_co2_per_mwh"] = inputs.factors  # type: ignore[assignment]
    wrong = [k for k, v in lists.items() if len(v) != hours]
    if wrong:
        out.fail("matching.hours", f"{', '.join(wrong)}: not {hours} hours (the period's)")
        return None
    channels = report["channels"]
    by_role: dict[str, int] = {}
    for ch in channels:
        key = "renewable" if ch["role"] == "generation" and ch.get("renewable") else ch["role"]
        by_role[key] = by_role.get(key, 0) + int(ch["energy_wh"])
    out.compare("matching.hourly_renewable_wh (sum)", sum(inputs.renewable), by_role.get("renewable", 0))
    out.compare("matching.hourly_grid_import_wh (sum)", sum(inputs.grid_import), by_role.get("grid_import", 0))
    units = storage_units(ChannelSpec.from_report(ch) for ch in channels)
    out.compare(
        "matching.storage (units)",
        [(u.unit, list(u.charge_channels), list(u.discharge_channels)) for u in inputs.storage],
        [(u, c, d) for u, c, d in units],
    )
    energy = {ch["id"]: int(ch["energy_wh"]) for ch in channels}
    for u in inputs.storage:
        out.compare(
            f"matching.storage[{u.unit}].hourly_charge_wh (sum)",
            sum(u.charge),
            sum(energy.get(c, 0) for c in u.charge_channels),
        )
        out.compare(
            f"matching.storage[{u.unit}].hourly_discharge_wh (sum)",
            sum(u.discharge),
            sum(energy.get(c, 0) for c in u.discharge_channels),
        )
    m = match(inputs)
    certs = block.get("certificates")
    factors = block.get("grid_factors")
    again = matching_block(
        m,
        certificates={k: v for k, v in certs.items() if k not in _CERT_COMPUTED} if isinstance(certs, dict) else None,
        grid_factors={k: v for k, v in factors.items() if k not in _FACTOR_COMPUTED}
        if isinstance(factors, dict)
        else None,
        annual_factor=str(report["indicators"]["co2_factors"]["location"]["value"]),
    )
    _compare_block(out, "matching", block, again)
    return m


def _check_indicators(
    out: Outcome,
    report: dict[str, Any],
    results: list[ChannelResult],
    *,
    with_hourly: bool,
    matched: Matched | None = None,
) -> None:
    """Recompute the indicators; without the intervals (`with_hourly` false) the hourly figures are
    checked only where the report's own hourly matching inputs (`matched`) give them."""
    ind = report["indicators"]
    method = report["method"]
    indicators, producer = site_indicators(
        results,
        interval_s=int(method["interval_s"]),
        month=report["period"]["month"],
        factors=ind["co2_factors"],
        guarantees=ind["guarantees_of_origin"],
        threshold=method["renewable_share_threshold"],
        threshold_basis=method["threshold_basis"],
        balance_tolerance=method["balance_tolerance"],
        matched=matched,
    )
    if method.get("hourly_matching") and matched is None:
        return  # the matching block did not check out: its failures are listed already
    for key, value in indicators.items():
        if (
            not with_hourly
            and matched is None
            and key in _HOURLY_KEYS
            and not (key == "threshold_met" and method["threshold_basis"] != "hourly")
        ):
            continue
        out.compare(f"indicators.{key}", ind.get(key), value)
    rep_prod = report.get("producer")
    if (rep_prod is None) != (producer is None):
        out.compare("producer", rep_prod, producer)
    elif rep_prod is not None and producer is not None:
        for key, value in producer.items():
            if not with_hourly and key.startswith("hourly_"):
                continue
            out.compare(f"producer.{key}", rep_prod.get(key), value)


def _check_internal(out: Outcome, report: dict[str, Any]) -> None:
    own = policy_of_method(report["method"])
    for ch in report["channels"]:
        parts = int(ch["measured_wh"]) + int(ch["interpolated_wh"]) + int(ch["estimated_wh"])
        if parts != ch["energy_wh"]:
            out.fail(
                "energy_split",
                f"{ch['id']}: energy_wh {ch['energy_wh']} != measured + interpolated + estimated {parts}",
            )
        if "hourly_wh" in ch:  # the hourly profile must add up to the total (each hour is rechecked with evidence)
            hourly = ch["hourly_wh"]
            if not isinstance(hourly, list) or any(not isinstance(x, int) or isinstance(x, bool) for x in hourly):
                out.fail("hourly_profile", f"{ch['id']}: hourly_wh is not a list of integers")
            elif sum(hourly) != ch["energy_wh"]:
                out.fail(
                    "hourly_profile", f"{ch['id']}: hourly_wh adds up to {sum(hourly)}, energy_wh is {ch['energy_wh']}"
                )
        if bool(report["method"].get("hourly_profiles")) != ("hourly_wh" in ch):
            out.fail("hourly_profile", f"{ch['id']}: hourly_wh present {'hourly_wh' in ch} but method.hourly_profiles"
                     f" {report['method'].get('hourly_profiles')}")  # fmt: skip
        g = grade_channel(ch, own)
        out.compare(f"channel.{ch['id']}.grade", ch["grade"], g.total)
        out.compare(f"channel.{ch['id']}.interval_grade", ch.get("interval_grade"), g.intervals)
    results = _pseudo_results(report, None)
    matched = _check_matching_internal(out, report) if report["method"].get("hourly_matching") else None
    _check_indicators(out, report, results, with_hourly=False, matched=matched)
    q = report["quality"]
    expected = report_quality(
        report["channels"],
        indicators=report["indicators"],
        complete=report["period"]["complete"],
        method=report["method"],
    )
    for key in ("grade", "claims", "reasons", "thresholds", "lenient_vs_scheme", "channels"):
        out.compare(f"quality.{key}", q.get(key), expected[key])


def _check_period(out: Outcome, report: dict[str, Any]) -> None:
    per = report["period"]
    try:
        p = month_period(per["month"], per["timezone"])
    except (BadMonth, KeyError, ValueError) as exc:
        out.fail("period", f"cannot rebuild the period ({exc})")
        return
    out.compare("period.start", per["start"], iso_ms(p.start_ms))
    out.compare("period.end", per["end"], iso_ms(p.end_ms))
    out.compare("period.hours", per["hours"], p.hours)


def _check_previous(out: Outcome, report: dict[str, Any], previous: bytes) -> None:
    sha = hashlib.sha256(previous).hexdigest()
    out.compare("previous_report", report.get("previous_report_sha256"), sha)
    try:
        prev = json.loads(previous)
    except ValueError:
        out.fail("previous_report", "previous report is not JSON")
        return
    closings = {ch["id"]: ch["closing"] for ch in prev.get("channels", [])}
    for ch in report["channels"]:
        if ch["id"] in closings:
            a, b = closings[ch["id"]], ch["opening"]
            keys = ("ts", "method", "register_value", "reading")
            out.compare(f"continuity.{ch['id']}", {k: b.get(k) for k in keys}, {k: a.get(k) for k in keys})


# -- keys -----------------------------------------------------------------------------------------
def _check_key(
    out: Outcome,
    report: dict[str, Any],
    pinned: Mapping[str, Ed25519PublicKey],
    transitions: list[Any],
    *,
    float_free: bool = False,
) -> dict[str, Ed25519PublicKey]:
    """Follow the key transitions from the pinned keys; check the signature with the key in force
    (`float_free`: the report's bytes held no float, see `signing.canonical`)."""
    site = str(report.get("site", {}).get("id"))
    chain = follow(pinned, [(t.get("event_id"), t) for t in transitions], site=site)
    out.notes.extend(chain.notes)
    for p in chain.problems:
        out.fail("signature.transition", p)
    sig = report.get("signature")
    signer = sig.get("key_id") if isinstance(sig, dict) else None
    if chain.current is not None and signer != chain.current:
        out.fail(
            "signature",
            f"report signed by key {signer}, but the key in force at its events head is {chain.current}"
            " (a retired key signs nothing after its transition)",
        )
        return chain.trusted
    key = chain.trusted.get(str(signer))
    if key is None:
        out.fail(
            "signature",
            f"signature key_id {signer} != published key {', '.join(sorted(pinned)) or '(none)'}: the report's"
            " key is neither pinned nor reached from a pinned key by a transition the old key signed",
        )
        return chain.trusted
    problem = verify_signature(report, key, float_free=float_free)
    if problem is not None:
        out.fail("signature", problem)
    else:
        out.key_id = key_id(key)
    return chain.trusted


# -- evidence --------------------------------------------------------------------------------------
def _entry_hash(line: dict[str, Any]) -> bytes:
    entry = {k: line[k] for k in ("seq", "ts", "device", "quantity", "value", "unit", "quality")}
    return hashlib.sha256(bytes.fromhex(line["prev_hash"]) + rfc8785.dumps(entry)).digest()


def _event_hash(prev: bytes, line: dict[str, Any]) -> bytes:
    """As the ledger chains its events (gateway.ledger.store.canonical_event), kept here so `gia verify`
    needs nothing of the agent."""
    event = {k: line[k] for k in ("id", "ts", "kind", "device", "detail")}
    return hashlib.sha256(prev + rfc8785.dumps(event)).digest()


def _chained_events(out: Outcome, report: dict[str, Any], files: dict[str, bytes]) -> list[dict[str, Any]] | None:
    """The bundle's events re-chained to the signed head; None when they cannot be used."""
    ev = report["evidence"]
    if "events_head_id" not in ev:
        out.notes.append("report predates the events chain: events not checked")
        return None
    if bundle.EVENTS not in files:
        out.fail("evidence.events", f"the report commits to an events chain but the bundle has no {bundle.EVENTS}")
        return None
    try:
        events = bundle.parse_readings(files[bundle.EVENTS], bundle.EVENTS)
    except bundle.BundleError as exc:
        raise Unusable(str(exc)) from None
    prev = bytes(32)
    for n, line in enumerate(events, 1):
        if line.get("id") != n:
            out.fail("evidence.events", f"event {n} is missing from {bundle.EVENTS} (found id {line.get('id')!r})")
            return None
        prev = _event_hash(prev, line)
        if prev.hex() != line.get("hash"):
            out.fail("evidence.events", f"event {n} ({line.get('kind')}) does not match its chain hash")
            return None
    out.compare("evidence.events_head_id", int(ev["events_head_id"]), len(events))
    out.compare("evidence.events_head", ev["events_head"], prev.hex())
    return events


def _check_reissue(
    out: Outcome,
    report: dict[str, Any],
    events: list[dict[str, Any]] | None,
    files: dict[str, bytes] | None,
    trusted: Mapping[str, Ed25519PublicKey],
) -> None:
    """One authoritative report per closed month: a report for a month the chain already records as
    closed must be a reissue of the last closing; the reports it replaces are shown (and checked when
    the bundle carries them)."""
    month = report["period"]["month"]
    reissue_of = report.get("reissue_of")
    if reissue_of:
        out.notes.append(f"{month}: reissue of report {reissue_of} (reason: {report.get('reissue_reason')})")
    if events is None:
        return
    closings = ev_mod.report_closings(events, month)
    for c in closings:
        out.notes.append(
            f"events chain: {month} closed as report {c.get('report_sha256')} (event {c['event_id']}"
            + (f", reissue of {c.get('reissue_of')}: {c.get('reissue_reason')}" if c.get("reissue_of") else "")
            + ")"
        )
    problem = ev_mod.reissue_problem(month, reissue_of, closings)
    if problem is not None:
        out.fail("reissue", problem)
    if files is None or not reissue_of:
        return
    sha = reissue_of
    while sha:
        data = files.get(f"{bundle.REPLACED_DIR}/{sha}.json")
        if data is None:
            out.fail("reissue", f"the bundle lacks {bundle.REPLACED_DIR}/{sha}.json, the report this one replaces")
            return
        if hashlib.sha256(data).hexdigest() != sha:
            out.fail("reissue", f"{bundle.REPLACED_DIR}/{sha}.json does not hash to {sha}")
            return
        old = json.loads(data)
        if old.get("site", {}).get("id") != report["site"]["id"] or old.get("period", {}).get("month") != month:
            out.fail("reissue", f"replaced report {sha} is not for {report['site']['id']} {month}")
            return
        signer = str(old.get("signature", {}).get("key_id"))
        key = trusted.get(signer)
        problem = verify_signature(old, key) if key is not None else f"signed by untrusted key {signer}"
        if problem is not None:
            out.fail("reissue", f"replaced report {sha}: {problem}")
            return
        sha = old.get("reissue_of")


def _check_evidence(
    out: Outcome, report: dict[str, Any], files: dict[str, bytes], events: list[dict[str, Any]] | None, policy: Policy
) -> list[dict[str, Any]] | None:
    """Recompute the report from the bundle. Returns the channels recomputed under `policy`'s method
    parameters when the report's are more lenient (None when no such recomputation was needed)."""
    try:
        lines = bundle.parse_readings(files[bundle.READINGS])
    except bundle.BundleError as exc:
        raise Unusable(str(exc)) from None
    channels = report["channels"]
    ids = [ch["id"] for ch in channels]
    by_id = {ch["id"]: ch for ch in channels}
    by_channel: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    order_problems = 0
    line_problems = 0
    last_block = -1
    for n, line in enumerate(lines, 1):
        try:
            block = ids.index(line["channel"])
        except (KeyError, ValueError):
            out.fail("evidence.channel", f"line {n}: channel {line.get('channel')!r} is not in the report")
            continue
        ch = by_id[line["channel"]]
        wrong = [
            f"{k} {line.get(k)!r} != {want!r}"
            for k, want in (("device", ch["device"]), ("quantity", ch["quantity"]))
            if line.get(k) != want
        ]
        try:
            if line.get("time") != iso_ms(int(line["ts"])):
                wrong.append(f"time {line.get('time')!r} != ts {line['ts']} ({iso_ms(int(line['ts']))})")
        except (KeyError, TypeError, ValueError):
            wrong.append("no integer ts")
        if wrong:
            line_problems += 1
            if line_problems <= 5:
                out.fail("evidence.line", f"line {n} (channel {ch['id']}, seq {line.get('seq')}): {'; '.join(wrong)}")
        if block < last_block:
            order_problems += 1
        last_block = block
        rows = by_channel[line["channel"]]
        if rows and (rows[-1]["ts"], rows[-1]["seq"]) >= (line["ts"], line["seq"]):
            order_problems += 1
            if order_problems <= 5:
                out.fail(
                    "evidence.order",
                    f"line {n}: seq {line['seq']} at {line.get('time')} does not follow seq {rows[-1]['seq']}",
                )
        rows.append(line)
    if line_problems > 5:
        out.fail("evidence.line", f"{line_problems} lines in total do not belong to their channel")
    # chain: every reading re-hashed from its predecessor's hash; consecutive entries linked
    hashes: dict[int, str] = {}
    bad_hash = 0
    for line in lines:
        try:
            ok = _entry_hash(line).hex() == line["hash"]
        except (KeyError, ValueError, TypeError):
            ok = False
        if not ok:
            bad_hash += 1
            if bad_hash <= 5:
                out.fail(
                    "evidence.chain",
                    f"seq {line.get('seq')}: stored hash {str(line.get('hash'))[:16]}... != SHA-256(prev_hash"
                    " || RFC8785(entry)) recomputed from the line",
                )
        hashes[int(line.get("seq", 0))] = str(line.get("hash"))
    if bad_hash > 5:
        out.fail("evidence.chain", f"{bad_hash} readings in total do not match their chain hash")
    for line in lines:
        prev = hashes.get(int(line["seq"]) - 1)
        if prev is not None and prev != line["prev_hash"]:
            out.fail("evidence.chain", f"seq {line['seq']}: prev_hash != hash of seq {int(line['seq']) - 1}")
    # readings used: counts and Merkle roots
    series: dict[str, Series] = {}
    for cid in ids:
        rows = by_channel[cid]
        series[cid] = Series(
            [int(r["ts"]) for r in rows],
            [int(r["value"]) for r in rows],
            [int(r["seq"]) for r in rows],
            [bytes.fromhex(r["hash"]) for r in rows],
        )
    ev = report["evidence"]
    specs = [ChannelSpec.from_report(ch) for ch in channels]
    summary = evidence_summary(
        [channel_day_roots(series[i]) for i in ids],
        head_seq=int(ev["chain_head_seq"]),
        head_hash=bytes.fromhex(ev["chain_head"]),
    )
    day_list = summary["days"]
    out.compare("evidence.entries", ev["entries"], summary["entries"])
    out.compare("evidence.merkle_root", ev["merkle_root"], summary["merkle_root"])
    if ev.get("days") != day_list:
        out.compare("evidence.days", len(ev.get("days", [])), len(day_list))
        if len(ev.get("days", [])) == len(day_list):
            for a, b in zip(ev["days"], day_list, strict=True):
                out.compare(f"evidence.days.{b['day']}", a, b)
    for line in lines:
        if int(line["seq"]) > int(ev["chain_head_seq"]):
            out.fail("evidence.chain", f"seq {line['seq']} is beyond the signed chain head {ev['chain_head_seq']}")
            break
    # meter replacements: from the events chain (what the gateway read), else the report (older reports)
    reps: dict[str, list[Replacement]] = {}
    if events is not None:
        all_reps = ev_mod.replacements(events, max_id=int(ev["events_head_id"]))
        for spec in specs:
            reps[spec.id] = [r for r in all_reps if r.device == spec.device and r.quantity == spec.quantity]
    bad: dict[str, int] = {}
    for ch in channels:
        bad[ch["id"]] = next(
            (int(v.get("count", 0)) for v in ch.get("validation", []) if v.get("rule") == "meter_status"), 0
        )
    per = report["period"]
    start = parse_iso_ms(per["start"])
    end = parse_iso_ms(per["end"]) if per["complete"] else parse_iso_ms(per["as_of"])
    params = Params.from_json(report["method"])
    serials = _serials(out, report, files, start, end)
    results = compute_all(
        specs, series, start_ms=start, end_ms=end, params=params, replacements=reps, bad_readings=bad, serials=serials
    )
    for ch, res in zip(channels, results, strict=True):
        for key in sorted(set(ch) | set(res.json)):
            if ch.get(key) != res.json.get(key):
                out.compare(f"channel.{ch['id']}.{key}", ch.get(key), res.json.get(key))
    matched = None
    if report["method"].get("hourly_matching"):
        matched = _check_matching_evidence(out, report, files, events, results, params, start)
    _check_indicators(out, report, results, with_hourly=True, matched=matched)
    if bundle.INTERVALS not in files:
        out.fail("evidence.files", f"the bundle has no {bundle.INTERVALS}: the interval figures cannot be checked")
    else:
        expected_csv = bundle.INTERVALS_HEADER + "".join(
            line
            for r in results
            for line in bundle.intervals_csv_lines(
                r.spec.id, start, params.interval_s, end, r.interval_wh, r.interval_quality
            )
        )
        got = files[bundle.INTERVALS].decode(errors="replace")
        if got != expected_csv:
            ga, gb = got.splitlines(), expected_csv.splitlines()
            first = next((i for i, (x, y) in enumerate(zip(ga, gb, strict=False)) if x != y), min(len(ga), len(gb)))
            out.fail(
                "evidence.intervals",
                f"intervals.csv line {first + 1}: bundle has {ga[first] if first < len(ga) else '<end>'!r},"
                f" recomputed {gb[first] if first < len(gb) else '<end>'!r}",
            )
    if any(p["kind"] == "method" for p in lenient_parameters(report["method"], policy)):
        again = compute_all(
            specs,
            series,
            start_ms=start,
            end_ms=end,
            params=params.under(policy),
            replacements=reps,
            bad_readings=bad,
            serials=serials,
        )
        return [r.json for r in again]
    return None


def _check_matching_evidence(
    out: Outcome,
    report: dict[str, Any],
    files: dict[str, bytes],
    events: list[dict[str, Any]] | None,
    results: list[ChannelResult],
    params: Params,
    start: int,
) -> Matched | None:
    """The hourly matching recomputed from the readings and the events chain's imports; the bundle's
    allocation and cancellation files compared line for line with what that recomputation writes."""
    _, hours = _hours(report)
    evs = events or []
    outcome = compute_matching(
        results,
        interval_s=params.interval_s,
        start_ms=start,
        annual_factor=str(report["indicators"]["co2_factors"]["location"]["value"]),
        certificates=certificates_for_period(evs, max_id=None, start_ms=start, hours=hours),
        factors=factors_for_period(evs, max_id=None, start_ms=start, hours=hours),
    )
    _compare_block(out, "matching", report.get("matching"), outcome.block)
    for name, expected in (
        (bundle.STORAGE_ALLOCATION, outcome.allocation_csv),
        (bundle.CERTIFICATES, outcome.cancellation_csv),
    ):
        got = files.get(name)
        if expected is None:
            if got is not None:
                out.fail("evidence.files", f"the bundle has {name} but the report's matching has no such records")
            continue
        if got is None:
            out.fail("evidence.files", f"the bundle has no {name}: the hourly matching's records cannot be checked")
            continue
        text = got.decode(errors="replace")
        if text != expected:
            ga, gb = text.splitlines(), expected.splitlines()
            first = next((i for i, (x, y) in enumerate(zip(ga, gb, strict=False)) if x != y), min(len(ga), len(gb)))
            rule = "evidence.storage_allocation" if name == bundle.STORAGE_ALLOCATION else "evidence.certificates"
            out.fail(
                rule,
                f"{name} line {first + 1}: bundle has {ga[first] if first < len(ga) else '<end>'!r},"
                f" recomputed {gb[first] if first < len(gb) else '<end>'!r}",
            )
    return outcome.matched


def _serials(
    out: Outcome, report: dict[str, Any], files: dict[str, bytes], start: int, end: int
) -> dict[str, list[int]]:
    """The serial numbers the meters reported (bundle `serials.jsonl`), each line checked against its
    chain hash, its channel's device and the signed chain head."""
    by_id = {ch["id"]: ch for ch in report["channels"]}
    if bundle.SERIALS not in files:
        if any(ch["meter"].get("serial_read") for ch in report["channels"]):
            out.fail(
                "evidence.files", f"the report records serials read from meters but the bundle has no {bundle.SERIALS}"
            )
        return {}
    try:
        lines = bundle.parse_readings(files[bundle.SERIALS], bundle.SERIALS)
    except bundle.BundleError as exc:
        raise Unusable(str(exc)) from None
    head = int(report["evidence"]["chain_head_seq"])
    found: dict[str, list[int]] = {}
    for n, line in enumerate(lines, 1):
        ch = by_id.get(str(line.get("channel")))
        problems = []
        if ch is None:
            problems.append(f"channel {line.get('channel')!r} is not in the report")
        elif line.get("device") != ch["device"] or line.get("quantity") != "serial_number":
            problems.append(f"{line.get('device')}/{line.get('quantity')} is not {ch['device']}/serial_number")
        try:
            if _entry_hash(line).hex() != line["hash"]:
                problems.append("does not match its chain hash")
            if int(line["seq"]) > head or not start <= int(line["ts"]) < end:
                problems.append("outside the report's chain head or period")
        except (KeyError, ValueError, TypeError):
            problems.append("is not a ledger entry")
        if problems:
            out.fail("evidence.serials", f"{bundle.SERIALS} line {n}: {'; '.join(problems)}")
            continue
        found.setdefault(str(line["channel"]), []).append(int(line["value"]))
    return found


def _check_policy(
    out: Outcome, report: dict[str, Any], policy: Policy, recomputed: list[dict[str, Any]] | None
) -> None:
    """Grade the report's facts under the certifier's policy; fail a self-declared grade that is better."""
    channels = recomputed if recomputed is not None else report["channels"]
    g = grade_report(
        channels,
        indicators=report["indicators"],
        complete=bool(report["period"]["complete"]),
        policy=policy,
        method=report["method"],
        recomputed=recomputed is not None,
    )
    grade = g["grade"]
    per = report["period"]
    if per["complete"]:
        closed = parse_iso_ms(report["generated_at"]) - parse_iso_ms(per["end"])
        if closed < policy.settlement_delay_h * 3_600_000:
            grade = GRADES[max(GRADES.index(grade), 1)]
            g["reasons"].append(
                f"closed {closed // 3_600_000} h after the month's end, before the policy's settlement delay of"
                f" {policy.settlement_delay_h} h"
            )
    declared = report["quality"]["grade"]
    out.policy, out.policy_grade, out.declared_grade = policy.name, grade, declared
    if GRADES.index(declared) < GRADES.index(grade):
        out.fail(
            "policy.grade",
            f"report says {declared}, the policy {policy.name!r} gives {grade}: " + "; ".join(g["reasons"][:6]),
        )
    declared_ch = {ch["id"]: ch for ch in report["channels"]}
    for pc in g["per_channel"]:
        ch = declared_ch.get(pc["id"])
        if ch is None:
            continue
        for key in ("grade", "interval_grade"):
            if GRADES.index(ch[key]) < GRADES.index(pc[key]):
                out.fail(f"policy.channel.{pc['id']}.{key}", f"report says {ch[key]}, the policy gives {pc[key]}")


# -- entry points ----------------------------------------------------------------------------------
def verify_report(
    data: bytes,
    *,
    public_key: Ed25519PublicKey | None = None,
    trusted: Sequence[PinnedKey] | None = None,
    evidence: dict[str, bytes] | None = None,
    previous: bytes | None = None,
    policy: Policy | None = None,
) -> Outcome:
    """Check a report; raises `Unusable` when it cannot be checked at all.

    Trust comes from `public_key` (one pinned key) and/or `trusted` (pinned keys, possibly site-bound);
    with neither, the signature rule fails. `policy` defaults to the scheme's published defaults.
    """
    out = Outcome()
    policy = policy or Policy()
    report, framing, floats = _parse_counting_floats(data)
    for problem in framing:
        out.fail("json.framing", problem)
    if floats:
        try:
            assert_no_float(report)
        except FloatInSignedData as exc:
            out.fail("no_float", str(exc))
    if report.get("schema") != SCHEMA:
        raise Unusable(f"schema {report.get('schema')!r} is not {SCHEMA!r}")
    try:
        site = str(report["site"]["id"])
        pinned: dict[str, Ed25519PublicKey] = dict(pinned_for(site, trusted or []))
        if public_key is not None:
            pinned[key_id(public_key)] = public_key
        trusted_chain = _check_key(out, report, pinned, list(report.get("key_transitions", [])), float_free=floats == 0)
        _check_period(out, report)
        _check_internal(out, report)
        if previous is None and evidence is not None:
            previous = evidence.get(bundle.PREVIOUS)
        if previous is not None:
            _check_previous(out, report, previous)
        elif report.get("previous_report_sha256"):
            if evidence is not None:
                out.fail(
                    "evidence.files",
                    f"the bundle has no {bundle.PREVIOUS}: the chain to {report['previous_report_sha256']} and the"
                    " shared boundaries cannot be checked",
                )
            else:
                out.notes.append("previous report not provided: chain link not checked")
        events = None
        recomputed = None
        if evidence is not None:
            events = _chained_events(out, report, evidence)
            if events is not None:
                from_chain = [{"event_id": i, **d} for i, d in transitions_from_events(events)]
                out.compare("key_transitions", report.get("key_transitions", []), from_chain)
            recomputed = _check_evidence(out, report, evidence, events, policy)
        _check_reissue(out, report, events, evidence, trusted_chain)
        _check_policy(out, report, policy, recomputed)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        out.fail("schema", f"report or evidence is missing or mistypes a field ({type(exc).__name__}: {exc})")
    return out


def run(argv: Sequence[str] | None = None, *, stdout: Any = None) -> int:
    """CLI body shared by `gia verify` and `python -m gateway.certification.verify`."""
    ap = argparse.ArgumentParser(
        prog="gia verify",
        description="verify a signed GIA monthly (or area) report offline against keys you pinned",
    )
    ap.add_argument("report", type=Path)
    ap.add_argument("--public-key", type=Path, default=None, help="the site's pinned public key (PEM)")
    ap.add_argument(
        "--trusted-keys",
        type=Path,
        default=None,
        help="pinned keys: PEM blocks, or the JSON of GET /api/v1/keys (binds each key to its site)",
    )
    ap.add_argument("--policy", type=Path, default=None, help="the certifier's grading policy (JSON or YAML)")
    ap.add_argument("--evidence", type=Path, default=None, help="evidence bundle directory or zip")
    ap.add_argument("--previous", type=Path, default=None, help="the previous month's report")
    ap.add_argument(
        "--log-head",
        type=Path,
        default=None,
        help="an area hub's signed tree head, or its inclusion proof file (gia hub log proof), which embeds the head:"
        " checks that the report is in the hub's transparency log",
    )
    ap.add_argument("--log-proof", type=Path, default=None, help="the inclusion proof, when --log-head is a bare head")
    ap.add_argument("--hub-key", type=Path, default=None, help="the area hub's public key you pinned (PEM)")
    args = ap.parse_args(argv)
    return verify_paths(
        args.report,
        public_key=args.public_key,
        trusted_keys=args.trusted_keys,
        policy=args.policy,
        evidence=args.evidence,
        previous=args.previous,
        log_head=args.log_head,
        log_proof=args.log_proof,
        hub_key=args.hub_key,
        stdout=stdout,
    )


def verify_paths(
    report: Path,
    *,
    public_key: Path | None,
    evidence: Path | None,
    trusted_keys: Path | None = None,
    policy: Path | None = None,
    previous: Path | None = None,
    log_head: Path | None = None,
    log_proof: Path | None = None,
    hub_key: Path | None = None,
    stdout: Any = None,
) -> int:
    w = stdout or sys.stdout
    try:
        data = report.read_bytes()
        head, _ = parse_report_strict(data)
        chosen = load_policy(policy) if policy is not None else None
        pol = chosen or Policy()
        trusted = load_trusted_keys(trusted_keys) if trusted_keys is not None else []
        key = load_public_pem(public_key.read_bytes()) if public_key is not None else None
        log = _load_log(log_head, log_proof, hub_key) if log_head is not None else None
        if head.get("schema") == "gia-area-report/1":
            from gateway.certification.area import verify_area_paths

            rc = verify_area_paths(report, evidence, public_key=key, trusted=trusted, policy=chosen, stdout=w)
            return _check_log(data, log, rc, w)
        if key is None and not trusted:
            print(
                "unusable input: no trusted key: pass --public-key PINNED.pem or --trusted-keys FILE (the keys you"
                " pinned out of band; a key shipped with the report or bundle is never trusted)",
                file=w,
            )
            return 2
        files = bundle.load_bundle(evidence) if evidence is not None else None
        prev = previous.read_bytes() if previous is not None else None
        outcome = verify_report(data, public_key=key, trusted=trusted, evidence=files, previous=prev, policy=pol)
    except (OSError, Unusable, bundle.BundleError, KeyFileError, TrustError, PolicyError, ValueError) as exc:
        print(f"unusable input: {exc}", file=w)
        return 2
    except RecursionError:
        # json (and YAML) parse nested arrays/objects recursively: a document nested thousands deep is hostile
        print(
            "unusable input: a JSON (or YAML) document is nested too deeply to be a report, policy, key list or"
            " evidence file (hostile or corrupt input)",
            file=w,
        )
        return 2
    except MemoryError:
        print("unusable input: not enough memory to read it (a hostile or corrupt bundle?)", file=w)
        return 2
    except Exception as exc:  # hostile input must end in exit 2 and a sentence, never a traceback
        print(
            f"unusable input: it could not be checked ({type(exc).__name__}: {exc}); the files are malformed",
            file=w,
        )
        return 2
    for note in outcome.notes:
        print(f"note: {note}", file=w)
    for f in outcome.failures:
        print(str(f), file=w)
    if outcome.ok:
        print(
            f"OK {head['site']['id']} {head['period']['month']}: signature valid, key {outcome.key_id}"
            + (", evidence recomputed" if files is not None else "")
            + f", grade {outcome.policy_grade} under policy {outcome.policy!r}"
            + (f" (report says {outcome.declared_grade})" if outcome.declared_grade != outcome.policy_grade else ""),
            file=w,
        )
        return _check_log(data, log, 0, w)
    print(f"INVALID: {len(outcome.failures)} rule(s) failed", file=w)
    return _check_log(data, log, 1, w)


def _load_log(
    log_head: Path, log_proof: Path | None, hub_key: Path | None
) -> tuple[dict[str, Any], dict[str, Any], Ed25519PublicKey]:
    """(tree head, inclusion proof, hub key) for `--log-head`; raises Unusable with what is missing."""
    from gateway.certification.logproof import load_log_files

    if hub_key is None:
        raise Unusable("--log-head needs --hub-key HUB.pem: the area hub's public key you pinned (gia hub keys export)")
    hub = load_public_pem(hub_key.read_bytes())
    try:
        head, proof = load_log_files(log_head.read_bytes(), log_proof.read_bytes() if log_proof is not None else None)
    except ValueError as exc:
        raise Unusable(str(exc)) from None
    return head, proof, hub


def _check_log(
    data: bytes, log: tuple[dict[str, Any], dict[str, Any], Ed25519PublicKey] | None, rc: int, w: Any
) -> int:
    """With `--log-head`: the report (its exact bytes) must be in the hub's log under the signed head."""
    if log is None or rc == 2:
        return rc
    from gateway.certification.logproof import check_report_inclusion

    head, proof, hub = log
    problems = check_report_inclusion(data, proof, head, hub)
    for p in problems:
        print(f"FAIL log.inclusion: {p}", file=w)
    if problems:
        return 1
    print(
        f"OK log: included at leaf {proof['leaf_index']} of the hub's log (tree size {head['tree_size']}, root"
        f" {head['root']}), tree head signed by hub key {key_id(hub)}",
        file=w,
    )
    return rc


if __name__ == "__main__":
    raise SystemExit(run())
