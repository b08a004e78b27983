"""Fixture builders: ledgers made of real `Sample`s appended to a real `Ledger`, settings, a fixed clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drivers.config import ChannelConfig, ModbusDeviceConfig
from drivers.model import Sample
from gateway.certification.service import ReportService
from gateway.ledger.store import Ledger
from gateway.settings import Settings, SiteConfig
from gateway.site.resolve import resolve_site

RIGA = "Europe/Riga"
# March 2025 in Riga: 2025-02-28T22:00Z .. 2025-03-31T21:00Z (743 h, DST starts 30 March)
MARCH_START = datetime(2025, 2, 28, 22, tzinfo=UTC)
MARCH_END = datetime(2025, 3, 31, 21, tzinfo=UTC)
Q15 = timedelta(minutes=15)


def ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def register_samples(
    device: str,
    quantity: str,
    start: datetime,
    end: datetime,
    *,
    step: timedelta = Q15,
    value: Callable[[int, datetime], int | None],
) -> list[Sample]:
    """One reading per `step` in [start, end]; `value(k, ts)` returns the register or None (no reading)."""
    out = []
    k = 0
    ts = start
    while ts <= end:
        v = value(k, ts)
        if v is not None:
            out.append(Sample(device, quantity, v, "Wh", ts))
        k += 1
        ts += step
    return out


def make_ledger(path: Path, samples: Iterable[Sample]) -> Ledger:
    led = Ledger(path)
    led.append(sorted(samples, key=lambda s: s.ts))
    return led


def channel(role: str, quantity: str = "energy_import_wh", **kw: Any) -> ChannelConfig:
    return ChannelConfig(role=role, quantity=quantity, **kw)


def device(dev_id: str, *channels: ChannelConfig, serial: str | None = None) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(
        id=dev_id, connection="tcp://127.0.0.1:502", sunspec=True, serial=serial, channels=list(channels)
    )


def settings(
    data_dir: Path,
    devices: list[ModbusDeviceConfig],
    *,
    site: str = "s1",
    location: dict[str, float] | None = None,
    certification: dict[str, Any] | None = None,
) -> Settings:
    return Settings(
        site=SiteConfig(id=site, timezone=RIGA, location=location),
        data_dir=data_dir,
        devices=devices,
        certification=certification or {},
    )


def site_key(s: Settings) -> None:
    """Give the site a signing key the way an operator does (`gia keys rotate`), announced in the events
    chain: a service never creates one for a ledger that already holds readings."""
    from gateway.certification.sitekeys import rotate_site_key

    if not (s.data_dir / "keys" / "site-ed25519.pem").exists():
        rotate_site_key(s.data_dir / "keys", s.ledger_path, site=s.site.id, reason="test site key")


def service(s: Settings, *, now: datetime = datetime(2025, 6, 1, tzinfo=UTC)) -> ReportService:
    site_key(s)
    return ReportService(s, resolve_site(s, base_dir=Path.cwd()), now_ms=lambda: ms(now))


def constant_400w(k: int, ts: datetime) -> int:
    """100 Wh per 15 minutes (400 W) from 1000 Wh at k=0."""
    return 1000 + 100 * k
