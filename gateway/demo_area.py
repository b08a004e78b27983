"""`gia demo --area`: three simulated sites of one industrial area and their hub, state in `./gia-demo-area/`.

* `demo-a` is the demo site (PV, a 2 MW wind turbine, two halls, a battery): the producer whose turbine is
  the area's shared wind park, allocated hour by hour pro rata to the three sites' consumption;
* `demo-b` and `demo-c` are consumers: two halls behind a grid meter (`drivers/sim/area.py`), different
  sizes and noise;
* the hub runs on SQLite in `gia-demo-area/hub/` with its portal on `--http` (viewable without a token
  on loopback; a certifier token is written to `gia-demo-area/certifier-token`); the sites push their
  closed months and key transitions to it over HTTP on loopback (the `hub:` room), no external server.

Every file is written again on each start (`hub.yaml`, `<site>/gia.yaml`); ledgers, keys, tokens and the
hub's database stay. With `--backfill DAYS` each empty ledger first gets DAYS of simulated history; then
the last month that has closed is reported by every site, ingested by the hub, and its area report is
built, signed, appended to the log and verified offline (the result is printed and written to
`gia-demo-area/area-YYYY-MM.json`) before the live part starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from drivers.maps import load_map
from drivers.model import QUANTITIES, Sample, from_ms, is_counter
from drivers.sim.area import ConsumerSite
from drivers.sim.server import SimServer, free_tcp_port
from drivers.sim.site import LATITUDE, LONGITUDE, TIMEZONE, DemoDevice, DemoSite, demo_devices

log = logging.getLogger(__name__)

AREA = "demo-area"
SITES = ("demo-a", "demo-b", "demo-c")
POLL_INTERVAL_S = 5.0
STEP = timedelta(minutes=5)
QUANTITIES_KEPT = ("power_w", "energy_import_wh", "energy_export_wh")


@dataclass(frozen=True)
class AreaDemoOptions:
    directory: Path = Path("gia-demo-area")
    http: str = "127.0.0.1:8090"
    speed: float = 1.0
    backfill_days: float = 0.0


def models() -> dict[str, DemoSite]:
    return {
        "demo-a": DemoSite(seed=1),
        "demo-b": ConsumerSite(seed=2, scale=1.6),
        "demo-c": ConsumerSite(seed=3, scale=0.7),
    }


def site_devices(site: str) -> list[DemoDevice]:
    """demo-a: every demo device; the consumers: the grid meter (import only) and the two halls, their
    rated powers scaled with their load."""
    devices = demo_devices()
    if site == "demo-a":
        return devices
    scale = models()[site].scale  # type: ignore[attr-defined]
    out = []
    for d in devices:
        if d.id == "grid":
            out.append(DemoDevice(d.id, d.map, d.device_class, d.unit_id, d.channels[:1], d.description))
        elif d.id in ("hall-a", "hall-b"):
            chans = tuple(
                {**c, "rated_power_w": math.ceil(float(c["rated_power_w"]) * max(1.0, scale))} for c in d.channels
            )
            out.append(DemoDevice(d.id, d.map, d.device_class, d.unit_id, chans, d.description))
    return out


def area_definition() -> dict[str, Any]:
    return {
        "id": AREA,
        "name": "GIA demo area (simulated)",
        "timezone": TIMEZONE,
        "deadline_days": 10,
        "shared_generators": [
            {"id": "wind-park", "site": "demo-a", "channel": "wind.generation", "allocation": "hourly_pro_rata"}
        ],
        "criteria": [
            {"name": "renewable_share", "basis": "market", "threshold": "0.5"},
            {"name": "renewable_share", "basis": "hourly", "threshold": "0.5"},
            {"name": "renewable_share", "basis": "physical", "threshold": "0.3"},
            {"name": "co2_intensity", "basis": "location", "threshold": "50"},
            {"name": "co2_intensity", "basis": "market", "threshold": "30"},
            {"name": "verified_consumption_share", "threshold": "0.95"},
            {"name": "data_completeness", "threshold": "1"},
        ],
    }


def _loopback(listen: str) -> bool:
    return listen.rpartition(":")[0].strip("[]") in ("127.0.0.1", "::1", "localhost")


def _secret_file(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def write_hub_config(opts: AreaDemoOptions) -> Path:
    d = opts.directory
    token_file = d / "certifier-token"
    if not token_file.exists():
        _secret_file(token_file, secrets.token_hex(32))
    http: dict[str, Any] = {
        "listen": opts.http,
        "tokens": [
            {"name": "demo-certifier", "token_file": "certifier-token", "roles": ["certifier"], "areas": [AREA]}
        ],
    }
    if _loopback(opts.http):
        http["anonymous_viewer_on_loopback"] = True
    cfg = {"hub": {"data_dir": "hub", "http": http, "areas": [area_definition()], "area_check_s": 30}}
    path = d / "hub.yaml"
    path.write_text(
        "# Written by `gia demo --area` on every start: edits here are overwritten.\n" + yaml.safe_dump(cfg)
    )
    return path


def write_site_config(opts: AreaDemoOptions, site: str, urls: dict[str, str]) -> Path:
    d = opts.directory / site
    port = opts.http.rpartition(":")[2]
    cfg: dict[str, Any] = {
        "site": {
            "id": site,
            "name": f"GIA demo site {site} (simulated)",
            "area": AREA,
            "timezone": TIMEZONE,
            "location": {"latitude": LATITUDE, "longitude": LONGITUDE},
        },
        "data_dir": ".",
        "devices": [
            {
                "id": dev.id,
                "driver": "modbus",
                "connection": urls[dev.id],
                "unit_id": dev.unit_id,
                "map": dev.map,
                "poll_interval_s": POLL_INTERVAL_S,
                "timeout_s": 2.0,
                "serial": f"{site.upper()}-{dev.id.upper()}",
                "channels": [dict(ch) for ch in dev.channels],
            }
            for dev in site_devices(site)
        ],
        "http": {"enabled": False},
        "certification": {"hourly_profiles": True},
        "hub": {"url": f"http://127.0.0.1:{port}", "token_file": "hub.token", "poll_s": 30, "retry_max_s": 30},
    }
    path = d / "gia.yaml"
    path.write_text(
        "# Written by `gia demo --area` on every start: edits here are overwritten.\n" + yaml.safe_dump(cfg)
    )
    return path


def backfill(ledger: Any, model: DemoSite, devices: Sequence[DemoDevice], *, days: float, until: datetime) -> int:
    """`days` of simulated history at 5-minute steps for the site's own devices (power and registers)."""
    start = max(until - timedelta(days=days), model.epoch).replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % 5)
    ids = {d.id for d in devices}
    t, added, batch = start, 0, []
    while t < until:
        for dev, values in model.state_at(t).items():
            if dev not in ids:
                continue
            for q in QUANTITIES_KEPT:
                v = values.get(q)
                if v is not None:
                    value: float | int = int(v) if is_counter(q) else round(float(v), 3)
                    batch.append(Sample(dev, q, value, QUANTITIES[q].unit, t))
        if len(batch) >= 20_000:
            added += len(batch)
            ledger.append(batch)
            batch = []
        t += STEP
    if batch:
        added += len(batch)
        ledger.append(batch)
    return added


def _newest(ledger: Any) -> datetime | None:
    ms = ledger.newest_ts_ms()
    return from_ms(ms) if ms is not None else None


def prepare(opts: AreaDemoOptions) -> dict[str, Any]:
    """Keys, enrolments and history (synchronous: before anything runs). Returns what `run` needs."""
    from gateway.certification.signing import KeyStore, public_pem
    from gateway.certification.sitekeys import ensure_site_key
    from gateway.hub.config import load_hub_settings
    from gateway.hub.store import HubStore
    from gateway.ledger.store import Ledger

    d = opts.directory
    now = datetime.now(UTC)
    newest: list[datetime] = []
    for site in SITES:
        sd = d / site
        sd.mkdir(parents=True, exist_ok=True)
        ensure_site_key(sd / "keys", sd / "ledger.db", site=site)
        ledger = Ledger(sd / "ledger.db")
        try:
            n = _newest(ledger)
            if opts.backfill_days > 0 and n is None:
                print(f"backfill: {site}, {opts.backfill_days:g} days ...", file=sys.stderr, flush=True)
                added = backfill(ledger, models()[site], site_devices(site), days=opts.backfill_days, until=now)
                log.info("backfill %s: %d samples", site, added)
                n = _newest(ledger)
            if n is not None:
                newest.append(n)
        finally:
            ledger.close()
    settings = load_hub_settings(write_hub_config(opts))
    store = HubStore.open(settings.hub)
    try:
        have = {s.site for s in store.sites()}
        for site in SITES:
            token_file = d / site / "hub.token"
            if site in have and token_file.exists():
                continue
            if site in have:
                raise RuntimeError(
                    f"{site} is enrolled at the demo hub but {token_file} is gone: delete {d} to start over"
                )
            pem = public_pem(KeyStore(d / site / "keys", create=False).public_key()).encode()
            _secret_file(token_file, store.enroll(site, AREA, pem).token)
    finally:
        store.close()
    origin = max([now, *(n + timedelta(seconds=1) for n in newest)])
    return {"settings": settings, "origin": origin, "now": now}


def last_closed_area_report(opts: AreaDemoOptions, configs: dict[str, Any], hub: Any, now_ms: int) -> str:
    """Close the sites' settled months, let the hub decide them, build the last closed month's area report
    and verify it offline from the site reports and the pinned keys; returns a summary line."""
    from gateway.certification.area import SiteInput, verify_area
    from gateway.certification.periods import shift_month
    from gateway.certification.service import ReportService
    from gateway.certification.signing import KeyStore, public_pem
    from gateway.hub.areas import AreaReports
    from gateway.hub.ingest import Ingestor
    from gateway.hub.store import HubStore

    local = from_ms(now_ms).astimezone(ZoneInfo(TIMEZONE))
    this = f"{local.year:04d}-{local.month:02d}"
    months = [shift_month(this, -2), shift_month(this, -1)]
    closed: dict[str, dict[str, bytes]] = {}
    announcements: dict[str, bytes] = {}
    for site, cfg in configs.items():
        svc = ReportService(cfg.settings, cfg.site, now_ms=lambda: now_ms)
        closed[site] = {m: data for m in months if (data := svc.closed_report_json(site, m)) is not None}
        announcements[site] = svc.key_transitions_json()
    common = [m for m in months if all(m in c for c in closed.values())]
    if not common:
        return "no month has closed at every site yet (backfill more days): no area report yet"
    month = common[-1]
    settings = hub
    store = HubStore.open(settings.hub)
    try:
        ing = Ingestor(store, max_bytes=settings.hub.max_report_bytes)
        for site in SITES:
            # what each site's hub room would push first (in-process here, so the result is printed before the
            # live part starts): its key announcement and its closed months; its cursor then moves past them
            ing.submit_key_transition(site, announcements[site], via="http")
            for m, data in _closings(opts.directory / site):
                out = ing.submit_report(site, data, via="http")
                if out.status != "accepted":
                    log.warning("hub: %s %s %s: %s", site, m, out.status, "; ".join(out.reasons[:2]))
            _advance_cursor(opts.directory / site)
        built = AreaReports(store).build_month(AREA, month, force=True)
        assert built is not None
        hub_key = store.keys.public_key()
    finally:
        store.close()
    # the keys the hub pinned at enrolment (the sites' own public keys), never anything inside a report
    inputs = [
        SiteInput(
            s, closed[s][month], public_pem(KeyStore(opts.directory / s / "keys", create=False).public_key()).encode()
        )
        for s in SITES
    ]
    body = json.loads(built.data)
    outcome = verify_area(body, inputs, aggregator_key=hub_key)
    target = opts.directory / f"area-{month}.json"
    target.write_bytes(built.data)
    for s in SITES:
        (opts.directory / s / f"report-{month}.json").write_bytes(closed[s][month])
    met = [c for c in body["criteria"] if c["met"]]
    state = "verifies offline" if outcome.ok else f"DOES NOT VERIFY: {outcome.failures[:2]}"
    return (
        f"area report {AREA} {month}: {len(body['sites'])} sites summed, {len(body['missing'])} missing, criteria met"
        f" {len(met)}/{len(body['criteria'])}, log leaf {built.log_index}; signed by the hub and {state} -> {target}"
    )


def _closings(site_dir: Path) -> list[tuple[str, bytes]]:
    """(month, report) of every closing in the site's events chain, in chain order (what the room pushes)."""
    import sqlite3

    from gateway.certification.archive import ReportArchive

    db = sqlite3.connect(f"file:{site_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT detail FROM events WHERE kind = 'report_closed' ORDER BY id").fetchall()
    finally:
        db.close()
    archive = ReportArchive(site_dir / "ledger.db")
    out = []
    for (detail,) in rows:
        d = json.loads(detail)
        data = archive.by_sha(str(d["report_sha256"]))
        if data is not None:
            out.append((str(d["month"]), data))
    return out


def _advance_cursor(site_dir: Path) -> None:
    """The site's hub-room cursor past every event delivered above (the room pushes only what follows)."""
    import sqlite3

    from gateway.hubpush.pusher import STATE_FILE

    db = sqlite3.connect(f"file:{site_dir / 'ledger.db'}?mode=ro", uri=True)
    try:
        head = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
    finally:
        db.close()
    (site_dir / STATE_FILE).write_text(json.dumps({"events": int(head)}) + "\n")


async def _servers(site: str, model: DemoSite, now: Any) -> tuple[list[SimServer], dict[str, str]]:
    servers, urls = [], {}
    for dev in site_devices(site):
        url = f"tcp://127.0.0.1:{free_tcp_port()}"

        def values(dev_id: str = dev.id) -> Any:
            return model.state_at(now())[dev_id]

        server = SimServer(load_map(dev.map), listen=url, unit_ids=[dev.unit_id], values=values)
        await server.start()
        servers.append(server)
        urls[dev.id] = url
    return servers, urls


async def run_area_demo(opts: AreaDemoOptions) -> None:
    from gateway.agent import Agent
    from gateway.hub.service import Hub
    from gateway.runtime.backup import BackupError, agent_running
    from gateway.runtime.clock import Clock, ScaledClock, WallClock
    from gateway.runtime.runner import run_until_signal
    from gateway.settings import load_config

    d = opts.directory.resolve()
    opts = AreaDemoOptions(d, opts.http, opts.speed, opts.backfill_days)
    for site in SITES:
        if agent_running(d / site):
            raise BackupError(f"another gia agent is running on {d / site}; stop it first (or use --dir)")
    d.mkdir(parents=True, exist_ok=True)
    ready = await asyncio.to_thread(prepare, opts)
    origin, now = ready["origin"], ready["now"]
    clock: Clock = WallClock() if opts.speed == 1 and origin <= now else ScaledClock(speed=opts.speed, origin=origin)
    sims = models()
    servers: list[SimServer] = []
    try:
        configs: dict[str, Any] = {}
        for site in SITES:
            started, urls = await _servers(site, sims[site], clock.now)
            servers += started
            configs[site] = load_config(write_site_config(opts, site, urls))
        if opts.backfill_days > 0:
            summary = await asyncio.to_thread(
                last_closed_area_report, opts, configs, ready["settings"], int(clock.now().timestamp() * 1000)
            )
            print(summary, file=sys.stderr, flush=True)
        hub = Hub(ready["settings"])
        agents = [Agent(configs[s], clock=clock) for s in SITES]
        print(
            f"\nGIA area demo: area '{AREA}', sites {', '.join(SITES)} (simulated), hub on SQLite\n"
            f"  portal:     http://{opts.http}/  (certifier token: {d / 'certifier-token'})\n"
            f"  hub config: {d / 'hub.yaml'}  (gia hub ... --config it); sites: {d}/<site>/gia.yaml\n"
            "  Ctrl-C stops the demo.\n",
            file=sys.stderr,
            flush=True,
        )

        async def main() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(hub.run(), name="hub")
                for a in agents:
                    tg.create_task(a.run(), name=f"agent-{a.config.site.id}")

        def stop() -> None:
            hub.request_http_stop()
            for a in agents:
                a.request_stop()

        await run_until_signal(main, on_stop=stop)
    finally:
        for server in servers:
            await server.stop()


__all__ = ["AreaDemoOptions", "run_area_demo"]
