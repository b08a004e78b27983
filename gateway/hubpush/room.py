"""The `hub` room (section `hub`): one part, `hub-push`, forwarding closed months' reports and key
transitions to the area hub from its own cursor (see `pusher`). Its state is `health["hub"]`; a push the
hub has not acknowledged makes the agent unhealthy with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from zoneinfo import ZoneInfo

from gateway.certification.periods import shift_month
from gateway.hubpush.config import HubPushConfig
from gateway.hubpush.pusher import STATE_FILE, HubPusher
from gateway.rooms import Part, Room, Services
from gateway.site.resolve import Site


async def parts(site: Site, services: Services) -> Sequence[Part]:
    cfg = services.section("hub")
    if cfg is None:
        return []
    assert isinstance(cfg, HubPushConfig)
    s = services.settings
    pusher = HubPusher(
        cfg,
        site=site.id,
        ledger_path=s.ledger_path,
        reports=services.providers.reports,  # set by the certification room, registered before this one
        state_file=s.data_dir / STATE_FILE,
        base_dir=services.base_dir,
        closing=lambda: _recent_months(services, site),
    )
    services.health.add("hub", pusher.status)

    def reasons() -> list[str]:
        h = pusher.health
        return [f"hub push: {h.last_error}"] if h.last_error and h.pending else []

    async def run() -> None:
        try:
            await pusher.run()
        finally:
            pusher.close()

    return [Part("hub-push", run, reasons=reasons, max_backoff_s=60.0)]


def _recent_months(services: Services, site: Site) -> list[str]:
    """The two months before the current one in the site's time zone (the ones that may close now), by
    the clock guard's trusted time: a clock far ahead names no month that is not over (none while no time
    can be trusted yet)."""
    trusted = services.guard.trusted_now()
    if trusted is None:
        return []
    now = trusted.astimezone(ZoneInfo(site.timezone))
    this = f"{now.year:04d}-{now.month:02d}"
    return [shift_month(this, -2), shift_month(this, -1)]


ROOM = Room("hub", parts, section="hub", config=HubPushConfig)
