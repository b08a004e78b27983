"""An OCPP charger connector as a device, and the charging-limit API for the control loop.

`read()` turns the central system's latest meter values of this connector into samples:

* `energy_import_wh` — the connector's Energy.Active.Import.Register (also updated from
  StartTransaction's meterStart and StopTransaction's meterStop). It is monotonic across sessions,
  which is what a certification channel needs: configure the channel on this quantity.
* `session_energy_wh` — register − meterStart of the session in progress (or of the last one);
  resets per session, so it is an instant value, never a channel.
* `power_w` (positive while charging: a charger is a consumer), per-phase power/current/voltage,
  `soc_pct` (SoC, when the car reports it), `frequency_hz`, and `status` (ChargePointStatus code,
  see `STATUS_CODES`).

Quality and availability as for other devices: a charger that is not connected makes `read()` raise
`TransientError` (offline, logged once by the poller); values older than `stale_after_s` are `stale`.
An idle charger sends no meter values between sessions, so when the register is older than that, the
driver asks for fresh ones (TriggerMessage MeterValues, at most once per interval) and waits for them
within half the read's deadline; a charger that does not support it keeps giving stale readings.

`set_power_limit(limit_w)` / `set_power_limit(None)` send SetChargingProfile (TxDefaultProfile,
relative, one period) / ClearChargingProfile to this connector: the actuator the control loop's
envelope will use. No control loop calls it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, Self

from drivers.base import SharedConnection, TransientError
from drivers.model import QUANTITIES, Quality, Sample
from drivers.ocpp.central import (
    STATUS_CODES,
    CentralSystem,
    CentralSystems,
    ChargerState,
    ClearChargingProfile,
    SetChargingProfile,
    TriggerMessage,
    read_password,
)
from drivers.ocpp.config import OcppDeviceConfig
from drivers.pushed import checked_sample

#: Our profile's id and stack level: high enough to sit above a charger's own defaults, one per connector.
PROFILE_ID_BASE: Final = 4700
STACK_LEVEL: Final = 5


@dataclass(frozen=True, slots=True)
class LimitResult:
    """What the charger answered to a limit: Accepted, Rejected, NotSupported (or Unknown for clear)."""

    status: str
    limit: float | None  # in `unit`; None: the limit was cleared
    unit: Literal["W", "A"]


class OcppDriver(SharedConnection):
    """One connector of a charger connected to the gateway's central system."""

    def __init__(
        self,
        *,
        device_id: str,
        central: CentralSystem,
        charger: ChargerState,
        connector_id: int = 1,
        poll_interval_s: float = 10.0,
        stale_after_intervals: int = 3,
        trigger_meter_values: bool = True,
        charging_rate_unit: Literal["W", "A"] = "W",
        phases: int = 3,
        nominal_voltage_v: float = 230.0,
    ) -> None:
        self.device_id = device_id
        self.central = central
        self.charger = charger
        self.connector_id = connector_id
        self.stale_after_s = poll_interval_s * stale_after_intervals
        self.poll_interval_s = poll_interval_s
        self.trigger = trigger_meter_values
        self.unit: Literal["W", "A"] = charging_rate_unit
        self.phases = phases
        self.nominal_voltage_v = nominal_voltage_v
        self.limit: LimitResult | None = None
        self.triggers = 0
        self._last_trigger = -math.inf

    @classmethod
    def from_config(cls, cfg: OcppDeviceConfig, systems: CentralSystems) -> OcppDriver:
        central = systems.server(
            cfg.listen,
            tls_cert_file=cfg.tls_cert_file,
            tls_key_file=cfg.tls_key_file,
            response_timeout_s=cfg.timeout_s,
        )
        password = read_password(cfg.password_file) if cfg.security_profile and cfg.password_file else None
        charger = central.register(cfg.charge_point_id, password=password, heartbeat_s=cfg.heartbeat_interval_s)
        return cls(
            device_id=cfg.id,
            central=central,
            charger=charger,
            connector_id=cfg.connector_id,
            poll_interval_s=cfg.poll_interval_s,
            stale_after_intervals=cfg.stale_after_intervals,
            trigger_meter_values=cfg.trigger_meter_values,
            charging_rate_unit=cfg.charging_rate_unit,
            phases=cfg.phases,
            nominal_voltage_v=cfg.nominal_voltage_v,
        )

    async def __aenter__(self) -> Self:
        await self.central.start()
        return self

    def _connection(self) -> Any:
        conn = self.charger.connection
        if conn is None:
            seen = self.charger.last_seen
            when = "never connected" if seen is None else f"last seen {time.monotonic() - seen:.0f} s ago"
            raise TransientError(
                f"{self.device_id}: charger {self.charger.id} is not connected ({when}); its central system URL"
                f" must end in /{self.charger.id}"
            )
        return conn

    async def _refresh(self) -> None:
        """Ask an idle charger for its meter values and wait a little for them (bounded)."""
        now = time.monotonic()
        if now - self._last_trigger < self.poll_interval_s:
            return
        self._last_trigger = now
        con = self.charger.connector(self.connector_id)
        con.updated.clear()
        self.triggers += 1
        conn = self._connection()
        with contextlib.suppress(TransientError):
            result = await conn.request(TriggerMessage(requested_message="MeterValues", connector_id=self.connector_id))
            if str(getattr(result, "status", "")) != "Accepted":
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.5, self.poll_interval_s / 2)):
                    await con.updated.wait()

    async def read(self, ts: datetime) -> Sequence[Sample]:
        self._connection()
        con = self.charger.connector(self.connector_id)
        register = con.readings.get("energy_import_wh")
        if self.trigger and (register is None or time.monotonic() - register.received > self.stale_after_s):
            await self._refresh()
        now = time.monotonic()
        out: list[Sample] = []
        for quantity, reading in con.readings.items():
            sample = checked_sample(self.device_id, quantity, reading.value, ts)
            if sample.quality is Quality.GOOD and now - reading.received > self.stale_after_s:
                sample = Sample(self.device_id, quantity, sample.value, sample.unit, ts, Quality.STALE)
            out.append(sample)
        register = con.readings.get("energy_import_wh")
        if register is not None and con.session_start_wh is not None:
            end = con.session_end_wh if con.transaction is None and con.session_end_wh is not None else register.value
            if isinstance(end, int) and end >= con.session_start_wh:
                fresh = con.transaction is None or now - register.received <= self.stale_after_s
                quality = Quality.GOOD if fresh else Quality.STALE
                out.append(Sample(self.device_id, "session_energy_wh", end - con.session_start_wh, "Wh", ts, quality))
        if con.status is not None:
            code = STATUS_CODES.get(con.status)
            unit = QUANTITIES["status"].unit
            out.append(
                Sample(self.device_id, "status", code, unit, ts, Quality.GOOD)
                if code is not None
                else Sample(self.device_id, "status", None, unit, ts, Quality.INVALID)
            )
        return out

    def _in_unit(self, limit_w: float) -> float:
        if self.unit == "W":
            return float(max(0, math.floor(limit_w)))
        amps = limit_w / (self.nominal_voltage_v * self.phases)
        return max(0.0, math.floor(amps * 10) / 10)  # 0.1 A steps, rounded down: never above the limit

    async def set_power_limit(self, limit_w: float | None) -> LimitResult:
        """Limit this connector's charging power to `limit_w` (W), or clear our limit with None.

        Raises TransientError when the charger is not connected or does not answer.
        """
        conn = self._connection()
        profile_id = PROFILE_ID_BASE + self.connector_id
        if limit_w is None:
            result = await conn.request(ClearChargingProfile(id=profile_id))
            self.limit = LimitResult(str(getattr(result, "status", "Unknown")), None, self.unit)
            return self.limit
        if not math.isfinite(limit_w) or limit_w < 0:
            raise ValueError(f"limit_w must be a finite number >= 0, not {limit_w!r}")
        limit = self._in_unit(limit_w)
        profile = {
            "charging_profile_id": profile_id,
            "stack_level": STACK_LEVEL,
            "charging_profile_purpose": "TxDefaultProfile",
            "charging_profile_kind": "Relative",
            "charging_schedule": {
                "charging_rate_unit": self.unit,
                "charging_schedule_period": [
                    {"start_period": 0, "limit": limit, **({"number_phases": self.phases} if self.unit == "A" else {})}
                ],
            },
        }
        result = await conn.request(SetChargingProfile(connector_id=self.connector_id, cs_charging_profiles=profile))
        self.limit = LimitResult(str(getattr(result, "status", "Unknown")), limit, self.unit)
        return self.limit
