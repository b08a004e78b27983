"""The page's energy balance and flow history from register readings in a real (temporary) ledger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.model import Quality, Sample, to_ms
from gateway.api.app import ApiServices, create_app
from gateway.api.auth import Authenticator
from gateway.api.summary_routes import add_summary_routes
from gateway.ledger.store import Ledger
from gateway.runtime.live import LiveState
from gateway.site.balance import (
    energy_summary,
    flow_history,
    indicators,
    period_starts,
    register_balance,
    site_layout,
)
from gateway.site.channels import ChannelSpec, channel_specs


def Channel(
    id: str,
    device: str,
    quantity: str,
    role: str,
    source: str | None = None,
    renewable: bool | None = None,
    modulus: int | None = None,
) -> ChannelSpec:
    return ChannelSpec(id, role, device, quantity, source=source, renewable=renewable, register_modulus_wh=modulus)


T0 = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)
CHANNELS = [
    Channel("grid.grid_import", "grid", "energy_import_wh", "grid_import"),
    Channel("grid.grid_export", "grid", "energy_export_wh", "grid_export"),
    Channel("pv.generation", "pv", "energy_export_wh", "generation", source="pv", renewable=True),
    Channel("wind.generation", "wind", "energy_export_wh", "generation", source="wind", renewable=True),
    Channel("bat.storage_charge", "bat", "energy_import_wh", "storage_charge", modulus=6_553_600),
    Channel("bat.storage_discharge", "bat", "energy_export_wh", "storage_discharge", modulus=6_553_600),
    Channel("hall.consumption", "hall", "energy_import_wh", "consumption"),
]


def sample(dev: str, q: str, v: int | None, t: datetime, quality: Quality = Quality.GOOD) -> Sample:
    return Sample(dev, q, v, "Wh", t, Quality.INVALID if v is None else quality)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ledger.db", synchronous="NORMAL")
    yield led
    led.close()


def fill(ledger: Ledger, *, hours: int, step_min: int = 15) -> None:
    """A site at constant power: import 100 kW, export 0, PV 20 kW, wind 50 kW, battery charging 10 kW.

    Consumption = 100 + 20 + 50 - 10 = 160 kW. The battery charge register wraps near 6553.6 kWh.
    """
    samples = []
    n = hours * 60 // step_min
    for k in range(n + 1):
        t = T0 + timedelta(minutes=step_min * k)
        h = k * step_min / 60
        samples += [
            sample("grid", "energy_import_wh", int(1_000_000 + 100_000 * h), t),
            sample("grid", "energy_export_wh", 5_000, t),
            sample("pv", "energy_export_wh", int(20_000 * h), t),
            sample("wind", "energy_export_wh", int(7_000_000 + 50_000 * h), t),
            sample("bat", "energy_import_wh", int(6_500_000 + 10_000 * h) % 6_553_600, t),
            sample("bat", "energy_export_wh", 42, t),
            sample("hall", "energy_import_wh", int(160_000 * h), t),
        ]
    ledger.append(samples)


def test_balance_from_register_advances(ledger: Ledger) -> None:
    fill(ledger, hours=12)
    b = register_balance(CHANNELS, ledger, start_ms=to_ms(T0), end_ms=to_ms(T0 + timedelta(hours=10)))
    i = b["indicators"]
    assert i["grid_import_wh"] == 1_000_000
    assert i["grid_export_wh"] == 0
    assert i["generation_by_source_wh"] == {"pv": 200_000, "wind": 500_000}
    assert i["storage_charge_wh"] == 100_000  # across the register wrap
    assert i["consumption_wh"] == 1_600_000 == i["metered_consumption_wh"]
    assert i["renewable_share"] == pytest.approx(700 / 1600, abs=1e-4)
    assert i["self_sufficiency"] == pytest.approx(600 / 1600, abs=1e-4)
    assert b["complete"] and b["warnings"] == []


def test_partial_missing_and_decreasing_registers_are_flagged(ledger: Ledger) -> None:
    fill(ledger, hours=4)
    t = T0 + timedelta(hours=4, minutes=15)
    later = t + timedelta(minutes=1)
    ledger.append([sample("grid", "energy_import_wh", 5, t), sample("grid", "energy_import_wh", None, later)])
    b = register_balance(
        [*CHANNELS, Channel("ghost.consumption", "ghost", "energy_import_wh", "consumption")],
        ledger,
        start_ms=to_ms(T0 - timedelta(hours=1)),
        end_ms=to_ms(later),
    )
    status = {r["id"]: r["status"] for r in b["channels"]}
    assert status["grid.grid_import"] == "register_decreased"  # the invalid reading after it is skipped
    assert status["ghost.consumption"] == "no_data"
    assert status["pv.generation"] == "partial"  # readings start after the period start
    assert not b["complete"]
    assert any("went backwards" in w for w in b["warnings"])
    ind, q = b["indicators"], b["quality"]
    # left out, never a made-up number: unknown, and so is everything computed from it
    assert ind["grid_import_wh"] is None and q["grid_import_wh"] == "unknown"
    assert ind["consumption_wh"] is None and ind["renewable_share"] is None and ind["self_sufficiency"] is None
    assert ind["grid_export_wh"] == 0 and q["grid_export_wh"] == "partial"  # readings start late
    assert q["generation_wh"] == "partial" and ind["generation_by_source_wh"]["pv"] is not None
    assert b["worst_quality"] == "unknown"


def test_meter_restart_is_not_100_percent_renewable(ledger: Ledger) -> None:
    """Finding 2 of issue 21: the grid meter restarted (register went backwards) during a sunny hour.

    Before: grid import counted as 0 Wh and the headline read "100 % renewable"."""
    t1 = T0 + timedelta(hours=1)
    ledger.append(
        [
            sample("grid", "energy_import_wh", 9_000_000, T0),
            sample("grid", "energy_export_wh", 0, T0),
            sample("pv", "energy_export_wh", 0, T0),
            sample("grid", "energy_import_wh", 12, t1),  # restarted meter
            sample("grid", "energy_export_wh", 0, t1),
            sample("pv", "energy_export_wh", 26_000, t1),
        ]
    )
    chans = [c for c in CHANNELS if c.device in ("grid", "pv")]
    b = register_balance(chans, ledger, start_ms=to_ms(T0), end_ms=to_ms(t1))
    assert b["indicators"]["renewable_share"] is None, b["indicators"]
    assert b["quality"]["renewable_share"] == "unknown"
    assert b["indicators"]["generation_wh"] == 26_000 and b["quality"]["generation_wh"] == "good"


def test_stale_closing_reading(ledger: Ledger) -> None:
    fill(ledger, hours=2)
    b = register_balance(CHANNELS, ledger, start_ms=to_ms(T0), end_ms=to_ms(T0 + timedelta(hours=3)))
    assert {r["status"] for r in b["channels"]} == {"stale"}


def test_periods_follow_the_site_time_zone_across_dst() -> None:
    # 2026-03-29 is the spring-forward day in Riga: local midnight is 22:00 UTC the day before (UTC+2).
    now = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)
    starts = period_starts(now, "Europe/Riga")
    assert starts["today"].astimezone(UTC) == datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    assert starts["month"].astimezone(UTC) == datetime(2026, 2, 28, 22, 0, tzinfo=UTC)
    summer = period_starts(datetime(2026, 3, 30, 12, 0, tzinfo=UTC), "Europe/Riga")
    assert summer["today"].astimezone(UTC) == datetime(2026, 3, 29, 21, 0, tzinfo=UTC)


def test_summary_layout_and_history(ledger: Ledger) -> None:
    fill(ledger, hours=6)
    now = T0 + timedelta(hours=5)
    s = energy_summary(CHANNELS, ledger, site="s1", timezone="UTC", now=now, device_classes={"grid": "meter"})
    assert s["today"]["label"] == "2026-03-10" and s["month"]["label"] == "2026-03"
    assert s["month"]["provisional"] is True and s["previous_month"] == "2026-02"
    assert s["today"]["indicators"]["consumption_wh"] == 800_000
    assert s["layout"]["grid"] == {"class": "meter", "flow": "grid", "source": None, "renewable": None}
    assert s["layout"]["bat"]["flow"] == "storage" and s["layout"]["pv"]["source"] == "pv"
    h = flow_history(CHANNELS, ledger, start_ms=to_ms(T0), end_ms=to_ms(now), step_s=3600)
    assert len(h["ts"]) == 5
    assert h["flows"]["grid"] == [100_000.0] * 5  # + import
    assert h["flows"]["storage"] == [-10_000.0] * 5  # + discharge: charging is negative
    assert h["flows"]["consumption"] == [160_000.0] * 5
    assert h["flows"]["generation_wind"] == [50_000.0] * 5
    # Before the first reading there is no interval, not a zero.
    h = flow_history(CHANNELS, ledger, start_ms=to_ms(T0 - timedelta(hours=2)), end_ms=to_ms(T0), step_s=3600)
    assert h["flows"]["grid"] == [None, None]


def test_channels_from_the_demo_config() -> None:
    import tempfile

    from drivers.sim.site import demo_devices
    from gateway.demo import DemoOptions, write_config
    from gateway.settings import load_config

    with tempfile.TemporaryDirectory() as d:
        urls = {dev.id: f"tcp://127.0.0.1:{15020 + i}" for i, dev in enumerate(demo_devices())}
        chans = list(load_config(write_config(DemoOptions(Path(d)), urls)).site.channels)
    by_id = {c.id: c for c in chans}
    assert by_id["grid.grid_import"].register_modulus_wh is None
    assert by_id["battery.storage_charge"].role == "storage_charge"
    # A map that declares a wrapping register (Victron's 16-bit 0.1 kWh counters) gives its modulus.
    from gateway.settings import Settings
    from gateway.site.resolve import resolve_site

    victron = {"id": "bat", "driver": "modbus", "connection": "tcp://127.0.0.1:502", "map": "victron-gx",
               "channels": [{"role": "storage_charge", "quantity": "energy_import_wh"}]}  # fmt: skip
    site = resolve_site(Settings(site={"id": "s"}, devices=[victron]), base_dir=Path("."))
    assert site.channels[0].register_modulus_wh == 6_553_600
    assert by_id["wind.generation"].source == "wind" and by_id["wind.generation"].renewable
    layout = site_layout(chans, {"wind": "wind_turbine"})
    assert layout["wind"]["flow"] == "generation"  # not "auxiliary", its second channel


@given(
    imp=st.integers(0, 10**9),
    exp=st.integers(0, 10**9),
    gen=st.integers(0, 10**9),
    chg=st.integers(0, 10**8),
    dis=st.integers(0, 10**8),
)
@settings(max_examples=200, deadline=None)
def test_indicators_balance(imp: int, exp: int, gen: int, chg: int, dis: int) -> None:
    chans = [c for c in CHANNELS if c.id not in ("hall.consumption", "wind.generation")]
    e = {
        "grid.grid_import": imp,
        "grid.grid_export": exp,
        "pv.generation": gen,
        "bat.storage_charge": chg,
        "bat.storage_discharge": dis,
    }
    i = indicators(e, chans)
    assert i["consumption_wh"] == imp + gen - exp + dis - chg
    if i["renewable_share"] is not None:
        assert i["renewable_share"] >= 0
        assert i["renewable_consumed_on_site_wh"] <= gen


async def test_routes_need_a_viewer_and_validate(ledger: Ledger) -> None:
    fill(ledger, hours=3)
    now = T0 + timedelta(hours=2)
    auth = Authenticator([], anonymous_viewer_on_loopback=True)
    services = ApiServices(site="s1", live=LiveState(), auth=auth, health=lambda: {"status": "ok"})
    app = create_app(services)

    async def summary() -> dict[str, object]:
        return energy_summary(CHANNELS, ledger, site="s1", timezone="UTC", now=now)

    async def history(a: int, b: int, step: int) -> dict[str, object]:
        return flow_history(CHANNELS, ledger, start_ms=a, end_ms=b, step_s=step)

    add_summary_routes(app, auth=auth, summary=summary, history=history, now=lambda: now)
    loopback = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=loopback, base_url="http://gw") as client:
        r = await client.get("/api/v1/summary")
        assert r.status_code == 200 and r.json()["today"]["indicators"]["grid_import_wh"] == 200_000
        r = await client.get("/api/v1/history", params={"hours": 2, "step_s": 3600})
        assert r.status_code == 200 and r.json()["flows"]["grid"] == [100_000.0, 100_000.0]
        r = await client.get("/api/v1/history", params={"hours": 1000})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = await client.get("/api/v1/history", params={"step_s": 1})
        assert r.status_code == 400
    remote = httpx.ASGITransport(app=app, client=("192.0.2.7", 5000))
    async with httpx.AsyncClient(transport=remote, base_url="http://gw") as client:
        r = await client.get("/api/v1/summary")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_namespace_devices_work_too() -> None:
    dev = SimpleNamespace(
        id="m1",
        channels=[SimpleNamespace(id=None, role="consumption", quantity="energy_import_wh", source=None,
                                  renewable=None, multiplier=2, register_modulus_wh=None)],
    )  # fmt: skip
    (ch,) = channel_specs([dev], {})
    assert ch.id == "m1.consumption" and ch.multiplier == 2 and not ch.renewable
