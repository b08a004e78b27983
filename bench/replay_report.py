"""A replayed month, accounted the way the signed report accounts it, and the signed report itself.

`certified` turns a replay's hourly flows (`bench.replay.Result`) into integer Wh per hour and runs the
certification's own hourly matching on them (`gateway.certification.matching`: storage FIFO with the
month's measured losses, the charge tagged by the site's hourly surplus): the storage-aware share a
certifier would sign for that month. `signed_report` writes those very flows as the registers of a
ledger (grid import/export, wind, PV, battery charge/discharge, read every 15 minutes), builds the signed
monthly report with the gateway's `ReportService` and returns it, so a test or the bench can show the
report's `hourly_matched_share_storage` is the replay's figure, to the digit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.replay import Result
from drivers.config import ChannelConfig, ModbusDeviceConfig
from drivers.model import Sample
from gateway.certification.matching import HourlyInputs, StorageHours, match, matching_indicators
from gateway.certification.periods import month_period


@dataclass(frozen=True)
class HourlyWh:
    """A replay's flows per hour in integer Wh, consistent at the connection point:
    load = import - export + wind + pv + discharge - charge, exactly."""

    load: list[int]
    wind: list[int]
    pv: list[int]
    charge: list[int]
    discharge: list[int]
    grid_import: list[int]
    grid_export: list[int]


def hourly_wh(res: Result) -> HourlyWh:
    load = [round(x) for x in res.hourly_load_w]
    wind = [round(x) for x in res.hourly_wind_w]
    pv = [round(x) for x in res.hourly_pv_w]
    bat = [sum(round(p) for p in ps) for ps in res.hourly_battery_w]
    charge = [max(0, -p) for p in bat]
    discharge = [max(0, p) for p in bat]
    net = [ld - w - s + c - d for ld, w, s, c, d in zip(load, wind, pv, charge, discharge, strict=True)]
    return HourlyWh(load, wind, pv, charge, discharge, [max(0, x) for x in net], [max(0, -x) for x in net])


def certified(res: Result, start: datetime) -> dict[str, Any]:
    """The certification's matching indicators for the replay's hours (one storage unit: the battery)."""
    h = hourly_wh(res)
    n = len(h.load)
    inputs = HourlyInputs(
        int(start.timestamp() * 1000),
        h.load,
        [w + s for w, s in zip(h.wind, h.pv, strict=True)],
        h.grid_import,
        [StorageHours("battery", ("battery.storage_charge",), ("battery.storage_discharge",), h.charge, h.discharge)],
        [0] * n,
    )
    m = match(inputs)
    return {**matching_indicators(m, annual_factor="0.0491"), "storage": m.units[0]}


def _samples(h: HourlyWh, start: datetime) -> list[Sample]:
    """Readings every 15 min from 1 h before `start` to 1 h after the last hour; an hour's energy split
    over its quarters so the four add up to it exactly."""
    regs = {
        ("grid", "energy_import_wh"): h.grid_import,
        ("grid", "energy_export_wh"): h.grid_export,
        ("wind", "energy_export_wh"): h.wind,
        ("pv", "energy_export_wh"): h.pv,
        ("battery", "energy_import_wh"): h.charge,
        ("battery", "energy_export_wh"): h.discharge,
    }
    out: list[Sample] = []
    n = len(h.load)
    for (dev, q), per_hour in regs.items():
        cum = 1_000_000
        for k in range(-4, 4 * n + 5):
            ts = start + timedelta(minutes=15 * k)
            hour, quarter = divmod(k, 4)
            within = per_hour[hour] * quarter // 4 if 0 <= hour < n else 0
            out.append(Sample(dev, q, cum + within, "Wh", ts))
            if quarter == 3 and 0 <= hour < n:
                cum += per_hour[hour]
    return out


def _devices() -> list[ModbusDeviceConfig]:
    def dev(dev_id: str, *channels: ChannelConfig) -> ModbusDeviceConfig:
        return ModbusDeviceConfig(
            id=dev_id,
            connection="tcp://127.0.0.1:502",
            sunspec=True,
            serial=f"REPLAY-{dev_id}",
            channels=list(channels),
        )

    rated = 10_000_000
    return [
        dev(
            "grid",
            ChannelConfig(role="grid_import", quantity="energy_import_wh", rated_power_w=rated),
            ChannelConfig(role="grid_export", quantity="energy_export_wh", rated_power_w=rated),
        ),
        dev(
            "wind",
            ChannelConfig(
                role="generation", quantity="energy_export_wh", source="wind", renewable=True, rated_power_w=rated
            ),
        ),
        dev(
            "pv",
            ChannelConfig(
                role="generation", quantity="energy_export_wh", source="pv", renewable=True, rated_power_w=rated
            ),
        ),
        dev(
            "battery",
            ChannelConfig(role="storage_charge", quantity="energy_import_wh", rated_power_w=rated),
            ChannelConfig(role="storage_discharge", quantity="energy_export_wh", rated_power_w=rated),
        ),
    ]


def signed_report(res: Result, month: str, timezone: str, workdir: Path) -> dict[str, Any]:
    """The signed monthly report of the replayed month (the replay must cover exactly its hours)."""
    from gateway.certification.service import ReportService
    from gateway.certification.signing import canonical
    from gateway.certification.sitekeys import rotate_site_key
    from gateway.ledger.store import Ledger
    from gateway.settings import Settings, SiteConfig
    from gateway.site.resolve import resolve_site

    period = month_period(month, timezone)
    start = datetime.fromtimestamp(period.start_ms / 1000, UTC)
    h = hourly_wh(res)
    if len(h.load) != period.hours:
        raise ValueError(f"the replay covers {len(h.load)} h, {month} in {timezone} has {period.hours}")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(site=SiteConfig(id="replay", timezone=timezone), data_dir=workdir, devices=_devices())
    ledger = Ledger(settings.ledger_path)
    ledger.append(sorted(_samples(h, start), key=lambda s: s.ts))
    ledger.close()
    rotate_site_key(workdir / "keys", settings.ledger_path, site="replay", reason="replayed month")
    now_ms = period.end_ms + 60 * 86_400_000
    svc = ReportService(settings, resolve_site(settings, base_dir=workdir), now_ms=lambda: now_ms)
    data = svc.report_json("replay", month)
    report: dict[str, Any] = json.loads(data)
    assert canonical(report) == data
    return report
