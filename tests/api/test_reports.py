"""Certifier endpoints with the real ReportService: signed JSON twice byte-identical, CSV/PDF/evidence,
public keys, JSON errors, and the fetched report verifies offline with `gia verify`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import httpx
import pytest

from drivers.model import to_ms
from gateway.api.app import ApiServices, create_app
from gateway.api.auth import Authenticator, Principal, TokenEntry
from gateway.certification.service import (
    ReportService,
)
from gateway.runtime.live import LiveState
from gateway.site.resolve import resolve_site
from tests.certification.helpers import (
    MARCH_END,
    MARCH_START,
    channel,
    device,
    make_ledger,
    register_samples,
    settings,
    site_key,
)

CERT = "c" * 40


@pytest.fixture
def client(tmp_path: Path) -> httpx.AsyncClient:
    s = settings(tmp_path, [device("grid", channel("grid_import"), serial="SN1")], site="s1")
    make_ledger(
        s.ledger_path,
        register_samples("grid", "energy_import_wh", MARCH_START, MARCH_END, value=lambda k, _ts: 1_000_000 + 250 * k),
    ).close()
    site_key(s)  # a ledger with history gets its key from `gia keys rotate`, never silently
    service = ReportService(
        s, resolve_site(s, base_dir=Path.cwd()), now_ms=lambda: to_ms(datetime(2025, 4, 15, tzinfo=UTC))
    )
    services = ApiServices(
        site="s1",
        live=LiveState(),
        health=lambda: {"status": "ok", "reasons": []},
        reports=service,
        auth=Authenticator(
            [TokenEntry(CERT.encode(), Principal("cert", frozenset({"certifier"}), frozenset({"s1"})))],
            anonymous_viewer_on_loopback=False,
        ),
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services)),
        base_url="http://gw",
        headers={"Authorization": f"Bearer {CERT}"},
    )


async def test_report_formats_evidence_keys_and_offline_verify(client: httpx.AsyncClient, tmp_path: Path) -> None:
    async with client as c:
        r1 = await c.get("/api/v1/sites/s1/reports/2025-03")
        r2 = await c.get("/api/v1/sites/s1/reports/2025-03")
        assert r1.status_code == 200 and r1.headers["content-type"] == "application/json"
        assert r1.content == r2.content  # a closed month is immutable
        report = r1.json()
        assert report["schema"] == "gia-monthly-report/1"
        (ch,) = report["channels"]
        assert ch["energy_wh"] == 250 * (743 * 4)  # 743 h of 15-min register advances
        csv = await c.get("/api/v1/sites/s1/reports/2025-03?format=csv")
        assert csv.status_code == 200 and "grid.grid_import" in csv.text
        pdf = await c.get("/api/v1/sites/s1/reports/2025-03?format=pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        ev = await c.get("/api/v1/sites/s1/evidence/2025-03")
        assert ev.status_code == 200
        names = zipfile.ZipFile(BytesIO(ev.content)).namelist()
        assert any(n.endswith(".jsonl") for n in names) and any(n.endswith(".csv") for n in names)
        keys = (await c.get("/api/v1/keys", headers={})).json()["keys"]
        assert keys[0]["key_id"] == report["signature"]["key_id"]
        future = await c.get("/api/v1/sites/s1/reports/2031-01")
        assert future.status_code == 400 and future.json()["error"] == "month_in_future"
    (tmp_path / "report.json").write_bytes(r1.content)
    (tmp_path / "key.pem").write_text(keys[0]["public_key_pem"])
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "verify",
            str(tmp_path / "report.json"),
            "--public-key",
            str(tmp_path / "key.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    tampered = r1.content.replace(str(ch["energy_wh"]).encode(), str(ch["energy_wh"] + 1).encode(), 1)
    (tmp_path / "bad.json").write_bytes(tampered)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "verify",
            str(tmp_path / "bad.json"),
            "--public-key",
            str(tmp_path / "key.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
