"""`gia forecast show --config gia.yaml` without `--data`: the running agent's current forecast.

The agent keeps its forecasts in memory and serves them on its own API (`/api/v1/forecasts/{target}`),
so the command asks the agent the config describes, as the page does: the `http:` section's address
(a wildcard listen address is reached on loopback), HTTPS when the agent serves it (its certificate file
is the only certificate trusted), and the first of the config's tokens, if any (on loopback the demo lets
viewers in without one). Nothing is computed here: what prints is what the agent publishes.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from drivers.errors import GiaError


class AgentUnreachable(GiaError):
    """The agent of this config does not answer, refuses the token or has no such forecast."""

    exit_code = 1


def _base_url(host: str, port: int, tls: bool) -> str:
    """Where this machine reaches the agent: a wildcard listen address is reached on loopback."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


def fetch_current(config: Path | None, target: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The agent's current forecast payload for `target` (the API's JSON)."""
    from gateway.settings import find_config, load_config

    http = load_config(find_config(config)).settings.http
    if not http.enabled:
        raise AgentUnreachable(
            "this config turns the agent's API off (http.enabled: false): give a history CSV with --data"
        )
    tls = http.tls_cert_file is not None
    url = f"{_base_url(http.host, http.port, tls)}/api/v1/forecasts/{target}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if http.tokens:
        request.add_header("Authorization", f"Bearer {http.tokens[0].value()}")
    context = None
    if tls and http.tls_cert_file is not None:
        context = ssl.create_default_context(cafile=str(http.tls_cert_file))
        context.check_hostname = False  # the agent's own certificate file is the only one trusted
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        detail = body.get("detail") or body.get("error") or exc.reason
        if exc.code in (401, 403):
            raise AgentUnreachable(f"the agent at {url} refused this config's token ({exc.code})") from None
        raise AgentUnreachable(f"the agent has no {target} forecast ({exc.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AgentUnreachable(
            f"no agent answers at {url} ({reason}): is 'gia run' running with this config?"
            " To compute a forecast from a history CSV instead, give --data"
        ) from None


def current_or_exit(config: Path | None, target: str) -> dict[str, Any]:
    """`fetch_current` for the CLI: an unusable config or an unreachable agent ends the command with its
    message (exit 2 for the config, 1 for the agent)."""
    import typer

    try:
        return fetch_current(config, target)
    except GiaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
