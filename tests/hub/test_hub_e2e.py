"""The hub running (MQTT + HTTP parts) against a real Mosquitto and real PostgreSQL / SQLite.

A signed report published by a real gateway's MQTT sink arrives, verifies, is logged and receipted; the
push API refuses what it must (no token, another site's token, 10 MB, malformed, unenrolled key) and
keeps running; replays change nothing; a different second report for a stored month is a conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from sqlalchemy import func, select

from gateway.certification.signing import public_pem, verify_signature
from gateway.hub import db, log
from gateway.hub.config import DatabaseConfig, HubHttpConfig, HubSettings
from gateway.hub.service import Hub
from gateway.runtime.live import LiveState
from gateway.settings import MqttConfig
from gateway.sinks.mqtt.sink import MqttSink
from gateway.sinks.mqtt.topics import Topics
from gateway.sinks.outbox import LatestOutbox
from tests.hub.conftest import SignedSite, hub_config
from tests.servers import MosquittoBroker, free_port

pytestmark = pytest.mark.mosquitto


@contextlib.asynccontextmanager
async def running(hub: Hub) -> AsyncIterator[Hub]:
    task = asyncio.create_task(hub.run())
    try:
        async with asyncio.timeout(15):
            while hub.mqtt is not None and not hub.mqtt.health.connected:
                await asyncio.sleep(0.05)
            if hub.cfg.http.enabled:
                while hub.http_server is None or not hub.http_server.started:
                    await asyncio.sleep(0.05)
        yield hub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_hub(tmp_path: Path, database: DatabaseConfig, broker: MosquittoBroker, *, http: bool = True) -> Hub:
    cfg = hub_config(
        tmp_path,
        database,
        mqtt=MqttConfig(url=broker.url, client_id=f"hub-{free_port()}", timeout_s=3),
        http=HubHttpConfig(enabled=http, listen=f"127.0.0.1:{free_port()}", max_body_bytes=2 * 1024 * 1024),
    )
    return Hub(HubSettings(hub=cfg))


async def publish_like_a_gateway(broker: MosquittoBroker, site: str, month: str, body: bytes) -> None:
    """The gateway's own path: the report in the retained outbox of its MQTT sink, published on connect."""
    outbox: LatestOutbox[str, bytes] = LatestOutbox()
    outbox.put(Topics.for_site("gia/{site}", site).report(month), body)
    cfg = MqttConfig(url=broker.url, client_id=f"gia-{site}", timeout_s=3)
    async with MqttSink(cfg, site=site, live=LiveState(), outbox=outbox):
        pass


async def receipt(broker: MosquittoBroker, site: str, month: str, *, where: Any = None) -> dict[str, Any]:
    async with aiomqtt.Client(broker.host, broker.port) as c:
        await c.subscribe(f"gia/{site}/hub/receipt/{month}", qos=1)
        async with asyncio.timeout(20):
            async for m in c.messages:
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                if where is None or where(body):
                    return body  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


def _site_report_leaves(hub: Hub) -> int:
    with hub.store.engine.connect() as conn:
        query = select(func.count()).select_from(db.log_leaves).where(db.log_leaves.c.kind == "site_report")
        return int(conn.execute(query).scalar_one())


async def test_report_from_a_real_gateway_arrives_verifies_is_logged_and_receipted(
    tmp_path: Path, hub_db: DatabaseConfig, mosquitto_fresh: MosquittoBroker, mill: SignedSite
) -> None:
    hub = make_hub(tmp_path, hub_db, mosquitto_fresh)
    hub.store.enroll("mill", "zemgale", mill.public_pem)
    async with running(hub):
        await publish_like_a_gateway(mosquitto_fresh, "mill", "2025-02", mill.reports["2025-02"])
        got = await receipt(mosquitto_fresh, "mill", "2025-02")
        assert (got["status"], got["log_index"], got["reasons"]) == ("accepted", 0, [])
        assert verify_signature(got, hub.store.keys.public_key()) is None
        async with httpx.AsyncClient(base_url=f"http://{hub.cfg.http.listen}") as http:
            head = (await http.get("/api/v1/log/head")).json()
            proof = (await http.get("/api/v1/log/proof", params={"site": "mill", "month": "2025-02"})).json()
            health = await http.get("/healthz")
        assert health.status_code == 200, health.json()
        assert log.check_report_inclusion(mill.reports["2025-02"], proof, head, hub.store.keys.public_key()) == []
        # the same report again (a gateway reconnecting re-publishes its retained report): nothing changes
        await publish_like_a_gateway(mosquitto_fresh, "mill", "2025-02", mill.reports["2025-02"])
        await asyncio.sleep(0.5)
        # one site-report leaf, however often it is re-published (the area's monthly reports, built as
        # their deadlines pass, are leaves of their own)
        assert _site_report_leaves(hub) == 1


async def test_push_api_refuses_what_it_must_and_keeps_running(
    tmp_path: Path, hub_db: DatabaseConfig, mosquitto_fresh: MosquittoBroker, mill: SignedSite, intruder_keys
) -> None:  # type: ignore[no-untyped-def]
    hub = make_hub(tmp_path, hub_db, mosquitto_fresh)
    token = hub.store.enroll("mill", "zemgale", mill.public_pem).token
    other = hub.store.enroll("bakery", "zemgale", public_pem(intruder_keys.public_key()).encode()).token
    url = "/api/v1/hub/sites/mill/reports"
    auth = {"Authorization": f"Bearer {token}"}
    async with running(hub), httpx.AsyncClient(base_url=f"http://{hub.cfg.http.listen}", timeout=30) as http:
        feb = mill.reports["2025-02"]
        assert (await http.post(url, content=feb)).status_code == 401
        r = await http.post(url, content=feb, headers={"Authorization": "Bearer nope"})
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
        r = await http.post(url, content=feb, headers={"Authorization": f"Bearer {other}"})
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")
        # 10 MB: refused, with and without a declared length, and the hub keeps running
        r = await http.post(url, content=b"{" + b" " * (10 * 1024 * 1024) + b"}", headers=auth)
        assert (r.status_code, r.json()["error"]) == (413, "too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * (1024 * 1024)

        r = await http.post(url, content=chunks(), headers=auth)
        assert r.status_code == 413
        for junk in (b"not json", b"[" * 200_000):
            r = await http.post(url, content=junk, headers=auth)
            assert (r.status_code, r.json()["error"]) == (422, "quarantined")
        # accepted, then replayed (idempotent), then a different report for the month: a conflict
        r = await http.post(url, content=feb, headers=auth)
        assert (r.status_code, r.json()["status"], r.json()["log_index"]) == (200, "accepted", 0)
        r2 = await http.post(url, content=feb, headers=auth)
        assert r2.json()["replay"] is True and r2.json()["log_index"] == 0
        r = await http.post(url, content=mill.resign("2025-02", generated_at="2025-05-01T00:00:00.000Z"), headers=auth)
        assert (r.status_code, r.json()["status"]) == (200, "rejected")
        assert r.json()["reasons"][0].startswith("conflict:")
        # a report signed by a key nobody enrolled, pushed with a valid token: quarantined
        doc = json.loads(mill.reports["2025-03"])
        forged = json.dumps(intruder_keys.sign_report(doc)).encode()
        r = await http.post(url, content=forged, headers=auth)
        assert (r.status_code, r.json()["error"]) == (422, "quarantined")
        assert (await http.get("/healthz")).status_code == 200
        assert hub.store.leaf_count() == 1
        # the HTTP push's receipt goes out on MQTT as well; the retained receipt of the month stays the one
        # of the report that counts (the refused replacement does not displace it)
        await asyncio.sleep(0.5)
        got = await receipt(mosquitto_fresh, "mill", "2025-02")
        assert (got["status"], got["report_sha256"]) == ("accepted", r2.json()["report_sha256"])


async def test_mqtt_attacks_are_quarantined_and_the_hub_keeps_running(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker, mill: SignedSite, intruder_keys
) -> None:  # type: ignore[no-untyped-def]
    hub = make_hub(tmp_path, DatabaseConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"), mosquitto_fresh, http=False)
    hub.store.enroll("mill", "zemgale", mill.public_pem)
    broker = mosquitto_fresh
    async with running(hub), aiomqtt.Client(broker.host, broker.port) as c:
        await c.publish("gia/mill/report/2025-01", b"x" * (10 * 1024 * 1024), qos=1)
        await c.publish("gia/mill/report/2025-01", b"{not json", qos=1)
        await c.publish("gia/ghost/report/2025-02", mill.reports["2025-02"], qos=1)  # another site's topic
        doc = json.loads(mill.reports["2025-03"])
        await c.publish("gia/mill/report/2025-03", json.dumps(intruder_keys.sign_report(doc)).encode(), qos=1)
        await c.publish("gia/mill/report/2025-02", mill.reports["2025-02"], qos=1, retain=True)
        got = await receipt(broker, "mill", "2025-02")
        assert got["status"] == "accepted"
        async with asyncio.timeout(10):
            while hub.mqtt is not None and hub.mqtt.health.decided < 4:
                await asyncio.sleep(0.05)
    assert hub.mqtt is not None and hub.mqtt.health.too_large == 1
    kinds = sorted(q["kind"] for q in hub.store.quarantined())
    assert kinds == ["malformed", "site_mismatch", "unpinned_key"]
    assert hub.store.leaf_count() == 1
