"""`gia demo --backfill 30`: load, wind and PV forecasts on MQTT and the API within a minute, refreshed.

A real `gia demo` process against a real Mosquitto broker. The demo's weather file is the simulated
site's own (with a forecast-like error), so wind and PV come from the model, not from labelled baselines.
`--speed 30` makes the 15-minute refresh round 30 s of wall time.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.servers import MosquittoBroker, free_port
from tests.support.browser import get_json, start_gia, stop_process

pytestmark = [pytest.mark.cpu, pytest.mark.mosquitto, pytest.mark.modbus, pytest.mark.slow]

TARGETS = ("load", "wind", "pv")


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if os.path.exists(f"/proc/{pid}")}


def training_children(parent: int) -> set[int]:
    """PIDs of `gateway.forecasts.training` processes whose parent is `parent` (from /proc)."""
    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(line for line in status.read_text().splitlines() if line.startswith("PPid:"))
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, StopIteration):
            continue
        if int(ppid.split()[1]) == parent and b"gateway.forecasts.training" in cmdline:
            out.add(int(status.parent.name))
    return out


# The test's own waits (serving <= 120 s, both rounds <= 150 s) plus the stop: the default 120 s per test
# cut it short on a loaded machine before any of its assertions could say what was slow.
@pytest.mark.timeout(330)
async def test_demo_publishes_model_forecasts_within_a_minute_and_refreshes(
    mosquitto_fresh: MosquittoBroker, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    seen: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    arrived: dict[str, float] = {}
    second_arrived: dict[str, float] = {}
    async with aiomqtt.Client(mosquitto_fresh.host, mosquitto_fresh.port, identifier="forecast-watcher") as client:
        await client.subscribe("gia/demo/forecast/+", qos=1)
        started = time.monotonic()
        proc = start_gia(
            ["demo", "--backfill", "30", "--speed", "30", "--dir", str(tmp_path / "state"),
             "--http", f"127.0.0.1:{port}", "--mqtt", mosquitto_fresh.url],
            cwd=tmp_path,
            log=log,
        )  # fmt: skip
        try:

            async def watch() -> None:
                async for msg in client.messages:
                    target = str(msg.topic).rsplit("/", 1)[-1]
                    payload = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                    seen[target].append(payload)
                    if target in arrived:
                        second_arrived.setdefault(target, time.monotonic() - started)
                    arrived.setdefault(target, time.monotonic() - started)
                    if all(len(seen[t]) >= 2 for t in TARGETS):
                        return

            async def agent_started() -> float:
                """Seconds from the process start to the agent serving (after the 30-day backfill)."""
                url = f"http://127.0.0.1:{port}/healthz"
                while True:
                    try:
                        if (await asyncio.to_thread(get_json, url, 1.0))[0] == 200:
                            return time.monotonic() - started
                    except OSError:
                        pass
                    await asyncio.sleep(0.2)

            trainers: set[int] = set()

            async def sample_trainers() -> None:
                while True:
                    trainers.update(await asyncio.to_thread(training_children, proc.pid))
                    await asyncio.sleep(0.3)

            sampler = asyncio.create_task(sample_trainers())
            try:
                watcher = asyncio.create_task(watch())
                agent_at = await asyncio.wait_for(agent_started(), timeout=120)
                await asyncio.wait_for(watcher, timeout=150)
            except TimeoutError:
                raise AssertionError(
                    f"forecasts seen: { {t: len(v) for t, v in seen.items()} }; log: {log.read_text()[-3000:]}"
                ) from None
            status, api = await asyncio.to_thread(get_json, f"http://127.0.0.1:{port}/api/v1/forecasts/wind")
        finally:
            sampler.cancel()
            rc = stop_process(proc)
            text = log.read_text()
            assert rc == 0, "\n".join(line for line in text.splitlines() if "ERROR" in line) + text[-1500:]
    # Models are trained in child processes (the agent's loop keeps its core), and a stopping agent
    # leaves none of them behind, although the full retraining after the quick first models was running.
    assert trainers, "no training child process seen"
    assert not alive(trainers), trainers
    assert text.count("(first, quick model") == 3
    print(f"\nagent serving {agent_at:.1f} s after the process start (backfill); first forecasts at {arrived}")
    # The behaviour: the first forecast of every target comes from the quick first model, in the first
    # round, before any second round; it does not wait for the full model. The README's "within a
    # minute" is the figure on an idle 2-core machine; the bound is doubled so that it holds on a machine
    # twice as slow and busy (a loaded CI run saw 68-92 s, issue #15 finding 9).
    assert max(arrived.values()) - agent_at < 2 * 60, (agent_at, arrived)
    first_round_done = max(arrived.values())
    assert all(t > first_round_done for t in second_arrived.values()), (arrived, second_arrived)
    for target in TARGETS:
        first, second = seen[target][0], seen[target][1]
        meta = first["metadata"]
        assert meta["kind"] == "model", (target, meta)
        assert meta.get("quick") is True, (target, meta)  # the quick first model, not the full one
        assert len(first["points"]) == 48
        assert all(p["p10"] <= p["p50"] <= p["p90"] for p in first["points"])
        assert second["generated_at"] > first["generated_at"]  # the next round refreshed it
    assert seen["wind"][0]["metadata"]["weather"] == ["wind_speed_ms", "wind_direction_deg"]
    assert status == 200 and api["generated_at"] >= seen["wind"][0]["generated_at"]
