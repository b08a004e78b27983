"""`gia verify`: offline verification of a signed monthly report (and its evidence bundle).

A certifier runs this without the agent: it imports only the standard library, `cryptography`,
`rfc8785` and this package's pure modules (`compute`, `report`, `exact`, `merkle`, `periods`, `signing`,
`bundle`, `solar`) — the same arithmetic the gateway used, so recomputed figures match to the Wh. It
can run as `python -m gateway.certification.verify` where `typer` is not installed.

Rules (each failure is printed with the numbers on both sides):

1. `json`, `no_float`, `schema` — the report is a JSON object of our schema with no float anywhere;
2. `signature` — Ed25519 over the RFC 8785 canonical report without `signature`, by the published key;
3. `period` — start/end are the civil month in the report's time zone;
4. `energy_split`, `indicators.*`, `quality.grade` — internal consistency (totals, balance, shares,
   CO2 from the embedded factors, grade from the channel grades);
5. `previous_report`, `continuity.*` — with the previous report: its SHA-256 and shared boundaries;
6. with `--evidence`: `evidence.order`, `evidence.chain` (each reading re-hashed with its predecessor's
   hash, consecutive entries linked), `evidence.entries`, `evidence.merkle_root`, `evidence.days`;
   then every channel recomputed from the readings (`channel.<id>.<field>`), the indicators including the
   hourly-matched share, and `intervals.csv`.

Exit status: 0 valid, 1 invalid (failed rules listed), 2 unusable input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from drivers.errors import GiaError
from gateway.certification import bundle
from gateway.certification.compute import (
    ChannelResult,
    Params,
    Replacement,
    Series,
    channel_day_roots,
)
from gateway.certification.exact import FloatInSignedData, assert_no_float, iso_ms, parse_iso_ms
from gateway.certification.periods import BadMonth, month_period
from gateway.certification.report import (
    SCHEMA,
    compute_all,
    evidence_summary,
    report_quality,
    site_indicators,
)
from gateway.certification.signing import KeyFileError, load_public_pem, verify_signature
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


def parse_report(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unusable(f"report is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise Unusable("report is not a JSON object")
    return obj


# -- internal consistency ------------------------------------------------------------------------------
def _pseudo_results(report: dict[str, Any], intervals: dict[str, list[int]] | None) -> list[ChannelResult]:
    out = []
    for ch in report["channels"]:
        spec = ChannelSpec.from_report(ch)
        iv = intervals.get(spec.id, []) if intervals is not None else []
        out.append(ChannelResult(spec, ch, iv, [], Series(), int(ch["energy_wh"]), ch["grade"]))
    return out


_HOURLY_KEYS = ("hourly_matched_share", "hourly_matched_wh", "hourly_load_wh", "threshold_met")


def _check_indicators(out: Outcome, report: dict[str, Any], results: list[ChannelResult], *, with_hourly: bool) -> None:
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
    )
    for key, value in indicators.items():
        if (
            not with_hourly
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
    for ch in report["channels"]:
        parts = int(ch["measured_wh"]) + int(ch["interpolated_wh"]) + int(ch["estimated_wh"])
        if parts != ch["energy_wh"]:
            out.fail(
                "energy_split",
                f"{ch['id']}: energy_wh {ch['energy_wh']} != measured + interpolated + estimated {parts}",
            )
    results = _pseudo_results(report, None)
    _check_indicators(out, report, results, with_hourly=False)
    q = report["quality"]
    expected = report_quality(results, complete=report["period"]["complete"], thresholds=q["thresholds"])
    out.compare("quality.grade", q["grade"], expected["grade"])
    out.compare("quality.reasons", q["reasons"], expected["reasons"])
    m = report["method"]
    out.compare(
        "quality.thresholds",
        q["thresholds"],
        {
            "min_energy_coverage": m["min_energy_coverage"],
            "max_estimated_share": m["max_estimated_share"],
            "renewable_share_threshold": m["renewable_share_threshold"],
        },
    )


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
            keys = ("ts", "method", "register_wh", "reading")
            out.compare(f"continuity.{ch['id']}", {k: b.get(k) for k in keys}, {k: a.get(k) for k in keys})


# -- evidence --------------------------------------------------------------------------------------
def _entry_hash(line: dict[str, Any]) -> bytes:
    entry = {k: line[k] for k in ("seq", "ts", "device", "quantity", "value", "unit", "quality")}
    return hashlib.sha256(bytes.fromhex(line["prev_hash"]) + rfc8785.dumps(entry)).digest()


def _event_hash(prev: bytes, line: dict[str, Any]) -> bytes:
    """As the ledger chains its events (gateway.ledger.store.canonical_event), kept here so `gia verify`
    needs nothing of the agent."""
    event = {k: line[k] for k in ("id", "ts", "kind", "device", "detail")}
    return hashlib.sha256(prev + rfc8785.dumps(event)).digest()


def _check_events(out: Outcome, report: dict[str, Any], files: dict[str, bytes]) -> None:
    """The bundle's events re-chained to the signed head; the report's meter replacements among them."""
    ev = report["evidence"]
    if "events_head_id" not in ev:
        out.notes.append("report predates the events chain: events not checked")
        return
    if bundle.EVENTS not in files:
        out.fail("evidence.events", f"the report commits to an events chain but the bundle has no {bundle.EVENTS}")
        return
    try:
        events = bundle.parse_readings(files[bundle.EVENTS], bundle.EVENTS)
    except bundle.BundleError as exc:
        raise Unusable(str(exc)) from None
    prev = bytes(32)
    by_id: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(events, 1):
        if line.get("id") != n:
            out.fail("evidence.events", f"event {n} is missing from {bundle.EVENTS} (found id {line.get('id')!r})")
            return
        prev = _event_hash(prev, line)
        if prev.hex() != line.get("hash"):
            out.fail("evidence.events", f"event {n} ({line.get('kind')}) does not match its chain hash")
            return
        by_id[n] = line
    out.compare("evidence.events_head_id", int(ev["events_head_id"]), len(events))
    out.compare("evidence.events_head", ev["events_head"], prev.hex())
    for ch in report["channels"]:
        for e in ch.get("register_events", []):
            rep = e.get("replacement")
            if rep is None:
                continue
            found = by_id.get(int(rep["event_id"]))
            if found is None or found.get("kind") != "meter_replacement" or iso_ms(int(found["ts"])) != rep["ts"]:
                out.fail(
                    "evidence.events",
                    f"channel {ch['id']}: meter replacement event {rep['event_id']} at {rep['ts']} is not in the"
                    " events chain",
                )


def _check_evidence(out: Outcome, report: dict[str, Any], files: dict[str, bytes]) -> None:
    try:
        lines = bundle.parse_readings(files[bundle.READINGS])
    except bundle.BundleError as exc:
        raise Unusable(str(exc)) from None
    channels = report["channels"]
    ids = [ch["id"] for ch in channels]
    by_channel: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    order_problems = 0
    last_block = -1
    for n, line in enumerate(lines, 1):
        try:
            block = ids.index(line["channel"])
        except (KeyError, ValueError):
            out.fail("evidence.channel", f"line {n}: channel {line.get('channel')!r} is not in the report")
            continue
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
    # recompute every channel
    reps: dict[str, list[Replacement]] = {}
    bad: dict[str, int] = {}
    for ch in channels:
        reps[ch["id"]] = sorted(
            (
                Replacement(
                    event_id=int(e["replacement"]["event_id"]),
                    ts_ms=parse_iso_ms(e["replacement"]["ts"]),
                    device=e["replacement"]["device"],
                    quantity=e["replacement"]["quantity"],
                    closing_wh=int(e["replacement"]["closing_wh"]),
                    opening_wh=int(e["replacement"]["opening_wh"]),
                    old_serial=e["replacement"].get("old_serial"),
                    new_serial=e["replacement"].get("new_serial"),
                )
                for e in ch.get("register_events", [])
                if "replacement" in e
            ),
            key=lambda r: (r.ts_ms, r.event_id),
        )
        bad[ch["id"]] = next(
            (int(v.get("count", 0)) for v in ch.get("validation", []) if v.get("rule") == "meter_status"), 0
        )
    per = report["period"]
    start = parse_iso_ms(per["start"])
    end = parse_iso_ms(per["end"]) if per["complete"] else parse_iso_ms(per["as_of"])
    params = Params.from_json({k: report["method"][k] for k in Params.__dataclass_fields__})
    results = compute_all(specs, series, start_ms=start, end_ms=end, params=params, replacements=reps, bad_readings=bad)
    for ch, res in zip(channels, results, strict=True):
        for key in sorted(set(ch) | set(res.json)):
            if ch.get(key) != res.json.get(key):
                out.compare(f"channel.{ch['id']}.{key}", ch.get(key), res.json.get(key))
    _check_indicators(out, report, results, with_hourly=True)
    _check_events(out, report, files)
    if bundle.INTERVALS in files:
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


# -- entry points ----------------------------------------------------------------------------------
def verify_report(
    data: bytes,
    *,
    public_key: Ed25519PublicKey | None,
    evidence: dict[str, bytes] | None = None,
    previous: bytes | None = None,
) -> Outcome:
    """Check a report; raises `Unusable` when it cannot be checked at all."""
    out = Outcome()
    report = parse_report(data)
    try:
        assert_no_float(report)
    except FloatInSignedData as exc:
        out.fail("no_float", str(exc))
    if report.get("schema") != SCHEMA:
        raise Unusable(f"schema {report.get('schema')!r} is not {SCHEMA!r}")
    if public_key is None:
        out.notes.append("no public key given: signature not checked")
    else:
        problem = verify_signature(report, public_key)
        if problem is not None:
            out.fail("signature", problem)
    try:
        _check_period(out, report)
        _check_internal(out, report)
        if previous is None and evidence is not None:
            previous = evidence.get(bundle.PREVIOUS)
        if previous is not None:
            _check_previous(out, report, previous)
        elif report.get("previous_report_sha256"):
            out.notes.append("previous report not provided: chain link not checked")
        if evidence is not None:
            _check_evidence(out, report, evidence)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        out.fail("schema", f"report or evidence is missing or mistypes a field ({type(exc).__name__}: {exc})")
    return out


def run(argv: Sequence[str] | None = None, *, stdout: Any = None) -> int:
    """CLI body shared by `gia verify` and `python -m gateway.certification.verify`."""
    ap = argparse.ArgumentParser(prog="gia verify", description="verify a signed GIA monthly report offline")
    ap.add_argument("report", type=Path)
    ap.add_argument("--public-key", type=Path, default=None, help="the site's published public key (PEM)")
    ap.add_argument("--evidence", type=Path, default=None, help="evidence bundle directory or zip")
    ap.add_argument("--previous", type=Path, default=None, help="the previous month's report")
    args = ap.parse_args(argv)
    return verify_paths(
        args.report, public_key=args.public_key, evidence=args.evidence, previous=args.previous, stdout=stdout
    )


def verify_paths(
    report: Path,
    *,
    public_key: Path | None,
    evidence: Path | None,
    previous: Path | None = None,
    stdout: Any = None,
) -> int:
    w = stdout or sys.stdout
    try:
        data = report.read_bytes()
        head = parse_report(data)
        if head.get("schema") == "gia-area-report/1":
            from gateway.certification.area import verify_area_paths

            return verify_area_paths(report, evidence, stdout=w)
        files = bundle.load_bundle(evidence) if evidence is not None else None
        key_pem: bytes | None
        if public_key is not None:
            key_pem = public_key.read_bytes()
        elif files is not None and bundle.PUBLIC_KEY in files:
            key_pem = files[bundle.PUBLIC_KEY]
            print(
                "note: using the public key from the evidence bundle; compare its fingerprint with the"
                " published one (or pass --public-key)",
                file=w,
            )
        else:
            key_pem = None
        key = load_public_pem(key_pem) if key_pem is not None else None
        prev = previous.read_bytes() if previous is not None else None
        outcome = verify_report(data, public_key=key, evidence=files, previous=prev)
    except (OSError, Unusable, bundle.BundleError, KeyFileError, ValueError) as exc:
        print(f"unusable input: {exc}", file=w)
        return 2
    if key is None:
        print("unusable input: no public key (pass --public-key PUBLISHED.pem)", file=w)
        return 2
    for note in outcome.notes:
        print(f"note: {note}", file=w)
    for f in outcome.failures:
        print(str(f), file=w)
    if outcome.ok:
        rep = json.loads(data)
        print(
            f"OK {rep['site']['id']} {rep['period']['month']}: signature valid"
            + (", evidence recomputed" if files is not None else "")
            + f", grade {rep['quality']['grade']}",
            file=w,
        )
        return 0
    print(f"INVALID: {len(outcome.failures)} rule(s) failed", file=w)
    return 1


if __name__ == "__main__":
    raise SystemExit(run())
