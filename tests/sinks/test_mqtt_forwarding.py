"""Ledger -> Forwarder -> MqttSink against a real Mosquitto: retained state, outage, persistent backlog."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from drivers.cancel import cancel_and_wait
from drivers.model import Quality, Sample, checked_sample
from gateway.ledger.reader import LedgerReader
from gateway.ledger.store import Ledger
from gateway.ledger.writer import LedgerWriter
from gateway.runtime.clock import WallClock
from gateway.runtime.live import LiveState
from gateway.settings import MqttConfig, MqttTls
from gateway.sinks.base import Sink
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.mqtt.sink import MqttSink
from gateway.sinks.outbox import LatestOutbox
from tests.servers import MosquittoBroker, find_binary

pytestmark = pytest.mark.mosquitto

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def reading(device: str, i: int) -> list[Sample]:
    ts = T0 + timedelta(seconds=i)
    return [
        Sample(device, "power_w", 100.0 + i, "W", ts),
        Sample(device, "energy_import_wh", 1000 + i, "Wh", ts),
        Sample(device, "voltage_l1_v", None, "V", ts, Quality.INVALID),
    ]


class Harness:
    def __init__(self, tmp: Path, broker: MosquittoBroker, **mqtt: object) -> None:
        self.ledger = Ledger(tmp / "ledger.db")
        self.writer = LedgerWriter(self.ledger, commit_interval_s=0.05, max_batch=1000, max_queue=10_000)
        self.reader = LedgerReader(tmp / "ledger.db")
        self.live = LiveState.for_devices({"grid": "meter", "pv": "inverter"})
        self.cfg = MqttConfig.model_validate({"url": broker.url, "client_id": "gia-test", "timeout_s": 3, **mqtt})

        def factory() -> Sink:
            return MqttSink(self.cfg, site="test", live=self.live, outbox=LatestOutbox())

        async def side(sink: Sink) -> None:
            assert isinstance(sink, MqttSink)
            await sink.live_publisher(sink)

        self.forwarder = Forwarder(
            sink_factory=factory,
            name="mqtt",
            writer=self.writer,
            reader=self.reader,
            clock=WallClock(),
            side_tasks=[side],
            max_backoff_s=1.0,
        )

    async def __aenter__(self) -> Harness:
        self.tasks = [asyncio.create_task(self.writer.run()), asyncio.create_task(self.forwarder.run())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.reader.close()
        self.writer.close()

    async def wait_forwarded(self, seq: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while self.forwarder.health.cursor < seq:
                await asyncio.sleep(0.05)


def retained(broker: MosquittoBroker, topic: str, count: int = 1, wait_s: int = 5) -> list[str]:
    """Retained messages on `topic`: up to `count`, or what arrived within `wait_s` (all at once, retained)."""
    out = subprocess.run(
        [find_binary("mosquitto_sub"), *broker.client_args(), "-t", topic, "-C", str(count), "-W", str(wait_s), "-v"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    return out.stdout.strip().splitlines()


async def test_state_is_retained_json_with_quality_and_seq(tmp_path: Path, mosquitto_fresh: MosquittoBroker) -> None:
    async with Harness(tmp_path, mosquitto_fresh) as h:
        for i in range(3):
            await h.writer.submit(reading("grid", i))
        await h.writer.submit(reading("pv", 0))
        await h.wait_forwarded(12)
        h.live.set_online("grid", True)
        await asyncio.sleep(0.3)
    (line,) = retained(mosquitto_fresh, "gia/test/grid/state")
    topic, payload = line.split(" ", 1)
    state = json.loads(payload)
    assert topic == "gia/test/grid/state"
    assert state["ts"] == "2026-05-01T00:00:02Z"
    assert state["power_w"] == 102.0 and state["energy_import_wh"] == 1002
    assert state["quality"] == "invalid" and state["invalid"] == ["voltage_l1_v"] and state["voltage_l1_v"] is None
    assert state["seq"] == 9
    assert retained(mosquitto_fresh, "gia/test/grid/availability") == ["gia/test/grid/availability online"]
    # Graceful stop publishes offline on the status topic (the last will covers crashes).
    assert retained(mosquitto_fresh, "gia/test/status") == ["gia/test/status offline"]


async def test_broker_outage_loses_nothing_and_persistent_session_gets_backlog(
    tmp_path: Path, mosquitto_persistent: MosquittoBroker
) -> None:
    broker = mosquitto_persistent
    # Register the persistent subscription, then go away (the broker queues for us from now on).
    async with aiomqtt.Client(broker.host, broker.port, identifier="certifier-sub", clean_session=False) as c:
        await c.subscribe("gia/test/+/state", qos=1)
    async with Harness(tmp_path, broker) as h:
        await h.writer.submit(reading("grid", 0))
        await h.wait_forwarded(3)
        broker.stop()
        for i in range(1, 41):  # written while the broker is down
            await h.writer.submit(reading("grid", i))
        await asyncio.sleep(3)
        assert h.forwarder.health.cursor == 3 and not h.forwarder.health.connected
        broker.start()
        await h.wait_forwarded(123, timeout=30)
    seqs = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="certifier-sub", clean_session=False) as c:
        async with asyncio.timeout(10):
            async for msg in c.messages:
                seqs.append(json.loads(msg.payload)["seq"])
                if seqs[-1] == 123:
                    break
    assert seqs == [3 * i + 3 for i in range(41)]  # every state, in order, none twice
    (line,) = retained(broker, "gia/test/grid/state")
    assert json.loads(line.split(" ", 1)[1])["energy_import_wh"] == 1040


async def test_tls_with_server_verification(tmp_path: Path, mosquitto_tls: MosquittoBroker) -> None:
    async with Harness(tmp_path, mosquitto_tls, tls=MqttTls(ca_file=mosquitto_tls.ca_file)) as h:
        await h.writer.submit(reading("pv", 0))
        await h.wait_forwarded(3)
    assert retained(mosquitto_tls, "gia/test/pv/state")


async def test_wrong_password_is_reported_and_nothing_is_lost(tmp_path: Path, mosquitto_auth: MosquittoBroker) -> None:
    async with Harness(tmp_path, mosquitto_auth, username="gia", password="wrong-password") as h:
        await h.writer.submit(reading("pv", 0))
        await asyncio.sleep(2)
        assert h.forwarder.health.cursor == 0
        assert h.forwarder.health.last_error is not None
        assert "authori" in h.forwarder.health.last_error.lower() or "135" in h.forwarder.health.last_error


async def test_homeassistant_discovery_announces_and_removes(tmp_path: Path, mosquitto_fresh: MosquittoBroker) -> None:
    from drivers.maps import load_map
    from gateway.sinks.mqtt.discovery import device_from_map

    sdm = load_map("eastron-sdm630")
    both = [device_from_map("grid", sdm), device_from_map("pv", sdm)]
    cfg = MqttConfig.model_validate({"url": mosquitto_fresh.url, "homeassistant_discovery": True, "client_id": "ha"})
    live = LiveState.for_devices({"grid": "meter", "pv": "meter"})
    async with MqttSink(cfg, site="test", live=live, outbox=LatestOutbox(), discovery=both):
        pass
    topics = {
        line.split(" ", 1)[0] for line in retained(mosquitto_fresh, "homeassistant/sensor/+/+/config", 200, wait_s=1)
    }
    assert any("test_pv" in t for t in topics) and any("test_grid" in t for t in topics)
    (config_line,) = [
        line
        for line in retained(mosquitto_fresh, "homeassistant/sensor/+/+/config", 200, wait_s=1)
        if "grid" in line.split(" ")[0] and "energy_import_wh" in line.split(" ")[0]
    ]
    config = json.loads(config_line.split(" ", 1)[1])
    assert config["state_class"] == "total_increasing" and config["state_topic"] == "gia/test/grid/state"
    # pv leaves the configuration: its sensors are removed (empty retained payloads clear them).
    async with MqttSink(cfg, site="test", live=live, outbox=LatestOutbox(), discovery=both[:1]):
        pass
    topics = {
        line.split(" ", 1)[0] for line in retained(mosquitto_fresh, "homeassistant/sensor/+/+/config", 200, wait_s=1)
    }
    assert topics and not any("test_pv" in t for t in topics)


async def test_stopping_against_a_frozen_broker_is_bounded(tmp_path: Path, mosquitto_fresh: MosquittoBroker) -> None:
    """A broker that stops answering (SIGSTOP: the TCP connection stays open) must not hold the agent's
    shutdown: the sink gives up its DISCONNECT after a few seconds and drops the connection."""
    async with Harness(tmp_path, mosquitto_fresh, timeout_s=10) as h:  # the default publish timeout
        for i in range(5):
            await h.writer.submit(reading("grid", i))
        await h.wait_forwarded(15)
        assert mosquitto_fresh.pid is not None
        os.kill(mosquitto_fresh.pid, signal.SIGSTOP)
        try:
            for i in range(5, 400):  # publishes pile up behind the frozen broker
                await h.writer.submit(reading("grid", i))
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            for t in h.tasks:
                t.cancel()
            await asyncio.gather(*h.tasks, return_exceptions=True)
            took = time.monotonic() - t0
        finally:
            os.kill(mosquitto_fresh.pid, signal.SIGCONT)
    assert took < 5.0, took  # well inside the agent's 10-s shutdown bound
    assert h.forwarder.health.cursor < 400 * 3  # nothing past the acknowledged batches counts as sent


async def test_forwarding_resumes_after_publishes_time_out(tmp_path: Path, mosquitto_fresh: MosquittoBroker) -> None:
    """Publishes that time out (a frozen broker) fail the batch; once the broker answers again the same
    forwarder goes on. Regression: Python 3.11's TaskGroup left a stale cancellation request on the
    forwarder when a publish failed after the batch's body had ended, and the forwarder then stopped
    itself for good ("sink:mqtt stopped", lag growing) after about one broker outage in three."""
    async with Harness(tmp_path, mosquitto_fresh, timeout_s=1) as h:
        for i in range(3):
            await h.writer.submit(reading("grid", i))
        await h.wait_forwarded(9)  # three entries per reading
        assert mosquitto_fresh.pid is not None
        os.kill(mosquitto_fresh.pid, signal.SIGSTOP)
        try:
            await h.writer.submit(reading("grid", 3))  # its publish waits for an acknowledgement, in vain
            async with asyncio.timeout(10):
                while h.forwarder.health.failures == 0:
                    await asyncio.sleep(0.05)
        finally:
            os.kill(mosquitto_fresh.pid, signal.SIGCONT)
        await h.writer.submit(reading("grid", 4))
        try:
            await h.wait_forwarded(15, timeout=30)
        except TimeoutError:
            raise AssertionError(f"{h.forwarder.health}, task done: {h.tasks[1].done()}") from None
        assert not h.tasks[1].done(), "the forwarder stopped itself"
        assert h.forwarder.health.connected and h.forwarder.health.phase == "forwarding"


async def test_availability_changed_between_connect_and_subscription_is_published(
    mosquitto_fresh: MosquittoBroker,
) -> None:
    """A device first polled after the connect's snapshot but before the live publisher subscribed.

    Its transition went to no subscriber, so its retained availability stayed missing until the next
    transition (CI: `mosquitto_sub` on a polling device's availability printed nothing).
    """
    cfg = MqttConfig.model_validate({"url": mosquitto_fresh.url, "client_id": "gia-avail", "timeout_s": 3})
    live = LiveState.for_devices({"grid": "meter", "pv": "meter"})
    async with MqttSink(cfg, site="test", live=live, outbox=LatestOutbox()) as sink:
        live.set_online("grid", True)  # nobody subscribed yet: the event is dropped
        task = asyncio.create_task(sink.live_publisher(sink))
        try:
            lines = await asyncio.to_thread(retained, mosquitto_fresh, "gia/test/grid/availability")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert lines == ["gia/test/grid/availability online"]
    assert await asyncio.to_thread(retained, mosquitto_fresh, "gia/test/pv/availability", 1, 1) == []


async def test_the_live_publisher_holds_no_samples_while_the_broker_is_slow(mosquitto_fresh: MosquittoBroker) -> None:
    """Issue 15 (attack soak): the sink's live publisher, waiting on a broker slowed by a flood, held up
    to 10 000 queued events with every poll's samples (~8 MB) only to skip them; it wants availability
    only, and now nothing else is queued for it. Availability still arrives."""
    cfg = MqttConfig.model_validate({"url": mosquitto_fresh.url, "client_id": "gia-avail-only", "timeout_s": 3})
    live = LiveState.for_devices({"grid": "meter"})
    async with MqttSink(cfg, site="test", live=live, outbox=LatestOutbox()) as sink:
        task = asyncio.create_task(sink.live_publisher(sink))
        try:
            while not live._subs:
                await asyncio.sleep(0.01)
            ts = datetime(2026, 3, 1, tzinfo=UTC)
            for i in range(500):  # no await between: the publisher cannot take anything meanwhile
                live.update("grid", [checked_sample("grid", "power_w", float(i), ts)])
            assert [s.queue.qsize() for s in live._subs] == [0]
            live.set_online("grid", True)
            lines = await asyncio.to_thread(retained, mosquitto_fresh, "gia/test/grid/availability")
        finally:
            await cancel_and_wait(task)
    assert lines == ["gia/test/grid/availability online"]


async def test_live_forwarding_is_served_from_the_writers_memory(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker
) -> None:
    """Issue 15 (attack soak): each sink read its batches back from SQLite, one GIL hand-off per row
    (1000 entries: 7 ms on a quiet process, 0.75 s beside a busy event loop). A sink keeping up is now
    served the entries the writer just committed; the ledger is read only for what the window lacks.
    What arrives is the same: every poll, in order, the last state retained."""
    async with Harness(tmp_path, mosquitto_fresh) as h:
        for i in range(40):
            await h.writer.submit(reading("grid", i))
            await asyncio.sleep(0.02)
        await h.wait_forwarded(120)
        tail = h.writer.tail
        assert tail.hits > 0 and tail.last_seq == 120
        assert h.forwarder.health.forwarded == 120
    (line,) = retained(mosquitto_fresh, "gia/test/grid/state")
    state = json.loads(line.split(" ", 1)[1])
    assert state["power_w"] == 139.0 and state["seq"] == 120
