"""The OPC UA side of `gia scan`, `gia sim` and `gia read` (gateway/cli_devices.py dispatches here).

asyncua is imported inside the functions: `gia --help` and Modbus-only sites never load it.
Exit codes as for Modbus: 0 success, 1 the server could not be reached or read, 2 bad input.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from drivers.model import Sample
    from drivers.opcua.nodemap import NodeMap

DEFAULT_LISTEN = "opc.tcp://127.0.0.1:4840"


def is_opcua_url(url: str) -> bool:
    return url.lower().startswith("opc.tcp://")


def is_node_map(name: str) -> bool:
    """A bundled node-map name, or a YAML file holding a node map (`nodes:`)."""
    from drivers.opcua.nodemap import bundled_node_maps, is_node_map_file

    if name in bundled_node_maps():
        return True
    path = Path(name).expanduser()
    return path.suffix in (".yaml", ".yml") and path.is_file() and is_node_map_file(path)


def _quiet() -> None:
    import logging

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # errors are reported by the command, once


def _endpoint_or_exit(url: str, timeout: float) -> object:
    from drivers.opcua.config import check_endpoint
    from drivers.opcua.session import Endpoint

    try:
        check_endpoint(url)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return Endpoint(url=url, timeout_s=timeout)


def scan(url: str, *, timeout: float, site_id: str, depth: int, map_out: Path) -> None:
    """Browse, match bundled node maps, print a config; write a proposed map when nothing matches."""
    from drivers.opcua.nodemap import bundled_node_maps, load_node_map
    from drivers.opcua.scan import config_snippet, describe, node_map_yaml
    from drivers.opcua.scan import scan as run_scan
    from drivers.opcua.session import Endpoint, describe_error

    _quiet()
    endpoint = _endpoint_or_exit(url, timeout)
    assert isinstance(endpoint, Endpoint)
    maps = {name: load_node_map(name) for name in bundled_node_maps()}
    typer.echo(f"browsing {url} ...", err=True)
    try:
        result = asyncio.run(run_scan(endpoint, maps, depth=depth))
    except Exception as exc:  # any failure to talk to the server is reported, never a traceback
        typer.echo(f"error: {url}: {describe_error(exc)[0]}", err=True)
        raise typer.Exit(1) from None
    for line in describe(result):
        typer.echo(line, err=True)
    map_file = None
    if not result.matches and result.proposed is not None:
        if map_out.exists():
            typer.echo(f"error: {map_out} exists; choose another --map-out", err=True)
            raise typer.Exit(2)
        map_out.write_text(node_map_yaml(result.proposed), encoding="utf-8")
        typer.echo(f"proposed node map written to {map_out}", err=True)
        map_file = str(map_out)
    typer.echo(config_snippet(result, maps, site_id=site_id, map_file=map_file))
    if not result.matches and result.proposed is None:
        raise typer.Exit(1)


def list_maps() -> None:
    from drivers.opcua.nodemap import bundled_node_maps, load_node_map

    for name in bundled_node_maps():
        m = load_node_map(name)
        typer.echo(f"{name:28} {m.device_class:13} {m.product.brand} {m.product.model} (OPC UA)")


def sim(map_name: str, *, listen: str, roots: Sequence[str], speed: float) -> None:
    from drivers.maps import MapError
    from drivers.opcua.nodemap import load_node_map

    try:
        node_map = load_node_map(map_name, base_dir=Path.cwd())
    except MapError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not is_opcua_url(listen):
        listen = DEFAULT_LISTEN
    _quiet()
    asyncio.run(_serve(node_map, listen=listen, roots=list(roots), speed=speed))


async def _serve(node_map: NodeMap, *, listen: str, roots: list[str], speed: float) -> None:
    from drivers.opcua.sim import OpcuaSimServer

    start = datetime.now(UTC)

    def now() -> datetime:
        return start + (datetime.now(UTC) - start) * speed

    server = OpcuaSimServer(node_map, listen=listen, roots=roots or None, now=now, update_interval_s=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except OSError as exc:
        typer.echo(f"error: cannot listen on {listen}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"serving {node_map.name} ({node_map.product.brand} {node_map.product.model}) on {listen},"
        f" root(s) {', '.join(server.roots) or 'Objects'}; Ctrl-C stops",
        err=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()


def read(url: str, *, map_name: str, root: str | None, timeout: float) -> Sequence[Sample]:
    """One polling read of an OPC UA device (raises DriverError; exits 2 on bad input)."""
    from pydantic import ValidationError

    from drivers.opcua.config import OpcuaDeviceConfig
    from drivers.opcua.driver import driver_from_config

    _quiet()
    try:
        cfg = OpcuaDeviceConfig(
            id="device", driver="opcua", endpoint=url, map=map_name, root=root, mode="polling", timeout_s=timeout
        )
    except ValidationError as exc:
        typer.echo(f"error: {exc.errors(include_url=False)[0]['msg']}", err=True)
        raise typer.Exit(2) from None

    async def run() -> Sequence[Sample]:
        driver = driver_from_config(cfg, base_dir=Path.cwd())
        async with driver:
            return await driver.read(datetime.now(UTC).replace(microsecond=0))

    return asyncio.run(run())
