"""Hub test fixtures: real signed site reports (a real ledger, the gateway's ReportService) and the hub's
database on both engines (`hub_db` is parametrised: embedded SQLite and a real PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.certification.signing import KeyStore, public_pem
from gateway.hub.config import AreaConfig, DatabaseConfig, HubConfig
from gateway.hub.store import HubStore
from tests.certification import helpers as h

FEB_START = datetime(2025, 1, 31, 22, tzinfo=UTC)


@dataclass(frozen=True)
class SignedSite:
    """A site with a real ledger and key, and its signed monthly reports as the gateway publishes them."""

    site: str
    keys: KeyStore
    public_pem: bytes
    reports: dict[str, bytes]  # month -> the exact bytes of the signed report
    data_dir: Path

    def resign(self, month: str, **changes: Any) -> bytes:
        """A different report for `month`, validly signed by this site's key (what a site that rebuilt
        its report, or a reissue, would publish)."""
        doc = json.loads(self.reports[month])
        doc.update(changes)
        return json.dumps(self.keys.sign_report(doc), indent=2).encode()

    def as_site(self, site: str, month: str, *, serial: str | None = None) -> bytes:
        """This site's real report for `month` as another site with the same key would sign it: the site id
        and the key's announcement in `key_transitions` (a statement names its site) for `site`, March
        chained to that site's February, the meter serial `serial` (default: one per site)."""
        from gateway.certification.keys import transition_detail

        doc = json.loads(self.reports[month])
        doc["site"]["id"] = site
        private = self.keys.private_key_for_rotation()
        assert private is not None
        transitions = []
        for t in doc["key_transitions"]:
            st = t["statement"]
            detail = transition_detail(
                site=site, new_key=private, old_key=None, old_key_id=None, reason=st["reason"], at=st["at"]
            )
            transitions.append({"event_id": t["event_id"], **detail})
        doc["key_transitions"] = transitions
        for ch in doc["channels"]:
            ch["meter"]["serial"] = serial or f"SN-{site.upper()}"
        if month == "2025-03":
            doc["previous_report_sha256"] = hashlib.sha256(self.as_site(site, "2025-02", serial=serial)).hexdigest()
        return json.dumps(self.keys.sign_report(doc), sort_keys=True).encode()


def build_site(directory: Path, site: str) -> SignedSite:
    samples = h.register_samples("m1", "energy_import_wh", FEB_START, h.MARCH_END + h.Q15, value=h.constant_400w)
    consumption = h.channel("consumption", rated_power_w=1000)
    s = h.settings(directory, [h.device("m1", consumption, serial="SN-1")], site=site)
    h.make_ledger(s.ledger_path, samples).close()
    svc = h.service(s, now=datetime(2025, 4, 5, tzinfo=UTC))
    reports = {m: svc.report_json(site, m) for m in ("2025-02", "2025-03")}
    keys = KeyStore(directory / "keys")
    return SignedSite(site, keys, public_pem(keys.public_key()).encode(), reports, directory)


@pytest.fixture(scope="session")
def mill(tmp_path_factory: pytest.TempPathFactory) -> SignedSite:
    return build_site(tmp_path_factory.mktemp("mill"), "mill")


@pytest.fixture(scope="session")
def intruder_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    """A key nobody enrolled."""
    return KeyStore(tmp_path_factory.mktemp("intruder") / "keys")


@pytest.fixture(params=["sqlite", "postgres"])
def hub_db(request: pytest.FixtureRequest, tmp_path: Path) -> DatabaseConfig:
    if request.param == "sqlite":
        return DatabaseConfig(url=f"sqlite:///{tmp_path / 'hub.db'}")
    db = request.getfixturevalue("postgres_db")
    return DatabaseConfig(url=db.url, password_file=db.password_file)


def hub_config(tmp_path: Path, database: DatabaseConfig, **kw: Any) -> HubConfig:
    return HubConfig(
        data_dir=tmp_path / "hub",
        database=database,
        areas=[AreaConfig(id="zemgale", name="Zemgale")],
        **kw,
    )


@pytest.fixture
def store(tmp_path: Path, hub_db: DatabaseConfig) -> Iterator[HubStore]:
    s = HubStore.open(hub_config(tmp_path, hub_db))
    try:
        yield s
    finally:
        s.close()


# -- an area: a producer with a shared wind turbine and two consumers, with hourly profiles ------------------
AREA_END = h.MARCH_END + h.Q15


def _rate(wh_per_q: int) -> Any:
    return lambda k, ts: 1000 + wh_per_q * k


def uneven(start: datetime, end: datetime) -> list[int]:
    """A register advancing 50 Wh per quarter hour from 18:00 to 06:00 UTC and 250 Wh by day."""
    out, total = [], 1000
    for j in range(int((end - start) / h.Q15) + 1):
        out.append(total)
        total += 250 if 6 <= (start + j * h.Q15).hour < 18 else 50
    return out


AREA_DEFINITION: dict[str, Any] = {
    "shared_generators": [
        {"id": "wind", "site": "p", "channel": "wt.generation", "allocation": "hourly_pro_rata"},
    ],
    "criteria": [
        {"name": "renewable_share", "basis": "market", "threshold": "0.3"},
        {"name": "renewable_share", "basis": "hourly", "threshold": "0.3"},
        {"name": "co2_intensity", "basis": "location", "threshold": "100"},
        {"name": "verified_consumption_share", "threshold": "0.9"},
        {"name": "data_completeness", "threshold": "1"},
    ],
    "deadline_days": 10,
}


def area_site_devices(site: str, start: datetime = FEB_START, end: datetime = AREA_END) -> tuple[list[Any], list[Any]]:
    """(devices, samples) of site p (wind 600 W shared, hall 400 W, export 200 W), b (400 W) or c (uneven)."""
    if site == "p":
        devices = [
            h.device(
                "wt", h.channel("generation", "energy_export_wh", source="wind", renewable=True, rated_power_w=1000),
                serial="WT-P",
            ),
            h.device("hall", h.channel("consumption", rated_power_w=1000), serial="HALL-P"),
            h.device(
                "grid", h.channel("grid_import", rated_power_w=2000),
                h.channel("grid_export", "energy_export_wh", rated_power_w=2000), serial="GRID-P",
            ),
        ]  # fmt: skip
        samples = (
            h.register_samples("wt", "energy_export_wh", start, end, value=_rate(150))
            + h.register_samples("hall", "energy_import_wh", start, end, value=_rate(100))
            + h.register_samples("grid", "energy_export_wh", start, end, value=_rate(50))
            + h.register_samples("grid", "energy_import_wh", start, end, value=_rate(0))
        )
        return devices, samples
    devices = [h.device("grid", h.channel("grid_import", rated_power_w=2000), serial=f"GRID-{site.upper()}")]
    if site == "b":
        value = _rate(100)
    else:
        reg = uneven(start, end)

        def value(k: int, ts: datetime) -> int:
            return reg[k]

    return devices, h.register_samples("grid", "energy_import_wh", start, end, value=value)


def build_area_site(
    directory: Path,
    site: str,
    *,
    start: datetime = FEB_START,
    end: datetime = AREA_END,
    now: datetime = datetime(2025, 4, 5, tzinfo=UTC),
    months: tuple[str, ...] = ("2025-02", "2025-03"),
) -> SignedSite:
    """One of the area's sites with readings from `start` to `end` and `months` closed as of `now`."""
    devices, samples = area_site_devices(site, start, end)
    s = h.settings(directory, devices, site=site, certification={"hourly_profiles": True})
    h.make_ledger(s.ledger_path, samples).close()
    svc = h.service(s, now=now)
    reports = {m: svc.report_json(site, m) for m in months}
    keys = KeyStore(directory / "keys")
    return SignedSite(site, keys, public_pem(keys.public_key()).encode(), reports, directory)


def recent_window(now: datetime | None = None) -> tuple[datetime, datetime, datetime, tuple[str, ...]]:
    """(start, end, now, closed months) for sites run by real agents: readings from just before the civil
    month two months back (Riga) to the last quarter hour; the months that have settled by now."""
    from zoneinfo import ZoneInfo

    from gateway.certification.periods import month_period, shift_month

    now = now or datetime.now(UTC)
    local = now.astimezone(ZoneInfo(h.RIGA))
    this = f"{local.year:04d}-{local.month:02d}"
    months = tuple(m for m in (shift_month(this, -2), shift_month(this, -1)))
    start_ms = month_period(months[0], h.RIGA).start_ms
    start = datetime.fromtimestamp(start_ms / 1000, UTC)
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 15 + 15)
    closed = tuple(m for m in months if month_period(m, h.RIGA).end_ms + 48 * 3_600_000 <= now.timestamp() * 1000)
    return start, end, now, closed


@pytest.fixture(scope="session")
def area_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SignedSite]:
    return {s: build_area_site(tmp_path_factory.mktemp(f"area-{s}"), s) for s in ("p", "b", "c")}
