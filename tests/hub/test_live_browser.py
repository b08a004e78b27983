"""Issue #18, done-when 4: the area live page in headless Chromium with 50 sites publishing live state through a
real Mosquitto; the one site that fell silent is shown stale (its status and the age of its last reading),
never with its last power as if current and never as 0 kW."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from gateway.hub.config import DatabaseConfig, HubHttpConfig, HubSettings, LiveConfig
from gateway.hub.service import Hub
from gateway.settings import MqttConfig
from tests.hub.conftest import SignedSite, hub_config
from tests.hub.test_live import running
from tests.servers import MosquittoBroker, free_port
from tests.support.browser import ARTIFACTS, browser_page

pytestmark = [pytest.mark.browser, pytest.mark.mosquitto]

SITES = [f"site-{i:02d}" for i in range(50)]
SILENT = "site-17"


async def publish_sites(broker: MosquittoBroker, stop: asyncio.Event) -> None:
    """Every site's consumption meter m1 at 1 Hz (400 + i W); SILENT publishes once and falls silent."""
    async with aiomqtt.Client(broker.host, broker.port) as pub:
        for s in SITES:
            await pub.publish(f"gia/{s}/status", b"online", qos=1, retain=True)
        first = True
        while not stop.is_set():
            ts = datetime.now(UTC).isoformat()
            for i, s in enumerate(SITES):
                if s == SILENT and not first:
                    continue
                body = {"ts": ts, "quality": "good", "seq": 1, "power_w": 400 + i}
                await pub.publish(f"gia/{s}/m1/state", json.dumps(body).encode(), qos=0)
            first = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()


async def test_the_live_page_shows_50_sites_and_the_silent_one_stale(
    tmp_path: Path, mosquitto_fresh: MosquittoBroker, mill: SignedSite
) -> None:
    cfg = hub_config(
        tmp_path,
        DatabaseConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"),
        mqtt=MqttConfig(url=mosquitto_fresh.url, client_id=f"hub-{free_port()}", timeout_s=3),
        http=HubHttpConfig(listen=f"127.0.0.1:{free_port()}", anonymous_viewer_on_loopback=True),
        live=LiveConfig(stale_after_s=4.0, flush_s=0.3, stream_s=1.0),
    )
    hub = Hub(HubSettings(hub=cfg))
    for s in SITES:  # each with an accepted report: its layout (m1 is a consumption meter)
        hub.store.enroll(s, "zemgale", mill.public_pem)
        assert hub.ingestor.submit_report(s, mill.as_site(s, "2025-02"), via="http").status == "accepted"
    stop = asyncio.Event()
    async with running(hub):
        publisher = asyncio.create_task(publish_sites(mosquitto_fresh, stop))
        try:
            async with browser_page(height=2400) as (page, _traffic, errors):
                await page.goto(f"http://{cfg.http.listen}/live?area=zemgale", wait_until="load")
                await page.wait_for_function(
                    f"""() => window.giaLive && window.giaLive.ready
                        && document.querySelectorAll('#sites tr.site').length === {len(SITES)}
                        && document.querySelector('#sites tr[data-site="{SILENT}"]').dataset.status === 'stale'
                        && document.querySelectorAll('#sites tr.site.online').length === {len(SITES) - 1}""",
                    timeout=40_000,
                )
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "hub-live-50-sites.png"), full_page=True)
                silent = page.locator(f'#sites tr[data-site="{SILENT}"]')
                flows = await silent.locator("td.flow").all_text_contents()
                assert flows == ["stale"] * 4, flows  # grid, generation, storage, consumption: no number at all
                row = await silent.text_content() or ""
                assert "kW" not in row and "ago" in row, row  # when it was last heard, not a value
                other = page.locator('#sites tr[data-site="site-18"] td.flow').nth(3)
                assert await other.text_content() == "0.4 kW"  # 418 W: a live site shows its consumption
                counts = await page.locator("#counts").text_content() or ""
                assert counts.startswith(f"{len(SITES) - 1} online · 1 stale"), counts
                assert SILENT in (await page.locator("#left-out").text_content() or "")
                assert errors == []
        finally:
            stop.set()
            await publisher
