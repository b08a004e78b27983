"""The evidence bundle's file formats (written by the gateway, read by `gia verify`). Standard library only.

Files (a directory from `gia evidence`, or the same files in a zip from the API):

* `report.json` — the signed report, byte-identical to what was published;
* `previous_report.json` — the previous month's signed report, when there is one (continuity check);
* `readings.jsonl` — every reading the report used, one JSON object per line, grouped by channel in the
  report's channel order, each in (ts, seq) order: the ledger entry (`seq`, `ts` in ms, `device`,
  `quantity`, `value`, `unit`, `quality`), its chain hash `hash` and the previous entry's hash `prev_hash`
  (hex), plus `channel` and a readable `time`;
* `intervals.csv` — `channel,start,end,energy_wh,quality` with UTC timestamps and integer Wh;
* `events.jsonl` — the ledger's events up to the report's `events_head_id` (clock jumps, meter
  replacements), one per line in id order: `id`, `ts` (ms), `kind`, `device`, `detail`, chain `hash`;
* `public_key.pem` — the site's public key (check its fingerprint against the published one);
* `README.txt` — how to verify.
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
EVENTS: Final = "events.jsonl"
INTERVALS: Final = "intervals.csv"
PUBLIC_KEY: Final = "public_key.pem"
README: Final = "README.txt"

README_TEXT: Final = """GIA Gateway evidence bundle

report.json            the signed monthly report (RFC 8785 canonical JSON, Ed25519 signature)
previous_report.json   the previous month's signed report (if any): report.previous_report_sha256 is its SHA-256
readings.jsonl         every register reading the report used, with its ledger chain hash and predecessor hash
intervals.csv          interval energies (UTC, integer Wh, quality) recomputed from the readings
events.jsonl           the ledger's events (clock jumps, meter replacements) with their own hash chain
public_key.pem         the site's public key: compare its fingerprint with the one published out of band

Verify offline:  gia verify report.json --public-key PUBLISHED.pem --evidence .
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
        for name in (REPORT, PREVIOUS, READINGS, INTERVALS, EVENTS, PUBLIC_KEY):
            p = path / name
            if p.is_file():
                files[name] = p.read_bytes()
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                files[name.rsplit("/", 1)[-1]] = z.read(name)
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
