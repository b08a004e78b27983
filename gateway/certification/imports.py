"""Recording imported files in the ledger's events chain (`gia import certificates|grid-factors FILE`).

Why the events chain and not a configuration path: the file's bytes then travel with every evidence
bundle (`events.jsonl`), the report commits to them through its events head, `gia verify` re-parses the
very same bytes, and a certificate id imported for February is seen when March's file repeats it. The
file is checked in full before anything is recorded (every problem is an `ImportFileError` naming the
line); nothing is recorded when it fails.
"""

from __future__ import annotations

from pathlib import Path

from gateway.certification.certificates import (
    CERTIFICATES,
    FACTOR_UNITS,
    GRID_FACTORS,
    ImportFileError,
    import_detail,
    known_certificate_ids,
    parse_certificates,
    parse_factors,
)
from gateway.ledger.store import Ledger
from gateway.runtime.clockguard import guarded_now


def _events(ledger: Ledger, kind: str) -> list[dict[str, object]]:
    return [
        {"id": e.id, "ts": e.ts_ms, "kind": e.kind, "device": e.device, "detail": e.detail}
        for e in ledger.events(kind=kind)
    ]


def _now_ms(ledger: Ledger) -> int:
    return int(guarded_now(ledger.clock_floor_ms()).timestamp() * 1000)


def import_certificates(ledger: Ledger, data: bytes, file_name: str) -> tuple[int, int]:
    """Record a granular-certificate file; (event id, certificates). Refuses a file with a bad line, a
    repeated id, or an id an earlier import already brought (a certificate is cancelled once)."""
    text = data.decode("utf-8", errors="strict") if data else ""
    certs = parse_certificates(text, what=Path(file_name).name)
    if not certs:
        raise ImportFileError(f"{file_name}: no certificates in the file")
    known = known_certificate_ids(_events(ledger, CERTIFICATES))
    again = [c for c in certs if c.id in known]
    if again:
        listed = ", ".join(f"{c.id} (line {c.line}, imported by event {known[c.id]})" for c in again[:10])
        more = f" and {len(again) - 10} more" if len(again) > 10 else ""
        raise ImportFileError(
            f"{file_name}: {len(again)} certificate id(s) already imported: {listed}{more}; a certificate is"
            " cancelled once: remove them from the file"
        )
    detail = import_detail(data, Path(file_name).name)
    eid = ledger.record_event(CERTIFICATES, detail, ts_ms=_now_ms(ledger))
    return eid, len(certs)


def import_grid_factors(
    ledger: Ledger, data: bytes, file_name: str, *, unit: str, source: str, basis: str, status: str
) -> tuple[int, int]:
    """Record an hourly grid-factor file with its provenance; (event id, hours)."""
    if unit not in FACTOR_UNITS:
        raise ImportFileError(f"unit {unit!r} is not one of {', '.join(FACTOR_UNITS)}")
    if status not in ("provisional", "final"):
        raise ImportFileError(f"status {status!r} is not provisional or final")
    if not source.strip():
        raise ImportFileError("a grid-factor file needs its source (--source: publisher, data set, version)")
    text = data.decode("utf-8", errors="strict") if data else ""
    values = parse_factors(text, unit, what=Path(file_name).name)
    if not values:
        raise ImportFileError(f"{file_name}: no hourly factors in the file")
    detail = import_detail(data, Path(file_name).name, unit=unit, source=source, basis=basis, status=status)
    eid = ledger.record_event(GRID_FACTORS, detail, ts_ms=_now_ms(ledger))
    return eid, len(values)
