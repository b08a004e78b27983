"""`gia scan URL URL ... --p1-port URL`: scan a whole site at once and print ONE config for all of it.

A site has a Modbus meter or two, a PLC or park controller on OPC UA and the utility meter's P1/HAN
port. Scanning them one by one gives one snippet each, every one with its own `site:` and `http:`, which
the operator then merges by hand (and device ids may clash). Here every source is scanned at the same
time (a P1 port may take 10 s to talk; Modbus and OPC UA do not wait for it), device ids are unique
across sources, and the result is one gia.yaml with one `site`, `data_dir` and `http` section
(drivers/proposal.py) that `gia check-config` accepts as printed.

The one-URL form of `gia scan` keeps its own path (gateway/cli_devices.py); this module runs when more
than one source is given or any `--p1-port`. Exit codes: 0 every source found something; 1 a source
could not be reached or found nothing (the config of the others is still printed, with a comment
naming the one that failed); 2 bad input (a malformed URL, an unknown variant), before anything is
scanned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml

if TYPE_CHECKING:
    from drivers.modbus.registermap import RegisterMap
    from drivers.opcua.nodemap import NodeMap
    from drivers.p1.config import Variant
    from drivers.p1.scan import P1Found


@dataclass
class Outcome:
    """What one source gave: devices for the config, comment lines, or why it gave nothing."""

    url: str
    summary: str = ""
    devices: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0


def _bad_input(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def scan_site(
    urls: Sequence[str],
    *,
    p1_ports: Sequence[str],
    p1_variant: Variant | None,
    p1_timeout: float,
    units: str,
    timeout: float,
    site_id: str,
    depth: int,
    map_out: Path,
) -> None:
    """Scan every source concurrently, print what each found on stderr and one config on stdout."""
    from drivers.config import parse_connection
    from drivers.links import parse_link
    from drivers.modbus.scan import parse_units
    from drivers.opcua.config import check_endpoint
    from gateway.cli_opcua import is_opcua_url

    # Every input is checked before anything is scanned: a typo must not cost a 12 s P1 wait.
    modbus: list[tuple[str, Any]] = []
    opcua: list[str] = []
    kinds: list[tuple[str, str]] = []
    for url in urls:
        try:
            if is_opcua_url(url):
                check_endpoint(url)
                opcua.append(url)
                kinds.append(("opcua", url))
            else:
                modbus.append((url, parse_connection(url)))
                kinds.append(("modbus", url))
        except ValueError as exc:
            raise _bad_input(str(exc)) from None
    for url in p1_ports:
        try:
            parse_link(url)
        except ValueError as exc:
            raise _bad_input(f"--p1-port: {exc}") from None
        kinds.append(("p1", url))
    twice = sorted({url for _, url in kinds if sum(u == url for _, u in kinds) > 1})
    if twice:
        raise _bad_input(f"{', '.join(twice)} given twice; give each source once")
    unit_list: list[int] = []
    if modbus:
        try:
            unit_list = parse_units(units)
        except ValueError as exc:
            raise _bad_input(f"--units: {exc}") from None

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # each source's failure is reported once, below
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    typer.echo(f"scanning {len(kinds)} source(s) ...", err=True)
    results = asyncio.run(
        _scan_all(
            modbus,
            opcua,
            p1_ports,
            unit_list=unit_list,
            timeout_s=timeout,
            depth=depth,
            p1_variant=p1_variant,
            p1_timeout=p1_timeout,
        )
    )

    used: set[str] = set()
    outcomes: list[Outcome] = []
    proposals = 0
    for kind, url in kinds:
        result = results[(kind, url)]
        if isinstance(result, BaseException):
            outcomes.append(_failed(kind, url, result))
        elif kind == "modbus":
            outcomes.append(_modbus_outcome(url, result, used))
        elif kind == "opcua":
            out, wrote = _opcua_outcome(url, result, used, map_out=map_out, proposals=proposals)
            proposals += wrote
            outcomes.append(out)
        else:
            outcomes.append(_p1_outcome(url, result, used))

    for out in outcomes:
        if out.error is not None:
            typer.echo(f"error: {out.url}: {out.error}", err=True)
    devices = [d for out in outcomes for d in out.devices]
    code = max(out.exit_code for out in outcomes)
    if not devices:
        typer.echo("error: no source gave a device; nothing to propose", err=True)
        raise typer.Exit(code or 1)
    _print_config(outcomes, devices, site_id=site_id)
    if code:
        raise typer.Exit(code)


async def _scan_all(
    modbus: list[tuple[str, Any]],
    opcua: list[str],
    p1_ports: Sequence[str],
    *,
    unit_list: list[int],
    timeout_s: float,
    depth: int,
    p1_variant: Variant | None,
    p1_timeout: float,
) -> dict[tuple[str, str], Any]:
    """Every source at once; each result is the scan's own value or the exception that ended it."""
    from drivers.modbus.bus import BusPool

    jobs: dict[tuple[str, str], Any] = {}
    async with BusPool() as pool:
        for url, conn in modbus:
            jobs[("modbus", url)] = _scan_modbus(pool, conn, unit_list, timeout_s)
        for url in opcua:
            jobs[("opcua", url)] = _scan_opcua(url, timeout_s=max(timeout_s, 2.0), depth=depth)
        for url in p1_ports:
            jobs[("p1", url)] = _scan_p1(url, variant=p1_variant, timeout_s=p1_timeout)
        done = await asyncio.gather(*jobs.values(), return_exceptions=True)
    return dict(zip(jobs, done, strict=True))


@dataclass
class _ModbusFound:
    hits: list[Any]
    connected: bool
    maps: dict[str, RegisterMap]


async def _scan_modbus(pool: Any, conn: Any, unit_list: list[int], timeout_s: float) -> _ModbusFound:
    from drivers.maps import bundled_maps, load_map
    from drivers.modbus.scan import scan

    maps = {name: load_map(name) for name in bundled_maps()}
    bus = pool.bus(conn, timeout_s=timeout_s, options={})
    hits = list(await scan(bus, unit_list, maps))
    return _ModbusFound(hits, bus.stats.reconnects > 0, maps)


@dataclass
class _OpcuaFound:
    result: Any
    maps: dict[str, NodeMap]


async def _scan_opcua(url: str, *, timeout_s: float, depth: int) -> _OpcuaFound:
    from drivers.opcua.nodemap import bundled_node_maps, load_node_map
    from drivers.opcua.scan import scan
    from drivers.opcua.session import Endpoint

    maps = {name: load_node_map(name) for name in bundled_node_maps()}
    return _OpcuaFound(await scan(Endpoint(url=url, timeout_s=timeout_s), maps, depth=depth), maps)


async def _scan_p1(url: str, *, variant: Variant | None, timeout_s: float) -> P1Found:
    from drivers.p1.scan import listen

    return await listen(url, timeout_s=timeout_s, variant=variant)


def _failed(kind: str, url: str, exc: BaseException) -> Outcome:
    if kind == "opcua":
        from drivers.opcua.session import describe_error

        why = describe_error(exc)[0] if isinstance(exc, Exception) else repr(exc)
    else:
        why = str(exc) or type(exc).__name__
    return Outcome(url, error=why, exit_code=1)


def _modbus_outcome(url: str, found: _ModbusFound, used: set[str]) -> Outcome:
    from drivers.modbus.scan import describe, proposed_devices
    from gateway.i18n import cli_translator

    t = cli_translator()  # the same messages, in the operator's language, as the one-URL scan
    for hit in found.hits:
        typer.echo(f"{url}: {describe(hit)}", err=True)
    if not found.hits:
        why = (
            t("connected, but no unit answered; check the unit ids, baud rate and parity")
            if found.connected
            else t("{url}: cannot connect (check the address, port, cable and power)", url=url).removeprefix(f"{url}: ")
        )
        return Outcome(url, error=why, exit_code=1)
    devices, notes = proposed_devices(url, found.hits, used=used, maps_by_name=found.maps)
    return Outcome(url, f"{len(found.hits)} Modbus unit(s) answered", devices, notes)


def _opcua_outcome(
    url: str, found: _OpcuaFound, used: set[str], *, map_out: Path, proposals: int
) -> tuple[Outcome, int]:
    """The outcome, and 1 when a proposed node map was written (several servers: opcua-map-2.yaml...)."""
    from drivers.opcua.scan import describe, node_map_yaml, proposed_devices

    result = found.result
    for line in describe(result):
        typer.echo(line, err=True)
    summary = f"{result.product or 'OPC UA server'}, {len(result.nodes)} nodes browsed"
    map_file = None
    if not result.matches and result.proposed is not None:
        target = map_out if proposals == 0 else map_out.with_stem(f"{map_out.stem}-{proposals + 1}")
        if target.exists():
            return Outcome(url, summary, error=f"{target} exists; choose another --map-out", exit_code=2), 0
        target.write_text(node_map_yaml(result.proposed), encoding="utf-8")
        typer.echo(f"{url}: proposed node map written to {target}", err=True)
        map_file = str(target)
    devices, notes = proposed_devices(result, found.maps, used=used, map_file=map_file)
    if not devices:
        return Outcome(
            url, summary, notes=notes, error="no node map matched and none could be proposed", exit_code=1
        ), 0
    return Outcome(url, summary, devices, notes), int(map_file is not None)


def _p1_outcome(url: str, found: P1Found, used: set[str]) -> Outcome:
    from drivers.proposal import GRID_CHANNELS

    base = "grid-meter-p1"
    dev_id, n = base, 2
    while dev_id in used:
        dev_id, n = f"{base}-{n}", n + 1
    used.add(dev_id)
    energy = found.quantities.get("energy_import_wh")
    typer.echo(
        f"{url}: P1 telegram from {found.header}, variant {found.variant}"
        + (f", meter {found.serial}" if found.serial else "")
        + (f", energy_import_wh {energy} Wh" if energy is not None else ""),
        err=True,
    )
    dev: dict[str, Any] = {"id": dev_id, "driver": "p1", "connection": found.connection, "variant": found.variant}
    if found.serial:
        dev["serial"] = found.serial
    dev["channels"] = [dict(c) for c in GRID_CHANNELS]
    notes = [f"# {dev_id}: a P1/HAN port belongs to the utility's grid meter: grid_import and grid_export"]
    if found.variant == "sweden":
        notes.append(f"# {dev_id}: a Nordic HAN telegram; a Finnish meter sends the same lines (variant finland)")
    if found.connection != url:
        notes.append(f"# {dev_id}: the meter sends 7E1 (bit 7 carried the parity): options added to the URL")
    return Outcome(url, f"P1 {found.variant} ({found.header})", [dev], notes)


def _print_config(outcomes: list[Outcome], devices: list[dict[str, Any]], *, site_id: str) -> None:
    from drivers.proposal import ROLES_NOTE, site_document

    lines = [f"# gia scan: {len(outcomes)} source(s), {len(devices)} device(s)"]
    for out in outcomes:
        lines.append(f"# {out.url}: " + (out.summary if out.error is None else f"NOT SCANNED: {out.error}"))
        lines.extend(out.notes)
    if any("channels" in d for d in devices):
        lines.append(ROLES_NOTE)
    typer.echo("\n".join(lines) + "\n" + yaml.safe_dump(site_document(site_id, devices), sort_keys=False))
