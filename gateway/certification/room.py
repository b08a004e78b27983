"""The certification room (section `certification`): the report service the API serves, and the
publisher of the last closed month's signed report (retained on MQTT) when a broker is configured."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence

from drivers.model import to_ms
from gateway.certification.config import CertificationConfig
from gateway.certification.periods import shift_month
from gateway.certification.service import MonthNotCovered, ReportService
from gateway.certification.sitekeys import ensure_site_key
from gateway.rooms import Part, Room, Services
from gateway.runtime.clockguard import RELEASE_FLOOR
from gateway.sinks.mqtt.topics import Topics
from gateway.site.resolve import Site

log = logging.getLogger(__name__)


async def _publish_reports(site: Site, services: Services, reports: ReportService) -> None:
    """Publish (retained) the signed report of every closed month among the last two, once each version.

    A month closes only after the settlement delay and once every channel has a reading after its end
    (`ReportService.closed_report_json`); before that nothing is published, so an outage around
    midnight cannot freeze a month with a missing boundary. A reissue is published when it appears.
    The site's key transitions go out too (for the hub), whenever `gia keys rotate` added one.
    """
    mqtt = services.settings.mqtt
    assert mqtt is not None
    topics = Topics.for_site(mqtt.prefix, site.id)
    clock = services.clock
    published: dict[str, str] = {}
    unpublished: dict[str, str] = {}  # month -> why it was not published, as last logged
    transitions = b""
    while True:
        try:
            now_transitions = await asyncio.to_thread(reports.key_transitions_json)
            if now_transitions != transitions:
                services.retained.put(topics.key_transitions, now_transitions)
                transitions = now_transitions
        except Exception as exc:
            log.warning("key transitions not published: %s", exc)
        months = reports.recent_months()
        last, this_month = months[-1], shift_month(months[-1], 1)
        for month in months:
            try:
                body = await asyncio.to_thread(reports.closed_report_json, site.id, month)
            except Exception as exc:  # no readings yet, ledger busy, key missing: try again later
                # Said once per month and cause, not every round: a new site's log showed two warnings a
                # minute for the months before its first reading. A month the ledger does not cover is
                # expected there (info); anything else is a warning.
                if unpublished.get(month) != str(exc):
                    unpublished[month] = str(exc)
                    level = logging.INFO if isinstance(exc, MonthNotCovered) else logging.WARNING
                    log.log(level, "report %s not published: %s", month, exc)
                continue
            unpublished.pop(month, None)
            if body is None:
                continue  # not settled yet
            sha = hashlib.sha256(body).hexdigest()
            if published.get(month) != sha:
                services.retained.put(topics.report(month), body)
                published[month] = sha
                log.info("published signed report %s (%s)", month, sha[:16])
        nxt = reports.settles_at_ms(last) if last not in published else reports.settles_at_ms(this_month)
        wait_s = min(3600.0, max(60.0, (nxt - reports.now_ms()) / 1000))
        await asyncio.sleep(wait_s / getattr(clock, "speed", 1.0))


async def parts(site: Site, services: Services) -> Sequence[Part]:
    s = services.settings
    # A site that has started never gets a new signing key silently (`gia keys rotate --reason`).
    await asyncio.to_thread(ensure_site_key, s.data_dir / "keys", s.ledger_path, site=site.id)
    guard = services.guard

    def trusted_ms() -> int:
        # Months close on trusted time only (ClockGuard.trusted_now): never on a clock that jumped ahead.
        # With no trusted time yet (a clock in 1970), the release floor: no month after it can close.
        now = guard.trusted_now()
        return to_ms(now if now is not None else RELEASE_FLOOR)

    reports = ReportService(services.settings, site, now_ms=trusted_ms)
    services.providers.reports = reports
    if services.settings.mqtt is None:
        return []
    return [Part("reports", lambda: _publish_reports(site, services, reports))]


ROOM = Room("certification", parts, section="certification", config=CertificationConfig)
