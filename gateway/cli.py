"""`gia`: the command line. Commands import their heavy modules lazily so `gia --help` is instant on a Pi.

Command groups live beside what they drive and register themselves here:
`gateway/cli_agent.py` (run, demo, check-config, backup, restore), `gateway/cli_devices.py` (scan, sim,
read), `gateway/certification/cli.py` (report, evidence, verify, area-report, keys) and
`forecasting/cli.py` (forecast ...), `gateway/hub/cli.py` (hub ...).

`gia verify` is what a certifier runs on their own machine: `main` hands it to
`gateway.certification.verify` before typer, pydantic or anything of the agent is imported.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def build_app() -> typer.Typer:
    import typer

    from forecasting import cli as forecast_cli
    from gateway import cli_agent, cli_devices, cli_users
    from gateway.certification import cli as cert_cli
    from gateway.forecasts.current import current_or_exit
    from gateway.hub import cli as hub_cli

    app = typer.Typer(
        name="gia",
        help="GIA Gateway: energy monitoring, forecasting and verified monthly figures for green industrial areas.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    cli_agent.register(app)
    cli_devices.register(app)
    cli_users.register(app)
    cert_cli.register(app)
    forecast_cli.register(app, current=current_or_exit)
    hub_cli.register(app)
    return app


def main() -> None:
    if sys.argv[1:2] == ["verify"]:
        from gateway.certification.verify import run

        raise SystemExit(run(sys.argv[2:]))
    build_app()()
