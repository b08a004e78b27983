"""`gia sim`, `gia read`, `gia scan` end to end: a real simulator process, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drivers.sim.server import free_tcp_port
from gateway.cli import build_app
from gateway.settings import load_settings

pytestmark = pytest.mark.modbus


@pytest.fixture
def sim_process() -> Iterator[str]:
    """`gia sim carlo-gavazzi-em24` in its own process, on a free port; the URL to read it at."""
    port = free_tcp_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "carlo-gavazzi-em24", "--listen", url, "--unit", "1", "--unit", "7"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("gia sim did not start listening")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        assert proc.stderr is not None
        proc.stderr.close()


def test_read_json(sim_process: str) -> None:
    result = CliRunner().invoke(build_app(), ["read", sim_process, "--map", "carlo-gavazzi-em24", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["quantity"] for r in rows} >= {"power_w", "energy_import_wh", "voltage_l1_v"}
    for r in rows:
        assert set(r) == {"quantity", "value", "unit", "quality", "ts"}
        assert r["quality"] == "good" and r["ts"].endswith("Z")


def test_read_table_and_errors(sim_process: str) -> None:
    runner = CliRunner()
    ok = runner.invoke(build_app(), ["read", sim_process, "--unit", "7", "--map", "carlo-gavazzi-em24"])
    assert ok.exit_code == 0 and "energy_import_wh" in ok.stdout
    both = runner.invoke(build_app(), ["read", sim_process, "--map", "x", "--sunspec"])
    assert both.exit_code == 2
    dead = runner.invoke(
        build_app(), ["read", f"tcp://127.0.0.1:{free_tcp_port()}", "--map", "eastron-sdm630", "--timeout", "0.3"]
    )
    assert dead.exit_code == 1 and "cannot connect" in dead.output


def test_scan_prints_a_config_check_config_accepts(sim_process: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["scan", sim_process, "--units", "1-8", "--timeout", "0.2"])
    assert result.exit_code == 0, result.output
    assert "unit 1:" in result.output and "unit 7:" in result.output
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(result.stdout)
    settings = load_settings(cfg)
    assert [(getattr(d, "unit_id", None), getattr(d, "map", None)) for d in settings.devices] == [
        (1, "carlo-gavazzi-em24"),
        (7, "carlo-gavazzi-em24"),
    ]


def test_sim_list() -> None:
    result = CliRunner().invoke(build_app(), ["sim", "--list"])
    assert result.exit_code == 0 and "eastron-sdm630" in result.stdout
