"""Self-tests of the real-server fixtures: each starts, answers, stops and comes back on the same port."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.servers import (
    InfluxDB1,
    InfluxFactory,
    MosquittoBroker,
    TlsMaterial,
    VictoriaMetrics,
    find_binary,
    http,
    port_open,
)


def _sub_pub(broker: MosquittoBroker, *, extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Publish a retained message with mosquitto_pub, read it back with mosquitto_sub."""
    topic = f"harness/{uuid.uuid4().hex}"
    args = broker.client_args() + (extra or [])
    pub = subprocess.run(
        [find_binary("mosquitto_pub"), *args, "-t", topic, "-m", "hello", "-r", "-q", "1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if pub.returncode != 0:
        return pub
    return subprocess.run(
        [find_binary("mosquitto_sub"), *args, "-t", topic, "-C", "1", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=10,
    )


def _ok(broker: MosquittoBroker, extra: list[str] | None = None) -> None:
    res = _sub_pub(broker, extra=extra)
    assert res.returncode == 0, res.stderr + broker.log_tail()
    assert res.stdout.strip() == "hello"


@pytest.mark.mosquitto
def test_mosquitto_session_broker_answers(mosquitto: MosquittoBroker) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mosquitto.username is None
    assert mosquitto.ca_file is None
    _ok(mosquitto)


@pytest.mark.mosquitto
def test_mosquitto_stop_and_start_on_same_port(mosquitto_fresh: MosquittoBroker) -> None:
    broker = mosquitto_fresh
    port = broker.port
    _ok(broker)
    broker.stop()
    assert not broker.running
    assert not port_open(broker.host, port)
    assert _sub_pub(broker).returncode != 0
    broker.start()
    assert broker.port == port
    _ok(broker)
    broker.stop(kill=True)  # a crash, not a clean shutdown
    assert not port_open(broker.host, port)
    broker.start()
    _ok(broker)


@pytest.mark.mosquitto
def test_mosquitto_auth_refuses_anonymous_and_wrong_password(mosquitto_auth: MosquittoBroker) -> None:
    broker = mosquitto_auth
    assert broker.username
    assert broker.password
    _ok(broker)
    topic = ["-t", "x", "-m", "y"]
    anon = subprocess.run(
        [find_binary("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port), *topic],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert anon.returncode != 0
    assert "not authorised" in anon.stderr.lower() or "not authorized" in anon.stderr.lower()
    wrong = subprocess.run(
        [
            find_binary("mosquitto_pub"),
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-u",
            broker.username,
            "-P",
            "wrong",
            *topic,
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert wrong.returncode != 0


@pytest.mark.mosquitto
def test_mosquitto_tls_verifies_against_its_ca(mosquitto_tls: MosquittoBroker, tls_material: TlsMaterial) -> None:
    broker = mosquitto_tls
    assert broker.url.startswith("mqtts://")
    assert broker.ca_file == tls_material.ca_file
    _ok(broker)
    # A client trusting another CA must refuse the broker's certificate.
    base = ["-h", broker.host, "-p", str(broker.port), "-t", "x", "-m", "y"]
    bad = subprocess.run(
        [find_binary("mosquitto_pub"), *base, "--cafile", str(tls_material.other_ca_file)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert bad.returncode != 0
    # Plain MQTT on the TLS port does not get through either.
    plain = subprocess.run([find_binary("mosquitto_pub"), *base], capture_output=True, text=True, timeout=10)
    assert plain.returncode != 0
    broker.stop()
    broker.start()
    _ok(broker)


@pytest.mark.mosquitto
def test_mosquitto_mutual_tls_requires_client_cert(mosquitto_mtls: MosquittoBroker) -> None:
    broker = mosquitto_mtls
    assert broker.cert_file is not None
    assert broker.key_file is not None
    _ok(broker)
    no_cert = subprocess.run(
        [
            find_binary("mosquitto_pub"),
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "--cafile",
            str(broker.ca_file),
            "-t",
            "x",
            "-m",
            "y",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert no_cert.returncode != 0


def _paho(broker: MosquittoBroker, client_id: str) -> tuple[mqtt.Client, list[bytes], threading.Event]:
    got: list[bytes] = []
    event = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        event.set()

    c.on_message = on_message
    c.connect(broker.host, broker.port, keepalive=30)
    return c, got, event


@pytest.mark.mosquitto
def test_mosquitto_persistent_session_survives_restart(mosquitto_persistent: MosquittoBroker) -> None:
    broker = mosquitto_persistent
    topic = f"harness/{uuid.uuid4().hex}"
    sub, _, _ = _paho(broker, "harness-sub")
    sub.loop_start()
    r, _mid = sub.subscribe(topic, qos=1)
    assert r == mqtt.MQTT_ERR_SUCCESS
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()

    pub = subprocess.run(
        [find_binary("mosquitto_pub"), *broker.client_args(), "-t", topic, "-m", "queued", "-q", "1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert pub.returncode == 0, pub.stderr
    broker.stop()  # clean shutdown writes the persistence file
    broker.start()

    sub2, got, event = _paho(broker, "harness-sub")
    sub2.loop_start()
    try:
        assert event.wait(5), broker.log_tail()
        assert got == [b"queued"]
    finally:
        sub2.disconnect()
        sub2.loop_stop()


@pytest.mark.influxdb
def test_influxdb_write_query_restart(influxdb_factory: InfluxFactory) -> None:
    server = influxdb_factory()
    port = server.port
    server.create_db("h")
    server.write("m,site=a v=1.5,n=3i 1700000000000\nm,site=a v=2.5,n=4i 1700000001000", db="h")
    pts = server.points("m", db="h")
    assert pts == [
        {"time": 1700000000000, "n": 3, "site": "a", "v": 1.5},
        {"time": 1700000001000, "n": 4, "site": "a", "v": 2.5},
    ]
    server.stop()
    assert not port_open(server.host, port)
    server.start()
    assert server.port == port
    assert len(server.points("m", db="h")) == 2  # data dir kept across the restart


@pytest.mark.influxdb
def test_influxdb_session_instance(influxdb: InfluxDB1) -> None:
    db = f"h_{uuid.uuid4().hex[:8]}"
    influxdb.create_db(db)
    influxdb.write("m v=1 1000", db=db)
    assert influxdb.points("m", db=db) == [{"time": 1000, "v": 1.0}]
    with pytest.raises(RuntimeError, match="field type conflict"):
        influxdb.write("m v=1i 2000", db=db)


@pytest.mark.influxdb
def test_influxdb_auth(influxdb_factory: InfluxFactory) -> None:
    server = influxdb_factory(auth=True)
    server.create_db("h")
    server.write("m v=1 1000", db="h")
    status, _ = http("POST", f"{server.url}/write?db=h", body=b"m v=2 2000")
    assert status == 401
    assert len(server.points("m", db="h")) == 1
    server.restart()
    assert len(server.points("m", db="h")) == 1


def _v2_write(vm: VictoriaMetrics, lines: str) -> None:
    status, body = http(
        "POST",
        f"{vm.url}/api/v2/write?org=o&bucket=b&precision=ms",
        body=lines.encode(),
        headers={"Authorization": "Token ignored"},
    )
    assert status == 204, body


@pytest.mark.victoriametrics
def test_victoriametrics_write_export_dedup_restart(victoriametrics_fresh: VictoriaMetrics) -> None:
    vm = victoriametrics_fresh
    port = vm.port
    lines = "meter,site=s,device=d power_w=1.5 1700000000000\nmeter,site=s,device=d power_w=2 1700000001000"
    _v2_write(vm, lines)
    _v2_write(vm, lines)  # replay: still one sample per timestamp
    series = vm.export('{__name__="meter_power_w"}', wait_for=lambda r: sum(len(s["values"]) for s in r) >= 2)
    assert len(series) == 1
    assert series[0]["metric"] == {"__name__": "meter_power_w", "site": "s", "device": "d"}
    assert series[0]["values"] == [1.5, 2]
    assert series[0]["timestamps"] == [1700000000000, 1700000001000]
    vm.stop()
    assert not port_open(vm.host, port)
    assert not vm.running
    vm.start()
    assert vm.port == port
    assert vm.export('{__name__="meter_power_w"}')[0]["values"] == [1.5, 2]


@pytest.mark.victoriametrics
def test_victoriametrics_session_instance(victoriametrics: VictoriaMetrics) -> None:
    tag = uuid.uuid4().hex
    _v2_write(victoriametrics, f"inverter,run={tag} p=7i 1700000000000")
    got = victoriametrics.export(f'{{__name__="inverter_p",run="{tag}"}}')
    assert [s["values"] for s in got] == [[7]]
    nothing = victoriametrics.export('{run="absent"}', wait_for=lambda r: True)
    assert nothing == []


@pytest.mark.influxdb
def test_influxdb_tls(influxdb_factory: InfluxFactory, tls_material: TlsMaterial) -> None:
    server = influxdb_factory(tls=True)
    assert server.url.startswith("https://")
    assert server.ca_file == tls_material.ca_file
    server.create_db("h")
    server.write("m v=1 1000", db="h")
    assert server.points("m", db="h") == [{"time": 1000, "v": 1.0}]
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        http("GET", f"{server.url}/ping", ca_file=tls_material.other_ca_file)


@pytest.mark.victoriametrics
def test_victoriametrics_tls(victoriametrics_tls: VictoriaMetrics, tls_material: TlsMaterial) -> None:
    vm = victoriametrics_tls
    assert vm.url.startswith("https://")
    status, _ = http("POST", f"{vm.url}/api/v2/write", body=b"m v=3 1700000000000", ca_file=vm.ca_file)
    assert status == 204
    assert vm.export('{__name__="m_v"}')[0]["values"] == [3]
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        http("GET", f"{vm.url}/health", ca_file=tls_material.other_ca_file)
