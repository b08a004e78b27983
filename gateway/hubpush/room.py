"""The `hub` room (section `hub`): one part, `hub-push`, forwarding closed months' reports and key
transitions to the area hub from its own cursor (see `pusher`). Its state is `health["hub"]`; a push the
hub has not acknowledged makes the agent unhealthy with the reason."""

from __future__ import annotations

from collections.abc import Sequence

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
    reports = services.providers.reports  # set by the certification room, registered before this one
    pusher = HubPusher(
        cfg,
        site=site.id,
        ledger_path=s.ledger_path,
        reports=reports,
        state_file=s.data_dir / STATE_FILE,
        base_dir=services.base_dir,
        # the months that may close now, by the report service's (the clock guard's trusted) time
        closing=(lambda: list(reports.recent_months())) if reports is not None else list,
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


ROOM = Room("hub", parts, section="hub", config=HubPushConfig)
