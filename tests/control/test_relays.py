"""Shiftable loads through MQTT relays against a real Mosquitto: Shelly Gen2 RPC and Tasmota, each with
the device's own off-timer as the watchdog (the relay goes off by itself when the agent stops)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from drivers.base import CommandRefused
from drivers.mqtt.driver import Broker
from drivers.mqtt.relay import RelayHub, ShellyRelay, TasmotaRelay
from drivers.sim.relay import SimShelly, SimTasmota
from gateway.control.config import ControlConfig, RelayActuatorConfig
from gateway.control.loop import Controller
from tests.control.helpers import Recorded, plan_payload
from tests.servers import MosquittoBroker

pytestmark = pytest.mark.mosquitto


async def until(condition: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def shift_plan(power_w: float) -> dict[str, object]:
    payload = plan_payload("press", power_w, datetime.now(UTC))
    payload["plan"]["assets"]["press"]["kind"] = "shiftable"  # type: ignore[index]
    return payload


async def test_a_shelly_follows_the_plan_reads_back_and_turns_off_by_its_own_timer(mosquitto: MosquittoBroker) -> None:
    # Hung once to pytest's 120-s timeout in a loaded CI run (alone: 2 s); pytest's timeout shows only the
    # event loop's select, this bound's TimeoutError shows the await that did not return.
    async with asyncio.timeout(60):
        await _shelly_follows_the_plan(mosquitto)


async def _shelly_follows_the_plan(mosquitto: MosquittoBroker) -> None:
    async with (
        SimShelly(mosquitto.host, mosquitto.port, "shellypro1pm-press", speed=1.0) as shelly,
        RelayHub(Broker(url=mosquitto.url, client_id="gia-test-control")) as hub,
    ):
        relay = ShellyRelay(hub, "shellypro1pm-press")
        record = Recorded()
        plan = {"w": 50_000.0}
        cfg = ControlConfig(enabled=True, dry_run=False, interval_s=0.1, watchdog_s=1.0)
        act = RelayActuatorConfig(kind="relay", id="press", protocol="shelly-gen2", topic=relay.topic, min_dwell_s=0)
        controller = Controller(
            cfg, batteries=[], relays=[(act, relay, 50_000.0)], plan=lambda: shift_plan(plan["w"]),
            reading=lambda _d, _q: None, record=record, now=lambda: datetime.now(UTC),
        )  # fmt: skip
        await controller.round()
        assert shelly.on and record.events[-1][2]["read_back_ok"] is True
        plan["w"] = 10_000.0  # under half the load's power: off
        await controller.round()
        assert not shelly.on
        plan["w"] = 50_000.0
        await controller.round()
        assert shelly.on
        # the agent stops refreshing (killed): toggle_after (1 s) turns the load off by itself
        await until(lambda: not shelly.on, timeout=5)
        assert shelly.timer_expired == 1
        shelly.refuse = True
        with pytest.raises(CommandRefused, match="locked in local mode"):
            await relay.set_on(True, watchdog_s=5)


async def test_a_tasmota_relay_switches_with_pulsetime_as_its_watchdog(mosquitto: MosquittoBroker) -> None:
    async with (
        SimTasmota(mosquitto.host, mosquitto.port, "boiler", speed=12.0) as tasmota,
        RelayHub(Broker(url=mosquitto.url, client_id="gia-test-control-2")) as hub,
    ):
        relay = TasmotaRelay(hub, "boiler")
        await relay.set_on(True, watchdog_s=30)
        await until(lambda: tasmota.on)
        assert tasmota.pulse_time == 130  # 100 + 30 s, Tasmota's PulseTime encoding
        assert await relay.read_back() is True
        await relay.set_on(True, watchdog_s=12)  # refresh: the pulse restarts (12 s at 12x: 1 s)
        await until(lambda: not tasmota.on, timeout=5)  # nobody refreshed: off by itself
        assert tasmota.timer_expired == 1
        await relay.release()
        await until(lambda: tasmota.switched >= 1)
        assert not tasmota.on
