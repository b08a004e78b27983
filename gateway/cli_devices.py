"""`gia scan`, `gia sim`, `gia read`: the commands a technician uses at the meter cabinet.

Heavy modules (pymodbus) are imported inside the commands so `gia --help` stays instant on a Pi.
Exit codes: 0 success; 1 the device could not be read (timeout, refused, exception response); 2 bad
input (unknown map, malformed URL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # imported lazily at run time: pymodbus is slow to import on a Pi
    from drivers.config import Connection
    from drivers.modbus.registermap import RegisterMap
    from drivers.modbus.scan import ScanHit
    from drivers.model import Sample

Url = Annotated[
    str,
    typer.Argument(
        help="tcp://HOST[:PORT], rtu:///dev/ttyUSB0?baud=9600, rtu+tcp://HOST:PORT or opc.tcp://HOST:PORT (OPC UA)"
    ),
]


def _quiet_pymodbus() -> None:
    # pymodbus logs every timeout with a frame dump at ERROR; the commands report errors themselves.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _connection(url: str) -> Connection:
    from drivers.config import parse_connection

    try:
        return parse_connection(url)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add scan, sim and read to `gia`."""

    @app.command("scan")
    def scan_cmd(
        urls: Annotated[
            list[str] | None,
            typer.Argument(
                metavar="[URL]...",
                help="tcp://HOST[:PORT], rtu:///dev/ttyUSB0?baud=9600, rtu+tcp://HOST:PORT or opc.tcp://HOST:PORT;"
                " several at once for one config of the whole site",
            ),
        ] = None,
        p1_port: Annotated[
            list[str] | None,
            typer.Option(
                "--p1-port",
                help="a P1/HAN port to listen to (serial:// or tcp:// URL, as for gia read --p1; repeatable)",
            ),
        ] = None,
        p1_variant: Annotated[
            str | None,
            typer.Option("--p1-variant", help="dsmr4|dsmr5|belgium|sweden|finland; default: told from the telegram"),
        ] = None,
        p1_timeout: Annotated[
            float, typer.Option("--p1-timeout", help="seconds to wait for a P1 telegram (HAN and DSMR 4: every 10 s)")
        ] = 12.0,
        units: Annotated[str, typer.Option(help="unit ids to probe, e.g. 1-10,100,225")] = "1-10,100,126,225,247",
        timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 0.5,
        site_id: Annotated[str, typer.Option("--site-id", help="site id for the printed config")] = "my-site",
        depth: Annotated[int, typer.Option(help="OPC UA: levels of the address space to browse")] = 4,
        map_out: Annotated[
            Path, typer.Option("--map-out", help="OPC UA: where to write a proposed node map when none matches")
        ] = Path("opcua-map.yaml"),
    ) -> None:
        """Find unit ids, SunSpec models and known device maps (OPC UA: browse, match node maps; P1: listen
        for a telegram, tell its variant); print one config for everything given."""
        from gateway import cli_opcua

        sources = list(urls or [])
        if len(sources) != 1 or p1_port:
            _scan_site(sources, p1_port or [], p1_variant, p1_timeout, units, timeout, site_id, depth, map_out)
            return
        (url,) = sources
        if cli_opcua.is_opcua_url(url):
            cli_opcua.scan(url, timeout=max(timeout, 2.0), site_id=site_id, depth=depth, map_out=map_out)
            return
        from drivers.maps import bundled_maps, load_map
        from drivers.modbus.bus import BusPool
        from drivers.modbus.scan import config_snippet, describe, parse_units, scan
        from gateway.i18n import cli_translator

        _quiet_pymodbus()
        conn = _connection(url)
        try:
            unit_list = parse_units(units)
        except ValueError as exc:
            typer.echo(f"error: --units: {exc}", err=True)
            raise typer.Exit(2) from None
        maps = {name: load_map(name) for name in bundled_maps()}

        t = cli_translator()
        typer.echo(t("scanning {url}, units {units} ...", url=url, units=units), err=True)
        connected: list[bool] = []

        async def run_and_check() -> list[ScanHit]:
            async with BusPool() as pool:
                bus = pool.bus(conn, timeout_s=timeout, options={})
                found = list(await scan(bus, unit_list, maps))
                connected.append(bus.stats.reconnects > 0)
                return found

        hits = asyncio.run(run_and_check())
        for hit in hits:
            typer.echo(describe(hit), err=True)
        if not hits:
            if not connected[0]:
                typer.echo(t("{url}: cannot connect (check the address, port, cable and power)", url=url), err=True)
            else:
                typer.echo(t("connected, but no unit answered; check the unit ids, baud rate and parity"), err=True)
            raise typer.Exit(1)
        typer.echo(config_snippet(url, hits, site_id=site_id, maps_by_name=maps))

    @app.command("sim")
    def sim_cmd(
        map_name: Annotated[str, typer.Argument(metavar="MAP", help="bundled map name or map file")] = "",
        listen: Annotated[str, typer.Option(help="tcp://HOST:PORT, rtu+tcp://HOST:PORT or rtu:///dev/pts/N")] = (
            "tcp://127.0.0.1:5020"
        ),
        unit: Annotated[list[int] | None, typer.Option(help="unit id(s) to answer as (repeatable)")] = None,
        speed: Annotated[float, typer.Option(help="simulated time runs N times faster")] = 1.0,
        list_maps: Annotated[bool, typer.Option("--list", help="list the bundled maps and exit")] = False,
        root: Annotated[
            list[str] | None, typer.Option(help="OPC UA: serve the node map under this root (repeatable: a park)")
        ] = None,
    ) -> None:
        """Serve a device map as a simulated Modbus device, or an OPC UA node map as an OPC UA server."""
        from drivers.maps import MapError, bundled_maps, load_map
        from gateway import cli_opcua

        if list_maps or not map_name:
            for name in bundled_maps():
                m = load_map(name)
                typer.echo(f"{name:28} {m.device_class:13} {m.product.brand} {m.product.model}")
            cli_opcua.list_maps()
            if not list_maps:
                raise typer.Exit(2)
            return
        if cli_opcua.is_node_map(map_name):
            cli_opcua.sim(map_name, listen=listen, roots=root or [], speed=speed)
            return
        try:
            register_map = load_map(map_name, base_dir=Path.cwd())
        except MapError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        _quiet_pymodbus()
        units = tuple(unit or [register_map.default_unit_id])
        asyncio.run(_serve(register_map, listen=listen, units=units, speed=speed))

    @app.command("read")
    def read_cmd(
        url: Url,
        unit: Annotated[int, typer.Option(help="Modbus unit id")] = 1,
        map_name: Annotated[str | None, typer.Option("--map", help="bundled map name or map file")] = None,
        sunspec: Annotated[bool, typer.Option("--sunspec", help="discover SunSpec models instead of a map")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="print a JSON list of samples")] = False,
        timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 3.0,
        p1: Annotated[
            str | None,
            typer.Option("--p1", help="a P1/HAN port (serial:// or tcp:// URL): dsmr4|dsmr5|belgium|sweden|finland"),
        ] = None,
        sml: Annotated[bool, typer.Option("--sml", help="an SML optical head (serial:// or tcp:// URL)")] = False,
        mbus: Annotated[int | None, typer.Option("--mbus", help="an M-Bus meter at this primary address")] = None,
        root: Annotated[str | None, typer.Option(help="OPC UA: root of the node map's browse paths")] = None,
    ) -> None:
        """Read a device once and print its samples: "does my meter work?"."""
        from drivers.base import DriverError
        from drivers.config import ModbusDeviceConfig
        from drivers.factory import create_driver, device_map
        from drivers.model import iso_utc
        from drivers.services import DriverServices
        from gateway import cli_opcua

        port_kinds = (p1 is not None) + sml + (mbus is not None)
        if port_kinds:
            if port_kinds > 1 or map_name is not None or sunspec:
                typer.echo("error: give one of --map, --sunspec, --p1, --sml or --mbus", err=True)
                raise typer.Exit(2)
            rows = _read_port(url, p1=p1, sml=sml, mbus=mbus, timeout=timeout)
            _print_rows(rows, as_json=as_json)
            return
        if (map_name is None) == (not sunspec):
            typer.echo("error: give exactly one of --map MAP or --sunspec", err=True)
            raise typer.Exit(2)
        if cli_opcua.is_opcua_url(url):
            try:
                samples = cli_opcua.read(url, map_name=map_name or "", root=root, timeout=timeout)
            except DriverError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
            _print_rows([_row(s, iso_utc) for s in samples], as_json=as_json)
            return
        _connection(url)
        _quiet_pymodbus()
        try:
            cfg = ModbusDeviceConfig(
                id="device", connection=url, unit_id=unit, map=map_name, sunspec=sunspec, timeout_s=timeout
            )
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

        async def run() -> Sequence[Sample]:
            register_map = device_map(cfg, base_dir=Path.cwd())
            async with DriverServices() as services:
                driver = create_driver(cfg, device_map=register_map, services=services)
                async with driver:
                    return await driver.read(datetime.now(UTC).replace(microsecond=0))

        try:
            samples = asyncio.run(run())
        except DriverError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        _print_rows([_row(s, iso_utc) for s in samples], as_json=as_json)


def _scan_site(
    urls: list[str],
    p1_ports: list[str],
    p1_variant: str | None,
    p1_timeout: float,
    units: str,
    timeout: float,
    site_id: str,
    depth: int,
    map_out: Path,
) -> None:
    from typing import get_args

    from drivers.p1.config import Variant
    from gateway.cli_scan import scan_site

    if not urls and not p1_ports:
        typer.echo("error: give a URL to scan (several for a whole site) or --p1-port URL", err=True)
        raise typer.Exit(2)
    variants: tuple[Variant, ...] = get_args(Variant)
    if p1_variant is not None and p1_variant not in variants:
        typer.echo(f"error: --p1-variant must be one of {', '.join(variants)}", err=True)
        raise typer.Exit(2)
    scan_site(
        urls,
        p1_ports=p1_ports,
        p1_variant=next((v for v in variants if v == p1_variant), None),
        p1_timeout=p1_timeout,
        units=units,
        timeout=timeout,
        site_id=site_id,
        depth=depth,
        map_out=map_out,
    )


def _row(s: Sample, iso_utc: Any) -> dict[str, Any]:
    return {"quantity": s.quantity, "value": s.value, "unit": s.unit, "quality": str(s.quality), "ts": iso_utc(s.ts)}


def _print_rows(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:g}" if isinstance(r["value"], float) else r["value"]
        typer.echo(f"{r['quantity']:22} {value!s:>16} {r['unit']:5} {r['quality']}")


def _read_port(url: str, *, p1: str | None, sml: bool, mbus: int | None, timeout: float) -> list[dict[str, Any]]:
    """Read a meter port once: P1/SML wait up to `timeout` for the first checked telegram; M-Bus asks."""
    from pydantic import ValidationError

    from drivers.base import DriverError
    from drivers.factory import create_driver
    from drivers.model import iso_utc
    from drivers.pushed import PushedMeter
    from drivers.services import DriverServices

    raw: dict[str, Any] = {"id": "device", "connection": url, "timeout_s": timeout}
    if p1 is not None:
        raw |= {"driver": "p1", "variant": p1}
    elif sml:
        raw |= {"driver": "sml"}
    else:
        raw |= {"driver": "mbus", "address": mbus}
    from drivers.config import DEVICE_MODELS

    try:
        cfg = DEVICE_MODELS[raw["driver"]].model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        typer.echo(f"error: {'.'.join(map(str, err['loc']))}: {err['msg']}", err=True)
        raise typer.Exit(2) from None

    async def run() -> list[dict[str, Any]]:
        async with DriverServices() as services:
            driver = create_driver(cfg, device_map=None, services=services)  # type: ignore[arg-type]
            async with driver:
                if isinstance(driver, PushedMeter):
                    await driver.wait_for_telegram(max(timeout, 12.0))  # DSMR 4 and HAN ports talk every 10 s
                samples = await driver.read(datetime.now(UTC).replace(microsecond=0))
                return [_row(s, iso_utc) for s in samples]

    try:
        return asyncio.run(run())
    except DriverError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def _serve(register_map: RegisterMap, *, listen: str, units: tuple[int, ...], speed: float) -> None:
    from drivers.sim.generators import simulated_device

    start = datetime.now(UTC)

    def now() -> datetime:
        return start + (datetime.now(UTC) - start) * speed

    server = simulated_device(register_map, listen=listen, unit_ids=units, now=now)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    typer.echo(
        f"serving {register_map.name} ({register_map.product.brand} {register_map.product.model}) on {listen},"
        f" unit(s) {', '.join(map(str, units))}; Ctrl-C stops",
        err=True,
    )
    try:
        await stop.wait()
    finally:
        await server.stop()
