"""Shared plumbing of the fault matrix: simulated meters, a config writer and `gia run` as a real process.

The agent always runs as its own process (`python -m gateway run`), so a test can SIGKILL it, hold a
lock on its ledger from outside, or give it a fake clock with libfaketime. Helpers that already exist
for the end-to-end tests (`get_json`, `wait_for`, `ledger_groups`) are reused from there.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from drivers.maps import load_map
from drivers.sim.server import SimServer
from gateway.ledger.store import Ledger
from tests.agent.test_agent_e2e import get_json, wait_for
from tests.servers import InfluxDB1, free_port, signal_child

__all__ = [
    "AgentProcess",
    "Meters",
    "agent_env",
    "get_json",
    "influx_groups",
    "ledger_entries",
    "wait_for",
    "write_config",
]

Values = Callable[[], Mapping[str, float | int | None]]


def constant_meter(offset: int) -> Mapping[str, float | int | None]:
    """Values that do not change: any other number in the ledger can only be a decoding error."""
    return {
        "power_w": 1000.0 + offset,
        "voltage_l1_v": 230.0,
        "frequency_hz": 50.0,
        "energy_import_wh": 1_000_000 * (offset + 1),
        "energy_export_wh": 1234,
    }


@dataclass
class Meters:
    """Simulated SDM630 meters on loopback TCP ports, one per id."""

    ids: Sequence[str]
    values: Mapping[str, Values] = field(default_factory=dict)
    sims: dict[str, SimServer] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    async def start(self) -> Meters:
        sdm = load_map("eastron-sdm630")
        for i, dev in enumerate(self.ids):
            port = free_port()
            vals: Values = self.values.get(dev) or partial(constant_meter, i)
            self.sims[dev] = SimServer(sdm, listen=f"tcp://127.0.0.1:{port}", values=vals)
            self.ports[dev] = port
            await self.sims[dev].start()
        return self

    async def stop(self) -> None:
        for sim in self.sims.values():
            await sim.stop()

    def device_configs(self, *, poll_s: float = 0.5, timeout_s: float = 0.4) -> list[dict[str, Any]]:
        return [
            {
                "id": dev,
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{self.ports[dev]}",
                "map": "eastron-sdm630",
                "poll_interval_s": poll_s,
                "timeout_s": timeout_s,
            }
            for dev in self.ids
        ]


def write_config(
    directory: Path,
    *,
    site: str,
    devices: list[dict[str, Any]],
    influx: InfluxDB1 | None = None,
    influx_url: str | None = None,
    mqtt: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, int]:
    """Write gia.yaml in `directory`; returns (path, http port). `influx_url` overrides the server's url."""
    http_port = free_port()
    cfg: dict[str, Any] = {
        "site": {"id": site, "timezone": "Europe/Riga"},
        "data_dir": "data",
        "ledger": {"commit_interval_s": 0.2},
        "devices": devices,
        "http": {"listen": f"127.0.0.1:{http_port}", "anonymous_viewer_on_loopback": True, **(http or {})},
        "log_level": "info",
    }
    if influx is not None:
        influx.create_db("gia")
        cfg["influxdb"] = {"url": influx_url or influx.url, "api": "v1", "database": "gia", "timeout_s": 2}
    if mqtt is not None:
        cfg["mqtt"] = mqtt
    cfg.update(extra or {})
    path = directory / "gia.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, http_port


def agent_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GIA_")} | extra


@dataclass
class AgentProcess:
    """`gia run --config CONFIG` with stderr appended to agent.log beside the config."""

    config: Path
    http_port: int
    env: dict[str, str] = field(default_factory=agent_env)
    proc: asyncio.subprocess.Process | None = None
    #: RLIMIT_NOFILE (soft = hard) for the agent, as a unit's `LimitNOFILE=` sets it; None inherits ours
    nofile: int | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.config.parent / "agent.log"

    @property
    def ledger_path(self) -> Path:
        return self.config.parent / "data" / "ledger.db"

    async def start(self, *, wait_http: bool = True) -> AgentProcess:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(self.config),
                cwd=self.config.parent,
                env=self.env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                preexec_fn=None if self.nofile is None else partial(_limit_nofile, self.nofile),
            )
        if wait_http:
            await wait_for(lambda: get_json(self.base + "/healthz")[0] in (200, 503), 30, "agent's HTTP server")
        return self

    def health(self) -> dict[str, Any]:
        return get_json(self.base + "/healthz")[1]

    async def health_async(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.health)

    async def kill(self) -> None:
        assert self.proc is not None
        signal_child(self.proc, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        signal_child(self.proc, signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _limit_nofile(n: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def ledger_entries(path: Path) -> list[Any]:
    led = Ledger(path, readonly=True)
    try:
        return list(led.iter_all())
    finally:
        led.close()


def influx_groups(influx: InfluxDB1, site: str, measurement: str = "meter") -> dict[tuple[str, int], dict[str, Any]]:
    """Points of `site` by (device, ts ms); fails on a duplicate point."""
    res = influx.query(f"SELECT * FROM {measurement} WHERE site = '{site}'", db="gia")
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for series in res["results"][0].get("series", []):
        cols = series["columns"]
        for row in series["values"]:
            rec = dict(zip(cols, row, strict=True))
            key = (rec.pop("device"), int(rec.pop("time")))
            assert key not in out, f"duplicate point {key}"
            out[key] = {k: v for k, v in rec.items() if v is not None and k not in ("site", "quality")}
    return out
