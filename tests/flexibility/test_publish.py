"""Publication through real servers: retained MQTT messages seen by an independent `mosquitto_sub`, S2
messages parsed back with s2-python, and the `flex` line protocol accepted and queryable by InfluxDB 1.x."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta

import aiomqtt
import pytest
from s2python.common import PowerForecast
from s2python.pebc import PEBCInstruction, PEBCPowerConstraints
from s2python.s2_parser import S2Parser

from gateway.flexibility.service import FlexibilityService
from gateway.sinks.mqtt.topics import Topics
from tests.servers import InfluxDB1, MosquittoBroker, find_binary

from .helpers import NOW, START, config, forecasts

H = 24
FCS = forecasts([300_000.0] * H, [100_000.0] * 8 + [700_000.0] * 8 + [50_000.0] * 8, [0.0] * H)


def retained(broker: MosquittoBroker, topic: str, count: int, wait_s: int = 5) -> dict[str, str]:
    out = subprocess.run(
        [find_binary("mosquitto_sub"), *broker.client_args(), "-t", topic, "-C", str(count), "-W", str(wait_s), "-v"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    got: dict[str, str] = {}
    for line in out.stdout.splitlines():
        topic_, _, payload = line.partition(" ")
        got[topic_] = payload
    return got


async def publish(broker: MosquittoBroker, messages: dict[str, bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="flex-test") as client:
        for topic, payload in messages.items():
            await client.publish(topic, payload, qos=1, retain=True)


@pytest.mark.mosquitto
async def test_signal_and_s2_messages_reach_an_independent_subscriber(mosquitto_fresh: MosquittoBroker) -> None:
    svc = FlexibilityService(config(), site="demo", timezone="Europe/Riga")
    svc.update(FCS, NOW, 40.0)
    topics = Topics.for_site("gia/{site}", "demo")
    await publish(mosquitto_fresh, svc.mqtt_messages(topics))

    got = retained(mosquitto_fresh, "gia/demo/flex/#", count=4)
    assert set(got) == {
        "gia/demo/flex/signal",
        "gia/demo/flex/s2/PowerForecast",
        "gia/demo/flex/s2/PEBC.PowerConstraints.battery",
        "gia/demo/flex/s2/PEBC.Instruction.battery",
    }
    signal = json.loads(got["gia/demo/flex/signal"])
    assert signal["status"] == "ok" and len(signal["intervals"]) == H
    assert [iv["level"] for iv in signal["intervals"][8:16]] == ["absorb"] * 8
    assert signal["intervals"][0]["start"] == "2026-03-10T07:00:00Z"
    pf = S2Parser.parse_as_message(got["gia/demo/flex/s2/PowerForecast"], PowerForecast)
    assert pf.start_time == START and len(pf.elements) == H
    S2Parser.parse_as_message(got["gia/demo/flex/s2/PEBC.PowerConstraints.battery"], PEBCPowerConstraints)
    ins = S2Parser.parse_as_message(got["gia/demo/flex/s2/PEBC.Instruction.battery"], PEBCInstruction)
    assert ins.power_envelopes[0].power_envelope_elements

    # the forecasts go stale: the next publication turns the signal neutral and clears the PowerForecast
    svc.update(FCS, NOW + timedelta(hours=3), 40.0)
    await publish(mosquitto_fresh, svc.mqtt_messages(topics))
    got = retained(mosquitto_fresh, "gia/demo/flex/#", count=4, wait_s=2)
    assert len(got) == 3 and "gia/demo/flex/s2/PowerForecast" not in got  # an empty retained payload deletes it
    stale = json.loads(got["gia/demo/flex/signal"])
    assert stale["status"] == "neutral" and "stale load forecast" in stale["reason"]
    assert {iv["level"] for iv in stale["intervals"]} == {"neutral"}
    env = S2Parser.parse_as_message(got["gia/demo/flex/s2/PEBC.Instruction.battery"], PEBCInstruction)
    el = env.power_envelopes[0].power_envelope_elements
    assert [(e.lower_limit, e.upper_limit) for e in el] == [(-100_000, 100_000)]


@pytest.mark.influxdb
def test_flex_lines_are_written_and_read_back(influxdb_fresh: InfluxDB1) -> None:
    svc = FlexibilityService(config(), site="demo")
    svc.update(FCS, NOW, 40.0)
    influxdb_fresh.create_db("gia")
    lines = svc.influx_lines()
    influxdb_fresh.write("\n".join(lines), db="gia", precision="ms")
    influxdb_fresh.write("\n".join(lines), db="gia", precision="ms")  # idempotent: same points again
    site = influxdb_fresh.points("flex", db="gia", where="\"device\" = 'site'")
    assert len(site) == H
    assert {p["level"] for p in site[8:16]} == {"absorb"}
    assert all(p["surplus_p10_w"] <= p["surplus_p50_w"] <= p["surplus_p90_w"] for p in site)
    battery = influxdb_fresh.points("flex", db="gia", where="\"device\" = 'battery'")
    assert len(battery) == H and all(0 <= p["soc_pct"] <= 100 for p in battery)
