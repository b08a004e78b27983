"""Certifier endpoints with the real ReportService: signed JSON twice byte-identical, CSV/PDF/evidence,
public keys, JSON errors, and the fetched report verifies offline with `gia verify`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, cast

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
        # #21 finding 6: the PDF in the reader's language: ?lang=, else the page's cookie, else Accept-Language
        lv_query = await c.get("/api/v1/sites/s1/reports/2025-03?format=pdf&lang=lv")
        lv_header = await c.get("/api/v1/sites/s1/reports/2025-03?format=pdf", headers={"Accept-Language": "lv-LV"})
        lv_cookie = await c.get("/api/v1/sites/s1/reports/2025-03?format=pdf", headers={"Cookie": "gia_lang=lv"})
        assert lv_query.content == lv_header.content == lv_cookie.content != pdf.content
        assert (await c.get("/api/v1/sites/s1/reports/2025-03?format=pdf&lang=de")).status_code == 400
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


class _WatchedBuilds:
    """The real ReportService, noting where evidence zips are written and how many builds overlap."""

    def __init__(self, service: ReportService) -> None:
        self._service = service
        self.dirs: set[Path] = set()
        self.running = 0
        self.peak = 0

    def write_evidence_zip(self, site: str, month: str, out: Any) -> None:
        self.dirs.add(Path(out.name).parent)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            time.sleep(0.3)  # long enough for the other request to overlap if builds were not bounded
            self._service.write_evidence_zip(site, month, out)
        finally:
            self.running -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)


async def test_evidence_is_built_in_the_data_dir_one_build_at_a_time(tmp_path: Path) -> None:
    """Issue #15, finding 7: evidence zips were written to /tmp (on a Pi the same card, outside the disk
    guard's view of the data dir), and every request started a build of its own on a new thread."""
    s = settings(tmp_path, [device("grid", channel("grid_import"), serial="SN1")], site="s1")
    make_ledger(
        s.ledger_path,
        register_samples("grid", "energy_import_wh", MARCH_START, MARCH_END, value=lambda k, _ts: 1_000_000 + 250 * k),
    ).close()
    site_key(s)
    watched = _WatchedBuilds(
        ReportService(s, resolve_site(s, base_dir=Path.cwd()), now_ms=lambda: to_ms(datetime(2025, 4, 15, tzinfo=UTC)))
    )
    scratch = s.data_dir / "tmp"
    services = ApiServices(
        site="s1",
        live=LiveState(),
        health=lambda: {"status": "ok", "reasons": []},
        reports=cast(Any, watched),
        auth=Authenticator(
            [TokenEntry(CERT.encode(), Principal("cert", frozenset({"certifier"}), frozenset({"s1"})))],
            anonymous_viewer_on_loopback=False,
        ),
        report_builds=1,
        expensive_per_client=4,
        scratch_dir=scratch,
    )
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gw", headers={"Authorization": f"Bearer {CERT}"}
    ) as c:
        a, b = await asyncio.gather(
            c.get("/api/v1/sites/s1/evidence/2025-03"), c.get("/api/v1/sites/s1/evidence/2025-03")
        )
    assert a.status_code == b.status_code == 200
    assert watched.dirs == {scratch}, watched.dirs
    assert watched.peak == 1, f"{watched.peak} evidence builds ran at once with http.report_builds = 1"
    assert list(scratch.iterdir()) == []  # each zip is removed once sent
