"""Hub restart and PostgreSQL restart during ingestion: nothing lost or duplicated, receipts resume, and
the log's consistency proof between the tree heads before and after holds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest
from sqlalchemy import func, select

from gateway.hub import db, log
from gateway.hub.config import DatabaseConfig
from tests.hub.conftest import SignedSite
from tests.hub.test_hub_e2e import make_hub, running
from tests.servers import MosquittoBroker, PostgresFactory

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

SITES = 15


def site_report(mill: SignedSite, site: str, month: str) -> bytes:
    """`mill`'s real report issued for another site id, signed by the same key (enrolled for each)."""
    return mill.as_site(site, month)


async def test_hub_and_postgres_restarts_during_ingestion_lose_nothing(
    tmp_path: Path, postgres_factory: PostgresFactory, mosquitto_fresh: MosquittoBroker, mill: SignedSite
) -> None:
    pg = postgres_factory()
    pg.execute('CREATE DATABASE "hub"')
    database = DatabaseConfig(url=f"postgresql://{pg.user}@{pg.host}:{pg.port}/hub", password_file=pg.password_file)
    broker = mosquitto_fresh
    hub = make_hub(tmp_path, database, broker, http=False)
    sites = [f"s{i:02d}" for i in range(SITES)]
    for s in sites:
        hub.store.enroll(s, "zemgale", mill.public_pem)
    reports = {(s, m): site_report(mill, s, m) for s in sites for m in ("2025-02", "2025-03")}
    receipts: dict[tuple[str, str], dict[str, object]] = {}

    async def collect() -> None:
        async with aiomqtt.Client(broker.host, broker.port) as c:
            await c.subscribe("gia/+/hub/receipt/+", qos=1)
            async for m in c.messages:
                body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                receipts[(body["site"], body["month"])] = body

    async def publish(keys: list[tuple[str, str]]) -> None:
        async with aiomqtt.Client(broker.host, broker.port) as c:
            for s, m in keys:
                await c.publish(f"gia/{s}/report/{m}", reports[(s, m)], qos=1, retain=True)
                await asyncio.sleep(0.02)

    collector = asyncio.create_task(collect())
    try:
        febs = [(s, "2025-02") for s in sites]
        marchs = [(s, "2025-03") for s in sites]
        async with running(hub):
            await publish(febs[:3])
            async with asyncio.timeout(20):
                while hub.store.leaf_count() < 3:
                    await asyncio.sleep(0.05)
            head_before = hub.store.tree_head()
            assert head_before is not None
            publisher = asyncio.create_task(publish(febs[3:]))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(pg.stop)  # PostgreSQL down mid-stream (fast shutdown)...
            await asyncio.sleep(1.0)
            await asyncio.to_thread(pg.start)  # ...and back: the hub retried, nothing skipped
            await publisher
            publisher = asyncio.create_task(publish(marchs))
            await asyncio.sleep(0.15)
        # the hub process is gone mid-stream (cancelled), the publisher carries on; a new hub takes over
        await publisher
        await asyncio.sleep(0.3)
        hub.store.close()
        hub2 = make_hub(tmp_path, database, broker, http=False)
        async with running(hub2):
            async with asyncio.timeout(60):
                while len(receipts) < 2 * SITES or hub2.store.leaf_count() < 2 * SITES:
                    await asyncio.sleep(0.1)
        assert hub2.mqtt is not None
    finally:
        collector.cancel()
    store = hub2.store
    try:
        with store.engine.connect() as conn:
            statuses = conn.execute(select(db.reports.c.status, func.count()).group_by(db.reports.c.status)).all()
        assert dict(statuses) == {"accepted": 2 * SITES}  # each exactly once, none rejected
        with store.engine.connect() as conn:
            kinds = dict(conn.execute(select(db.log_leaves.c.kind, func.count()).group_by(db.log_leaves.c.kind)).all())
        assert kinds["site_report"] == 2 * SITES  # (and the area reports the hub built meanwhile)
        assert all(r["status"] == "accepted" for r in receipts.values()) and len(receipts) == 2 * SITES
        head_after = store.tree_head()
        assert head_after is not None and head_after["tree_size"] == store.leaf_count()
        proof = store.consistency_proof(head_before["tree_size"], head_after["tree_size"])
        key = store.keys.public_key()
        assert log.verify_tree_head(head_before, key) is None and log.verify_tree_head(head_after, key) is None
        assert log.verify_consistency(
            head_before["tree_size"],
            head_after["tree_size"],
            bytes.fromhex(head_before["root"]),
            bytes.fromhex(head_after["root"]),
            [bytes.fromhex(h) for h in proof["proof"]],
        )
        # the database restart was noticed and retried, not skipped
        assert hub.mqtt is not None and hub.mqtt.health.retries >= 1
    finally:
        store.close()
