"""MQTT device drivers against a real Mosquitto broker (started by the tests/servers.py fixture)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from drivers.base import PermanentError, TransientError
from drivers.config import MqttDeviceConfig
from drivers.factory import create_driver
from drivers.modbus.decode import DataType, encode
from drivers.modbus.driver import register_value
from drivers.modbus.registermap import Register
from drivers.model import Quality, checked_sample
from drivers.mqtt.driver import Broker, MqttDriver, MqttHub
from drivers.mqtt.payload import FieldSpec, field_value, parse_json
from drivers.services import DriverServices

TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_field_syntax_and_extraction() -> None:
    spec = FieldSpec.parse("status/emdata:0:total_act")
    assert spec == FieldSpec("status/emdata:0", ("total_act",), 1.0)
    assert FieldSpec.parse("SML.Total_in*1000") == FieldSpec("", ("SML", "Total_in"), 1000.0)
    payload = parse_json(b'{"SML": {"Total_in": 12.5, "bad": "x", "nan": NaN, "s": "1e3"}, "list": [{"p": 3}]}')
    assert field_value(payload, FieldSpec.parse("SML.Total_in*1000")) == (12500.0, None)
    assert field_value(payload, FieldSpec.parse("list.0.p")) == (3.0, None)
    assert field_value(payload, FieldSpec.parse("SML.bad"))[0] is None
    assert field_value(payload, FieldSpec.parse("SML.nan"))[0] is None
    assert field_value(payload, FieldSpec.parse("SML.missing"))[0] is None
    value, why = field_value(payload, FieldSpec.parse("SML.s"))  # a string is not a JSON number (issue 15)
    assert value is None and why is not None and "not a JSON number" in why
    assert parse_json(b"not json") is None
    with pytest.raises(ValueError, match="dot path"):
        FieldSpec.parse("SML..x")


def test_bad_profile_or_field_is_permanent(tmp_path: Path) -> None:
    hub = MqttHub(Broker("mqtt://127.0.0.1:1"))
    bad = MqttDeviceConfig(id="m", driver="mqtt", topic="t", profile="nosuch")
    with pytest.raises(PermanentError, match="unknown MQTT profile"):
        create_driver(bad, device_map=None, services=DriverServices(mqtt=hub))
    bad2 = MqttDeviceConfig(id="m", driver="mqtt", topic="t", fields={"watts": "ENERGY.Power"})
    with pytest.raises(PermanentError, match="unknown quantity"):
        create_driver(bad2, device_map=None, services=DriverServices(mqtt=hub))
    ok = MqttDeviceConfig(id="m", driver="mqtt", topic="t", profile="tasmota-sml")
    with pytest.raises(PermanentError, match="need a broker"):
        create_driver(ok, device_map=None, services=DriverServices())


async def publish(url_port: int, topic: str, payload: Any, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", url_port) as client:
        await client.publish(
            topic, json.dumps(payload) if not isinstance(payload, bytes) else payload, qos=1, retain=retain
        )


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.mark.mosquitto
async def test_tasmota_and_shelly_profiles(mosquitto: Any, tmp_path: Path) -> None:
    prefix = f"gia-test-{uuid.uuid4().hex[:8]}"
    tasmota = MqttDeviceConfig(id="t1", driver="mqtt", topic=f"{prefix}/tele/meter/SENSOR", profile="tasmota-sml")
    shelly = MqttDeviceConfig(id="s1", driver="mqtt", topic=f"{prefix}/shellypro3em", profile="shelly-gen2-em")
    async with MqttHub(Broker(mosquitto.url, timeout_s=5)) as hub:
        assert hub.connected
        drivers = [create_driver(c, device_map=None, services=DriverServices(mqtt=hub)) for c in (tasmota, shelly)]
        for d in drivers:
            await d.__aenter__()
        with pytest.raises(TransientError, match="no message yet"):
            await drivers[0].read(TS)
        await publish(mosquitto.port, f"{shelly.topic}/status/em:0", b"garbage")  # not JSON: counted, ignored
        # read before the next message on its topic: a waiting message is replaced by a newer one
        await wait_for(lambda: hub.stats.not_json == 1)
        await publish(
            mosquitto.port,
            tasmota.topic,
            {"Time": "2026-03-01T12:00:00", "SML": {"Total_in": 1234.5678, "Total_out": 12.3, "Power_curr": -812}},
        )
        await publish(
            mosquitto.port,
            f"{shelly.topic}/status/em:0",
            {"id": 0, "total_act_power": 4321.5, "a_voltage": 231.2, "a_current": 6.1},
        )
        await publish(
            mosquitto.port, f"{shelly.topic}/status/emdata:0", {"id": 0, "total_act": 987654.32, "total_act_ret": 11.0}
        )
        await wait_for(lambda: hub.stats.messages >= 4)
        t = {s.quantity: s for s in await drivers[0].read(TS)}
        assert t["power_w"].value == -812.0 and t["energy_import_wh"].value == 1234568
        assert t["energy_export_wh"].value == 12300 and isinstance(t["energy_export_wh"].value, int)
        s = {x.quantity: x for x in await drivers[1].read(TS)}
        assert s["power_w"].value == 4321.5 and s["voltage_l1_v"].value == 231.2
        assert s["energy_import_wh"].value == 987654 and s["energy_export_wh"].value == 11
        assert "power_l2_w" not in s or s["power_l2_w"].quality is Quality.INVALID
        assert all(x.quality is Quality.GOOD for q, x in s.items() if q in ("power_w", "energy_import_wh"))
        assert hub.stats.not_json == 1


@pytest.mark.mosquitto
async def test_stale_when_the_device_goes_quiet(mosquitto: Any) -> None:
    topic = f"gia-test-{uuid.uuid4().hex[:8]}/tele/SENSOR"
    async with MqttHub(Broker(mosquitto.url, timeout_s=5)) as hub:
        drv = MqttDriver(
            device_id="q",
            hub=hub,
            topic=topic,
            fields={"power_w": FieldSpec.parse("ENERGY.Power")},
            poll_interval_s=0.1,
            stale_after_intervals=2,
        )
        async with drv:
            await publish(mosquitto.port, topic, {"ENERGY": {"Power": 55}})
            await wait_for(lambda: hub.latest(topic) is not None)
            assert (await drv.read(TS))[0].quality is Quality.GOOD
            await asyncio.sleep(0.3)
            stale = (await drv.read(TS))[0]
            assert stale.quality is Quality.STALE and stale.value == 55.0


@pytest.mark.mosquitto
async def test_hub_reconnects_after_a_broker_restart(mosquitto_fresh: Any) -> None:
    topic = f"gia-test-{uuid.uuid4().hex[:8]}/SENSOR"
    async with MqttHub(Broker(mosquitto_fresh.url, timeout_s=3)) as hub:
        drv = MqttDriver(
            device_id="r", hub=hub, topic=topic, fields={"power_w": FieldSpec.parse("P")}, poll_interval_s=10
        )
        async with drv:
            await asyncio.to_thread(mosquitto_fresh.stop)
            await wait_for(lambda: not hub.connected)
            await asyncio.to_thread(mosquitto_fresh.start)
            await wait_for(lambda: hub.connected, timeout=10)
            await publish(mosquitto_fresh.port, topic, {"P": 7})
            await wait_for(lambda: hub.latest(topic) is not None)
            assert (await drv.read(TS))[0].value == 7.0
        assert hub.stats.connects >= 2


@pytest.mark.mosquitto
async def test_published_values_meet_the_same_validity_rules_as_modbus(mosquitto: Any) -> None:
    """Issue 15, finding 5: a negative energy register, voltage -230, a power factor of 7 and a number
    sent as a string were stored `good` from MQTT while the Modbus path refused them. Both paths now
    apply drivers/model.py's one rule table; the same values through a Modbus register agree."""
    topic = f"gia-test-{uuid.uuid4().hex[:8]}/tele/SENSOR"
    bad = {"ENERGY": {"Total": -5, "Power": -40.5, "Voltage": -230, "Factor": 7, "Current": "1e3"}}
    async with MqttHub(Broker(mosquitto.url, timeout_s=5)) as hub:
        cfg = MqttDeviceConfig(id="v", driver="mqtt", topic=topic, profile="tasmota-energy")
        drv = create_driver(cfg, device_map=None, services=DriverServices(mqtt=hub))
        async with drv:
            await publish(mosquitto.port, topic, bad)
            await wait_for(lambda: hub.latest(topic) is not None)
            got = {s.quantity: s for s in await drv.read(TS)}
    assert got["power_w"].quality is Quality.GOOD and got["power_w"].value == -40.5  # export: negative is fine
    for q in ("energy_import_wh", "voltage_l1_v", "power_factor", "current_l1_a"):
        assert got[q].quality is Quality.INVALID, got[q]
        assert got[q].reason, got[q]
    assert got["current_l1_a"].value is None  # "1e3" is not read as 1000
    # The Modbus path refuses the same values by the same table (a map without a range of its own).
    reg = Register(quantity="voltage_l1_v", address=0, data_type=DataType.FLOAT32, unit="V")
    value, quality = register_value(reg, encode(-230.0, DataType.FLOAT32))
    mb = checked_sample("m", "voltage_l1_v", value, TS, quality)
    assert mb.quality is Quality.INVALID and mb.reason == got["voltage_l1_v"].reason


@pytest.mark.mosquitto
@pytest.mark.fault
async def test_a_flooding_publisher_cannot_pile_up_messages_in_the_hub(mosquitto: Any) -> None:
    """Issue 15 (attack soak): a publisher faster than the hub reads grew the agent ~10 MB a minute,
    every message waiting in aiomqtt's unbounded queue. Now a waiting message is replaced by a newer
    one on its topic: what waits is bounded by the topics, the replaced ones are counted, and the hub
    still gets the newest value of the flooded topic and of a quiet one. (Mosquitto itself drops QoS 1
    messages beyond its per-client queue of 1000, so not every message sent reaches the hub.)"""
    import threading
    import time

    import paho.mqtt.client as paho

    prefix = f"gia-test-{uuid.uuid4().hex[:8]}"
    flood, quiet = f"{prefix}/flood/SENSOR", f"{prefix}/quiet/SENSOR"
    pad = "x" * 20_000

    def flooder() -> None:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        infos = [c.publish(flood, json.dumps({"P": i, "pad": pad}), qos=1) for i in range(3000)]
        for info in infos:
            info.wait_for_publish(10)
        c.loop_stop()
        c.disconnect()

    async with MqttHub(Broker(mosquitto.url, timeout_s=5)) as hub:
        await hub.subscribe(flood)
        await hub.subscribe(quiet)
        assert hub._client is not None
        queue = hub._client._queue
        thread = threading.Thread(target=flooder)
        thread.start()
        waiting = 0
        while thread.is_alive():
            # the agent's loop busy elsewhere (polls, commits, pages): the hub reads in bursts
            time.sleep(0.05)
            waiting = max(waiting, queue.qsize())
            await asyncio.sleep(0.01)
        thread.join()
        await wait_for(lambda: queue.qsize() == 0, timeout=20)
        assert waiting <= 2, f"{waiting} messages waited for the hub"
        assert hub.stats.superseded > 0
        await publish(mosquitto.port, flood, {"P": -1})
        await publish(mosquitto.port, quiet, {"P": 42})
        await wait_for(lambda: hub.latest(quiet) is not None)
        await wait_for(lambda: hub.latest(flood).payload["P"] == -1)  # type: ignore[union-attr]
