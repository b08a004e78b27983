"""The gateway's `hub:` room against a real hub over HTTPS: closed months and key transitions pushed from the
room's own cursor, retried until the hub acknowledges them (hub down, site not yet attributable), never twice
after a restart; the evidence follows and is recomputed at the hub."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.agent import Agent
from gateway.certification.signing import KeyStore, public_pem
from gateway.hub.config import AreaConfig, DatabaseConfig, HubConfig, HubHttpConfig, HubSettings
from gateway.hub.service import Hub
from gateway.hub.views import Views
from gateway.settings import load_config
from tests.hub.conftest import SignedSite, build_area_site, recent_window
from tests.servers import TlsMaterial, free_port

pytestmark = pytest.mark.slow


def site_config(site: SignedSite, hub_url: str, token_file: Path, ca: Path, **hub: Any) -> Path:
    """The gia.yaml of a site whose ledger already holds closed months (its device is not polled here)."""
    cfg = {
        "site": {"id": site.site, "timezone": "Europe/Riga", "area": "park"},
        "data_dir": str(site.data_dir),
        "http": {"enabled": False},
        "devices": [
            {
                "id": "grid",
                "driver": "modbus",
                "connection": f"tcp://127.0.0.1:{free_port()}",
                "sunspec": True,
                "poll_interval_s": 60,
                "serial": f"GRID-{site.site.upper()}",
                "channels": [{"role": "grid_import", "quantity": "energy_import_wh", "rated_power_w": 2000}],
            }
        ],
        "certification": {"hourly_profiles": True},
        "hub": {"url": hub_url, "token_file": str(token_file), "ca_file": str(ca), "retry_max_s": 1, "poll_s": 0.5,
                **hub},
    }  # fmt: skip
    path = site.data_dir / "gia.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.asynccontextmanager
async def running(*runs: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(r()) for r in runs]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(cond: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


def make_hub(tmp_path: Path, tls: TlsMaterial, port: int) -> Hub:
    cfg = HubConfig(
        data_dir=tmp_path / "hub",
        database=DatabaseConfig(url=f"sqlite:///{tmp_path / 'hub.db'}"),
        areas=[AreaConfig(id="park")],
        http=HubHttpConfig(listen=f"127.0.0.1:{port}", tls_cert_file=tls.server_cert, tls_key_file=tls.server_key),
        area_check_s=0.5,
    )
    return Hub(HubSettings(hub=cfg))


async def test_closed_months_and_key_transitions_reach_the_hub_over_https_until_acknowledged(
    tmp_path: Path, tls_material: TlsMaterial, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    start, end, now, closed = recent_window()
    site = build_area_site(tmp_path / "b", "b", start=start, end=end, now=now, months=closed)
    port = free_port()
    hub = make_hub(tmp_path, tls_material, port)
    intruder = KeyStore(tmp_path / "intruder")
    # enrolled with the wrong key pinned: the hub cannot attribute the reports yet (422, retried)
    token = hub.store.enroll("b", "park", public_pem(intruder.public_key()).encode()).token
    token_file = tmp_path / "b.token"
    token_file.write_text(token + "\n")
    config = load_config(
        site_config(site, f"https://127.0.0.1:{port}", token_file, tls_material.ca_file, evidence=True)
    )
    agent = Agent(config)
    async with running(agent.run):
        await until(lambda: agent.services is not None and "hub" in agent.services.health.sections())
        assert agent.services is not None
        status = agent.services.health.sections()["hub"]
        await until(lambda: agent.services.health.sections()["hub"]["last_error"] is not None)  # type: ignore[union-attr]
        assert "hub unreachable" in agent.services.health.sections()["hub"]["last_error"]  # the hub is not up
        assert any("hub push:" in r for r in agent.health()["reasons"])
        async with running(hub.run):
            await until(lambda: "quarantined" in str(agent.services.health.sections()["hub"]["last_error"]))  # type: ignore[union-attr]
            assert agent.services.health.sections()["hub"]["cursor"] == 0
            # the operator pins the right key (fingerprint checked out of band): the next retry goes through
            hub.store.pin_key("b", site.public_pem, "enrolled with the wrong PEM")
            await until(lambda: hub.store.report_bytes("b", closed[-1]) is not None)
            await until(lambda: agent.services.health.sections()["hub"]["pending"] == 0)  # type: ignore[union-attr]
            status = agent.services.health.sections()["hub"]
            for m in closed:
                assert hub.store.report_bytes("b", m) == site.reports[m]
                # the evidence followed and was recomputed at the hub
                reports = Views(hub.store.engine).site_month("b", m)["reports"]
                assert reports[0]["evidence"] == {"status": "verified", "reasons": []}
            assert status["evidence"] == len(closed) and status["pushed"] == 1 + len(closed)
            assert status["last_error"] is None and status["cursor"] == 1 + len(closed)
    saved = json.loads((site.data_dir / "hub-push.json").read_text())
    assert saved["events"] == status["cursor"]
    pushed = hub.store.leaf_count()
    # a restart of the gateway pushes nothing again (its cursor), and the token never reaches a log line
    agent2 = Agent(load_config(site.data_dir / "gia.yaml"))
    async with running(agent2.run, hub.run):
        await until(lambda: agent2.services is not None and "hub" in agent2.services.health.sections())
        await asyncio.sleep(1.5)
        assert agent2.services is not None and agent2.services.health.sections()["hub"]["pushed"] == 0
    assert hub.store.leaf_count() == pushed
    hub.store.close()
    assert token not in caplog.text and "quarantined" in caplog.text


def test_the_hub_section_is_validated() -> None:
    from pydantic import ValidationError

    from gateway.hubpush.config import HubPushConfig

    for bad, match in (
        ({"url": "http://hub.example:8443", "token": "x" * 40}, "https"),
        ({"url": "https://user:pw@hub.example", "token": "x" * 40}, "credentials"),
        ({"url": "https://hub.example"}, "exactly one"),
    ):
        with pytest.raises(ValidationError, match=match):
            HubPushConfig(**bad)
    assert HubPushConfig(url="http://127.0.0.1:8090/", token="t").url == "http://127.0.0.1:8090"
