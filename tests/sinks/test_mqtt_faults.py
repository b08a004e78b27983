"""Fault matrix, broker rows: broker down and back, broker refusing the agent's credentials.

The long outage of both receivers (60 s) is tests/agent/test_agent_e2e.py (marked slow); here the
broker is down for a few seconds and a persistent QoS 1 subscriber checks that every committed reading
reaches it, in ledger order, once per ledger entry (a replayed batch carries the same `seq`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.agent.test_agent_e2e import ledger_groups
from tests.servers import MosquittoBroker, MosquittoFactory, find_binary
from tests.support.faults import AgentProcess, Meters, get_json, wait_for, write_config

pytestmark = [pytest.mark.fault, pytest.mark.modbus, pytest.mark.mosquitto]


@pytest.fixture
async def meters() -> AsyncIterator[Meters]:
    m = await Meters(["a", "b"]).start()
    try:
        yield m
    finally:
        await m.stop()


def _subscriber(broker: MosquittoBroker, out: Path) -> subprocess.Popen[bytes]:
    """mosquitto_sub with a persistent session (-c, fixed id, QoS 1): the broker queues for it."""
    with out.open("ab") as f:
        return subprocess.Popen(
            [
                find_binary("mosquitto_sub"),
                *broker.client_args(),
                "-c",
                "-i",
                "fault-sub",
                "-q",
                "1",
                "-t",
                "gia/mq/+/state",
                "-v",
            ],
            stdout=f,
            stderr=subprocess.DEVNULL,
        )


async def test_broker_down_and_up_delivers_every_state_once(
    tmp_path: Path, meters: Meters, mosquitto_persistent: MosquittoBroker
) -> None:
    out = tmp_path / "states.txt"
    sub = _subscriber(mosquitto_persistent, out)
    config, port = write_config(
        tmp_path,
        site="mq",
        devices=meters.device_configs(poll_s=0.5, timeout_s=0.4),
        mqtt={"url": mosquitto_persistent.url, "client_id": "gia-mq", "timeout_s": 2},
    )
    agent = await AgentProcess(config, port).start()
    try:
        await wait_for(lambda: get_json(agent.base + "/healthz")[0] == 200, 20, "healthy")
        await asyncio.sleep(1.5)
        await asyncio.to_thread(mosquitto_persistent.stop)
        await wait_for(
            lambda: any("sink mqtt" in r for r in get_json(agent.base + "/healthz")[1]["reasons"]), 10, "health says so"
        )
        await asyncio.sleep(3)
        await asyncio.to_thread(mosquitto_persistent.start)
        await wait_for(lambda: get_json(agent.base + "/healthz")[0] == 200, 30, "sink reconnected")
        await wait_for(lambda: get_json(agent.base + "/healthz")[1]["sinks"]["mqtt"]["lag"] < 40, 20, "caught up")
        await asyncio.sleep(2)  # the subscriber (reconnecting every few seconds) drains its queue
    finally:
        assert await agent.stop() == 0, agent.log()[-2000:]
        sub.terminate()
        sub.wait(5)
    sent = ledger_groups(agent.ledger_path, sink="mqtt")
    received: dict[tuple[str, int], int] = {}
    last_seq: dict[str, int] = {}
    for line in out.read_text().splitlines():
        topic, _, body = line.partition(" ")
        state = json.loads(body)
        dev = topic.split("/")[2]
        ts = int(datetime.fromisoformat(state["ts"].replace("Z", "+00:00")).timestamp() * 1000)
        if state["seq"] <= last_seq.get(dev, 0):
            continue  # a replay after reconnecting: same seq, dropped as the topic docs say
        last_seq[dev] = state["seq"]
        assert (dev, ts) not in received, f"two different entries for one reading {dev} {ts}"
        received[(dev, ts)] = state["seq"]
    missing = sorted(set(sent) - set(received))
    assert not missing, f"{len(missing)} of {len(sent)} states never reached the subscriber: {missing[:5]}"


async def test_broker_refusing_auth_keeps_readings_and_says_so(
    tmp_path: Path, meters: Meters, mosquitto_factory: MosquittoFactory
) -> None:
    broker = mosquitto_factory(auth=True)
    mqtt = {"url": broker.url, "username": broker.username, "password": "wrong-password", "timeout_s": 2}
    devices = meters.device_configs(poll_s=0.5, timeout_s=0.4)
    config, port = write_config(tmp_path, site="mqauth", devices=devices, mqtt=mqtt)
    agent = await AgentProcess(config, port).start()
    try:
        status, health = await wait_for(
            lambda: (r := get_json(agent.base + "/healthz")) and r[1]["ledger"]["head_seq"] > 50 and r, 20, "commits"
        )
        assert status == 503
        reason = next(r for r in health["reasons"] if "sink mqtt" in r)
        assert "authori" in reason.lower(), reason  # "Not authorized": names the cause
        assert health["sinks"]["mqtt"]["cursor"] == 0
        assert all(st == "online" for st in health["devices"].values())  # polling goes on
    finally:
        assert await agent.stop() == 0
    assert "wrong-password" not in agent.log()
    # Fix the password: the backlog is delivered from the ledger.
    mqtt["password"] = broker.password
    config, port = write_config(tmp_path, site="mqauth", devices=devices, mqtt=mqtt)
    agent = await AgentProcess(config, port).start()
    try:
        head = get_json(agent.base + "/healthz")[1]["ledger"]["head_seq"]
        await wait_for(lambda: get_json(agent.base + "/healthz")[1]["sinks"]["mqtt"]["cursor"] >= head, 20, "backlog")
    finally:
        assert await agent.stop() == 0
