"""Certification commands: report, evidence, verify, area-report, keys, meter-replacement.

Heavy modules are imported inside each command so `gia --help` stays instant on a Pi, and `gia verify`
imports nothing of the agent runtime (it delegates to `gateway.certification.verify`).
Exit codes: 0 ok, 1 failed (verification failed, ledger unavailable), 2 unusable input or configuration.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from gateway.cli_options import ConfigOpt, load_or_exit

if TYPE_CHECKING:
    from gateway.certification.service import ReportService


def _service(config: Path | None) -> ReportService:
    from gateway.certification.service import ReportService

    cfg = load_or_exit(config)
    return ReportService(cfg.settings, cfg.site)


def _fail(exc: Exception) -> typer.Exit:
    from gateway.certification.service import LedgerUnavailable

    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1 if isinstance(exc, LedgerUnavailable) else 2)


def report(
    site: Annotated[str, typer.Argument(help="site id (site.id in gia.yaml)")],
    month: Annotated[str, typer.Argument(help="YYYY-MM, civil month in the site's time zone")],
    fmt: Annotated[
        Literal["json", "csv", "pdf"], typer.Option("--format", "-f", help="json (signed), csv or pdf")
    ] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
    config: ConfigOpt = None,
) -> None:
    """Build (or fetch the stored) signed monthly report."""
    from gateway.certification.service import ReportError

    svc = _service(config)
    try:
        data = {"json": svc.report_json, "csv": svc.report_csv, "pdf": svc.report_pdf}[fmt](site, month)
    except ReportError as exc:
        raise _fail(exc) from None
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)
        typer.echo(f"wrote {output} ({len(data)} bytes)", err=True)
    _say_grade(svc, site, month)


def _say_grade(svc: ReportService, site: str, month: str) -> None:
    """The grade on stderr (any format), and a warning when channels had no data that month: a
    certifier should not have to open the JSON to learn that the month is `unverified`, or why."""
    from gateway.i18n import cli_translator

    t = cli_translator()
    try:
        rep = svc.report(site, month)
    except Exception:  # the report itself was written; saying its grade is a courtesy
        return
    grade = str(rep.get("quality", {}).get("grade", "?"))
    typer.echo(t("{month}: grade {grade}", month=month, grade=grade), err=True)
    empty = [c["id"] for c in rep.get("channels", []) if not c.get("measured_wh") and not c.get("energy_wh")]
    if empty:
        typer.echo(
            t(
                "warning: no data this month for {channels}",
                channels=", ".join(empty[:6]) + ("…" if len(empty) > 6 else ""),
            ),
            err=True,
        )


def evidence(
    site: Annotated[str, typer.Argument(help="site id")],
    month: Annotated[str, typer.Argument(help="YYYY-MM")],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory to write the bundle into")],
    config: ConfigOpt = None,
) -> None:
    """Write the evidence bundle (report, raw readings with hash chain, interval CSV, public key)."""
    from gateway.certification.service import ReportError

    svc = _service(config)
    try:
        paths = svc.write_evidence(site, month, output)
    except ReportError as exc:
        raise _fail(exc) from None
    for p in paths:
        typer.echo(str(p))


def verify(
    report_file: Annotated[Path, typer.Argument(metavar="REPORT", help="report.json (or an area report)")],
    public_key: Annotated[Path | None, typer.Option(help="the site's published public key (PEM)")] = None,
    evidence_dir: Annotated[Path | None, typer.Option("--evidence", help="evidence bundle directory or zip")] = None,
    previous: Annotated[Path | None, typer.Option(help="the previous month's report")] = None,
) -> None:
    """Verify a report offline: exit 0 valid, 1 invalid (failed rules printed), 2 unusable input."""
    from gateway.certification.verify import verify_paths

    raise typer.Exit(verify_paths(report_file, public_key=public_key, evidence=evidence_dir, previous=previous))


def area_report(
    area_file: Annotated[Path, typer.Argument(metavar="AREA.yaml", help="area definition")],
    month: Annotated[str, typer.Argument(help="YYYY-MM")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
) -> None:
    """Combine several sites' signed reports into an area report (each verified first)."""
    from gateway.certification.area import AreaError, build_area_report
    from gateway.certification.periods import BadMonth, parse_month

    try:
        parse_month(month)
        rep = build_area_report(area_file, month)
    except (AreaError, BadMonth) as exc:
        for line in str(exc).splitlines():
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    text = json.dumps(rep, indent=2, sort_keys=True) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


def meter_replacement(
    device: Annotated[str, typer.Argument(help="device id whose meter was exchanged")],
    at: Annotated[str, typer.Option(help="time of the exchange, ISO 8601 UTC, e.g. 2025-03-12T09:30:00Z")],
    register: Annotated[
        list[str],
        typer.Option(help="QUANTITY=CLOSING:OPENING in Wh, e.g. energy_import_wh=1234567:12 (repeatable)"),
    ],
    old_serial: Annotated[str | None, typer.Option(help="serial of the removed meter")] = None,
    new_serial: Annotated[str | None, typer.Option(help="serial of the new meter")] = None,
    note: Annotated[str, typer.Option(help="free text (work order...)")] = "",
    config: ConfigOpt = None,
) -> None:
    """Record a meter replacement (closing/opening register pair) in the ledger."""
    from gateway.certification.source import record_meter_replacement
    from gateway.ledger.store import Ledger

    settings = load_or_exit(config).settings
    try:
        ts = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(UTC)
        regs: dict[str, tuple[int, int]] = {}
        for r in register:
            q, _, pair = r.partition("=")
            closing, _, opening = pair.partition(":")
            regs[q] = (int(closing), int(opening))
    except ValueError as exc:
        typer.echo(f"error: {exc}; write --at 2025-03-12T09:30:00Z --register energy_import_wh=CLOSE:OPEN", err=True)
        raise typer.Exit(2) from None
    ledger = Ledger(settings.ledger_path)
    try:
        eid = record_meter_replacement(
            ledger, device=device, at=ts, registers=regs, old_serial=old_serial, new_serial=new_serial, note=note
        )
    finally:
        ledger.close()
    typer.echo(f"recorded meter replacement event {eid} for {device} at {ts.isoformat()}")


def keys_show(config: ConfigOpt = None) -> None:
    """Print the site's public key fingerprint (key_id) and PEM."""
    for k in _service(config).public_keys():
        typer.echo(f"site: {k['site']}\nalg: {k['alg']}\nkey_id (fingerprint): {k['key_id']}\n{k['public_key_pem']}")


def keys_export(
    file: Annotated[Path, typer.Argument(help="where to write the public key (PEM)")],
    config: ConfigOpt = None,
) -> None:
    """Write the public key as PEM (never the private key) and print its fingerprint."""
    k = _service(config).public_keys()[0]
    file.write_text(k["public_key_pem"])
    typer.echo(f"wrote {file}; key_id (fingerprint) {k['key_id']}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to `gia`."""
    app.command("report")(report)
    app.command("evidence")(evidence)
    app.command("verify")(verify)
    app.command("area-report")(area_report)
    app.command("meter-replacement")(meter_replacement)
    keys = typer.Typer(help="the site's public signing key", no_args_is_help=True)
    keys.command("show")(keys_show)
    keys.command("export")(keys_export)
    app.add_typer(keys, name="keys")
