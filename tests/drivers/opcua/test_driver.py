"""The OPC UA driver against a real asyncua server: polling and subscriptions, bad values, deleted nodes,
a half-open connection, one session per server. Each test takes its own turbine of the simulated park."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from drivers.base import DriverError, PermanentError
from drivers.model import Quality, Sample
from drivers.opcua.driver import Mode, OpcuaDriver
from drivers.opcua.session import Endpoint, OpcuaPool
from tests.drivers.opcua.conftest import Park
from tests.support.proxies import TcpProxy

pytestmark = [pytest.mark.opcua, pytest.mark.asyncio(loop_scope="module")]

BAD_SENSOR_FAILURE = 0x808C0000
UNCERTAIN_LAST_USABLE = 0x408F0000
POLL_S = 0.2


def make(park: Park, root: str, mode: Mode, *, url: str | None = None, **kw: object) -> OpcuaDriver:
    options: dict[str, object] = {"poll_interval_s": POLL_S, "stale_after_intervals": 3, **kw}
    return OpcuaDriver(
        device_id=root.lower(),
        node_map=park.map,
        endpoint=Endpoint(url or park.url, timeout_s=float(options.pop("timeout_s", 2.0))),  # type: ignore[arg-type]
        root=root,
        mode=mode,
        pool=options.pop("pool", None),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def by_quantity(samples: Sequence[Sample]) -> dict[str, Sample]:
    return {s.quantity: s for s in samples}


async def read_until(
    driver: OpcuaDriver, pred: Callable[[dict[str, Sample]], bool], what: str, timeout: float = 8.0
) -> dict[str, Sample]:
    deadline = time.monotonic() + timeout
    last: dict[str, Sample] | str = {}
    while time.monotonic() < deadline:
        try:
            last = by_quantity(await driver.read(datetime.now(UTC)))
            if pred(last):
                return last
        except DriverError as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def fixed(park: Park, root: str) -> None:
    """Serve known raw values under `root`, in the server's units (kW, kWh)."""
    for quantity, raw in {
        "power_w": 850.5,
        "energy_export_wh": 3_500_000.123,
        "wind_speed_ms": 8.25,
        "wind_direction_deg": 270.0,
        "rotor_speed_rpm": 14.5,
        "temperature_c": -3.5,
        "status": 2,
    }.items():
        park.sim.set_raw(quantity, raw, root=root)


EXPECTED = {
    "power_w": (850_500.0, "W"),
    "energy_export_wh": (3_500_000_123, "Wh"),
    "wind_speed_ms": (8.25, "m/s"),
    "wind_direction_deg": (270.0, "deg"),
    "rotor_speed_rpm": (14.5, "rpm"),
    "temperature_c": (-3.5, "degC"),
    "status": (2, ""),
}


@pytest.mark.parametrize("mode", ["polling", "subscription"])
async def test_reads_every_quantity_in_si_units(park: Park, mode: Mode) -> None:
    fixed(park, "WTG01")
    values = {q: v for q, (v, _) in EXPECTED.items()}
    async with make(park, "WTG01", mode) as driver:
        got = await read_until(driver, lambda s: {q: x.value for q, x in s.items()} == values, "the served values")
    for quantity, (value, unit) in EXPECTED.items():
        assert (got[quantity].value, got[quantity].unit, got[quantity].quality) == (value, unit, Quality.GOOD)
    assert isinstance(got["energy_export_wh"].value, int) and isinstance(got["status"].value, int)


async def test_a_subscription_follows_changes_and_constant_values_stay_fresh(park: Park) -> None:
    fixed(park, "WTG02")
    async with make(park, "WTG02", "subscription") as driver:
        await read_until(
            driver, lambda s: s.get("power_w") == s["power_w"] and s["power_w"].value == 850_500.0, "first"
        )
        park.sim.set_raw("power_w", 1200.0, root="WTG02")
        await read_until(driver, lambda s: s["power_w"].value == 1_200_000.0, "the change")
        await asyncio.sleep(4 * POLL_S * 3)  # four stale windows: status never changes, keep-alives keep it fresh
        got = by_quantity(await driver.read(datetime.now(UTC)))
        assert got["status"].quality is Quality.GOOD and got["status"].value == 2
        assert driver.stats.notifications > 0 and driver.stats.polls > 2


async def test_bad_values_are_invalid_with_a_reason_and_never_stop_the_others(park: Park) -> None:
    root = "WTG03"
    fixed(park, root)
    park.sim.set_raw("power_w", float("nan"), root=root)
    park.sim.set_raw("wind_speed_ms", 200.0, root=root)  # outside the map's [0, 80]
    park.sim.set_raw("energy_export_wh", "n/a", root=root)
    park.sim.set_status("rotor_speed_rpm", BAD_SENSOR_FAILURE, root=root)
    park.sim.set_status("temperature_c", UNCERTAIN_LAST_USABLE, root=root)
    async with make(park, root, "polling") as driver:
        got = await read_until(driver, lambda s: s["rotor_speed_rpm"].quality is Quality.INVALID, "bad values")
        for q in ("power_w", "energy_export_wh", "rotor_speed_rpm"):
            assert (got[q].value, got[q].quality) == (None, Quality.INVALID), q
        assert got["wind_speed_ms"].quality is Quality.INVALID  # kept as a number, flagged
        assert (got["temperature_c"].value, got["temperature_c"].quality) == (-3.5, Quality.ESTIMATED)
        assert got["status"].quality is Quality.GOOD and got["wind_direction_deg"].quality is Quality.GOOD
        problems = driver.stats.problems
        assert "not finite" in problems["power_w"] and "not a number" in problems["energy_export_wh"]
        assert "BadSensorFailure" in problems["rotor_speed_rpm"] and "range" in problems["wind_speed_ms"]
        fixed(park, root)
        park.sim.set_status("rotor_speed_rpm", None, root=root)
        park.sim.set_status("temperature_c", None, root=root)
        await read_until(driver, lambda s: all(x.quality is Quality.GOOD for x in s.values()), "recovery")
        assert driver.stats.problems == {}


@pytest.mark.parametrize(("root", "notify"), [("WTG04", True), ("WTG05", False)])
async def test_a_deleted_node_becomes_invalid_while_the_others_keep_flowing(
    park: Park, root: str, notify: bool
) -> None:
    """notify: the server reports Bad_NodeIdUnknown (10000-4, 5.7.4.1); without, the periodic re-read finds it."""
    async with make(park, root, "subscription", verify_interval_s=0.3) as driver:
        await read_until(driver, lambda s: len(s) == 7 and all(x.quality is Quality.GOOD for x in s.values()), "good")
        await park.sim.delete("rotor_speed_rpm", root=root, notify=notify)
        got = await read_until(driver, lambda s: s["rotor_speed_rpm"].quality is Quality.INVALID, "invalid")
        assert "BadNodeIdUnknown" in driver.stats.problems["rotor_speed_rpm"]
        before = got["energy_export_wh"].value
        park.sim.set_raw("power_w", 999.0, root=root)
        got = await read_until(driver, lambda s: s["power_w"].value == 999_000.0, "others flowing")
        assert all(x.quality is Quality.GOOD for q, x in got.items() if q != "rotor_speed_rpm")
        assert isinstance(before, int) and got["energy_export_wh"].value >= before
    async with make(park, root, "polling") as driver:  # polling reports it the same way
        got = by_quantity(await driver.read(datetime.now(UTC)))
        assert got["rotor_speed_rpm"].quality is Quality.INVALID and got["power_w"].quality is Quality.GOOD


async def test_a_half_open_connection_goes_stale_then_reconnects(park: Park) -> None:
    port = int(park.url.rsplit(":", 1)[1])
    proxy = await TcpProxy(port).start()
    pool = OpcuaPool(reconnect_max_s=0.5)
    try:
        async with (
            pool,
            make(
                park, "WTG06", "subscription", url=f"opc.tcp://127.0.0.1:{proxy.port}", timeout_s=2.0, pool=pool
            ) as driver,
        ):
            await read_until(driver, lambda s: s["power_w"].quality is Quality.GOOD, "good")
            proxy.blackhole()  # no FIN, no RST: the connection looks alive and says nothing
            got = await read_until(driver, lambda s: s["power_w"].quality is Quality.STALE, "stale", timeout=3)
            assert all(x.quality is Quality.STALE for x in got.values())
            await read_until(driver, lambda s: s["power_w"].quality is Quality.GOOD, "good again", timeout=15)
            assert pool.sessions()[0].stats.connects == 2 and driver.stats.setups == 2
    finally:
        await proxy.stop()


async def test_devices_on_one_server_share_one_session(park: Park) -> None:
    async with OpcuaPool() as pool:
        a, b = make(park, "WTG07", "subscription", pool=pool), make(park, "WTG08", "polling", pool=pool)
        async with a, b:
            await read_until(a, lambda s: len(s) == 7, "a")
            await read_until(b, lambda s: len(s) == 7, "b")
            (session,) = pool.sessions()
            assert session.stats.connects == 1
        assert pool.sessions() == []  # the last device out closes the session


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"root": "WTG99"}, "root 'WTG99' not found"),
        ({"namespace": "urn:somebody-else"}, "no namespace 'urn:somebody-else'"),
    ],
)
async def test_a_map_that_does_not_fit_the_server_is_a_permanent_error(
    park: Park, options: dict[str, str], message: str
) -> None:
    driver = make(park, options.pop("root", "WTG01"), "polling", **options)
    async with driver:
        with pytest.raises(PermanentError, match=message):
            await driver.read(datetime.now(UTC))


async def test_an_unreachable_server_is_a_transient_error_naming_it() -> None:
    from drivers.opcua.nodemap import load_node_map
    from tests.servers import free_port

    url = f"opc.tcp://127.0.0.1:{free_port()}"
    driver = OpcuaDriver(
        device_id="x",
        node_map=load_node_map("iec61400-25-wind-turbine"),
        endpoint=Endpoint(url, timeout_s=0.5),
        mode="polling",
    )
    async with driver:
        with pytest.raises(DriverError, match=f"not connected to {url}.*connection refused"):
            await driver.read(datetime.now(UTC))
