"""OCPP 1.6J central system against charge points built on the same `ocpp` library, over loopback
websockets: meter values become samples of the charger's device (session energy included); a charge
point sending garbage is disconnected without disturbing another; unknown ids and wrong passwords are
refused (security profile 1); idle chargers are asked for meter values; charging limits reach the
charger; a charger that disconnects is offline until it is back."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from drivers.base import PermanentError, TransientError
from drivers.model import Quality
from drivers.ocpp.config import OcppDeviceConfig
from drivers.ocpp.driver import OcppDriver
from drivers.services import DriverServices, create_port_driver
from tests.servers import free_port

pytestmark = [pytest.mark.ocpp]
TS = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PASSWORDS = {"CP-1": "correct-horse-battery-1", "CP-2": "correct-horse-battery-2"}


def _iso(dt: datetime | None = None) -> str:
    return (dt or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def sampled(value: str, measurand: str | None = None, unit: str | None = None, **kw: str) -> dict[str, str]:
    sv = {"value": value, **kw}
    if measurand:
        sv["measurand"] = measurand
    if unit:
        sv["unit"] = unit
    return sv


class TestChargePoint(ChargePoint):  # type: ignore[misc]
    """A charger: answers TriggerMessage with fresh meter values, records charging profiles."""

    __test__ = False

    def __init__(self, cp_id: str, ws: ClientConnection) -> None:
        super().__init__(cp_id, ws, response_timeout=5)
        self.register_wh = 0
        self.profiles: list[dict[str, Any]] = []
        self.cleared: list[int | None] = []

    @on(Action.trigger_message)  # type: ignore[misc]
    def on_trigger(self, requested_message: str, **_: Any) -> Any:
        return call_result.TriggerMessage(status="Accepted")

    @after(Action.trigger_message)  # type: ignore[misc]
    async def after_trigger(self, requested_message: str, connector_id: int = 1, **_: Any) -> None:
        await self.meter_values(connector_id, [sampled(str(self.register_wh), context="Trigger")])

    @on(Action.set_charging_profile)  # type: ignore[misc]
    def on_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.profiles.append({"connector_id": connector_id, **cs_charging_profiles})
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)  # type: ignore[misc]
    def on_clear(self, id: int | None = None, **_: Any) -> Any:
        self.cleared.append(id)
        return call_result.ClearChargingProfile(status="Accepted")

    async def meter_values(self, connector_id: int, values: list[dict[str, str]], ts: datetime | None = None) -> None:
        await self.call(
            call.MeterValues(connector_id=connector_id, meter_value=[{"timestamp": _iso(ts), "sampled_value": values}])
        )


@dataclass
class Site:
    url: str
    services: DriverServices
    drivers: dict[str, OcppDriver]


def _auth(cp_id: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{cp_id}:{password}".encode()).decode()}


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    port = free_port()
    listen = f"ws://127.0.0.1:{port}"
    async with DriverServices() as services:
        drivers = {}
        for cp_id, password in PASSWORDS.items():
            secret = tmp_path / f"{cp_id}.secret"
            secret.write_text(password + "\n")
            cfg = OcppDeviceConfig(
                id=cp_id.lower(),
                driver="ocpp",
                charge_point_id=cp_id,
                listen=listen,
                password_file=secret,
                poll_interval_s=0.5,
                stale_after_intervals=2,
                timeout_s=3,
            )
            drv = create_port_driver(cfg, services)
            assert isinstance(drv, OcppDriver)
            drivers[cp_id] = await drv.__aenter__()
        yield Site(listen, services, drivers)


async def plug_in(site: Site, cp_id: str, password: str | None = None) -> tuple[TestChargePoint, asyncio.Task[Any]]:
    ws = await connect(
        f"{site.url}/ocpp/{cp_id}",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        additional_headers=_auth(cp_id, password or PASSWORDS[cp_id]),
    )
    cp = TestChargePoint(cp_id, ws)
    task = asyncio.create_task(cp.start())
    await cp.call(call.BootNotification(charge_point_model="Test", charge_point_vendor="GIA"))
    return cp, task


async def unplug(cp: TestChargePoint, task: asyncio.Task[Any]) -> None:
    await cp._connection.close()
    await asyncio.gather(task, return_exceptions=True)


async def test_meter_values_land_as_samples_with_the_session_energy(site: Site) -> None:
    cp, task = await plug_in(site, "CP-1")
    drv = site.drivers["CP-1"]
    try:
        await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        started = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=1_000_000, timestamp=_iso())
        )
        await cp.meter_values(
            1,
            [
                sampled("1001.75", "Energy.Active.Import.Register", "kWh"),
                sampled("7.2", "Power.Active.Import", "kW"),
                sampled("55", "SoC", "Percent", location="EV"),
                sampled("10.4", "Current.Import", "A", phase="L1"),
            ],
        )
        s = {x.quantity: x for x in await drv.read(TS)}
        assert s["energy_import_wh"].value == 1_001_750  # kWh -> integer Wh
        assert s["power_w"].value == 7200.0
        assert s["soc_pct"].value == 55.0
        assert s["current_l1_a"].value == 10.4
        assert s["session_energy_wh"].value == 1_750  # register - meterStart
        assert s["status"].value == 2  # Charging
        assert all(x.quality is Quality.GOOD for x in s.values())
        # a value queued while the charger was offline, older than the one held, does not go back
        await cp.meter_values(1, [sampled("1000500")], ts=datetime.now(UTC) - timedelta(hours=1))
        await cp.call(
            call.StopTransaction(meter_stop=1_003_000, timestamp=_iso(), transaction_id=started.transaction_id)
        )
        s = {x.quantity: x for x in await drv.read(TS)}
        assert s["energy_import_wh"].value == 1_003_000
        assert s["session_energy_wh"].value == 3_000
    finally:
        await unplug(cp, task)


async def test_garbage_disconnects_only_that_charge_point(site: Site) -> None:
    good, good_task = await plug_in(site, "CP-1")
    bad, bad_task = await plug_in(site, "CP-2")
    try:
        await bad._connection.send("this is not OCPP-J")
        (ended,) = await asyncio.wait_for(asyncio.gather(bad_task, return_exceptions=True), timeout=5)
        assert isinstance(ended, ConnectionClosed) and bad._connection.close_code == 1002
        charger2 = site.drivers["CP-2"].charger
        assert charger2.stats.garbage == 1 and not charger2.connected
        await good.meter_values(1, [sampled("4242", "Energy.Active.Import.Register", "Wh")])
        s = {x.quantity: x.value for x in await site.drivers["CP-1"].read(TS)}
        assert s["energy_import_wh"] == 4242
        with pytest.raises(TransientError, match="not connected"):
            await site.drivers["CP-2"].read(TS)
        # a schema violation is OCPP-J all the same: answered with a CALLERROR and counted, not dropped
        charger1 = site.drivers["CP-1"].charger
        await good._connection.send('[2,"x1","MeterValues",{"connectorId":"one"}]')
        for _ in range(100):
            if charger1.stats.call_errors:
                break
            await asyncio.sleep(0.02)
        assert charger1.stats.call_errors == 1 and charger1.connected and not good_task.done()
    finally:
        await unplug(good, good_task)
        await asyncio.gather(bad_task, return_exceptions=True)


async def test_unknown_ids_and_wrong_credentials_are_refused(site: Site) -> None:
    with pytest.raises(InvalidStatus) as unknown:
        await connect(f"{site.url}/ocpp/CP-9", subprotocols=["ocpp1.6"], additional_headers=_auth("CP-9", "x" * 20))  # type: ignore[list-item]
    assert unknown.value.response.status_code == 404
    for headers in ({}, _auth("CP-1", "wrong-password-123456"), _auth("CP-2", PASSWORDS["CP-1"])):
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{site.url}/ocpp/CP-1", subprotocols=["ocpp1.6"], additional_headers=headers)  # type: ignore[list-item]
        assert refused.value.response.status_code == 401
    assert site.drivers["CP-1"].charger.stats.refused_auth == 3
    assert site.drivers["CP-1"].central.refused_unknown == 1


async def test_an_idle_charger_is_asked_for_its_register(site: Site) -> None:
    cp, task = await plug_in(site, "CP-1")
    drv = site.drivers["CP-1"]
    try:
        cp.register_wh = 55_555
        s = {x.quantity: x for x in await drv.read(TS)}  # no meter values yet: TriggerMessage
        assert s["energy_import_wh"].value == 55_555 and s["energy_import_wh"].quality is Quality.GOOD
        assert drv.triggers == 1
    finally:
        await unplug(cp, task)


async def test_charging_limits_reach_the_charger(site: Site) -> None:
    cp, task = await plug_in(site, "CP-1")
    drv = site.drivers["CP-1"]
    try:
        result = await drv.set_power_limit(11_000.7)
        assert (result.status, result.limit, result.unit) == ("Accepted", 11_000.0, "W")
        profile = cp.profiles[-1]
        assert profile["charging_profile_purpose"] == "TxDefaultProfile"
        assert profile["charging_schedule"]["charging_rate_unit"] == "W"
        assert profile["charging_schedule"]["charging_schedule_period"][0]["limit"] == 11_000.0
        drv.unit = "A"
        result = await drv.set_power_limit(11_000)  # 11000 / (230 V x 3) = 15.94 A -> 15.9 A, rounded down
        assert result.limit == 15.9 and cp.profiles[-1]["charging_schedule"]["charging_rate_unit"] == "A"
        cleared = await drv.set_power_limit(None)
        assert cleared.status == "Accepted" and cp.cleared == [profile["charging_profile_id"]]
        with pytest.raises(ValueError, match="finite"):
            await drv.set_power_limit(float("nan"))
    finally:
        await unplug(cp, task)


async def test_a_charger_that_leaves_is_offline_until_it_is_back(site: Site) -> None:
    drv = site.drivers["CP-1"]
    with pytest.raises(TransientError, match="never connected"):
        await drv.read(TS)
    cp, task = await plug_in(site, "CP-1")
    await cp.meter_values(1, [sampled("100", "Energy.Active.Import.Register", "Wh")])
    assert (await drv.read(TS))[0].value == 100
    await unplug(cp, task)
    for _ in range(100):
        if not drv.charger.connected:
            break
        await asyncio.sleep(0.02)
    with pytest.raises(TransientError, match="last seen"):
        await drv.read(TS)
    cp, task = await plug_in(site, "CP-1")
    try:
        await cp.meter_values(1, [sampled("150", "Energy.Active.Import.Register", "Wh")])
        assert (await drv.read(TS))[0].value == 150
    finally:
        await unplug(cp, task)


def test_config_requires_a_password_and_tls_where_the_profile_says(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs 'password_file'"):
        OcppDeviceConfig(id="c", driver="ocpp", charge_point_id="CP-1")
    with pytest.raises(ValueError, match="wss://"):
        OcppDeviceConfig(id="c", driver="ocpp", charge_point_id="CP-1", security_profile=2, password_file=tmp_path)
    assert OcppDeviceConfig(id="c", driver="ocpp", charge_point_id="CP-1", security_profile=0).password_file is None
    weak = tmp_path / "weak"
    weak.write_text("secret")
    cfg = OcppDeviceConfig(id="c", driver="ocpp", charge_point_id="CP-1", password_file=weak)
    with pytest.raises(PermanentError, match="at least 16"):
        create_port_driver(cfg, DriverServices())


async def test_security_profile_2_serves_tls_with_basic_auth(tmp_path: Path, tls_material: Any) -> None:
    import ssl

    secret = tmp_path / "cp.secret"
    secret.write_text(PASSWORDS["CP-1"])
    port = free_port()
    cfg = OcppDeviceConfig(
        id="cp",
        driver="ocpp",
        charge_point_id="CP-1",
        listen=f"wss://127.0.0.1:{port}",
        security_profile=2,
        password_file=secret,
        tls_cert_file=tls_material.server_cert,
        tls_key_file=tls_material.server_key,
    )
    async with DriverServices() as services:
        drv = create_port_driver(cfg, services)
        assert isinstance(drv, OcppDriver)
        await drv.__aenter__()
        ctx = ssl.create_default_context(cafile=str(tls_material.ca_file))
        ws = await connect(
            f"wss://127.0.0.1:{port}/ocpp/CP-1",
            ssl=ctx,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            additional_headers=_auth("CP-1", PASSWORDS["CP-1"]),
        )
        cp = TestChargePoint("CP-1", ws)
        task = asyncio.create_task(cp.start())
        try:
            await cp.meter_values(1, [sampled("777", "Energy.Active.Import.Register", "Wh")])
            assert (await drv.read(TS))[0].value == 777
        finally:
            await unplug(cp, task)
        with pytest.raises(InvalidStatus):  # TLS does not replace the password
            await connect(f"wss://127.0.0.1:{port}/ocpp/CP-1", ssl=ctx, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
