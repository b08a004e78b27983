"""Issue 15, findings 4 and 5: values a device (or anyone who can publish on its topic) sends that cannot
be stored, or that no such quantity can take, against `gia run` as a real process with a real pymodbus
server and a real Mosquitto.

What must hold: the poller keeps running (before the fix `Sample` raised `ValueError` on a published
`{"ENERGY": {"Total": 1e13}}` kWh and the device's part restarted in a loop, losing its power and
voltage); each refused value is stored `invalid` while the rest of the poll is stored `good`; health
counts the refusals with the reason; and the MQTT path applies the same per-quantity rules as the
Modbus path (negative voltage, power factor 7, a number sent as a string are not `good`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from drivers.model import Quality
from tests.servers import MosquittoBroker, find_binary
from tests.support.faults import AgentProcess, Meters, ledger_entries, wait_for, write_config

pytestmark = [pytest.mark.mosquitto, pytest.mark.modbus]

HOSTILE = {
    "ENERGY": {
        "Total": 1e13,  # kWh: 1e16 Wh, beyond 2**53: cannot be stored exactly
        "Power": 512.5,  # fine: must be kept
        "Voltage": -230,  # no voltage is negative
        "Factor": 7,  # a power factor lies in [-1, 1]
        "Current": "1e3",  # a string, not a JSON number
    }
}
NEGATIVE_ENERGY = {"ENERGY": {"Total": -5, "Power": 600.0, "Voltage": 231.0, "Factor": 0.9, "Current": 2.5}}


def _publish(broker: MosquittoBroker, topic: str, payload: dict[str, Any]) -> None:
    subprocess.run(
        # Retained: the agent reads it whenever its subscription is in place.
        [find_binary("mosquitto_pub"), *broker.client_args(), "-r", "-q", "1", "-t", topic, "-m", json.dumps(payload)],
        check=True,
        timeout=10,
    )


async def test_out_of_range_values_are_stored_invalid_and_the_poller_lives(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker
) -> None:
    # A Modbus meter whose energy register reads 2**60 Wh; its power and voltage are fine.
    meters = await Meters(
        ["mb"], values={"mb": lambda: {"power_w": 1500.0, "voltage_l1_v": 230.0, "energy_import_wh": 2**60}}
    ).start()
    topic = "tele/hostile/SENSOR"
    devices = [
        *meters.device_configs(poll_s=0.5, timeout_s=0.4),
        {"id": "tas", "driver": "mqtt", "topic": topic, "profile": "tasmota-energy", "poll_interval_s": 0.5},
    ]
    config, port = write_config(tmp_path, site="hostile", devices=devices, mqtt={"url": mosquitto_fresh.url})
    agent = AgentProcess(config, port)
    await agent.start()
    try:
        await asyncio.to_thread(_publish, mosquitto_fresh, topic, HOSTILE)

        def refused_or_crashed(h: dict[str, Any]) -> bool:
            counted = h.get("device_values", {}).get("tas", {}).get("invalid_values", 0) >= 4
            return bool(counted or h["parts"]["device:tas"]["restarts"] > 0)

        health = await wait_for(lambda: (h := agent.health()) and refused_or_crashed(h) and h, 20, "refusals")
        assert health["parts"]["device:tas"]["restarts"] == 0, health["parts"]["device:tas"]
        polls = health["device_values"]["tas"]["polls"]
        await asyncio.to_thread(_publish, mosquitto_fresh, topic, NEGATIVE_ENERGY)
        # The poller goes on (same part, no restart) and reads the next payload.
        await wait_for(lambda: agent.health()["device_values"]["tas"]["polls"] >= polls + 4, 20, "more polls")
        await asyncio.sleep(1.0)
        health = agent.health()
    finally:
        assert await agent.stop() == 0, agent.log()[-3000:]
        await meters.stop()
    assert health["devices"] == {"mb": "online", "tas": "online"}, health
    tas = health["device_values"]["tas"]
    assert "energy_import_wh" in (tas["last_invalid"] or ""), tas
    assert health["device_values"]["mb"]["invalid_values"] > 0, health
    assert "ValueError" not in agent.log(), agent.log()[-3000:]
    restarts = {name: p["restarts"] for name, p in health["parts"].items()}
    assert not any(restarts.values()), restarts

    by: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for e in ledger_entries(agent.ledger_path):
        by[(e.device, e.quantity)].append(e)

    def qualities(device: str, quantity: str) -> set[Quality]:
        return {e.quality for e in by[(device, quantity)]}

    # MQTT: the refused values are invalid, never good; the rest of the same poll is good.
    for q in ("energy_import_wh", "voltage_l1_v", "power_factor", "current_l1_a"):
        assert by[("tas", q)], f"no {q} stored for tas"
    assert Quality.GOOD not in qualities("tas", "energy_import_wh")  # 1e16 Wh, then -5000 Wh
    assert all(e.value is None for e in by[("tas", "energy_import_wh")] if e.value is not None and e.value > 2**53)
    assert {e.value for e in by[("tas", "power_w")] if e.quality is Quality.GOOD} >= {512.5, 600.0}
    bad_voltage = [e for e in by[("tas", "voltage_l1_v")] if e.value == -230]
    assert bad_voltage and all(e.quality is Quality.INVALID for e in bad_voltage)
    assert 231.0 in {e.value for e in by[("tas", "voltage_l1_v")] if e.quality is Quality.GOOD}
    assert all(e.quality is Quality.INVALID for e in by[("tas", "power_factor")] if e.value == 7)
    assert 0.9 in {e.value for e in by[("tas", "power_factor")] if e.quality is Quality.GOOD}
    assert all(e.quality is Quality.INVALID for e in by[("tas", "current_l1_a")] if e.value != 2.5)
    # Modbus: the 2**60 register is invalid, the meter's other values of the same poll are good.
    assert qualities("mb", "energy_import_wh") == {Quality.INVALID}
    assert {e.value for e in by[("mb", "power_w")]} == {1500.0}
    assert qualities("mb", "power_w") == {Quality.GOOD}
