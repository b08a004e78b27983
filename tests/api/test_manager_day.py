"""Issue 21 without a browser: login and roles, report months, history, device setup, config checks, CLI.

Each test names its finding; each failed on the code before the change (no login page, JSON 401 on `/`,
a certifier refused the page, reports for months before the ledger, check-config exit 0 on a channel its
map cannot supply, token files relative to the working directory, `check wiring` on a refused port).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from drivers.model import Quality, Sample, to_ms
from gateway.api.app import ApiServices, create_app
from gateway.api.auth import Authenticator, Principal, TokenEntry
from gateway.api.history_routes import HistorySources, add_history_routes, ledger_trend
from gateway.api.pages import PageSite, add_pages
from gateway.api.sessions import PageAuth, UserStore, check_password, hash_password
from gateway.api.setup_routes import SetupContext, add_setup_routes
from gateway.certification.service import MonthNotCovered, ReportService
from gateway.i18n import Catalogues, from_environment, negotiate
from gateway.ledger.store import Ledger
from gateway.runtime.live import LiveState
from gateway.site.channels import ChannelSpec
from gateway.site.history import period_balances, view_periods
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

ROOT = Path(__file__).resolve().parents[2]
VIEW, CERT, ADMIN = "v" * 40, "c" * 40, "a" * 40
NOW = datetime(2025, 4, 15, tzinfo=UTC)


def _app(tmp_path: Path) -> tuple[Any, ReportService, PageAuth]:
    s = settings(tmp_path, [device("grid", channel("grid_import"), serial="SN1")], site="s1")
    make_ledger(
        s.ledger_path,
        register_samples("grid", "energy_import_wh", MARCH_START, MARCH_END, value=lambda k, _ts: 1_000_000 + 250 * k),
    ).close()
    site = resolve_site(s, base_dir=Path.cwd())
    site_key(s)  # a ledger with history gets its key from `gia keys rotate`, never silently
    service = ReportService(s, site, now_ms=lambda: to_ms(NOW))
    tokens = Authenticator(
        [
            TokenEntry(VIEW.encode(), Principal("viewer", frozenset({"viewer"}), frozenset({"*"}))),
            TokenEntry(CERT.encode(), Principal("cert", frozenset({"certifier"}), frozenset({"s1"}))),
            TokenEntry(ADMIN.encode(), Principal("admin", frozenset({"admin"}), frozenset({"*"}))),
        ],
        anonymous_viewer_on_loopback=False,
    )
    users = UserStore(tmp_path / "users.json")
    users.put("maija", "correct horse battery", ["viewer"], ["*"])
    auth = PageAuth(tokens, users=users)
    app = create_app(
        ApiServices(
            site="s1", live=LiveState(), health=lambda: {"status": "ok", "reasons": []}, reports=service, auth=auth
        )
    )
    add_pages(app, auth=auth, catalogues=Catalogues(), site=PageSite("s1", "Site one", "Europe/Riga", False, ("pv",)))

    async def first() -> int | None:
        led = Ledger(s.ledger_path, readonly=True)
        try:
            return led.first_counter_ms()
        finally:
            led.close()

    async def nothing(*_a: Any) -> dict[str, Any]:
        return {}

    add_history_routes(
        app,
        auth=auth,
        src=HistorySources(
            site="s1",
            timezone="Europe/Riga",
            now=lambda: NOW,
            energy=nothing,
            trend=nothing,
            first_counter_ms=first,
            device_classes={"grid": "meter"},
            instant_retention_days=30,
        ),
    )
    return app, service, auth


def _client(app: Any, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("192.0.2.9", 4000)), base_url="http://gw", **kw
    )


async def test_login_page_roles_and_links(tmp_path: Path) -> None:
    """Finding 3: a browser without a token gets the login page, not raw JSON; a certifier can open the page."""
    app, _service, _auth = _app(tmp_path)
    async with _client(app) as c:
        r = await c.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
        r = await c.get("/api/v1/live")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"  # API clients keep JSON
        r = await c.get("/login", headers={"Accept-Language": "lv,en;q=0.5"})
        assert r.status_code == 200 and 'lang="lv"' in r.text and "Pieteikties" in r.text
        # wrong password: the login page again, in the visitor's language, 401
        r = await c.post("/login", content="user=maija&password=nope&next=/history")
        assert r.status_code == 401 and "gia-boot" in r.text
        r = await c.post("/login", content="user=maija&password=correct+horse+battery&next=/history")
        assert r.status_code == 303 and r.headers["location"] == "/history"
        assert "gia_session" in r.cookies
        r = await c.get("/history", headers={"Accept": "text/html"})
        assert r.status_code == 200 and '"name": "maija"' in r.text
        assert (await c.get("/api/v1/sites/s1/reports/2025-03")).status_code == 403  # a viewer: no reports
        assert (await c.get("/setup", headers={"Accept": "text/html"})).status_code == 403
    async with _client(app) as c:
        r = await c.post("/login", content=f"token={CERT}&next=//evil.example/")
        assert r.status_code == 303 and r.headers["location"] == "/"  # never off-site
        r = await c.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 200 and '"certifier": true' in r.text  # the certifier sees the page + links
        me = (await c.get("/api/v1/me")).json()
        assert me["certifier"] and not me["admin"]
        assert (await c.get("/api/v1/sites/s1/reports/2025-03?format=pdf")).status_code == 200
        months = (await c.get("/api/v1/sites/s1/reports")).json()["months"]
        assert [m["month"] for m in months] == ["2025-04", "2025-03"] and months[0]["state"] == "open"
        r = await c.post("/logout")
        assert r.status_code == 303


async def test_no_report_for_a_month_the_ledger_does_not_cover(tmp_path: Path) -> None:
    """Finding 3: fetching a month before the gateway existed stored an all-zero `unverified` report."""
    app, service, _auth = _app(tmp_path)
    async with _client(app, headers={"Authorization": f"Bearer {CERT}"}) as c:
        r = await c.get("/api/v1/sites/s1/reports/2025-01")
        assert r.status_code == 404 and r.json()["error"] == "no_data"
        assert "2025-03" in r.json()["detail"]
    with pytest.raises(MonthNotCovered):
        service.report_json("s1", "2025-02")
    assert not list(service.reports_dir.rglob("2025-0[12].json"))


def test_password_hashes_and_user_store(tmp_path: Path) -> None:
    h = hash_password("a long enough secret")
    assert h.startswith("scrypt$") and "a long enough secret" not in h
    assert check_password("a long enough secret", h) and not check_password("wrong", h)
    store = UserStore(tmp_path / "u.json")
    store.put("ana", "another long secret", ["admin"], ["*"])
    assert oct((tmp_path / "u.json").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="roles"):
        store.put("x", "another long secret", ["root"], [])


def test_language_negotiation() -> None:
    """Finding 6: the page's language from the switch (cookie), else Accept-Language; the CLI's from LANG."""
    assert negotiate("lv-LV,lv;q=0.9,en;q=0.8") == "lv"
    assert negotiate("de-DE,en;q=0.5,lv;q=0.4") == "en"
    assert negotiate("en;q=0.3, lv;q=0.7") == "lv"
    assert negotiate("lv", chosen="en") == "en"
    assert negotiate(None) == "en"
    assert from_environment({"LANG": "lv_LV.UTF-8"}) == "lv"
    assert from_environment({"LANGUAGE": "lv:en", "LANG": "C.UTF-8"}) == "lv"
    assert from_environment({"LC_ALL": "C", "LANG": "lv_LV.UTF-8"}) == "lv"
    assert from_environment({"LANG": "de_DE.UTF-8"}) == "en"
    lv = Catalogues().get("lv")
    assert lv.number(12345.6, 1) == "12\xa0345,6"
    assert lv("Sign in") == "Pieteikties"


def test_catalogue_has_every_message() -> None:
    """Finding 6: one catalogue; every message of the page, PDF and CLI has a Latvian translation."""
    from tests.i18n.catalogue import extract

    messages = extract()
    assert len(messages) > 200
    lv = Catalogues().get("lv").messages
    missing = {m: where for m, where in messages.items() if not lv.get(m)}
    assert not missing, f"untranslated: {missing}"
    for m, text in lv.items():  # the same {fields} on both sides, or the page shows a raw "{n}"
        import re

        assert set(re.findall(r"\{\w+\}", m)) == set(re.findall(r"\{\w+\}", text)), (m, text)


def test_history_periods_and_trend(tmp_path: Path) -> None:
    """Finding 4: week/month/year from the energy registers; unknown days stay unknown; trend buckets."""
    led = Ledger(tmp_path / "l.db", synchronous="NORMAL")
    t0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
    samples = []
    for k in range(0, 4 * 24 * 4):  # four days at 15 min
        t = t0 + timedelta(minutes=15 * k)
        samples.append(Sample("grid", "energy_import_wh", 1000 * k, "Wh", t))
        samples.append(Sample("grid", "power_w", 4000.0 + k, "W", t))
        if k < 2 * 24 * 4:  # PV stops reporting after two days
            samples.append(Sample("pv", "energy_export_wh", 500 * k, "Wh", t))
    samples.append(Sample("grid", "power_w", None, "W", t0 + timedelta(minutes=1), Quality.INVALID))
    led.append(samples)
    chans = [
        ChannelSpec("grid.grid_import", "grid_import", "grid", "energy_import_wh"),
        ChannelSpec("pv.generation", "generation", "pv", "energy_export_wh", source="pv", renewable=True),
    ]
    now = t0 + timedelta(days=4)
    week = period_balances(chans, led, view="week", anchor=date(2026, 3, 4), timezone="UTC", now=now)
    ps = week["periods"]
    assert [p["label"] for p in ps][:2] == ["2026-03-02", "2026-03-03"] and len(ps) == 7
    assert ps[0]["indicators"]["grid_import_wh"] == 96_000 - 1000 + 1000  # 96 intervals of 1 kWh
    assert ps[0]["quality"]["consumption_wh"] == "good"
    assert ps[3]["indicators"]["generation_wh"] is None or ps[3]["quality"]["generation_wh"] != "good"
    assert ps[4]["state"] == "future"
    year = period_balances(chans, led, view="year", anchor=date(2026, 3, 4), timezone="Europe/Riga", now=now)
    assert [p["label"] for p in year["periods"]][2] == "2026-03"
    assert year["periods"][0]["indicators"]["consumption_wh"] is None  # January: no readings, unknown
    assert len(view_periods("month", date(2026, 2, 10), "Europe/Riga")) == 28
    trend = ledger_trend(led, "grid", "power_w", to_ms(t0), to_ms(t0 + timedelta(hours=4)), 4)
    assert trend["source"] == "ledger" and len(trend["ts"]) == 4 and trend["min"][0] == 4000.0
    led.close()


async def test_device_setup_is_admin_only_checked_backed_up_and_logged(tmp_path: Path) -> None:
    """Finding 5: admin only; the check-config checks; a backup of the previous file; every change logged."""
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(yaml.safe_dump({"site": {"id": "s1"}, "data_dir": "data", "http": {"enabled": False}}))
    app, _service, auth = _app(tmp_path / "app")
    ctx = SetupContext(config_path=cfg, data_dir=tmp_path / "data", pool=None, now=lambda: NOW)
    add_setup_routes(app, auth=auth, ctx=ctx)
    gen = {"role": "generation", "source": "pv", "renewable": True}
    bad = {"id": "pv", "driver": "modbus", "connection": "tcp://127.0.0.1:5020", "map": "huawei-sun2000",
           "channels": [{**gen, "quantity": "energy_import_wh"}]}  # fmt: skip
    async with _client(app, headers={"Authorization": f"Bearer {VIEW}"}) as c:
        assert (await c.post("/api/v1/setup/check", json={"device": bad})).status_code == 403
        assert (await c.get("/api/v1/setup/maps")).status_code == 403
    async with _client(app, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        r = await c.post("/api/v1/setup/check", json={"device": bad})
        assert r.status_code == 200 and not r.json()["ok"]
        assert any("cannot supply 'energy_import_wh'" in p["message"] for p in r.json()["problems"])
        assert (await c.post("/api/v1/setup/save", json={"device": bad})).status_code == 400
        good = {
            **bad,
            "channels": [{"role": "generation", "quantity": "energy_export_wh", "source": "pv", "renewable": True}],
        }
        r = await c.post("/api/v1/setup/save", json={"device": good})
        assert r.status_code == 200, r.text
        backup = Path(r.json()["backup"])
        assert backup.is_file() and "devices" not in yaml.safe_load(backup.read_text())  # noqa: ASYNC240
        assert yaml.safe_load(cfg.read_text())["devices"][0]["id"] == "pv"
        log = (tmp_path / "data" / "config-changes.jsonl").read_text()
        assert '"by": "admin"' in log and '"device": "pv"' in log
        maps = (await c.get("/api/v1/setup/maps")).json()["maps"]
        assert any(m["name"] == "huawei-sun2000" and "energy_export_wh" in m["quantities"] for m in maps)


def _gia(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GIA_", "LANG", "LC_"))}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True
    )


def test_check_config_rejects_a_channel_its_map_cannot_supply(tmp_path: Path) -> None:
    """Finding 1: huawei-sun2000 has no energy_import_wh; check-config said OK and the page said 0 %."""
    cfg = tmp_path / "gia.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "site": {"id": "s1"},
                "data_dir": ".",
                "http": {"enabled": False},
                "devices": [
                    {
                        "id": "pv",
                        "driver": "modbus",
                        "connection": "tcp://127.0.0.1:5020",
                        "map": "huawei-sun2000",
                        "channels": [
                            {"role": "generation", "quantity": "energy_import_wh", "source": "pv", "renewable": True}
                        ],
                    }
                ],
            }
        )
    )
    res = _gia("check-config", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2
    assert "devices[0].channels[0].quantity: pv cannot supply 'energy_import_wh'" in res.stderr
    assert "energy_export_wh" in res.stderr


def test_config_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    """Finding 10: `token_file: viewer-token` resolved against the working directory, not the file."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "viewer-token").write_text("5e1d9c3b7a2f4e6d8c0b1a3f5e7d9c2b\n")
    (site / "gia.yaml").write_text(
        yaml.safe_dump(
            {
                "site": {"id": "s1"},
                "data_dir": "data",
                "http": {"tokens": [{"name": "v", "token_file": "viewer-token", "roles": ["viewer"]}]},
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = _gia("check-config", "--config", str(site / "gia.yaml"), cwd=elsewhere)
    assert res.returncode == 0, res.stderr


def test_scan_of_a_refused_port_says_cannot_connect(tmp_path: Path) -> None:
    """Finding 7: `gia scan` on a refused port blamed wiring; in Latvian with LANG=lv_LV."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        res = _gia("scan", f"tcp://127.0.0.1:{port}", "--units", "1-2", cwd=tmp_path)
        assert res.returncode == 1
        assert "cannot connect" in res.stderr and "wiring" not in res.stderr and "Modbus Error" not in res.stderr
        res = _gia("scan", f"tcp://127.0.0.1:{port}", "--units", "1", cwd=tmp_path, env={"LANG": "lv_LV.UTF-8"})
        assert "nevar savienoties" in res.stderr


def test_scan_snippet_has_roles_data_dir_and_a_working_page(tmp_path: Path) -> None:
    """Finding 10: the snippet `gia scan` prints has channel roles, data_dir and an http section that works."""
    from drivers.maps import load_map
    from drivers.modbus.scan import ScanHit, config_snippet

    maps = {"huawei-sun2000": load_map("huawei-sun2000"), "eastron-sdm630": load_map("eastron-sdm630")}
    text = config_snippet(
        "tcp://127.0.0.1:5020", [ScanHit(1, maps=["huawei-sun2000"]), ScanHit(2, maps=["eastron-sdm630"])],
        maps_by_name=maps,
    )  # fmt: skip
    doc = yaml.safe_load(text)
    assert doc["data_dir"] and doc["http"]["listen"].startswith("127.0.0.1")
    pv, meter = doc["devices"]
    assert pv["channels"] == [{"role": "generation", "quantity": "energy_export_wh", "source": "pv", "renewable": True}]
    assert meter["channels"][0]["role"] == "consumption"
    (tmp_path / "gia.yaml").write_text(text)
    res = _gia("check-config", "--config", str(tmp_path / "gia.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
