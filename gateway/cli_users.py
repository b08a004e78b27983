"""`gia user add|remove|list`: people who sign in to the web page with a name and a password.

Stored in `<data_dir>/users.json` (mode 0600) as scrypt hashes (gateway/api/sessions.py), never the
password. The password is asked twice on the terminal (or read from stdin with --password-stdin, for
provisioning scripts) and never taken as an argument, where shell history and `ps` would keep it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gateway.cli_options import ConfigOpt, load_or_exit


def register(app: typer.Typer) -> None:
    users = typer.Typer(help="people who sign in to the web page (name and password)", no_args_is_help=True)

    def store(config: object) -> object:
        from gateway.api.sessions import UserStore

        settings = load_or_exit(config).settings  # type: ignore[arg-type]
        return UserStore(settings.data_dir / "users.json")

    @users.command("add")
    def add(
        name: Annotated[str, typer.Argument(help="the name to sign in with")],
        role: Annotated[list[str], typer.Option(help="viewer, certifier and/or admin (repeatable)")],
        site: Annotated[list[str] | None, typer.Option(help="site ids this user may read (default: all)")] = None,
        password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """Add a user (or set a new password and roles for an existing one)."""
        from gateway.api.sessions import UserStore

        s = store(config)
        assert isinstance(s, UserStore)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
        try:
            s.put(name, password, list(role), list(site or ["*"]))
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"user {name} saved ({', '.join(role)}) in {s.path}")

    @users.command("remove")
    def remove(name: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
        """Remove a user (their open sessions end at the next agent restart)."""
        from gateway.api.sessions import UserStore

        s = store(config)
        assert isinstance(s, UserStore)
        if not s.remove(name):
            typer.echo(f"error: no user {name!r}", err=True)
            raise typer.Exit(2)
        typer.echo(f"user {name} removed")

    @users.command("list")
    def list_(config: ConfigOpt = None) -> None:
        """The users, their roles and sites (never their hashes)."""
        from gateway.api.sessions import UserStore

        s = store(config)
        assert isinstance(s, UserStore)
        for u in s.load().values():
            typer.echo(f"{u.name:20} {','.join(sorted(u.roles)):28} {','.join(sorted(u.sites))}")

    app.add_typer(users, name="user")
