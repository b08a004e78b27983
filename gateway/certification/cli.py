"""Certification commands: report, evidence, verify, area-report, keys, meter-replacement.

`gia verify` itself is dispatched by `gateway.cli.main` straight to `gateway.certification.verify`
before typer or any of the agent is imported; the typer command below only lists it in `gia --help`
and serves the in-process test runner.

Heavy modules are imported inside each command so `gia --help` stays instant on a Pi, and `gia verify`
imports nothing of the agent runtime (it delegates to `gateway.certification.verify`).
Exit codes: 0 ok, 1 failed (verification failed, ledger unavailable), 2 unusable input or configuration.
"""

from __future__ import annotations

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
    from gateway.certification.service import LedgerUnavailable, SigningKeyMissing, StoredReportLost

    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1 if isinstance(exc, LedgerUnavailable | SigningKeyMissing | StoredReportLost) else 2)


def report(
    site: Annotated[str, typer.Argument(help="site id (site.id in gia.yaml)")],
    month: Annotated[str, typer.Argument(help="YYYY-MM, civil month in the site's time zone")],
    fmt: Annotated[
        Literal["json", "csv", "pdf"], typer.Option("--format", "-f", help="json (signed), csv or pdf")
    ] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
    reissue: Annotated[
        bool, typer.Option("--reissue", help="issue a new version of a closed month's report (needs --reason)")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="why the closed month is reissued (printed in the report)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Build (or fetch the stored) signed monthly report; --reissue replaces a closed month's report."""
    from gateway.certification.service import ReportError

    svc = _service(config)
    try:
        if reissue:
            if not reason:
                typer.echo("error: --reissue needs --reason TEXT (certifiers read it)", err=True)
                raise typer.Exit(2)
            svc.reissue(site, month, reason)
        elif reason:
            typer.echo("error: --reason is for --reissue", err=True)
            raise typer.Exit(2)
        if fmt == "pdf":  # in the language of the command line (LANGUAGE/LC_ALL/LANG), as its messages
            from gateway.i18n import cli_translator

            data = svc.report_pdf(site, month, cli_translator())
        else:
            data = {"json": svc.report_json, "csv": svc.report_csv}[fmt](site, month)
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
    public_key: Annotated[Path | None, typer.Option(help="the site's public key you pinned (PEM)")] = None,
    trusted_keys: Annotated[
        Path | None, typer.Option(help="pinned keys: PEM blocks or the JSON of GET /api/v1/keys")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="your grading policy (JSON); default the scheme's")] = None,
    evidence_dir: Annotated[Path | None, typer.Option("--evidence", help="evidence bundle directory or zip")] = None,
    previous: Annotated[Path | None, typer.Option(help="the previous month's report")] = None,
    log_head: Annotated[
        Path | None,
        typer.Option(help="an area hub's signed tree head, or its inclusion proof file (which embeds the head)"),
    ] = None,
    log_proof: Annotated[Path | None, typer.Option(help="the inclusion proof, when --log-head is a bare head")] = None,
    hub_key: Annotated[Path | None, typer.Option(help="the area hub's public key you pinned (PEM)")] = None,
) -> None:
    """Verify a report offline against pinned keys: exit 0 valid, 1 invalid (failed rules), 2 unusable."""
    from gateway.certification.verify import verify_paths

    raise typer.Exit(
        verify_paths(
            report_file,
            public_key=public_key,
            trusted_keys=trusted_keys,
            policy=policy,
            evidence=evidence_dir,
            previous=previous,
            log_head=log_head,
            log_proof=log_proof,
            hub_key=hub_key,
        )
    )


def area_report(
    area_file: Annotated[Path, typer.Argument(metavar="AREA.yaml", help="area definition")],
    month: Annotated[str, typer.Argument(help="YYYY-MM")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
    key: Annotated[
        Path | None, typer.Option(help="the aggregator's private key (default: signing_key in AREA.yaml)")
    ] = None,
    export_key: Annotated[
        Path | None, typer.Option(help="also write the aggregator's public key (PEM) for certifiers to pin")
    ] = None,
) -> None:
    """Combine several sites' signed reports into an area report signed by the aggregator's key."""
    from gateway.certification.area import AreaError, aggregator_public_pem, build_area_report
    from gateway.certification.periods import BadMonth, parse_month
    from gateway.certification.signing import canonical

    try:
        parse_month(month)
        rep = build_area_report(area_file, month, signing_key=key)
    except (AreaError, BadMonth) as exc:
        for line in str(exc).splitlines():
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    if export_key is not None:
        import yaml

        spec = yaml.safe_load(area_file.read_text())
        key_file = key or area_file.resolve().parent / str(spec.get("signing_key", "area-key.pem"))
        export_key.write_text(aggregator_public_pem(key_file))
        typer.echo(f"wrote {export_key}; aggregator key_id (fingerprint) {rep['signature']['key_id']}", err=True)
    data = canonical(rep) + b"\n"
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)
        typer.echo(f"wrote {output}", err=True)


def meter_replacement(
    device: Annotated[str, typer.Argument(help="device id whose meter was exchanged")],
    at: Annotated[str, typer.Option(help="time of the exchange, ISO 8601 UTC, e.g. 2025-03-12T09:30:00Z")],
    register: Annotated[
        list[str],
        typer.Option(help="QUANTITY=CLOSING:OPENING in Wh, e.g. energy_import_wh=1234567:12 (repeatable)"),
    ],
    new_serial: Annotated[str, typer.Option(help="serial of the new meter (required)")],
    old_serial: Annotated[str | None, typer.Option(help="serial of the removed meter")] = None,
    note: Annotated[str, typer.Option(help="free text (work order...)")] = "",
    config: ConfigOpt = None,
) -> None:
    """Record a meter replacement (closing/opening register pair) in the ledger, stamped with the time it
    is recorded (a record made after the month's report exists changes that month only by a reissue)."""
    from gateway.certification.source import record_meter_replacement
    from gateway.ledger.store import Ledger
    from gateway.runtime.clockguard import ClockImplausible

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
    except ClockImplausible as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        ledger.close()
    typer.echo(f"recorded meter replacement event {eid} for {device} at {ts.isoformat()}")


def _site_keys(config: Path | None) -> list[dict[str, str]]:
    """The site's public key; a fresh site (no ledger yet) gets its first key here. With a ledger and no
    key file this refuses (exit 1): only `gia keys rotate --reason` makes a replacement."""
    from gateway.certification.service import ReportService
    from gateway.certification.signing import KeyMissing
    from gateway.certification.sitekeys import ensure_site_key

    cfg = load_or_exit(config)
    settings = cfg.settings
    try:
        ensure_site_key(settings.data_dir / "keys", settings.ledger_path, site=settings.site.id)
        return ReportService(settings, cfg.site).public_keys()
    except KeyMissing as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def keys_show(config: ConfigOpt = None) -> None:
    """Print the site's public key fingerprint (key_id) and PEM."""
    for k in _site_keys(config):
        typer.echo(f"site: {k['site']}\nalg: {k['alg']}\nkey_id (fingerprint): {k['key_id']}\n{k['public_key_pem']}")


def keys_export(
    file: Annotated[Path, typer.Argument(help="where to write the public key (PEM)")],
    config: ConfigOpt = None,
) -> None:
    """Write the public key as PEM (never the private key) and print its fingerprint."""
    k = _site_keys(config)[0]
    file.write_text(k["public_key_pem"])
    typer.echo(f"wrote {file}; key_id (fingerprint) {k['key_id']}")


def keys_rotate(
    reason: Annotated[str, typer.Option(help="why the key changes (lost, compromised, scheduled): certifiers read it")],
    config: ConfigOpt = None,
) -> None:
    """Make a new site key. The key-transition statement (signed by the old key when it still exists) goes
    into the ledger's events chain, so certifiers who pinned the old key can follow it."""
    from gateway.certification.sitekeys import rotate_site_key
    from gateway.runtime.clockguard import ClockImplausible

    settings = load_or_exit(config).settings
    try:
        rot = rotate_site_key(settings.data_dir / "keys", settings.ledger_path, site=settings.site.id, reason=reason)
    except (ValueError, ClockImplausible) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"new site key {rot.key_id} (ledger event {rot.event_id})")
    if rot.signed_by_old:
        typer.echo(f"the transition is signed by the old key {rot.old_key_id}: certifiers who pinned it can follow it")
    else:
        typer.echo(
            "the old key was not available: certifiers must pin the new key out of band"
            " (gia keys export FILE, and give them its fingerprint)"
        )


def import_certificates(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="CSV: certificate_id,production_device,hour_start,energy_wh")
    ],
    config: ConfigOpt = None,
) -> None:
    """Import hourly granular certificates (off-site renewables) cancelled for this site; each id once, ever."""
    from gateway.certification.certificates import ImportFileError
    from gateway.certification.imports import import_certificates as record
    from gateway.ledger.store import Ledger
    from gateway.runtime.clockguard import ClockImplausible

    settings = load_or_exit(config).settings
    try:
        data = file.read_bytes()
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ledger = Ledger(settings.ledger_path)
    try:
        eid, n = record(ledger, data, str(file))
    except (ImportFileError, UnicodeDecodeError, ClockImplausible) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        ledger.close()
    typer.echo(f"imported {n} certificates from {file.name} as event {eid}")


def import_grid_factors(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="CSV: hour_start,value")],
    source: Annotated[str, typer.Option(help="publisher and data set of the factors (printed in reports)")],
    unit: Annotated[str, typer.Option(help="'t CO2/MWh' or 'g CO2/kWh'")] = "t CO2/MWh",
    basis: Annotated[str, typer.Option(help="what the factors describe")] = "location-based: hourly grid average",
    status: Annotated[str, typer.Option(help="provisional or final")] = "provisional",
    config: ConfigOpt = None,
) -> None:
    """Import hourly location-based grid emission factors (a later import restates the hours it covers)."""
    from gateway.certification.certificates import ImportFileError
    from gateway.certification.imports import import_grid_factors as record
    from gateway.ledger.store import Ledger
    from gateway.runtime.clockguard import ClockImplausible

    settings = load_or_exit(config).settings
    try:
        data = file.read_bytes()
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    ledger = Ledger(settings.ledger_path)
    try:
        eid, n = record(ledger, data, str(file), unit=unit, source=source, basis=basis, status=status)
    except (ImportFileError, UnicodeDecodeError, ClockImplausible) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        ledger.close()
    typer.echo(f"imported {n} hourly factors from {file.name} as event {eid}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to `gia`."""
    app.command("report")(report)
    app.command("evidence")(evidence)
    app.command("verify")(verify)
    app.command("area-report")(area_report)
    app.command("meter-replacement")(meter_replacement)
    keys = typer.Typer(help="the site's signing key", no_args_is_help=True)
    keys.command("show")(keys_show)
    keys.command("export")(keys_export)
    keys.command("rotate")(keys_rotate)
    app.add_typer(keys, name="keys")
    imports = typer.Typer(help="record certificate and grid-factor files in the ledger", no_args_is_help=True)
    imports.command("certificates")(import_certificates)
    imports.command("grid-factors")(import_grid_factors)
    app.add_typer(imports, name="import")
