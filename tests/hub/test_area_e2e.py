"""Issue #17, done-when 1 and 3: three real gateways and a hub against a real PostgreSQL and a real Mosquitto.

Sites p (a producer with the area's shared wind turbine) and b publish their closed months retained over MQTT
(the certification room), c has no bridge and pushes over HTTPS (the hub room). Every closed month's report
arrives, verifies and is logged; the area report adds up to the sites' totals to the Wh and `gia verify`
accepts it offline with the pinned keys only. The broker is restarted while a gateway is still to deliver:
nothing is lost or duplicated, receipts resume, and the log's consistency proof between the tree heads
before and after holds.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from sqlalchemy import func, select

from gateway.agent import Agent
from gateway.certification.verify import run as verify_run
from gateway.hub import db, log
from gateway.hub.config import AreaConfig, DatabaseConfig, HubConfig, HubHttpConfig, HubSettings
from gateway.hub.service import Hub
from gateway.hub.views import Views
from gateway.ledger.store import Ledger
from gateway.settings import MqttConfig, load_config
from tests.hub.conftest import AREA_DEFINITION, SignedSite, area_site_devices, build_area_site, recent_window
from tests.hubpush.test_push import running, until
from tests.servers import MosquittoBroker, PostgresDatabase, TlsMaterial, free_port

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def gateway_config(site: SignedSite, *, mqtt: str | None = None, hub: dict[str, Any] | None = None) -> Path:
    devices, _ = area_site_devices(site.site)
    cfg: dict[str, Any] = {
        "site": {"id": site.site, "timezone": "Europe/Riga", "area": "park"},
        "data_dir": str(site.data_dir),
        "http": {"enabled": False},
        "devices": [
            {
                "id": d.id,
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{free_port()}",  # not polled here: the months are in the ledger
                "sunspec": True,
                "poll_interval_s": 60,
                "serial": d.serial,
                "channels": [c.model_dump(exclude_none=True) for c in d.channels],
            }
            for d in devices
        ],
        "certification": {"hourly_profiles": True},
    }
    if mqtt is not None:
        cfg["mqtt"] = {"url": mqtt, "client_id": f"gia-{site.site}"}
        # live state is not what this test is about: the MQTT sink starts after the history
        led = Ledger(site.data_dir / "ledger.db")
        try:
            led.set_cursor("mqtt", led.head[0], now_ms=0)
        finally:
            led.close()
    if hub is not None:
        cfg["hub"] = hub
    path = site.data_dir / "gia.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def verify(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    return verify_run(list(args), stdout=buf), buf.getvalue()


async def test_three_gateways_a_hub_postgres_and_mosquitto_with_a_broker_restart(
    tmp_path: Path, postgres_db: PostgresDatabase, mosquitto_fresh: MosquittoBroker, tls_material: TlsMaterial
) -> None:
    start, end, now, closed = recent_window()
    sites = {s: build_area_site(tmp_path / s, s, start=start, end=end, now=now, months=closed) for s in ("p", "b", "c")}
    broker = mosquitto_fresh
    port = free_port()
    hub = Hub(
        HubSettings(
            hub=HubConfig(
                data_dir=tmp_path / "hub",
                database=DatabaseConfig(url=postgres_db.url, password_file=postgres_db.password_file),
                areas=[AreaConfig(id="park", name="Park", **AREA_DEFINITION)],
                mqtt=MqttConfig(url=broker.url, client_id="gia-hub", timeout_s=3),
                http=HubHttpConfig(
                    listen=f"127.0.0.1:{port}",
                    tls_cert_file=tls_material.server_cert,
                    tls_key_file=tls_material.server_key,
                ),
                area_check_s=0.5,
            )
        )
    )
    tokens = {s: hub.store.enroll(s, "park", x.public_pem).token for s, x in sites.items()}
    (tmp_path / "c.token").write_text(tokens["c"])
    hub_section = {"url": f"https://127.0.0.1:{port}", "token_file": str(tmp_path / "c.token"),
                   "ca_file": str(tls_material.ca_file), "retry_max_s": 1, "poll_s": 0.5}  # fmt: skip
    agents = {
        "p": Agent(load_config(gateway_config(sites["p"], mqtt=broker.url))),
        "b": Agent(load_config(gateway_config(sites["b"], mqtt=broker.url))),
        "c": Agent(load_config(gateway_config(sites["c"], hub=hub_section))),
    }
    store = hub.store
    views = Views(store.engine)

    def accepted(site: str) -> int:
        with store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(db.reports.c.site == site, db.reports.c.status == "accepted")
                ).scalar_one()
            )

    receipts: dict[tuple[str, str], dict[str, Any]] = {}

    async def collect() -> None:
        while True:
            try:
                async with aiomqtt.Client(broker.host, broker.port) as c:
                    await c.subscribe("gia/+/hub/receipt/+", qos=1)
                    async for m in c.messages:
                        body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                        receipts[(body["site"], body["month"])] = body
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async with running(hub.run, agents["p"].run, agents["c"].run, collect):
        await until(lambda: accepted("p") == len(closed) and accepted("c") == len(closed), 60)
        head_before = store.tree_head()
        assert head_before is not None
        # the broker goes down before b has delivered anything, and comes back: b's sink and the hub reconnect
        await asyncio.to_thread(broker.stop)
        async with running(agents["b"].run):
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.start)
            await until(lambda: accepted("b") == len(closed), 60)
            await until(lambda: all((a := hub.areas.latest("park", m)) is not None and a.complete for m in closed), 60)
            await until(lambda: len(receipts) >= 2 * len(closed), 30)  # p's and b's, published again after the restart
    try:
        # every closed month of every site exactly once, none refused
        with store.engine.connect() as conn:
            statuses = dict(conn.execute(select(db.reports.c.status, func.count()).group_by(db.reports.c.status)).all())
        assert statuses == {"accepted": 3 * len(closed)}
        assert all(receipts[(s, m)]["status"] == "accepted" for s in ("p", "b") for m in closed)
        head_after = store.tree_head()
        assert head_after is not None
        proof = store.consistency_proof(head_before["tree_size"], head_after["tree_size"])
        key = store.keys.public_key()
        assert log.verify_consistency(
            head_before["tree_size"],
            head_after["tree_size"],
            bytes.fromhex(head_before["root"]),
            bytes.fromhex(head_after["root"]),
            [bytes.fromhex(h) for h in proof["proof"]],
        )
        assert log.verify_tree_head(head_after, key) is None
        # the area report of each closed month adds up to the sites' totals and verifies offline
        for month in closed:
            area = hub.areas.latest("park", month)
            assert area is not None and area.complete
            body = json.loads(area.data)
            reps = {s: json.loads(sites[s].reports[month]) for s in sites}
            for k in ("consumption_wh", "generation_wh", "grid_import_wh", "grid_export_wh", "renewable_generation_wh"):
                assert body["totals"][k] == sum(r["indicators"][k] for r in reps.values()), (month, k)
            assert [s["site"] for s in body["sites"]] == ["b", "c", "p"] and body["missing"] == []
            d = tmp_path / "certifier" / month
            (d / "sites").mkdir(parents=True)
            (d / "area.json").write_bytes(area.data)
            for s in sites:
                (d / "sites" / f"{s}.json").write_bytes(views.site_report(s, month) or b"")
            # pinned keys only: the PEMs the certifier pinned at enrolment, and the hub's key
            (d / "keys.pem").write_bytes(b"".join(sites[s].public_pem for s in sites))
            (d / "hub.pem").write_text(store.keys.public_info()["public_key_pem"])
            (d / "proof.json").write_text(json.dumps(store.area_inclusion_proof("park", month)))
            rc, out = verify(str(d / "area.json"), "--public-key", str(d / "hub.pem"), "--trusted-keys",
                             str(d / "keys.pem"), "--evidence", str(d / "sites"), "--log-head", str(d / "proof.json"),
                             "--hub-key", str(d / "hub.pem"))  # fmt: skip
            assert rc == 0 and f"OK area park {month}" in out, out
    finally:
        store.close()
