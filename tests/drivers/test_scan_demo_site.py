"""`gia scan` finds every device of the simulated demo site, by identity register or (labelled) by
plausible values, and the combined snippet is a config `gia check-config` accepts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from drivers.sim.site import DemoSite, demo_devices, run_demo_servers
from gateway.cli import build_app

pytestmark = pytest.mark.modbus


async def test_scan_names_every_demo_device(tmp_path: Path) -> None:
    expected = {d.id: d.map for d in demo_devices()}
    runner = CliRunner()
    devices = []
    site = DemoSite()
    site.state_at(datetime.now(UTC))  # the first call integrates from the model's epoch (~1 s): warm it
    async with run_demo_servers(site, lambda: datetime.now(UTC)) as servers:
        for dev_id, url in servers.urls.items():
            result = await asyncio.to_thread(
                runner.invoke, build_app(), ["scan", url, "--units", "1", "--timeout", "0.5"]
            )
            assert result.exit_code == 0, result.output
            doc = yaml.safe_load(result.stdout[result.stdout.index("site:") :])
            (found,) = doc["devices"]
            assert found["map"] == expected[dev_id], (dev_id, result.output)
            if "probably" in result.output:
                assert "confirm with: gia read" in result.output
            devices.append({**found, "id": dev_id})
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(yaml.safe_dump({"site": {"id": "scanned"}, "devices": devices, "http": {"enabled": False}}))
    check = runner.invoke(build_app(), ["check-config", "--config", str(cfg)])
    assert check.exit_code == 0, check.output
