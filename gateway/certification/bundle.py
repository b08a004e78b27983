"""The evidence bundle's file formats (written by the gateway, read by `gia verify`). Standard library only.

Files (a directory from `gia evidence`, or the same files in a zip from the API):

* `report.json` — the signed report, byte-identical to what was published;
* `previous_report.json` — the previous month's signed report, when there is one (continuity check);
* `readings.jsonl` — every reading the report used, one JSON object per line, grouped by channel in the
  report's channel order, each in (ts, seq) order: the ledger entry (`seq`, `ts` in ms, `device`,
  `quantity`, `value`, `unit`, `quality`), its chain hash `hash` and the previous entry's hash `prev_hash`
  (hex), plus `channel` and a readable `time`;
* `serials.jsonl` — where a channel's meter reports its serial number: those readings (`serial_number`),
  in the same line format, so the serial the report records is checked against the ledger;
* `intervals.csv` — `channel,start,end,energy_wh,quality` with UTC timestamps and integer Wh;
* `storage_allocation.csv` — where the site has storage: every Storage Allocation Record of the hourly
  matching, `unit,charge_hour,discharge_hour,source,energy_wh` (first-in first-out, losses deducted;
  source `renewable`, `grid` or `unallocated`); the report commits to it by `matching.storage_allocation_sha256`;
* `certificates.csv` — where granular certificates were imported for the period: each certificate with
  the Wh cancelled against the site's load in its hour; committed to by
  `matching.certificates.cancellation_sha256`;
* `events.jsonl` — the ledger's events up to the report's `events_head_id` (clock jumps, meter
  replacements, key transitions, earlier months' closings), one per line in id order: `id`, `ts` (ms),
  `kind`, `device`, `detail`, chain `hash`;
* `replaced/<sha256>.json` — for a reissue, every report it replaces (the `reissue_of` chain);
* `README.txt` — how to verify.

No public key travels with the bundle: a verifier uses only the key it pinned out of band.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from drivers.errors import GiaError
from gateway.certification.exact import iso_ms

REPORT: Final = "report.json"
PREVIOUS: Final = "previous_report.json"
READINGS: Final = "readings.jsonl"
SERIALS: Final = "serials.jsonl"
EVENTS: Final = "events.jsonl"
INTERVALS: Final = "intervals.csv"
STORAGE_ALLOCATION: Final = "storage_allocation.csv"
CERTIFICATES: Final = "certificates.csv"
README: Final = "README.txt"
REPLACED_DIR: Final = "replaced"

README_TEXT: Final = """GIA Gateway evidence bundle

report.json            the signed monthly report (RFC 8785 canonical JSON, Ed25519 signature)
previous_report.json   the previous month's signed report (if any): report.previous_report_sha256 is its SHA-256
readings.jsonl         every register reading the report used, with its ledger chain hash and predecessor hash
serials.jsonl          the serial numbers the meters reported (where their maps read them), chained likewise
intervals.csv          interval energies (UTC, integer Wh, quality) recomputed from the readings
storage_allocation.csv storage charge records linked to discharges first-in first-out (hourly matching)
certificates.csv       imported granular certificates and the Wh each cancelled against the site's load
events.jsonl           the ledger's events (clock jumps, meter replacements, key transitions, closed months,
                       imported certificate and grid-factor files) with their own hash chain
replaced/              for a reissue: the reports it replaces

No public key is included: verify with the site key you pinned (published out of band), e.g.

  gia verify report.json --public-key PINNED-SITE-KEY.pem --evidence .
  gia verify report.json --trusted-keys PINNED-KEYS.pem --policy CERTIFIER-POLICY.json --evidence .
"""


def reading_line(
    *,
    channel: str,
    seq: int,
    ts_ms: int,
    device: str,
    quantity: str,
    value: int,
    unit: str,
    quality: str,
    hash_: bytes,
    prev_hash: bytes,
) -> str:
    return json.dumps(
        {
            "channel": channel,
            "seq": seq,
            "ts": ts_ms,
            "time": iso_ms(ts_ms),
            "device": device,
            "quantity": quantity,
            "value": value,
            "unit": unit,
            "quality": quality,
            "hash": hash_.hex(),
            "prev_hash": prev_hash.hex(),
        },
        separators=(",", ":"),
    )


def event_line(*, event_id: int, ts_ms: int, kind: str, device: str | None, detail: str, hash_: bytes) -> str:
    return json.dumps(
        {"id": event_id, "ts": ts_ms, "time": iso_ms(ts_ms), "kind": kind, "device": device, "detail": detail,
         "hash": hash_.hex()},
        separators=(",", ":"),
    )  # fmt: skip


def intervals_csv_lines(
    channel: str, start_ms: int, interval_s: int, end_ms: int, wh: list[int], quality: list[str]
) -> Iterable[str]:
    step = interval_s * 1000
    for k, (e, q) in enumerate(zip(wh, quality, strict=True)):
        a = start_ms + k * step
        yield f"{channel},{iso_ms(a)},{iso_ms(min(a + step, end_ms))},{e},{q}\n"


INTERVALS_HEADER: Final = "channel,start,end,energy_wh,quality\n"


class BundleError(GiaError):
    """The bundle cannot be read (missing file, not a zip/directory)."""


def load_bundle(path: Path) -> dict[str, bytes]:
    """The bundle's files by name, from a directory or a zip file."""
    files: dict[str, bytes] = {}
    if path.is_dir():
        for name in (REPORT, PREVIOUS, READINGS, SERIALS, INTERVALS, EVENTS, STORAGE_ALLOCATION, CERTIFICATES):
            p = path / name
            if p.is_file():
                files[name] = p.read_bytes()
        if (path / REPLACED_DIR).is_dir():
            for p in sorted((path / REPLACED_DIR).glob("*.json")):
                files[f"{REPLACED_DIR}/{p.name}"] = p.read_bytes()
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                parts = name.split("/")
                key = "/".join(parts[-2:]) if len(parts) >= 2 and parts[-2] == REPLACED_DIR else parts[-1]
                files[key] = z.read(name)
    else:
        raise BundleError(f"{path}: not an evidence directory or zip file")
    if READINGS not in files:
        raise BundleError(f"{path}: no {READINGS} in the evidence bundle")
    return files


def parse_readings(data: bytes, name: str = READINGS) -> list[dict[str, Any]]:
    """One JSON object per line (readings.jsonl, events.jsonl); blank lines skipped."""
    out = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise BundleError(f"{name} line {n}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise BundleError(f"{name} line {n}: not an object")
        out.append(obj)
    return out
