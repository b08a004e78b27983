"""What every `gia` command that reads the configuration shares: the option and the one way to load it.

`load_or_exit` prints each configuration problem on its own line (field, what is wrong, the fix) and
exits 2, so every command reports a bad file the same way `gia check-config` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from gateway.settings import Config

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="config file (default ./gia.yaml, then /etc/gia/gia.yaml)")
]
LogFormatOpt = Annotated[str, typer.Option("--log-format", help="text or json")]


def load_or_exit(config: Path | None) -> Config:
    """The settings and the resolved site, or exit 2 with one line per problem."""
    from gateway.settings import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        from gateway.i18n import cli_translator

        t = cli_translator()  # in the command line's language (LANGUAGE, LC_ALL, LANG), as its other messages
        for p in exc.problems:
            typer.echo(p.render(t), err=True)
        raise typer.Exit(2) from None
