"""Commands that run or prepare the agent: run, demo, check-config, backup, restore."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli_options import ConfigOpt, LogFormatOpt, load_or_exit


def register(app: typer.Typer) -> None:
    @app.command("check-config")
    def check_config(config: ConfigOpt = None) -> None:
        """Validate the config and device maps: exit 0, or 2 with one line per problem (field, what, fix)."""
        from gateway.i18n import cli_translator
        from gateway.settings import find_config

        cfg = load_or_exit(config)
        t = cli_translator()
        typer.echo(t("{path}: OK ({n} devices)", path=find_config(config), n=len(cfg.site.devices)))

    @app.command("run")
    def run(config: ConfigOpt = None, log_format: LogFormatOpt = "text") -> None:
        """Run the agent: poll devices, keep every reading in the ledger, forward to InfluxDB and MQTT."""
        from gateway.agent import Agent
        from gateway.runtime.fdbudget import raise_nofile_limit
        from gateway.runtime.logs import setup_logging
        from gateway.runtime.runner import run_until_signal

        cfg = load_or_exit(config)
        setup_logging(level=cfg.settings.log_level, fmt=log_format)
        raise_nofile_limit()  # descriptors for devices and the ledger beside the HTTP connections

        async def main() -> None:
            agent = Agent(cfg)
            await run_until_signal(agent.run, on_stop=agent.request_stop)

        from drivers.errors import GiaError

        try:
            asyncio.run(main())
        except GiaError as exc:  # locked by another agent, the site's signing key is gone, ...
            typer.echo(f"gia run: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

    @app.command("demo")
    def demo(
        http: Annotated[str, typer.Option(help="HOST:PORT for the web page and API")] = "127.0.0.1:8080",
        speed: Annotated[float, typer.Option(help="simulated time runs N times faster")] = 1.0,
        backfill: Annotated[float, typer.Option(help="first generate DAYS of history")] = 0.0,
        mqtt: Annotated[str | None, typer.Option(help="also publish to this broker, mqtt://HOST:PORT")] = None,
        influx: Annotated[str | None, typer.Option(help="also write to this InfluxDB 1.x, http://HOST:8086/DB")] = None,
        directory: Annotated[Path, typer.Option("--dir", help="where the demo keeps its state")] = Path("gia-demo"),
        log_format: LogFormatOpt = "text",
        area: Annotated[
            bool,
            typer.Option(
                "--area",
                help="three simulated sites (demo-a, demo-b, demo-c) and an area hub on SQLite; --http is the hub's"
                " portal; state in ./gia-demo-area/",
            ),
        ] = False,
    ) -> None:
        """A simulated site (site id 'demo') plus the agent on embedded defaults; state in ./gia-demo/."""
        from gateway.demo import DemoOptions, run_demo
        from gateway.runtime.logs import setup_logging

        setup_logging(level="info", fmt=log_format)
        if area:
            _area_demo(directory, http, speed, backfill, mqtt, influx)
            return
        opts = DemoOptions(
            directory=directory, http=http, speed=speed, backfill_days=backfill, mqtt=mqtt, influx=influx
        )
        from drivers.errors import GiaError

        try:
            asyncio.run(run_demo(opts))
        except (OSError, GiaError) as exc:
            typer.echo(f"demo: {exc}", err=True)
            raise typer.Exit(1) from None

    def _area_demo(
        directory: Path, http: str, speed: float, backfill: float, mqtt: str | None, influx: str | None
    ) -> None:
        from drivers.errors import GiaError
        from gateway.demo_area import AreaDemoOptions, run_area_demo

        if mqtt or influx:
            typer.echo("demo --area: --mqtt and --influx are for the single-site demo", err=True)
            raise typer.Exit(2)
        d = Path("gia-demo-area") if directory == Path("gia-demo") else directory
        try:
            asyncio.run(run_area_demo(AreaDemoOptions(directory=d, http=http, speed=speed, backfill_days=backfill)))
        except (OSError, GiaError, RuntimeError) as exc:
            typer.echo(f"demo --area: {exc}", err=True)
            raise typer.Exit(1) from None

    @app.command("backup")
    def backup(
        dest: Annotated[
            Path, typer.Argument(help="FILE.tar.gz: config, ledger, reports, public keys; other names: ledger only")
        ],
        config: ConfigOpt = None,
        include_key: Annotated[
            bool,
            typer.Option(help="also the PRIVATE signing key, encrypted with --passphrase-file (else it is left out)"),
        ] = False,
        passphrase_file: Annotated[
            Path | None, typer.Option(help="file holding the passphrase that encrypts the key")
        ] = None,
    ) -> None:
        """Consistent backup while the agent runs (SQLite online backup). The private signing key is left
        out unless --include-key, and then stored encrypted with a passphrase."""
        from gateway.ledger.store import Ledger
        from gateway.runtime.backup import BackupError, create_bundle
        from gateway.settings import find_config

        settings = load_or_exit(config).settings
        if dest.name.endswith((".tar.gz", ".tgz")):
            try:
                passphrase = _passphrase(passphrase_file)
                members = create_bundle(
                    dest,
                    config=find_config(config),
                    data_dir=settings.data_dir,
                    ledger_path=settings.ledger_path,
                    include_key=include_key,
                    passphrase=passphrase,
                )
            except BackupError as exc:
                typer.echo(f"backup: {exc}", err=True)
                raise typer.Exit(2) from None
            note = (
                "it holds the private signing key, encrypted with your passphrase: keep both safe, apart"
                if include_key
                else "the private signing key is NOT in it (--include-key to add it, encrypted)"
            )
            typer.echo(f"backup written to {dest} ({', '.join(members)}); {note}")
            return
        ledger = Ledger(settings.ledger_path)
        try:
            ledger.backup(dest)
        finally:
            ledger.close()
        typer.echo(f"ledger backed up to {dest}")

    @app.command("restore")
    def restore(
        bundle: Annotated[Path, typer.Argument(help="a FILE.tar.gz written by 'gia backup'")],
        config: ConfigOpt = None,
        force: Annotated[bool, typer.Option(help="replace an existing ledger and keys")] = False,
        passphrase_file: Annotated[
            Path | None, typer.Option(help="file holding the passphrase of an encrypted signing key")
        ] = None,
    ) -> None:
        """Restore ledger, keys and reports from a backup (agent stopped; the ledger must verify)."""
        from gateway.runtime.backup import BackupError, restore_bundle
        from gateway.settings import find_config

        settings = load_or_exit(config).settings
        try:
            done = restore_bundle(
                bundle,
                config=find_config(config),
                data_dir=settings.data_dir,
                ledger_path=settings.ledger_path,
                force=force,
                passphrase=_passphrase(passphrase_file),
            )
        except BackupError as exc:
            typer.echo(f"restore: {exc}", err=True)
            raise typer.Exit(1) from None
        for path in done:
            typer.echo(f"restored {path}")
        if not (settings.data_dir / "keys" / "site-ed25519.pem").exists():
            typer.echo(
                "the backup held no signing key: the agent will refuse to start until you restore keys/ or run"
                " 'gia keys rotate --reason TEXT' (certifiers then pin the new key)"
            )


def _passphrase(path: Path | None) -> bytes | None:
    """The passphrase from a file (first line); never from the command line, where `ps` would show it."""
    if path is None:
        return None
    from gateway.runtime.backup import BackupError

    try:
        text = path.read_text().splitlines()[0] if path.read_text() else ""
    except OSError as exc:
        raise BackupError(f"cannot read the passphrase file: {exc}") from None
    if len(text) < 8:
        raise BackupError("the passphrase must be at least 8 characters")
    return text.encode()
