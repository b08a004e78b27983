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
import zlib
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


# A hostile bundle must not make `gia verify` allocate far more than the bundle's own size (a 204 KB zip once
# decompressed to 458 MB). The evidence of a real month compresses a few times (chain hashes are random hex);
# a member that inflates more than MAX_RATIO times its stored size is a zip bomb, not evidence.
MAX_MEMBERS: Final = 10_000  # entries in a zip's central directory (reissue chains hold a few replaced reports)
MAX_RATIO: Final = 100  # decompressed / compressed, checked while inflating, for members above RATIO_FLOOR
RATIO_FLOOR: Final = 1 << 20
MAX_MEMBER_BYTES: Final = 2 << 30  # one file, decompressed or on disk
MAX_TOTAL_BYTES: Final = 4 << 30  # all files of one bundle
CHUNK: Final = 1 << 20


def _wanted(name: str) -> str | None:
    """The bundle key of a zip member's name (its last path parts), or None for files `gia verify` ignores."""
    parts = name.split("/")
    if len(parts) >= 2 and parts[-2] == REPLACED_DIR and parts[-1].endswith(".json"):
        return "/".join(parts[-2:])
    if parts[-1] in (REPORT, PREVIOUS, READINGS, SERIALS, INTERVALS, EVENTS, STORAGE_ALLOCATION, CERTIFICATES):
        return parts[-1]
    return None


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, path: Path) -> bytes:
    """A member's bytes, inflated chunk by chunk and abandoned as soon as it outgrows its limits (the sizes in
    the zip's directory are the sender's claim: they are checked first and then enforced while reading)."""
    limit = min(MAX_MEMBER_BYTES, budget)
    if info.file_size > RATIO_FLOOR:
        limit = min(limit, max(RATIO_FLOOR, MAX_RATIO * info.compress_size))
    if info.file_size > limit:
        raise BundleError(_too_big(path, info, info.file_size, limit))
    out = bytearray()
    with z.open(info) as f:
        while chunk := f.read(CHUNK):
            out += chunk
            if len(out) > limit:
                raise BundleError(_too_big(path, info, len(out), limit))
    return bytes(out)


def _too_big(path: Path, info: zipfile.ZipInfo, size: int, limit: int) -> str:
    return (
        f"{path}: {info.filename} inflates to more than {limit} bytes ({size}+ from {info.compress_size} stored):"
        " refused as a zip bomb, not evidence (an evidence file compresses a few times, never"
        f" {MAX_RATIO}x; a bundle holds at most {MAX_TOTAL_BYTES >> 30} GiB)"
    )


def _load_zip(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BundleError(
                    f"{path}: {len(infos)} files in the zip, more than an evidence bundle holds ({MAX_MEMBERS})"
                )
            budget = MAX_TOTAL_BYTES
            for info in infos:
                key = _wanted(info.filename)
                if key is None or info.is_dir():
                    continue
                if key in files:
                    raise BundleError(f"{path}: two files named {key} in the zip (which one counts is ambiguous)")
                files[key] = _read_member(z, info, budget, path)
                budget -= len(files[key])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method
        raise BundleError(f"{path}: not a readable zip file ({type(exc).__name__}: {exc})") from None
    return files


def _read_file(p: Path) -> bytes:
    size = p.stat().st_size
    if size > MAX_MEMBER_BYTES:
        raise BundleError(f"{p}: {size} bytes, more than an evidence file holds ({MAX_MEMBER_BYTES})")
    return p.read_bytes()


def load_bundle(path: Path) -> dict[str, bytes]:
    """The bundle's files by name, from a directory or a zip file (sizes and member counts bounded)."""
    files: dict[str, bytes] = {}
    if path.is_dir():
        for name in (REPORT, PREVIOUS, READINGS, SERIALS, INTERVALS, EVENTS, STORAGE_ALLOCATION, CERTIFICATES):
            p = path / name
            if p.is_file():
                files[name] = _read_file(p)
        if (path / REPLACED_DIR).is_dir():
            replaced = sorted((path / REPLACED_DIR).glob("*.json"))
            if len(replaced) > MAX_MEMBERS:
                raise BundleError(f"{path}: {len(replaced)} replaced reports, more than a bundle holds ({MAX_MEMBERS})")
            for p in replaced:
                files[f"{REPLACED_DIR}/{p.name}"] = _read_file(p)
        if sum(len(v) for v in files.values()) > MAX_TOTAL_BYTES:
            raise BundleError(f"{path}: more than {MAX_TOTAL_BYTES >> 30} GiB of evidence")
    elif path.is_file() and zipfile.is_zipfile(path):
        files = _load_zip(path)
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
        except RecursionError:
            raise BundleError(f"{name} line {n}: JSON nested too deeply to be a reading (a hostile file?)") from None
        if not isinstance(obj, dict):
            raise BundleError(f"{name} line {n}: not an object")
        out.append(obj)
    return out
