"""Device setup for the admin: scan, identify, test-read, pick channel roles, save a checked config change.

Every route needs the `admin` role; nothing here is reachable otherwise. The steps are the technician's
CLI steps (`gia scan`, `gia read`, `gia check-config`) behind one page:

* `POST /api/v1/setup/scan` `{url, units}`: which unit ids answer, SunSpec models, the bundled map that
  matches (drivers/modbus/scan.py) — through the agent's own bus pool, so a scan of a serial line the
  agent polls takes turns on the same bus lock instead of fighting for the port;
* `POST /api/v1/setup/read` `{url, unit, map}`: one read of the device, every quantity with quality;
* `POST /api/v1/setup/check` `{device}`: the whole config with the device added (or replaced, same id)
  through `load_config`, the very checks of `gia check-config`; answers the problems or the YAML;
* `POST /api/v1/setup/save` `{device}`: the same check, then the previous file is kept as
  `gia.yaml.<UTC time>.bak` beside it and the new one replaces it atomically. Every change is logged
  (who, what, where the backup is) and appended to `<data_dir>/config-changes.jsonl`. The running
  agent keeps its configuration until it is restarted (the page says so).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml
from fastapi import FastAPI, Request

from gateway.api.auth import ApiError, Principal
from gateway.api.history_routes import Authenticates

log = logging.getLogger(__name__)

MAX_UNITS: Final = 32


@dataclass
class SetupContext:
    config_path: Path | None
    data_dir: Path
    #: the agent's Modbus bus pool (drivers.services.DriverServices.pool)
    pool: Any
    now: Callable[[], datetime]


def _units(spec: Any) -> list[int]:
    from drivers.modbus.scan import parse_units

    try:
        units = parse_units(str(spec or "1-10,100,126,225,247"))
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"units: {exc}") from None
    if len(units) > MAX_UNITS:
        raise ApiError(400, "bad_request", f"at most {MAX_UNITS} unit ids per scan")
    return units


def _connection(url: Any) -> Any:
    from drivers.config import parse_connection

    try:
        conn = parse_connection(str(url or ""))
    except ValueError as exc:
        raise ApiError(400, "bad_connection", str(exc)) from None
    return conn


def candidate_config(config_path: Path, device: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """The config text with `device` added (or replacing the device of the same id), and its problems
    as `gia check-config` finds them (empty: valid). Checked from a file beside the original so relative
    paths resolve the same way."""
    from gateway.settings import ConfigError, load_config

    raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        return "", [{"path": "(top level)", "message": "the config file is not a mapping", "fix": ""}]
    if not isinstance(device, dict) or not isinstance(device.get("id"), str):
        return "", [{"path": "device.id", "message": "a device needs an id", "fix": "give it a lowercase id"}]
    devices = [d for d in raw.get("devices") or [] if not (isinstance(d, dict) and d.get("id") == device["id"])]
    raw["devices"] = [*devices, device]
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    probe = config_path.with_name(f".{config_path.name}.check-{os.getpid()}.yaml")
    probe.write_text(text, encoding="utf-8")
    try:
        load_config(probe)
    except ConfigError as exc:
        problems = [{"path": p.path, "message": p.message, "fix": p.fix} for p in exc.problems]
        return text, problems
    finally:
        probe.unlink(missing_ok=True)
    return text, []


def save_config(ctx: SetupContext, text: str, who: Principal, device_id: str) -> Path:
    """Back up the current file, write `text` in its place atomically, log and record the change."""
    assert ctx.config_path is not None
    path = ctx.config_path
    stamp = ctx.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    backup = path.with_name(f"{path.name}.{stamp}.bak")
    backup.write_bytes(path.read_bytes())
    os.chmod(backup, path.stat().st_mode & 0o777)
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, path.stat().st_mode & 0o777)
    tmp.replace(path)
    entry = {
        "ts": ctx.now().astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "by": who.name,
        "change": "device saved",
        "device": device_id,
        "config": str(path),
        "backup": str(backup),
    }
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.data_dir / "config-changes.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    log.warning(
        "config changed by %s: device %s saved to %s (previous file kept as %s); restart the agent to apply",
        who.name,
        device_id,
        path,
        backup.name,
    )
    return backup


def add_setup_routes(app: FastAPI, *, auth: Authenticates, ctx: SetupContext) -> None:
    async def body(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise ApiError(400, "bad_request", "send a JSON object") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", "send a JSON object")
        return data

    @app.get("/api/v1/setup/maps", tags=["setup"], summary="Bundled device maps and their quantities (admin)")
    async def maps(request: Request) -> dict[str, Any]:
        auth.authenticate(request, "admin")
        from drivers.maps import bundled_maps, load_map

        def listing() -> list[dict[str, Any]]:
            out = []
            for name in bundled_maps():
                m = load_map(name)
                out.append(
                    {
                        "name": name,
                        "class": str(m.device_class),
                        "product": f"{m.product.brand} {m.product.model}",
                        "quantities": sorted({r.quantity for r in m.registers}),
                    }
                )
            return out

        return {"maps": await asyncio.to_thread(listing)}

    @app.post("/api/v1/setup/scan", tags=["setup"], summary="Scan a Modbus bus or address (admin)")
    async def scan(request: Request) -> dict[str, Any]:
        auth.authenticate(request, "admin")
        data = await body(request)
        conn = _connection(data.get("url"))
        units = _units(data.get("units"))
        from drivers.maps import bundled_maps, load_map
        from drivers.modbus.scan import scan as run_scan

        maps = await asyncio.to_thread(lambda: {n: load_map(n) for n in bundled_maps()})
        bus = ctx.pool.bus(conn, timeout_s=float(data.get("timeout_s") or 0.5), options={})
        hits = await run_scan(bus, units, maps)
        return {
            "url": data.get("url"),
            "units": [
                {
                    "unit": h.unit,
                    "product": h.product,
                    "maps": h.maps,
                    "plausible": h.plausible,
                    "sunspec_models": h.sunspec_models,
                    "details": h.details,
                    "quantities": sorted({r.quantity for r in maps[h.maps[0]].registers}) if h.maps else [],
                }
                for h in hits
            ],
            "connected": bus.connected or bool(hits),
        }

    @app.post("/api/v1/setup/read", tags=["setup"], summary="Read a device once (admin)")
    async def read(request: Request) -> dict[str, Any]:
        auth.authenticate(request, "admin")
        data = await body(request)
        from drivers.base import DriverError
        from drivers.config import ModbusDeviceConfig
        from drivers.factory import create_driver, device_map
        from drivers.model import iso_utc
        from drivers.services import DriverServices

        try:
            cfg = ModbusDeviceConfig(
                id="setup-read",
                connection=str(data.get("url") or ""),
                unit_id=int(data.get("unit") or 1),
                map=data.get("map"),
                timeout_s=float(data.get("timeout_s") or 3.0),
            )
            base = ctx.config_path.parent if ctx.config_path else Path.cwd()
            loaded = await asyncio.to_thread(device_map, cfg, base_dir=base)
        except (ValueError, DriverError) as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        services = DriverServices()
        services.pool = ctx.pool  # share the agent's buses (and their locks)
        try:
            async with create_driver(cfg, device_map=loaded, services=services) as driver:
                samples = await driver.read(ctx.now().replace(microsecond=0))
        except DriverError as exc:
            raise ApiError(502, "device_unreadable", str(exc)) from None
        return {
            "samples": [
                {
                    "quantity": s.quantity,
                    "value": s.value,
                    "unit": s.unit,
                    "quality": str(s.quality),
                    "ts": iso_utc(s.ts),
                }
                for s in samples
            ]
        }

    async def checked(request: Request) -> tuple[Principal, dict[str, Any], str, list[dict[str, str]]]:
        principal = auth.authenticate(request, "admin")
        if ctx.config_path is None or not ctx.config_path.is_file():
            raise ApiError(409, "no_config_file", "the agent was not started from a config file it can change")
        data = await body(request)
        device = data.get("device")
        if not isinstance(device, dict):
            raise ApiError(400, "bad_request", 'send {"device": {...}}')
        text, problems = await asyncio.to_thread(candidate_config, ctx.config_path, device)
        return principal, device, text, problems

    @app.post("/api/v1/setup/check", tags=["setup"], summary="Check a device against the config (admin)")
    async def check(request: Request) -> dict[str, Any]:
        _p, device, _text, problems = await checked(request)
        return {"ok": not problems, "problems": problems, "device": device}

    @app.post("/api/v1/setup/save", tags=["setup"], summary="Save a checked device to the config (admin)")
    async def save(request: Request) -> dict[str, Any]:
        principal, device, text, problems = await checked(request)
        if problems:
            raise ApiError(400, "bad_config", "; ".join(f"{p['path']}: {p['message']}" for p in problems))
        backup = await asyncio.to_thread(save_config, ctx, text, principal, str(device["id"]))
        return {"ok": True, "config": str(ctx.config_path), "backup": str(backup), "restart_needed": True}
