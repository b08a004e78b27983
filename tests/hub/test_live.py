"""Issue #18, the area live view: the sites' live state through a real Mosquitto into the hub's database, the
area's flows and site status out of the API and the live page; MQTT v5 shared subscriptions split the
state between replicas; the latest-wins buffer is bounded and counts what it sheds.

Sites publish what the gateway publishes (CONTRACT.md: `gia/{site}/{device}/state` JSON with `ts`,
`quality`, one field per quantity; `gia/{site}/status` online/offline, retained). Layouts come from each
site's latest accepted signed report (here the `mill` fixture's real report: device m1, a consumption
meter on `energy_import_wh`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.certification.signing import public_pem
from gateway.hub.config import DatabaseConfig, HubHttpConfig, HubSettings, LiveConfig
from gateway.hub.db import create_hub_engine
from gateway.hub.live import Layout, LiveIngest, LiveView, Pending, ShedQueue, site_flows
from gateway.hub.service import Hub
from gateway.settings import MqttConfig
from gateway.site.channels import ChannelSpec
from tests.hub.conftest import SignedSite, hub_config
from tests.servers import MosquittoBroker, free_port

pytestmark = pytest.mark.mosquitto


def new_key() -> bytes:
    return public_pem(Ed25519PrivateKey.generate().public_key()).encode()


def state(power_w: float | None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {"ts": datetime.now(UTC).isoformat(), "quality": "good", "seq": 1, **extra}
    if power_w is not None:
        doc["power_w"] = power_w
    return json.dumps(doc).encode()


@contextlib.asynccontextmanager
async def running(hub: Hub) -> AsyncIterator[Hub]:
    task = asyncio.create_task(hub.run())
    try:
        async with asyncio.timeout(15):
            while hub.live is not None and not hub.live.health.connected:
                await asyncio.sleep(0.05)
            if hub.cfg.http.enabled:
                while hub.http_server is None or not hub.http_server.started:
                    await asyncio.sleep(0.05)
        yield hub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_hub(tmp_path: Path, broker: MosquittoBroker, *, stale_after_s: float, http: bool = True) -> Hub:
    cfg = hub_config(
        tmp_path,
        DatabaseConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"),
        mqtt=MqttConfig(url=broker.url, client_id=f"hub-{free_port()}", timeout_s=3),
        http=HubHttpConfig(enabled=http, listen=f"127.0.0.1:{free_port()}", anonymous_viewer_on_loopback=True),
        live=LiveConfig(stale_after_s=stale_after_s, flush_s=0.2, stream_s=0.5),
    )
    return Hub(HubSettings(hub=cfg))


async def wait_view(hub: Hub, until: Any, timeout: float = 20.0) -> dict[str, Any]:
    assert hub.live_view is not None
    view = hub.live_view
    doc: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                doc = await asyncio.to_thread(view.area, "zemgale")
                if until(doc):
                    return doc
                await asyncio.sleep(0.2)
    raise AssertionError(f"the live view never got there: {json.dumps(doc)[:3000]}")


def by_site(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["site"]: s for s in doc["sites"]}


async def test_live_view_flows_status_and_a_stale_site_through_a_real_broker(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker, mill: SignedSite
) -> None:
    hub = make_hub(tmp_path, mosquitto_fresh, stale_after_s=2.0)
    hub.store.enroll("mill", "zemgale", mill.public_pem)
    assert hub.ingestor.submit_report("mill", mill.reports["2025-03"], via="http").status == "accepted"
    for s in ("bakery", "quiet", "closed", "never"):
        hub.store.enroll(s, "zemgale", new_key())
    async with running(hub), aiomqtt.Client(mosquitto_fresh.host, mosquitto_fresh.port) as pub:
        for s in ("mill", "bakery", "quiet", "closed"):
            await pub.publish(f"gia/{s}/status", b"online", qos=1, retain=True)
        # `quiet` publishes once and falls silent (its link is down, the broker keeps no will yet)
        await pub.publish("gia/quiet/m1/state", state(5000.0), qos=1, retain=True)
        await pub.publish("gia/closed/m1/state", state(7000.0), qos=1, retain=True)
        await pub.publish("gia/closed/status", b"offline", qos=1, retain=True)  # its last will
        register = 1_000
        deadline = asyncio.get_running_loop().time() + 3.0
        while asyncio.get_running_loop().time() < deadline:  # longer than stale_after_s
            await pub.publish("gia/mill/m1/state", state(400.0, energy_import_wh=register), qos=1, retain=True)
            await pub.publish("gia/bakery/oven/state", state(2500.0), qos=1, retain=True)
            register += 100
            await asyncio.sleep(0.3)
        last = register - 100
        doc = await wait_view(
            hub,
            lambda d: (
                by_site(d)["quiet"]["status"] == "stale"
                and by_site(d)["mill"]["status"] == "online"
                and (by_site(d)["mill"]["today"] or {}).get("consumption_wh") == last - 1_000
            ),
        )
        sites = by_site(doc)
        mill_view = sites["mill"]
        # the mill's report says m1 is a consumption meter: its live power is the site's consumption
        assert mill_view["flows"]["consumption_w"] == 400.0
        assert mill_view["layout"] == {"from_report": "2025-03"}
        assert mill_view["last_report"]["month"] == "2025-03"
        assert mill_view["lag_s"] is not None and mill_view["last_reading_age_s"] is not None
        # today's provisional balance: the register advance since the first reading the hub saw today
        assert mill_view["today"]["consumption_wh"] == last - 1_000
        assert mill_view["today"]["provisional"] is True
        # a site without a report yet: online, its devices unclassified, no flows guessed
        assert sites["bakery"]["status"] == "online"
        assert sites["bakery"]["unclassified_devices"] == ["oven"]
        assert sites["bakery"]["flows"]["consumption_w"] is None
        # stale, offline and never-heard sites: their status, and no number for their flows (not 0)
        assert (sites["quiet"]["status"], sites["closed"]["status"], sites["never"]["status"]) == (
            "stale",
            "offline",
            "unknown",
        )
        for s in ("quiet", "closed", "never"):
            assert all(v is None for k, v in sites[s]["flows"].items() if k != "generation_by_source_w"), sites[s]
        assert sites["quiet"]["last_reading"] is not None  # when it was last heard is shown
        # the area sums the online sites it can and names the ones it leaves out
        assert doc["flows"]["consumption_w"] == 400.0
        assert sorted(doc["flows"]["left_out"]["consumption_w"]) == ["bakery", "closed", "never", "quiet"]
        assert doc["counts"] == {"online": 2, "stale": 1, "offline": 1, "unknown": 1}
        # the same over HTTP, the SSE stream, metrics and /healthz
        async with httpx.AsyncClient(base_url=f"http://{hub.cfg.http.listen}", timeout=10) as http:
            got = (await http.get("/api/v1/hub/areas/zemgale/live")).json()
            assert by_site(got)["quiet"]["status"] == "stale"
            assert (await http.get("/api/v1/hub/areas/nowhere/live")).status_code == 404
            async with http.stream("GET", "/api/v1/hub/areas/zemgale/live/stream") as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        assert by_site(json.loads(line[6:]))["closed"]["status"] == "offline"
                        break
            metrics = (await http.get("/api/v1/hub/metrics")).json()
            health = (await http.get("/healthz")).json()
        assert metrics["states"] >= 10 and metrics["written"] >= 3
        assert metrics["subscription"].startswith("$share/gia-hub/")
        assert {"mill", "bakery", "quiet"} <= set(metrics["lag_per_site"])
        assert metrics["latency_ms"]["p50"] is not None
        assert health["live"]["connected"] is True and health["live"]["queue_depth"] >= 0


async def test_two_replicas_with_a_shared_subscription_split_the_messages_and_together_see_every_site(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker, hub_db: DatabaseConfig
) -> None:
    db = hub_db
    cfg = hub_config(tmp_path, db)
    # the hub's own schema (sites) on a store opened once, then the live part of two replicas on the same file
    hub = Hub(HubSettings(hub=cfg.model_copy(update={"live": LiveConfig(stale_after_s=60, flush_s=0.2)})))
    sites = [f"site-{i:02d}" for i in range(20)]
    for s in sites:
        hub.store.enroll(s, "zemgale", new_key())
    mqtt = MqttConfig(url=mosquitto_fresh.url, timeout_s=3)
    live_cfg = LiveConfig(stale_after_s=60, flush_s=0.2)
    # the two replicas share the hub's database; the plain subscriber (the control) writes to its own
    engines = [create_hub_engine(db), create_hub_engine(db)]
    engines.append(create_hub_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'control.db'}")))
    replicas = [LiveIngest(mqtt, live_cfg, engines[i], client_id=f"replica-{i}") for i in range(2)]
    bare = LiveIngest(mqtt, live_cfg.model_copy(update={"share_group": None}), engines[2], client_id="whole")
    tasks = [asyncio.create_task(r.run()) for r in [*replicas, bare]]
    devices, rounds = 5, 10
    total = len(sites) * devices * rounds
    try:
        async with asyncio.timeout(15):
            while not all(r.health.connected for r in [*replicas, bare]):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the subscriptions are acknowledged before `connected`; let the broker settle
        async with aiomqtt.Client(mosquitto_fresh.host, mosquitto_fresh.port) as pub:
            for _ in range(rounds):  # 1 Hz per device, as the gateway, sped up: no burst beyond what a site sends
                for s in sites:
                    for d in range(devices):
                        await pub.publish(f"gia/{s}/d{d}/state", state(100.0 + d), qos=1)
                await asyncio.sleep(0.1)
        async with asyncio.timeout(60):
            while sum(r.health.states for r in replicas) < total or bare.health.states < total:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last flush
        split = [r.health.states for r in replicas]
        # the group's replicas share the messages: each gets some, none gets all, together exactly all
        assert sum(split) == total and all(0 < n < total for n in split), split
        assert bare.health.states == total  # a plain subscription sees every message
        # the database holds every site and device, whichever replica took which message
        view = LiveView(engines[0], cfg.areas, live_cfg)
        doc = await asyncio.to_thread(view.area, "zemgale")
        assert doc["counts"]["online"] == len(sites)
        assert all(len(s["devices"]) == devices for s in doc["sites"])
        # each replica saw sites of its own, and together every site
        seen = [set(r.health.site_lag) for r in replicas]
        assert all(seen) and seen[0] | seen[1] == set(sites)
        assert await asyncio.to_thread(_writers, engines[0]) == {"replica-0", "replica-1"}
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for e in engines:
            e.dispose()
        hub.store.close()


def _writers(engine: Any) -> Iterable[str]:
    from sqlalchemy import select

    from gateway.hub.live import live_state

    with engine.connect() as conn:
        return {str(r[0]) for r in conn.execute(select(live_state.c.replica).where(live_state.c.kind == "state"))}


def test_the_buffer_is_bounded_latest_wins_per_device_and_counts_what_it_sheds() -> None:
    q = ShedQueue(max_keys=3)
    for i in range(5):
        q.put(("a", "m1", "state"), Pending(str(i).encode(), i))
    assert len(q) == 1 and q.shed == 4  # four states superseded before they were written
    q.put(("a", "m2", "state"), Pending(b"x", 0))
    q.put(("b", "m1", "state"), Pending(b"y", 0))
    q.put(("c", "m1", "state"), Pending(b"z", 0))  # a fourth key: refused, the bound holds
    assert (len(q), q.refused) == (3, 1)
    q.put(("c", "", "status"), Pending(b"offline", 0))  # a site's last will is never refused
    batch = q.take()
    assert batch[("a", "m1", "state")].payload == b"4" and ("c", "", "status") in batch and len(q) == 0
    # a batch the database did not take goes back, but never over a newer state of the same device
    q.put(("a", "m1", "state"), Pending(b"5", 5))
    q.put_back(batch)
    assert q.take()[("a", "m1", "state")].payload == b"5"


def test_flows_follow_the_report_roles_and_unknown_stays_unknown() -> None:
    layout = Layout(
        "2025-03",
        (
            ChannelSpec("poc.grid_import", "grid_import", "poc", "energy_import_wh"),
            ChannelSpec("poc.grid_export", "grid_export", "poc", "energy_export_wh"),
            ChannelSpec("pv.generation", "generation", "pv", "energy_export_wh", source="pv", renewable=True),
            ChannelSpec("bat.storage_discharge", "storage_discharge", "bat", "energy_export_wh"),
            ChannelSpec("bat.storage_charge", "storage_charge", "bat", "energy_import_wh"),
        ),
    )

    def dev(p: float | None, usable: bool = True) -> dict[str, Any]:
        return {"power_w": p, "usable": usable}

    flows, unknown, unclassified = site_flows(layout, {"poc": dev(-2000.0), "pv": dev(5000.0), "bat": dev(-1000.0)})
    # exporting 2 kW while producing 5 kW and charging 1 kW: the site uses 2 kW
    assert (flows["grid_import_w"], flows["grid_export_w"], flows["consumption_w"]) == (0.0, 2000.0, 2000.0)
    assert flows["generation_by_source_w"] == {"pv": 5000.0} and unknown == [] and unclassified == []
    flows, unknown, _ = site_flows(layout, {"poc": dev(-2000.0), "pv": dev(5000.0, usable=False), "bat": dev(0.0)})
    assert flows["generation_w"] is None and flows["consumption_w"] is None and unknown == ["pv"]
    assert flows["grid_export_w"] == 2000.0  # what is known stays shown


@pytest.mark.influxdb
async def test_the_live_view_goes_to_influxdb_as_measurement_area_without_zeros_for_stale_sites(
    tmp_path: Path, influxdb: Any, mill: SignedSite
) -> None:
    from gateway.hub.live import AreaInflux
    from gateway.settings import InfluxConfig

    influxdb.create_db("hub_live")
    cfg = hub_config(tmp_path, DatabaseConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"))
    hub = Hub(HubSettings(hub=cfg.model_copy(update={"live": LiveConfig(stale_after_s=60)})))
    try:
        hub.store.enroll("mill", "zemgale", mill.public_pem)
        assert hub.ingestor.submit_report("mill", mill.reports["2025-03"], via="http").status == "accepted"
        hub.store.enroll("quiet", "zemgale", new_key())
        now = int(datetime.now(UTC).timestamp() * 1000)
        live = LiveIngest(
            MqttConfig(url="mqtt://127.0.0.1:1"), LiveConfig(stale_after_s=60), hub.store.engine, client_id="t"
        )
        # the mill heard now; `quiet` last heard two minutes ago (older than stale_after_s)
        await live.flush({("mill", "m1", "state"): Pending(state(400.0), now)})
        two_min_ago = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
        await live.flush({("quiet", "m1", "state"): Pending(state(900.0, ts=two_min_ago), now - 120_000)})
        assert hub.live_view is not None
        writer = AreaInflux(
            hub.live_view, InfluxConfig(url=influxdb.url, api="v1", database="hub_live", timeout_s=3), interval_s=1.0
        )
        task = asyncio.create_task(writer.run())
        try:
            async with asyncio.timeout(15):
                while writer.points < 3:
                    await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        points = influxdb.points("area", "hub_live")
        area = next(p for p in points if p["site"] is None)
        mill_p = next(p for p in points if p["site"] == "mill")
        quiet = next(p for p in points if p["site"] == "quiet")
        assert (area["area"], area["consumption_w"], area["sites_online"], area["sites_stale"]) == (
            "zemgale",
            400,
            1,
            1,
        )
        assert area["complete"] is False
        assert (mill_p["status"], mill_p["consumption_w"]) == ("online", 400)
        assert quiet["status"] == "stale" and quiet["consumption_w"] is None  # no field at all, not 0
        assert quiet["reading_age_s"] >= 119
        assert area["time"] % 1000 == 0  # aligned: every replica writes the same point
    finally:
        hub.store.close()
