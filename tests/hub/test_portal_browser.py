"""Issue #17, done-when 4, on `gia demo --area --backfill 62` as a real process: in headless Chromium a
certifier signs in, sees the area x month matrix with the criteria, drills down to a site, downloads its
signed report and `gia verify` accepts it with the site's pinned key; the demo's last closed month's area
report was built, signed and verifies (the contract's `--backfill 62`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.certification.signing import KeyStore
from tests.servers import free_port
from tests.support.browser import ARTIFACTS, browser_page, get_json, start_gia, stop_process, wait_http

pytestmark = [pytest.mark.browser, pytest.mark.modbus, pytest.mark.slow]


@pytest.fixture(scope="module")
def area_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("demo-area")
    port = free_port()
    log = d / "demo.log"
    state = d / "state"
    proc = start_gia(
        ["demo", "--area", "--dir", str(state), "--http", f"127.0.0.1:{port}", "--backfill", "62"], cwd=d, log=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/healthz", 150, proc, log)
        yield {"base": base, "state": state, "log": log}
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]


def test_the_demo_builds_and_verifies_the_last_closed_months_area_report(area_demo: dict[str, Any]) -> None:
    text = area_demo["log"].read_text()
    line = next(x for x in text.splitlines() if x.startswith("area report demo-area"))
    assert "3 sites summed, 0 missing" in line and "signed by the hub and verifies offline" in line, line
    month = line.split()[3].rstrip(":")
    state: Path = area_demo["state"]
    # and a certifier re-checks it with `gia verify`: the area report, the three site reports, the pinned keys
    sites = state / "certifier" / "sites"
    sites.mkdir(parents=True)
    pems = b""
    for s in ("demo-a", "demo-b", "demo-c"):
        (sites / f"{s}.json").write_bytes((state / s / f"report-{month}.json").read_bytes())
        pems += KeyStore(state / s / "keys", create=False).public_info()["public_key_pem"].encode()
    (state / "certifier" / "keys.pem").write_bytes(pems)
    status, key = get_json(area_demo["base"] + "/api/v1/hub/key", timeout=30)  # a loaded CI machine: 2 s timed out once
    assert status == 200
    (state / "certifier" / "hub.pem").write_text(key["public_key_pem"])
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "verify", str(state / f"area-{month}.json"), "--public-key",
         str(state / "certifier" / "hub.pem"), "--trusted-keys", str(state / "certifier" / "keys.pem"),
         "--evidence", str(sites)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and f"OK area demo-area {month}" in out.stdout, out.stdout + out.stderr


async def test_a_certifier_signs_in_sees_the_matrix_and_verifies_a_downloaded_report(
    area_demo: dict[str, Any], tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base, state = area_demo["base"], area_demo["state"]
    token = (state / "certifier-token").read_text().strip()
    async with browser_page() as (page, _traffic, errors):
        await page.goto(base + "/", wait_until="load")  # a viewer on loopback: the matrix, and a way to sign in
        await page.wait_for_function("() => window.giaPortal && window.giaPortal.ready", timeout=20_000)
        assert await page.locator("#sign-in").is_visible()
        await page.click("#sign-in")
        await page.fill("input[name=token]", token)
        await page.click("button[type=submit]")
        await page.wait_for_function("() => window.giaPortal && window.giaPortal.ready", timeout=20_000)
        assert "demo-certifier (certifier, viewer)" in (await page.locator("#who").text_content() or "")
        # the matrix: a row per month, the area report with its criteria, a cell per site
        rows = page.locator("#matrix tbody tr[data-month]")
        assert await rows.count() >= 2
        newest = page.locator("#matrix td.area:has(.criteria)").first  # the last closed month
        assert await newest.locator(".criteria li").count() == 7  # the demo area's criteria set
        assert await newest.locator(".criteria li.met").count() >= 5
        month = await newest.get_attribute("data-month")
        await page.screenshot(path=str(ARTIFACTS / "hub-portal-matrix.png"), full_page=True)
        # drill down to a consumer's month and download its signed report
        await page.click(f'#matrix td.cell[data-site="demo-b"][data-month="{month}"]')
        link = page.locator("#detail a.download-report").first
        await link.wait_for(timeout=10_000)
        async with page.expect_download() as info:
            await link.click()
        download = await info.value
        target = tmp_path / "demo-b.json"
        await download.save_as(str(target))
        await page.screenshot(path=str(ARTIFACTS / "hub-portal-detail.png"), full_page=True)
        assert await page.locator("#refusals .refusal-group").count() == 4
        assert errors == []
    doc = json.loads(target.read_bytes())
    assert (doc["site"]["id"], doc["period"]["month"]) == ("demo-b", month)
    pinned = tmp_path / "demo-b.pem"
    pinned.write_text(KeyStore(state / "demo-b" / "keys", create=False).public_info()["public_key_pem"])
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "verify", str(target), "--public-key", str(pinned)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and f"OK demo-b {month}" in out.stdout and "grade verified" in out.stdout, out.stdout
