"""The InfluxDB sink room (section `influxdb`): readings forwarded from the ledger cursor, plus the
latest forecast and flexibility lines other rooms put in `Services.influx_extras`."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.rooms import Part, Room, Services
from gateway.settings import InfluxConfig
from gateway.sinks.base import Sink
from gateway.sinks.forwarder import sink_part
from gateway.site.resolve import Site


async def parts(site: Site, services: Services) -> Sequence[Part]:
    cfg: InfluxConfig | None = services.section("influxdb")
    if cfg is None:
        return []
    from gateway.sinks.influx.sink import InfluxSink

    def factory() -> Sink:
        return InfluxSink(cfg, site=site.id, device_classes=site.device_classes)

    async def extras(sink: Sink) -> None:
        assert isinstance(sink, InfluxSink)
        await sink.extras_publisher(services.influx_extras)

    return [sink_part("influxdb", factory, services, side_tasks=[extras])]


ROOM = Room("influxdb", parts, section="influxdb", config=InfluxConfig)
