"""The demo site model: deterministic, physically plausible, counters equal to the power integral."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import Driver
from drivers.config import parse_connection
from drivers.maps import load_map
from drivers.modbus.bus import BusPool
from drivers.modbus.driver import ModbusDriver
from drivers.model import Quality
from drivers.sim.site import BATTERY_W, PV_PEAK_W, WIND_RATED_W, DemoSite, demo_devices, run_demo_servers

T = datetime(2026, 6, 10, 10, 0, tzinfo=UTC)  # a Wednesday, summer


def test_deterministic_in_seed_and_time() -> None:
    a, b = DemoSite(seed=3), DemoSite(seed=3)
    later = T + timedelta(days=2, minutes=7)
    assert a.state_at(later) == b.state_at(later)  # b computed in another order
    assert a.state_at(T) == b.state_at(T)
    assert DemoSite(seed=4).state_at(T) != a.state_at(T)


def test_grid_balance_and_ranges() -> None:
    site = DemoSite(seed=1)
    for h in range(0, 48, 3):
        st = site.state_at(T + timedelta(hours=h))
        balance = st["hall-a"]["power_w"] + st["hall-b"]["power_w"] - st["pv"]["power_w"]
        balance -= st["wind"]["power_w"] + st["battery"]["power_w"]
        assert st["grid"]["power_w"] == pytest.approx(balance, abs=1e-6)
        assert 0 <= st["pv"]["power_w"] <= PV_PEAK_W
        assert st["wind"]["power_w"] <= WIND_RATED_W
        assert abs(st["battery"]["power_w"]) <= BATTERY_W + 1e-6
        assert 0 <= st["battery"]["soc_pct"] <= 100


def test_pv_follows_the_sun_at_riga() -> None:
    site = DemoSite(seed=1)
    assert site.pv_w((T.replace(hour=23)).timestamp()) == 0.0  # night
    noon_june = max(site.pv_w((T.replace(hour=h)).timestamp()) for h in range(8, 13))
    dec = T.replace(month=12, day=15)
    noon_dec = max(site.pv_w((dec.replace(hour=h)).timestamp()) for h in range(8, 13))
    assert noon_june > noon_dec


def test_counters_are_the_integral_of_power_and_monotone() -> None:
    site = DemoSite(seed=2)
    a, b = T, T + timedelta(hours=5, minutes=13, seconds=5)  # a whole number of steps
    c0, c1 = site.counters_at(a), site.counters_at(b)
    integral = {"grid+": 0.0, "grid-": 0.0, "pv": 0.0, "hall-a": 0.0}
    step = 5.0
    t = a
    while t < b:
        p = site.power_at(t + timedelta(seconds=step / 2))
        integral["grid+"] += max(0.0, p["grid"]) * step / 3600
        integral["grid-"] += max(0.0, -p["grid"]) * step / 3600
        integral["pv"] += p["pv"] * step / 3600
        integral["hall-a"] += p["hall-a"] * step / 3600
        t += timedelta(seconds=step)
    # midpoint rule on a piecewise-linear function: exact except at the few kinks (sign changes)
    assert c1["grid.energy_import_wh"] - c0["grid.energy_import_wh"] == pytest.approx(integral["grid+"], abs=5)
    assert c1["grid.energy_export_wh"] - c0["grid.energy_export_wh"] == pytest.approx(integral["grid-"], abs=5)
    assert c1["pv.energy_export_wh"] - c0["pv.energy_export_wh"] == pytest.approx(integral["pv"], abs=1)
    assert c1["hall-a.energy_import_wh"] - c0["hall-a.energy_import_wh"] == pytest.approx(integral["hall-a"], abs=1)
    prev: dict[str, int] = {}
    for minute in range(0, 3 * 24 * 60, 7):
        st = site.state_at(T + timedelta(minutes=minute))
        for dev, values in st.items():
            for q, v in values.items():
                if q.startswith("energy_"):
                    assert isinstance(v, int)
                    assert v >= prev.get(f"{dev}.{q}", 0)
                    prev[f"{dev}.{q}"] = v


def test_before_epoch_is_an_error() -> None:
    with pytest.raises(ValueError, match="starts at"):
        DemoSite().state_at(datetime(2020, 1, 1, tzinfo=UTC))


def test_demo_devices_use_bundled_maps() -> None:
    ids = set()
    for dev in demo_devices():
        m = load_map(dev.map)
        assert m.device_class == dev.device_class
        st = DemoSite().state_at(T)[dev.id]
        assert set(st) <= set(m.quantities()), set(st) - set(m.quantities())
        ids.add(dev.id)
    assert ids == {"grid", "pv", "wind", "hall-a", "hall-b", "battery"}


@pytest.mark.modbus
async def test_demo_servers_serve_the_model() -> None:
    site = DemoSite(seed=5)
    async with run_demo_servers(site, lambda: T) as demo, BusPool() as pool:
        state = site.state_at(T)
        for dev in demo:
            m = load_map(dev.map)
            q = m.options.model_copy(update={"pause_after_connect_s": 0.0, "inter_frame_delay_s": 0.0})
            bus = pool.bus(parse_connection(demo.urls[dev.id]), timeout_s=1.0, options={})
            drv: Driver = ModbusDriver(device_id=dev.id, register_map=m, bus=bus, unit_id=dev.unit_id, quirks=q)
            samples = {s.quantity: s for s in await drv.read(T)}
            assert all(s.quality is Quality.GOOD for s in samples.values()), dev.id
            for qty in ("energy_import_wh", "energy_export_wh"):
                if qty in state[dev.id]:
                    # counters in state_at are what the registers hold: backfill == live reads, exactly
                    assert samples[qty].value == state[dev.id][qty], (dev.id, qty)
            want_power = float(state[dev.id]["power_w"])
            assert samples["power_w"].value == pytest.approx(want_power, abs=max(1.0, abs(want_power) * 1e-6))


@pytest.mark.modbus
async def test_demo_servers_take_another_port_when_theirs_was_taken_meanwhile() -> None:
    """Two demos starting at once both found the stable ports free and one then failed to bind ("Could not
    start listen"; seen as a CI error of a browser test's demo fixture). A port taken between the check and
    the bind now makes that simulator take another free port."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {d.id: port for d in demo_devices()}
        async with run_demo_servers(DemoSite(), lambda: datetime.now(UTC), ports=ports) as servers:
            urls = dict(servers.urls)
    assert len(set(urls.values())) == len(demo_devices())
    assert all(not u.endswith(f":{port}") for u in urls.values()), urls
