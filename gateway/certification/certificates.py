"""Imported files the hourly matching uses: granular certificates and hourly grid factors. Pure.

Both arrive as files (`gia import certificates FILE`, `gia import grid-factors FILE`) and are recorded
*verbatim* in the ledger's events chain (`granular_certificates`, `grid_factors`: `{file_name, sha256,
content, ...}`), so the evidence bundle's `events.jsonl` carries them, a report commits to them through
the events head it was built at, and `gia verify` re-parses the very same bytes with these functions.
A file imported after a month was closed never changes that month's report (only a reissue can).

**Granular certificates** (EnergyTag Granular Certificate Scheme Standard: a production interval of at
most one hour, volume in whole Wh): a CSV with the columns `certificate_id`, `production_device`,
`hour_start` (ISO 8601 with `Z` or an offset, on the hour) and `energy_wh` (a positive integer), in any
order, optionally `source` and `registry`. Each certificate id counts once, ever: the import refuses an
id that appears twice in its file or in an earlier import; should a chain hold one anyway, the first
occurrence counts and the later ones are rejected (listed, not counted). Certificates are cancelled
against this site's consumption left in their hour after on-site and storage matching, in import order;
what exceeds the hour's load is listed as excess, never carried to another hour.

**Hourly grid factors** (location-based, beside the annual factor): a CSV with `hour_start` and
`value`, in `t CO2/MWh` or `g CO2/kWh` as the import says, with the factor's source, basis and status.
For each hour the latest import that covers it counts (a final series restating a provisional one);
hours no import covers use the annual factor, counted in the report.

Standard library only: `gia verify` imports it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from drivers.errors import GiaError
from gateway.certification.exact import iso_ms, parse_iso_ms

CERTIFICATES: Final = "granular_certificates"
GRID_FACTORS: Final = "grid_factors"
HOUR_MS: Final = 3_600_000
CANCELLATION_HEADER: Final = "certificate_id,production_device,hour_start,energy_wh,cancelled_wh,import_event,line\n"
FACTOR_UNITS: Final = ("t CO2/MWh", "g CO2/kWh")
MAX_LISTED: Final = 50


class ImportFileError(GiaError, ValueError):
    """An imported file is unusable; the message names the line and what is wrong."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Certificate:
    id: str
    device: str
    hour_ms: int
    wh: int
    source: str
    registry: str
    event_id: int = 0
    line: int = 0


def _rows(text: str, required: Sequence[str], what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    for n, cells in enumerate(reader, 1):
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            missing = [c for c in required if c not in header]
            if missing:
                raise ImportFileError(
                    f"{what} line {n}: header lacks {', '.join(missing)} (needs {', '.join(required)})"
                )
            continue
        if len(cells) != len(header):
            raise ImportFileError(f"{what} line {n}: {len(cells)} cells, the header has {len(header)}")
        rows.append((n, {k: v.strip() for k, v in zip(header, cells, strict=True)}))
    if header is None:
        raise ImportFileError(f"{what}: empty file (needs a header: {', '.join(required)})")
    return header, rows


def _hour(text: str, what: str, n: int) -> int:
    try:
        ms = parse_iso_ms(text)
    except ValueError:
        raise ImportFileError(
            f"{what} line {n}: hour_start {text!r} is not an ISO 8601 time with Z or an offset"
        ) from None
    if ms % HOUR_MS:
        raise ImportFileError(f"{what} line {n}: hour_start {text!r} is not on the hour (UTC)")
    return ms


def parse_certificates(text: str, *, what: str = "certificates file") -> list[Certificate]:
    """Every certificate of a file; `ImportFileError` at the first bad line or a repeated id."""
    _, rows = _rows(text, ("certificate_id", "production_device", "hour_start", "energy_wh"), what)
    out: list[Certificate] = []
    seen: dict[str, int] = {}
    for n, r in rows:
        cid, dev = r["certificate_id"], r["production_device"]
        if not cid:
            raise ImportFileError(f"{what} line {n}: certificate_id is empty")
        if not dev:
            raise ImportFileError(f"{what} line {n}: production_device is empty")
        ms = _hour(r["hour_start"], what, n)
        wh = r["energy_wh"]
        if not wh.isdigit() or int(wh) <= 0:
            raise ImportFileError(
                f"{what} line {n}: energy_wh {wh!r} must be a positive whole number of Wh (volumes are rounded"
                " down to the Wh)"
            )
        if cid in seen:
            raise ImportFileError(
                f"{what} line {n}: certificate {cid} already appears on line {seen[cid]}: a certificate is"
                " cancelled once"
            )
        seen[cid] = n
        out.append(Certificate(cid, dev, ms, int(wh), r.get("source", ""), r.get("registry", ""), 0, n))
    return out


def parse_factors(text: str, unit: str, *, what: str = "grid factors file") -> dict[int, str]:
    """hour start (ms) -> factor in t CO2/MWh (decimal string); `ImportFileError` at the first bad line."""
    if unit not in FACTOR_UNITS:
        raise ImportFileError(f"{what}: unit {unit!r} is not one of {', '.join(FACTOR_UNITS)}")
    _, rows = _rows(text, ("hour_start", "value"), what)
    out: dict[int, str] = {}
    for n, r in rows:
        ms = _hour(r["hour_start"], what, n)
        try:
            d = Decimal(r["value"])
        except InvalidOperation:
            raise ImportFileError(f"{what} line {n}: value {r['value']!r} is not a decimal number") from None
        if not d.is_finite() or d < 0:
            raise ImportFileError(f"{what} line {n}: value {r['value']!r} must be a finite number >= 0")
        if ms in out:
            raise ImportFileError(f"{what} line {n}: hour {r['hour_start']} appears twice")
        out[ms] = str(d if unit == "t CO2/MWh" else d.scaleb(-3))
    return out


# -- events ---------------------------------------------------------------------------------------
def import_detail(data: bytes, file_name: str, **extra: Any) -> str:
    """The event detail recording an imported file verbatim (it must be UTF-8 text)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{file_name}: not UTF-8 text ({exc})") from None
    detail = {"file_name": file_name, "sha256": hashlib.sha256(data).hexdigest(), "content": text, **extra}
    return json.dumps(detail, sort_keys=True)


def _imports(events: Iterable[Mapping[str, Any]], kind: str, max_id: int | None) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for e in events:
        if e.get("kind") != kind or (max_id is not None and int(e["id"]) > max_id):
            continue
        try:
            d = json.loads(e["detail"])
        except (ValueError, TypeError, KeyError):
            d = None
        out.append((int(e["id"]), d if isinstance(d, dict) else {}))
    return out


def _content(eid: int, d: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(content, problem): the recorded text when it hashes to the recorded SHA-256."""
    content = d.get("content")
    if not isinstance(content, str):
        return None, f"import event {eid} holds no file content"
    if hashlib.sha256(content.encode()).hexdigest() != d.get("sha256"):
        return None, f"import event {eid}: the content does not hash to its recorded sha256 {d.get('sha256')}"
    return content, None


def known_certificate_ids(events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Certificate id -> the import event that first brought it (what a new import is checked against)."""
    seen: dict[str, int] = {}
    for eid, d in _imports(events, CERTIFICATES, None):
        content, _ = _content(eid, d)
        if content is None:
            continue
        try:
            certs = parse_certificates(content)
        except ImportFileError:
            continue
        for c in certs:
            seen.setdefault(c.id, eid)
    return seen


@dataclass(slots=True)
class CertificateSelection:
    """The certificates of a period, and what the report says about where they came from."""

    accepted: list[Certificate]
    rejected: list[dict[str, Any]]
    imports: list[dict[str, Any]]
    rejected_total: int = 0

    def hourly(self, start_ms: int, hours: int) -> list[int]:
        out = [0] * hours
        for c in self.accepted:
            out[(c.hour_ms - start_ms) // HOUR_MS] += c.wh
        return out


def certificates_for_period(
    events: Iterable[Mapping[str, Any]], *, max_id: int | None, start_ms: int, hours: int
) -> CertificateSelection | None:
    """The accepted certificates whose hour lies in the period's `hours` hours from `start_ms` (None when no
    import touches the period). Every import up to `max_id` is read, so an id already brought by any
    earlier import — for another month too — is rejected here."""
    end_ms = start_ms + hours * HOUR_MS
    seen: dict[str, int] = {}
    accepted: list[Certificate] = []
    rejected: list[dict[str, Any]] = []
    imports: list[dict[str, Any]] = []
    touched = False
    for eid, d in _imports(events, CERTIFICATES, max_id):
        content, problem = _content(eid, d)
        certs: list[Certificate] = []
        if content is not None:
            try:
                certs = parse_certificates(content, what=f"import event {eid}")
            except ImportFileError as exc:
                problem = str(exc)
        in_period = [c for c in certs if start_ms <= c.hour_ms < end_ms]
        if problem is not None:
            rejected.append({"certificate_id": None, "import_event": eid, "line": None, "reason": problem})
            touched = True
            continue
        used = 0
        for c in certs:
            c = Certificate(c.id, c.device, c.hour_ms, c.wh, c.source, c.registry, eid, c.line)
            first = seen.setdefault(c.id, eid)
            inside = start_ms <= c.hour_ms < end_ms
            if first != eid:
                if inside:
                    rejected.append(
                        {
                            "certificate_id": c.id,
                            "import_event": eid,
                            "line": c.line,
                            "reason": f"certificate id already imported by event {first}: a certificate is"
                            " cancelled once",
                        }
                    )
                continue
            if not inside:
                continue
            if (c.hour_ms - start_ms) % HOUR_MS:
                rejected.append(
                    {
                        "certificate_id": c.id,
                        "import_event": eid,
                        "line": c.line,
                        "reason": "hour_start is not aligned with the report's hours",
                    }
                )
                continue
            accepted.append(c)
            used += 1
        if in_period:
            touched = True
            imports.append(
                {
                    "event_id": eid,
                    "file_name": d.get("file_name"),
                    "sha256": d.get("sha256"),
                    "certificates_in_period": used,
                }
            )
    if not touched:
        return None
    return CertificateSelection(accepted, rejected[:MAX_LISTED], imports, len(rejected))


def cancellation_lines(sel: CertificateSelection, start_ms: int, remaining: Sequence[int]) -> list[str]:
    """`certificates.csv` (without its header): each accepted certificate with the Wh cancelled against
    the load left in its hour, in import order (event, line)."""
    left = list(remaining)
    out = []
    for c in sorted(sel.accepted, key=lambda c: (c.event_id, c.line)):
        h = (c.hour_ms - start_ms) // HOUR_MS
        take = min(c.wh, max(0, left[h]))
        left[h] -= take
        out.append(f"{c.id},{c.device},{iso_ms(c.hour_ms)},{c.wh},{take},{c.event_id},{c.line}\n")
    return out


def certificates_meta(sel: CertificateSelection, start_ms: int, remaining: Sequence[int]) -> dict[str, Any]:
    """What the report states about the period's certificates (`matching.certificates`, beside the
    offered / cancelled / excess Wh the matching adds)."""
    lines = cancellation_lines(sel, start_ms, remaining)
    return {
        "imports": sel.imports,
        "count": len(sel.accepted),
        "ids": sorted(c.id for c in sel.accepted),
        "rejected": sel.rejected,
        "rejected_total": sel.rejected_total,
        "cancellation_records": len(lines),
        "cancellation_sha256": hashlib.sha256((CANCELLATION_HEADER + "".join(lines)).encode()).hexdigest(),
    }


@dataclass(slots=True)
class FactorSelection:
    hourly: list[str | None]
    meta: dict[str, Any]


def factors_for_period(
    events: Iterable[Mapping[str, Any]], *, max_id: int | None, start_ms: int, hours: int
) -> FactorSelection | None:
    """Each hour's location-based factor from the latest grid-factor import covering it (None when no
    import covers any hour of the period)."""
    hourly: list[str | None] = [None] * hours
    source: list[int] = [0] * hours
    info: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    for eid, d in _imports(events, GRID_FACTORS, max_id):
        content, problem = _content(eid, d)
        if content is None:
            problems.append(str(problem))
            continue
        try:
            values = parse_factors(content, str(d.get("unit")), what=f"import event {eid}")
        except ImportFileError as exc:
            problems.append(str(exc))
            continue
        for ms, v in values.items():
            k, r = divmod(ms - start_ms, HOUR_MS)
            if r == 0 and 0 <= k < hours:
                hourly[k] = v
                source[k] = eid
        info[eid] = {
            "event_id": eid,
            "file_name": d.get("file_name"),
            "sha256": d.get("sha256"),
            "unit_in_file": d.get("unit"),
            "source": d.get("source"),
            "basis": d.get("basis"),
            "status": d.get("status"),
        }
    used = sorted(set(source) - {0})
    if not used:
        return None
    imports = [{**info[e], "hours_used": source.count(e)} for e in used]
    status = "final" if all(i["status"] == "final" for i in imports) else "provisional"
    return FactorSelection(hourly, {"imports": imports, "status": status, "problems": problems[:MAX_LISTED]})
