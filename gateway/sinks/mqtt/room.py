"""The MQTT sink room (section `mqtt`): retained device state from the ledger cursor, availability from
the live snapshot, the retained extras other rooms publish (reports, forecasts, flexibility signals) and,
opt-in, Home Assistant discovery for every quantity a device's map provides."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.rooms import Part, Room, Services
from gateway.settings import MqttConfig
from gateway.sinks.base import Sink
from gateway.sinks.forwarder import sink_part
from gateway.site.resolve import Site


async def parts(site: Site, services: Services) -> Sequence[Part]:
    cfg: MqttConfig | None = services.section("mqtt")
    if cfg is None:
        return []
    from gateway.sinks.mqtt.discovery import device_from_map
    from gateway.sinks.mqtt.sink import MqttSink

    discovery = (
        [
            device_from_map(d.id, d.register_map, device_class=d.device_class)
            for d in site.devices
            if d.register_map is not None
        ]
        if cfg.homeassistant_discovery
        else []
    )

    def factory() -> Sink:
        return MqttSink(cfg, site=site.id, live=services.live, outbox=services.retained, discovery=discovery)

    async def live_side(sink: Sink) -> None:
        assert isinstance(sink, MqttSink)
        await sink.live_publisher(sink)

    return [sink_part("mqtt", factory, services, side_tasks=[live_side])]


ROOM = Room("mqtt", parts, section="mqtt", config=MqttConfig)
