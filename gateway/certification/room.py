"""The certification room (section `certification`): the report service the API serves, and the
publisher of the last closed month's signed report (retained on MQTT) when a broker is configured."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from drivers.model import to_ms
from gateway.certification.config import CertificationConfig
from gateway.certification.periods import month_period, shift_month
from gateway.certification.service import ReportService
from gateway.rooms import Part, Room, Services
from gateway.sinks.mqtt.topics import Topics
from gateway.site.resolve import Site

log = logging.getLogger(__name__)


async def _publish_reports(site: Site, services: Services, reports: ReportService) -> None:
    """Publish the signed report of the last closed month (retained) at start and when a month closes."""
    mqtt = services.settings.mqtt
    assert mqtt is not None
    topics = Topics.for_site(mqtt.prefix, site.id)
    clock = services.clock
    published: str | None = None
    while True:
        now = clock.now().astimezone(ZoneInfo(site.timezone))
        last_closed = shift_month(f"{now.year:04d}-{now.month:02d}", -1)
        if last_closed != published:
            try:
                body = await asyncio.to_thread(reports.report_json, site.id, last_closed)
            except Exception as exc:  # no readings yet, ledger busy: try again later
                log.warning("report %s not published: %s", last_closed, exc)
            else:
                services.retained.put(topics.report(last_closed), body)
                published = last_closed
                log.info("published signed report %s", last_closed)
        nxt = month_period(shift_month(last_closed, 2), site.timezone).start_ms
        wait_s = min(3600.0, max(60.0, (nxt - to_ms(clock.now())) / 1000))
        await asyncio.sleep(wait_s / getattr(clock, "speed", 1.0))


async def parts(site: Site, services: Services) -> Sequence[Part]:
    clock = services.clock
    reports = ReportService(services.settings, site, now_ms=lambda: to_ms(clock.now()))
    services.providers.reports = reports
    if services.settings.mqtt is None:
        return []
    return [Part("reports", lambda: _publish_reports(site, services, reports))]


ROOM = Room("certification", parts, section="certification", config=CertificationConfig)
