"""The hub's report path vs bare Ed25519 verification of the same reports (same run), on SQLite and PostgreSQL.

1000 site-month reports (500 sites x 2 months, real signed reports: a real ledger's February and March
report re-issued per site id with its own meter, each signature checked by the hub against the site's
pinned key) are:

* baseline: verified in a bare loop — parse the JSON, canonicalise it (RFC 8785, what the signature
  covers), one Ed25519 verification. This is the least anybody holding the reports must do to trust
  them; the same loop without `canonical`'s walk for floats (the hub's verifier counts floats while
  parsing instead) and the raw Ed25519 time over pre-built signing bytes are printed too, for scale;
* hub: `Ingestor.submit_report` for each (one write transaction under the hub's lock: pinned key chain,
  every verifier rule, the grade under the area's policy, channel ownership, a log leaf and a signed tree
  head, a signed receipt), then `AreaReports.step` (the area's monthly reports aggregated from all 500
  sites — each site report's verdict taken from ingestion, its bytes checked against the stored
  SHA-256 — signed and logged, and the roll-up).

Both engines start empty: SQLite in a temp file, PostgreSQL a temp server (tests/servers.py's
PostgresServer: initdb in a temp dir, 127.0.0.1, password auth). Target: hub <= 3 x baseline. The last
line is the worst ratio.

Usage: .venv/bin/python bench/hub_reports.py [--sites 500] [--months 2] [--engines sqlite,postgres]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.hub.conftest builds the reports

from gateway.certification.signing import load_public_pem, signing_bytes, verify_signature
from gateway.hub.areas import AreaReports
from gateway.hub.config import AreaConfig, DatabaseConfig, HubConfig
from gateway.hub.ingest import Ingestor
from gateway.hub.store import HubStore

MONTHS = ("2025-02", "2025-03")


def build_reports(directory: Path, sites: int, months: int) -> tuple[bytes, dict[tuple[str, str], bytes]]:
    """(the sites' public key PEM, (site, month) -> signed report bytes)."""
    from tests.hub.conftest import build_site

    mill = build_site(directory / "mill", "mill")
    out = {(f"s{i:04d}", m): mill.as_site(f"s{i:04d}", m) for i in range(sites) for m in MONTHS[:months]}
    return mill.public_pem, out


def baseline(pem: bytes, reports: dict[tuple[str, str], bytes]) -> tuple[float, float, float]:
    """(seconds for parse + canonicalise + Ed25519 of every report, the same without the float walk,
    seconds for Ed25519 alone).

    `verify_signature` canonicalises with `signing.canonical`, which walks the report for floats
    before RFC 8785; the hub's verifier counts floats while parsing instead and skips that walk, so the
    loop without it is printed too: the hub is compared with both."""
    key = load_public_pem(pem)
    t0 = time.perf_counter()
    for raw in reports.values():
        problem = verify_signature(json.loads(raw), key)
        assert problem is None, problem
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    for raw in reports.values():
        problem = verify_signature(json.loads(raw), key, float_free=True)
        assert problem is None, problem
    lean = time.perf_counter() - t0
    prepared = []
    for raw in reports.values():
        doc = json.loads(raw)
        prepared.append((base64.b64decode(doc["signature"]["value"]), signing_bytes(doc)))
    t0 = time.perf_counter()
    for sig, data in prepared:
        key.verify(sig, data)
    return full, lean, time.perf_counter() - t0


def hub_run(cfg: HubConfig, pem: bytes, reports: dict[tuple[str, str], bytes]) -> tuple[float, float, int, int]:
    """(seconds ingesting, seconds building area reports, log size, area reports built)."""
    store = HubStore.open(cfg)
    try:
        for site in sorted({s for s, _ in reports}):
            store.enroll(site, "zemgale", pem)
        ingestor = Ingestor(store, max_bytes=4 * 1024 * 1024)
        t0 = time.perf_counter()
        for (site, _month), raw in reports.items():
            outcome = ingestor.submit_report(site, raw, via="mqtt")
            assert outcome.status == "accepted", outcome
        ingest = time.perf_counter() - t0
        t0 = time.perf_counter()
        built = AreaReports(store).step()
        areas = time.perf_counter() - t0
        monthly = [b for b in built if b.period in MONTHS]
        assert monthly and all(b.complete for b in monthly), [(b.period, b.complete) for b in built]
        return ingest, areas, store.leaf_count(), len(built)
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=500)
    ap.add_argument("--months", type=int, default=2, choices=(1, 2))
    ap.add_argument("--engines", default="sqlite,postgres")
    args = ap.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    with tempfile.TemporaryDirectory(prefix="gia-hub-bench-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        pem, reports = build_reports(d, args.sites, args.months)
        size = sum(len(r) for r in reports.values()) / len(reports)
        print(f"{len(reports)} reports ({args.sites} sites x {args.months} months, {size / 1024:.0f} KiB each)"
              f" built in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        full, lean, raw = baseline(pem, reports)
        print(
            f"baseline  parse + canonical JSON + Ed25519: {full:7.2f} s  ({1000 * full / len(reports):.1f} ms/report)"
        )
        per = 1000 * lean / len(reports)
        print(f"          the same without the float walk:  {lean:7.2f} s  ({per:.1f} ms/report)")
        print(f"          Ed25519 alone (pre-built bytes):  {raw:7.2f} s  ({1e6 * raw / len(reports):.0f} us/report)")
        ratios = []
        for engine in engines:
            area = AreaConfig(id="zemgale", name="Zemgale")
            if engine == "sqlite":
                url = f"sqlite:///{d / 'hub-sqlite' / 'hub.db'}"
                cfg = HubConfig(data_dir=d / "hub-sqlite", areas=[area], database=DatabaseConfig(url=url))
                ingest, areas, leaves, built = hub_run(cfg, pem, reports)
            elif engine == "postgres":
                from tests.servers import PostgresServer

                pg = PostgresServer(d / "pg")
                pg.start()
                try:
                    db = pg.create_database("hub")
                    cfg = HubConfig(
                        data_dir=d / "hub-pg",
                        areas=[area],
                        database=DatabaseConfig(url=db.url, password_file=db.password_file),
                    )
                    ingest, areas, leaves, built = hub_run(cfg, pem, reports)
                finally:
                    pg.remove()
            else:
                raise SystemExit(f"unknown engine {engine!r}: sqlite or postgres")
            total = ingest + areas
            ratio = total / full
            ratios.append(ratio)
            print(
                f"hub {engine:8s} ingest {ingest:7.2f} s ({1000 * ingest / len(reports):.1f} ms/report)"
                f" + area reports {areas:6.2f} s ({built} built) = {total:7.2f} s; log {leaves} leaves;"
                f" {ratio:.2f} x baseline, {total / lean:.2f} x the loop without the float walk"
            )
        print(f"ratio {max(ratios):.2f} x the bare Ed25519 verification loop (target <= 3)")


if __name__ == "__main__":
    main()
