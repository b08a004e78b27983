"""`gia hub ...`: run the area hub and administer it (enroll, pin, revoke, sites, quarantine, area-report,
keys, log).

Every command reads the hub's config (`--config FILE`, default ./hub.yaml then /etc/gia/hub.yaml) and
talks to its database directly, so an operator can enroll a site while the hub runs (the database's
write lock orders it with ingestion). Heavy modules are imported inside the commands.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from gateway.hub.config import HubSettings
    from gateway.hub.store import HubStore

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="hub config (default ./hub.yaml, then /etc/gia/hub.yaml)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _settings(config: Path | None) -> HubSettings:
    from gateway.hub.config import load_hub_settings
    from gateway.settings import ConfigError

    try:
        return load_hub_settings(config)
    except ConfigError as exc:
        for p in exc.problems:
            typer.echo(str(p), err=True)
        raise typer.Exit(2) from None


def _store(config: Path | None) -> HubStore:
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.hub.db import DatabaseError
    from gateway.hub.store import HubStore

    settings = _settings(config)
    try:
        return HubStore.open(settings.hub)
    except (SQLAlchemyError, DatabaseError) as exc:
        # SQLAlchemy's messages never include the password (it masks it in URLs).
        typer.echo(f"hub database unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}", err=True)
        raise typer.Exit(1) from None


def run(config: ConfigOpt = None, log_format: Annotated[str, typer.Option(help="text or json")] = "text") -> None:
    """Run the hub: subscribe on the central broker, serve the push API, verify, log and answer receipts."""
    from gateway.hub.service import Hub
    from gateway.runtime.fdbudget import raise_nofile_limit
    from gateway.runtime.logs import setup_logging
    from gateway.runtime.runner import run_until_signal

    settings = _settings(config)
    setup_logging(level=settings.log_level, fmt=log_format)
    raise_nofile_limit()  # the push API's connections beside the database's
    store = _store(config)

    async def main() -> None:
        hub = Hub(settings, store=store)
        await run_until_signal(hub.run, on_stop=hub.request_http_stop)

    try:
        asyncio.run(main())
    finally:
        store.close()


def enroll(
    site: Annotated[str, typer.Argument(help="the site id, as in the site's gia.yaml")],
    area: Annotated[str, typer.Option("--area", help="the area (configured under hub.areas)")],
    public_key: Annotated[Path, typer.Option("--public-key", help="the site's public key PEM (gia keys export)")],
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="write the site's push token here (mode 0600)")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Pin a site's key. Compare the printed fingerprint with the site's `gia keys show` out of band."""
    import re

    from gateway.hub.store import HubError

    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", site):
        typer.echo(f"error: {site!r} is not a site id (lowercase letters, digits, '-', '_')", err=True)
        raise typer.Exit(2)
    try:
        pem = public_key.read_bytes()
    except OSError as exc:
        typer.echo(f"error: {public_key}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    store = _store(config)
    try:
        done = store.enroll(site, area, pem)
    except HubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"enrolled {done.site} in area {done.area}")
    typer.echo(f"key fingerprint (key_id): {done.key_id}")
    typer.echo("check it against the site's 'gia keys show' by a channel other than this file's")
    if token_file is not None:
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(done.token + "\n")
        typer.echo(f"push token written to {token_file} (give it to the site's hub: token_file)")
    else:
        typer.echo(f"push token (shown once; the hub keeps only its hash): {done.token}")


def pin(
    site: Annotated[str, typer.Argument(help="the enrolled site id")],
    public_key: Annotated[Path, typer.Option("--public-key", help="the site's new public key PEM (gia keys export)")],
    reason: Annotated[str, typer.Option("--reason", help="why, and how the fingerprint was checked")],
    config: ConfigOpt = None,
) -> None:
    """Pin a new key for a site whose old key was lost (its transition was not signed by a trusted key)."""
    from gateway.hub.store import HubError

    try:
        pem = public_key.read_bytes()
    except OSError as exc:
        typer.echo(f"error: {public_key}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    store = _store(config)
    try:
        kid = store.pin_key(site, pem, reason)
    except HubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"pinned key {kid} for {site}; check it against the site's 'gia keys show' out of band")


def area_report(
    area: Annotated[str, typer.Argument(help="the area id")],
    period: Annotated[str, typer.Argument(help="YYYY-MM (a month) or YYYY (the yearly roll-up)")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write the signed area report here")] = None,
    now: Annotated[
        bool, typer.Option("--now", help="build it now, listing the sites still awaited, instead of at the deadline")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Build (when due) or fetch the signed area report; it is appended to the transparency log."""
    from gateway.hub.areas import AreaReports
    from gateway.hub.store import HubError

    store = _store(config)
    try:
        reports = AreaReports(store)
        if len(period) == 4:
            built = reports.build_year(area, period, force=now)
            status = None
        else:
            built = reports.build_month(area, period, force=now)
            status = reports.status(area, period) if built is None else None
    except HubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    if built is None:
        if status is not None:
            typer.echo(
                f"not due yet: waiting for {', '.join(status['awaited']) or 'the month to end'} until the deadline"
                f" {status['deadline']}; --now builds it with them listed as missing",
                err=True,
            )
        else:
            typer.echo("no area report: no monthly area report of that year yet (--now builds what exists)", err=True)
        raise typer.Exit(1)
    if output is not None:
        output.write_bytes(built.data)
        typer.echo(f"wrote {output}: version {built.version}, log leaf {built.log_index}, sha256 {built.sha256}")
    else:
        typer.echo(built.data.decode())


def revoke(
    site: Annotated[str, typer.Argument(help="the site id")],
    reason: Annotated[str, typer.Option("--reason", help="why (kept with the site)")] = "",
    config: ConfigOpt = None,
) -> None:
    """Revoke a site: its reports are quarantined from now on and its push token stops working."""
    from gateway.hub.store import HubError

    store = _store(config)
    try:
        store.revoke(site, reason)
    except HubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"revoked {site}")


def sites(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Enrolled and revoked sites: area, pinned key fingerprints, accepted reports, last month."""
    from dataclasses import asdict

    store = _store(config)
    try:
        rows = store.sites()
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r.site}\tarea {r.area}\t{r.status}\tkey {r.key_ids[-1] if r.key_ids else '-'}"
            f"\treports {r.reports}\tlast {r.last_month or '-'}"
        )


def quarantine(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Submissions never counted (unknown sites, unpinned keys, bad signatures, ...) and conflicts."""
    store = _store(config)
    try:
        q, c = store.quarantined(), store.conflicts()
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"quarantine": q, "conflicts": c}, indent=2))
        return
    for r in q:
        typer.echo(f"{r['received_at']}\t{r['claimed_site']}\t{r['month'] or '-'}\t{r['kind']}\t{r['reason']}")
    for r in c:
        typer.echo(f"{r['detected_at']}\t{r['site']}\t{r['month']}\tconflict\t{r['detail']}")


def keys_export(
    file: Annotated[Path, typer.Argument(help="where to write the hub's public key (PEM)")],
    config: ConfigOpt = None,
) -> None:
    """Write the hub's public key (signs tree heads, receipts, area reports) and print its fingerprint."""
    from gateway.hub.store import HubKeyStore

    settings = _settings(config)
    info = HubKeyStore(settings.hub.data_dir / "keys").public_info()
    file.write_text(info["public_key_pem"])
    typer.echo(f"wrote {file}; hub key_id (fingerprint) {info['key_id']}")


def log_head(config: ConfigOpt = None) -> None:
    """Print the latest signed tree head (JSON)."""
    store = _store(config)
    try:
        head = store.tree_head()
    finally:
        store.close()
    if head is None:
        typer.echo("the log is empty", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(head, indent=2))


def log_proof(
    site: Annotated[str, typer.Argument(help="the site id (the area id with --area)")],
    month: Annotated[str, typer.Argument(help="YYYY-MM (with --area also YYYY)")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write the proof here")] = None,
    area: Annotated[bool, typer.Option("--area", help="the proof of the area report of AREA for the period")] = False,
    config: ConfigOpt = None,
) -> None:
    """The inclusion proof of a site's report for a month (or an area report), with the signed tree head it
    is against: `gia verify REPORT --log-head PROOF --hub-key HUB.pem` checks it offline."""
    from gateway.hub.store import HubError

    store = _store(config)
    try:
        proof = store.area_inclusion_proof(site, month) if area else store.inclusion_proof(site, month)
    except HubError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    text = json.dumps(proof, indent=2)
    if output is not None:
        output.write_text(text + "\n")
        typer.echo(f"wrote {output}")
    else:
        typer.echo(text)


def register(app: typer.Typer) -> None:
    """Add `gia hub ...` to `gia`."""
    hub = typer.Typer(help="the area hub: enrolled sites, verified reports, the transparency log", no_args_is_help=True)
    hub.command("run")(run)
    hub.command("enroll")(enroll)
    hub.command("pin")(pin)
    hub.command("area-report")(area_report)
    hub.command("revoke")(revoke)
    hub.command("sites")(sites)
    hub.command("quarantine")(quarantine)
    keys = typer.Typer(help="the hub's public key", no_args_is_help=True)
    keys.command("export")(keys_export)
    hub.add_typer(keys, name="keys")
    logs = typer.Typer(help="the transparency log", no_args_is_help=True)
    logs.command("head")(log_head)
    logs.command("proof")(log_proof)
    hub.add_typer(logs, name="log")
    app.add_typer(hub, name="hub")
