"""InfluxSink: exact lines from ledger entries, and real writes to InfluxDB 1.x and VictoriaMetrics."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from drivers.model import Quality, Sample, to_ms
from gateway.ledger.store import Ledger, Poll
from gateway.settings import InfluxConfig
from gateway.sinks.base import Sink, SinkError, SinkRejected
from gateway.sinks.influx.sink import InfluxSink
from tests.servers import InfluxDB1, InfluxFactory, VictoriaMetrics, free_port

T0 = datetime(2024, 3, 31, 0, 59, 59, 123_000, tzinfo=UTC)
CLASSES = {"m1": "meter", "inv1": "inverter"}


def samples(site_offset: int = 0, n: int = 3) -> list[Sample]:
    """Readings of a meter and an inverter at n instants; one invalid and one estimated value."""
    out: list[Sample] = []
    for i in range(n):
        ts = T0 + timedelta(seconds=i + site_offset)
        out += [
            Sample("m1", "power_w", 1500.0 + i, "W", ts),  # integral floats stay float fields
            Sample("m1", "energy_import_wh", 1_000_000 + i, "Wh", ts),
            Sample(
                "m1", "voltage_l1_v", None if i == 1 else 230.1, "V", ts, Quality.INVALID if i == 1 else Quality.GOOD
            ),
            Sample("inv1", "power_w", 0.1 * i, "W", ts, Quality.ESTIMATED if i == 2 else Quality.GOOD),
            Sample("inv1", "status", 4, "", ts),
        ]
    return out


def ledger_entries(tmp_path: Path, items: list[Sample]) -> list[Poll]:
    """The polls of `items` as a forwarder reads them from the ledger (one per device and instant)."""
    ledger = Ledger(tmp_path / "ledger.sqlite", synchronous="OFF")
    try:
        ledger.append(items)
        return ledger.read_polls_after(0, 100_000)
    finally:
        ledger.close()


def v1_config(url: str, db: str, **kw: Any) -> InfluxConfig:
    return InfluxConfig(url=url, api="v1", database=db, timeout_s=3, **kw)


def v2_config(url: str, **kw: Any) -> InfluxConfig:
    return InfluxConfig(url=url, api="v2", token=SecretStr("t"), org="o", bucket="b", timeout_s=3, **kw)


# -- pure formatting -----------------------------------------------------------------------------------


def test_lines_exact(tmp_path: Path) -> None:
    entries = ledger_entries(tmp_path, samples(n=2))
    sink = InfluxSink(v1_config("http://127.0.0.1:1", "x"), site="s1", device_classes=CLASSES)
    ms = to_ms(T0)
    assert sink.lines(entries) == [
        f'meter,device=m1,site=s1 power_w=1500.0,energy_import_wh=1000000i,voltage_l1_v=230.1,quality="good" {ms}',
        f'inverter,device=inv1,site=s1 power_w=0.0,status=4i,quality="good" {ms}',
        f'meter,device=m1,site=s1 power_w=1501.0,energy_import_wh=1000001i,quality="invalid" {ms + 1000}',
        f'inverter,device=inv1,site=s1 power_w=0.1,status=4i,quality="good" {ms + 1000}',
    ]


def test_field_types_follow_the_quantity_and_unknown_devices_get_the_default(tmp_path: Path) -> None:
    ts = T0
    entries = ledger_entries(
        tmp_path,
        [
            Sample("x9", "power_w", 7, "W", ts),  # an int for a float quantity: still a float field
            Sample("x9", "status", 3, "", ts, Quality.STALE),
            Sample("x9", "new_thing_count", 5, "", ts),  # unknown quantity: typed by its value
        ],
    )
    sink = InfluxSink(v1_config("http://127.0.0.1:1", "x"), site="s1", device_classes={}, default_class="meter")
    assert sink.lines(entries) == [
        f'meter,device=x9,site=s1 power_w=7.0,status=3i,new_thing_count=5i,quality="stale" {to_ms(ts)}'
    ]


def test_replays_and_group_aligned_batches_give_identical_lines(tmp_path: Path) -> None:
    entries = ledger_entries(tmp_path, samples(n=4))
    sink = InfluxSink(v1_config("http://127.0.0.1:1", "x"), site="s1", device_classes=CLASSES)
    whole = sink.lines(entries)
    assert sink.lines(entries) == whole
    cut = 4  # two instants x two devices
    assert sink.lines(entries[:cut]) + sink.lines(entries[cut:]) == whole


def test_unwritable_names_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="line protocol"):
        InfluxSink(v1_config("http://127.0.0.1:1", "x"), site="s1", device_classes={"d": "#bad"})


def test_sink_satisfies_the_protocol() -> None:
    sink: Sink = InfluxSink(v1_config("http://127.0.0.1:1", "x"), site="s1", device_classes=CLASSES)
    assert sink.name == "influxdb"
    assert sink.batch_size == 1000


# -- InfluxDB 1.x (api v1) --------------------------------------------------------------------------


def expected_points(items: list[Sample], site: str) -> dict[str, list[dict[str, Any]]]:
    """What InfluxDB should hold, computed from the samples independently of the sink."""
    by_point: dict[tuple[str, int], dict[str, Any]] = {}
    for s in items:
        p = by_point.setdefault((s.device, s.ts_ms), {"time": s.ts_ms, "device": s.device, "site": site, "_q": []})
        p["_q"].append(s.quality)
        if s.value is not None:
            p[s.quantity] = s.value
    out: dict[str, list[dict[str, Any]]] = {}
    for (device, _), p in sorted(by_point.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        p["quality"] = Quality.worst(p.pop("_q")).value
        out.setdefault(CLASSES[device], []).append(p)
    return out


def read_points(server: InfluxDB1, db: str, measurement: str) -> list[dict[str, Any]]:
    """Points without the null columns InfluxDB fills in for fields another point has."""
    return [{k: v for k, v in p.items() if v is not None} for p in server.points(measurement, db=db)]


@pytest.mark.influxdb
async def test_v1_writes_exactly_and_replays_idempotently(influxdb: InfluxDB1, tmp_path: Path) -> None:
    db = "sink_" + uuid.uuid4().hex[:8]
    influxdb.create_db(db)
    items = samples(n=3)
    entries = ledger_entries(tmp_path, items)
    async with InfluxSink(v1_config(influxdb.url, db), site="s1", device_classes=CLASSES) as sink:
        await sink.send(entries)
        await sink.send(entries)  # a replay after a crash before the cursor was saved
        await sink.send(entries[2:4])
        assert sink.points_written == 6 + 6 + 2
    want = expected_points(items, "s1")
    assert read_points(influxdb, db, "meter") == want["meter"]
    assert read_points(influxdb, db, "inverter") == want["inverter"]
    fields = influxdb.query('SHOW FIELD KEYS FROM "meter"', db=db)["results"][0]["series"][0]["values"]
    assert dict(map(tuple, fields)) == {
        "energy_import_wh": "integer",
        "power_w": "float",
        "quality": "string",
        "voltage_l1_v": "float",
    }


@pytest.mark.influxdb
async def test_v1_field_type_conflict_is_rejected_with_the_server_message(influxdb: InfluxDB1, tmp_path: Path) -> None:
    db = "sink_" + uuid.uuid4().hex[:8]
    influxdb.create_db(db)
    influxdb.write(f"meter,device=m1,site=s1 power_w=1i {to_ms(T0) - 60_000}", db=db)  # someone else's int
    async with InfluxSink(v1_config(influxdb.url, db), site="s1", device_classes=CLASSES) as sink:
        with pytest.raises(SinkRejected, match="field type conflict"):
            await sink.send(ledger_entries(tmp_path, samples(n=1)))


@pytest.mark.influxdb
async def test_v1_server_down_is_transient_and_recovers(influxdb_fresh: InfluxDB1, tmp_path: Path) -> None:
    server = influxdb_fresh
    server.create_db("d")
    entries = ledger_entries(tmp_path, samples(n=2))
    async with InfluxSink(v1_config(server.url, "d"), site="s1", device_classes=CLASSES) as sink:
        server.stop()
        with pytest.raises(SinkError, match="v1, db d"):
            await sink.send(entries)
        server.start()
        await sink.send(entries)  # the same sink reconnects
    assert len(server.points("meter", db="d")) == 2


@pytest.mark.influxdb
async def test_v1_missing_database_and_bad_credentials_are_transient_with_a_hint(
    influxdb_factory: InfluxFactory, tmp_path: Path
) -> None:
    server = influxdb_factory(auth=True)
    server.create_db("d")
    assert server.username is not None
    assert server.password is not None
    entries = ledger_entries(tmp_path, samples(n=1))
    good = {"username": server.username, "password": SecretStr(server.password)}
    async with InfluxSink(v1_config(server.url, "d", **good), site="s1", device_classes=CLASSES) as sink:
        await sink.send(entries)
    assert len(server.points("meter", db="d")) == 1
    bad = {"username": server.username, "password": SecretStr("wrong")}
    async with InfluxSink(v1_config(server.url, "d", **bad), site="s1", device_classes=CLASSES) as sink:
        with pytest.raises(SinkError, match=r"HTTP 401.*credentials"):
            await sink.send(entries)
    async with InfluxSink(v1_config(server.url, "nope", **good), site="s1", device_classes=CLASSES) as sink:
        with pytest.raises(SinkError, match=r"HTTP 404.*database not found.*create the database"):
            await sink.send(entries)


@pytest.mark.influxdb
async def test_v2_flavour_against_influxdb_1_6_names_the_problem(influxdb: InfluxDB1, tmp_path: Path) -> None:
    """InfluxDB 1.6 has no /api/v2/write: a misconfigured api is a clear transient error, not data loss."""
    async with InfluxSink(v2_config(influxdb.url), site="s1", device_classes=CLASSES) as sink:
        with pytest.raises(SinkError, match=r"HTTP 404.*api \(v1/v2\)"):
            await sink.send(ledger_entries(tmp_path, samples(n=1)))


# -- VictoriaMetrics (api v2 through influxdb-client) -----------------------------------------------


def vm_series(vm: VictoriaMetrics, site: str, n_samples: int) -> dict[str, tuple[list[Any], list[int]]]:
    got = vm.export(f'{{site="{site}"}}', wait_for=lambda r: sum(len(s["values"]) for s in r) >= n_samples)
    out = {}
    for s in got:
        m = s["metric"]
        key = f"{m['__name__']}/{m['device']}"
        assert m == {"__name__": m["__name__"], "device": m["device"], "site": site}
        assert key not in out
        out[key] = (s["values"], s["timestamps"])
    return out


def vm_expected(items: list[Sample]) -> dict[str, tuple[list[Any], list[int]]]:
    """VictoriaMetrics stores field f of measurement m as series m_f; string fields read back as 0."""
    pts = expected_points(items, "x")
    out: dict[str, tuple[list[Any], list[int]]] = {}
    for measurement, points in pts.items():
        for p in points:
            for k, v in p.items():
                if k in ("time", "device", "site"):
                    continue
                vals, tss = out.setdefault(f"{measurement}_{k}/{p['device']}", ([], []))
                vals.append(0 if k == "quality" else v)
                tss.append(p["time"])
    return out


@pytest.mark.victoriametrics
async def test_v2_writes_exactly_and_replays_idempotently(victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    site = "vm-" + uuid.uuid4().hex[:8]
    items = samples(n=3)
    entries = ledger_entries(tmp_path, items)
    async with InfluxSink(v2_config(victoriametrics.url), site=site, device_classes=CLASSES) as sink:
        await sink.send(entries)
        await sink.send(entries)
    want = vm_expected(items)
    n = sum(len(v) for v, _ in want.values())
    assert vm_series(victoriametrics, site, n) == want


@pytest.mark.victoriametrics
async def test_v2_server_down_is_transient_and_recovers(victoriametrics_fresh: VictoriaMetrics, tmp_path: Path) -> None:
    vm = victoriametrics_fresh
    items = samples(n=2)
    entries = ledger_entries(tmp_path, items)
    async with InfluxSink(v2_config(vm.url), site="s1", device_classes=CLASSES) as sink:
        vm.stop()
        with pytest.raises(SinkError, match="v2, bucket b"):
            await sink.send(entries)
        vm.start()
        await sink.send(entries)
    want = vm_expected(items)
    assert vm_series(vm, "s1", sum(len(v) for v, _ in want.values())) == want


@pytest.mark.influxdb
async def test_v1_tls_verifies_with_the_configured_ca(influxdb_factory: InfluxFactory, tmp_path: Path) -> None:
    server = influxdb_factory(tls=True)
    server.create_db("d")
    entries = ledger_entries(tmp_path, samples(n=1))
    async with InfluxSink(
        v1_config(server.url, "d", ca_file=server.ca_file), site="s1", device_classes=CLASSES
    ) as sink:
        await sink.send(entries)
    async with InfluxSink(v1_config(server.url, "d"), site="s1", device_classes=CLASSES) as sink:
        with pytest.raises(SinkError, match="CERTIFICATE_VERIFY_FAILED"):  # system CAs do not know it
            await sink.send(entries)
    async with InfluxSink(v1_config(server.url, "d", verify_tls=False), site="s1", device_classes=CLASSES) as sink:
        await sink.send(entries)
    assert len(server.points("meter", db="d")) == 1


@pytest.mark.victoriametrics
async def test_v2_tls_verifies_with_the_configured_ca(victoriametrics_tls: VictoriaMetrics, tmp_path: Path) -> None:
    vm = victoriametrics_tls
    items = samples(n=1)
    entries = ledger_entries(tmp_path, items)
    async with InfluxSink(v2_config(vm.url), site="s1", device_classes=CLASSES) as sink:
        with pytest.raises(SinkError, match="CERTIFICATE_VERIFY_FAILED"):
            await sink.send(entries)
    async with InfluxSink(v2_config(vm.url, ca_file=vm.ca_file), site="s1", device_classes=CLASSES) as sink:
        await sink.send(entries)
    want = vm_expected(items)
    assert vm_series(vm, "s1", sum(len(v) for v, _ in want.values())) == want


async def test_nothing_listening_is_transient_for_both_flavours(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    entries = ledger_entries(tmp_path, samples(n=1))
    for cfg in (v1_config(url, "d"), v2_config(url)):
        async with InfluxSink(cfg, site="s1", device_classes=CLASSES) as sink:
            with pytest.raises(SinkError):
                await sink.send(entries)


# -- status mapping for answers the real servers here never give (InfluxDB 2.x-shaped replies) --------


class _Replies(BaseHTTPRequestHandler):
    status = 204
    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def replying_server() -> Iterator[tuple[str, type[_Replies]]]:
    handler = type("Handler", (_Replies,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, SinkRejected), (413, SinkRejected), (429, SinkError), (500, SinkError), (503, SinkError)],
)
@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_status_mapping(
    replying_server: tuple[str, type[_Replies]], tmp_path: Path, api: str, status: int, expected: type[Exception]
) -> None:
    url, handler = replying_server
    handler.status = status
    handler.body = json.dumps({"code": "invalid", "message": f"server says {status}"}).encode()
    cfg = v1_config(url, "d") if api == "v1" else v2_config(url)
    async with InfluxSink(cfg, site="s1", device_classes=CLASSES) as sink:
        with pytest.raises(expected, match=f"HTTP {status}: server says {status}"):
            await sink.send(ledger_entries(tmp_path, samples(n=1)))
