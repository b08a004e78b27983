"""The composed agent, in-process: the site is resolved once, and a room plugs in without touching the root.

These run `gateway.agent.Agent` itself (not `gia run` in a subprocess) against real pymodbus servers, so
they can count what happens inside: how often a device map is read, and what a sink added as a room sees.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

import drivers.maps
from drivers.maps import load_map
from drivers.sim.server import SimServer, free_tcp_port
from gateway.agent import Agent
from gateway.ledger.store import Poll
from gateway.registry import ROOMS
from gateway.rooms import Part, Room, Services
from gateway.settings import load_config
from gateway.sinks.base import Sink
from gateway.sinks.forwarder import sink_part
from gateway.site.resolve import Site

pytestmark = pytest.mark.modbus

MAPS = {"grid": "eastron-sdm630", "hall": "abb-b23"}


@contextlib.asynccontextmanager
async def simulated_devices() -> AsyncIterator[dict[str, SimServer]]:
    servers = {}
    values = {"power_w": 1500.0, "energy_import_wh": 1_000_000, "voltage_l1_v": 230.0}
    try:
        for dev, name in MAPS.items():
            m = load_map(name)
            server = SimServer(
                m, listen=f"tcp://127.0.0.1:{free_tcp_port()}", unit_ids=(m.default_unit_id,), values=lambda: values
            )
            await server.start()
            servers[dev] = server
        yield servers
    finally:
        for server in servers.values():
            await server.stop()


def write_config(tmp: Path, servers: dict[str, SimServer], **extra: Any) -> Path:
    cfg = {
        "site": {"id": "composed", "timezone": "Europe/Riga"},
        "data_dir": str(tmp / "data"),
        "http": {"enabled": False},
        "devices": [
            {
                "id": dev,
                "driver": "modbus",
                "connection": servers[dev].listen,
                "unit_id": servers[dev].unit_ids[0],
                "map": name,
                "poll_interval_s": 0.2,
                "timeout_s": 0.3,
                "channels": [{"role": "consumption", "quantity": "energy_import_wh"}],
            }
            for dev, name in MAPS.items()
        ],
        **extra,
    }
    path = tmp / "gia.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def until(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.ready.is_set() or task.done())
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_each_map_is_loaded_once_per_start_even_across_poller_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with simulated_devices() as servers:
        loads: Counter[str] = Counter()
        parse = drivers.maps.parse_map

        def counting(text: str, *, source: str = "<map>", name: str = "") -> Any:
            loads[name] += 1
            return parse(text, source=source, name=name)

        monkeypatch.setattr(drivers.maps, "parse_map", counting)
        agent = Agent(load_config(write_config(tmp_path, servers)))
        async with running(agent):
            live = agent.services.live if agent.services else None
            assert live is not None
            await until(lambda: all(live.devices[d].online for d in MAPS))
            # A device that stops answering is reconnected: its driver is built anew, its map is not re-read.
            servers["grid"].pause()
            await until(lambda: live.devices["grid"].online is False)
            servers["grid"].resume()
            await until(lambda: live.devices["grid"].online is True)
            assert agent.supervisor.health()["device:grid"].restarts == 0
        assert loads == Counter(MAPS.values()), f"maps loaded: {dict(loads)}"


class DummySinkConfig(BaseModel):
    """The dummy sink's own section: where the test looks at what arrived."""

    model_config = ConfigDict(extra="forbid")
    label: str


class DummySink:
    """A sink that keeps what it is sent: enough to prove the plug carries a sink end to end."""

    name = "dummy"
    batch_size = 7

    def __init__(self, received: list[Poll]) -> None:
        self.received = received

    async def __aenter__(self) -> DummySink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, polls: Sequence[Poll]) -> None:
        self.received.extend(polls)


def dummy_room(received: list[Poll]) -> Room:
    async def parts(site: Site, services: Services) -> Sequence[Part]:
        cfg: DummySinkConfig | None = services.section("dummy")
        if cfg is None:
            return []

        def factory() -> Sink:
            return DummySink(received)

        return [sink_part("dummy", factory, services)]

    return Room("dummy", parts, section="dummy", config=DummySinkConfig)


async def test_a_sink_added_as_a_room_gets_every_reading_and_shows_in_health(tmp_path: Path) -> None:
    received: list[Poll] = []
    rooms = (*ROOMS, dummy_room(received))
    async with simulated_devices() as servers:
        config = load_config(write_config(tmp_path, servers, dummy={"label": "x"}), rooms=rooms)
        agent = Agent(config, rooms=rooms)
        async with running(agent):
            assert agent.services is not None
            writer = agent.services.writer
            await until(lambda: writer.head_seq > 50)
            await until(
                lambda: agent.health()["sinks"]["dummy"]["lag"] == 0 and received[-1].last_seq == writer.head_seq
            )
            health = agent.health()
    assert health["parts"]["sink:dummy"]["state"] == "running"
    seqs = [e.seq for p in received for e in p.entries]
    assert seqs == list(range(1, len(seqs) + 1)), "every committed reading once, in order"
    assert all(len({(e.device, e.ts_ms) for e in p.entries}) == 1 for p in received), "a poll arrives whole"
    assert {p.device for p in received} == set(MAPS)


def test_settings_extended_by_a_room_still_reach_the_training_child(tmp_path: Path) -> None:
    """The class `settings_class` makes for a room's section cannot be pickled by name; the training child
    must still get the settings (it failed with a PicklingError once the hub room's section was dynamic)."""
    import pickle

    from gateway.forecasts.training import ProcessTrainer

    rooms = (*ROOMS, dummy_room([]))
    path = tmp_path / "gia.yaml"
    path.write_text(yaml.safe_dump({"site": {"id": "s"}, "http": {"enabled": False}, "dummy": {"label": "x"}}))
    config = load_config(path, rooms=rooms)
    assert type(config.settings).__name__ == "Settings" and hasattr(config.settings, "dummy")
    trainer = ProcessTrainer(config.settings, [])
    settings, channels = pickle.loads(trainer._payload)
    assert settings.site.id == "s" and channels == []
