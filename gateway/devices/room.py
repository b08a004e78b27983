"""The devices room: one supervised poller per configured device, plus what devices share.

* devices share the connections of `Services.drivers`: Modbus buses (one bus object per physical
  connection), M-Bus lines, OCPP central systems;
* MQTT devices share one subscription connection to the `mqtt:` section's broker (`MqttHub`), opened
  here for the agent's lifetime;
* a Modbus device with `proxy:` re-serves the registers the gateway polls to other local clients.

Each poller builds its driver from the device's map loaded once at start (`Site`), never re-reading it
on a restart. Health: `health["devices"]` (state per device) and the reason "device X is offline".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from drivers.config import ModbusDeviceConfig, MqttDeviceConfig, parse_connection
from drivers.factory import create_driver
from drivers.mqtt.driver import Broker, MqttHub
from gateway.devices.poller import DevicePoller
from gateway.rooms import Part, Room, Services
from gateway.site.resolve import Site, SiteDevice

log = logging.getLogger(__name__)


def _device_hub(services: Services) -> MqttHub | None:
    """One MQTT subscription connection for all MQTT devices (the `mqtt:` section's broker)."""
    m = services.settings.mqtt
    if m is None or not any(isinstance(d.config, MqttDeviceConfig) for d in services.site.devices):
        return None
    tls = m.tls
    return MqttHub(
        Broker(
            url=m.url,
            username=m.username,
            password=m.password_value(),
            client_id=f"{m.client_id or 'gia-' + services.site.id}-devices",
            timeout_s=m.timeout_s,
            tls=m.tls_enabled,
            ca_file=tls.ca_file if tls else None,
            cert_file=tls.cert_file if tls else None,
            key_file=tls.key_file if tls else None,
            insecure=tls.insecure if tls else False,
        )
    )


async def _start_proxies(site: Site, services: Services) -> None:
    """One Modbus proxy server per `proxy:` address; each unit id is routed to its device's bus."""
    from drivers.modbus.proxy import proxy_server
    from gateway.runtime.fdbudget import listener_budget, nofile_limits

    routes: dict[str, dict[int, str]] = {}
    max_age: dict[str, float] = {}
    clients: dict[str, int] = {}
    idle: dict[str, float] = {}
    for d in site.devices:
        cfg = d.config
        if isinstance(cfg, ModbusDeviceConfig) and cfg.proxy:
            routes.setdefault(cfg.proxy, {})[cfg.unit_id] = parse_connection(cfg.connection).bus_key
            max_age[cfg.proxy] = max(max_age.get(cfg.proxy, 0.0), 3 * cfg.poll_interval_s)
            clients[cfg.proxy] = max(clients.get(cfg.proxy, 0), cfg.proxy_max_clients)
            idle[cfg.proxy] = max(idle.get(cfg.proxy, 0.0), cfg.proxy_idle_timeout_s)
    if not routes:
        return
    http = services.settings.http
    budget = listener_budget(
        soft_limit=nofile_limits()[0],
        devices=len(site.devices),
        http_wanted=http.max_connections if http.enabled else 0,
        proxies=len(routes),
        proxy_wanted=max(clients.values()),
    )
    for listen, r in routes.items():
        proxy = proxy_server(
            listen,
            services.drivers.pool,
            r,
            max_age_s=max_age[listen],
            max_clients=min(clients[listen], budget.proxy),
            idle_timeout_s=idle[listen],
        )
        await proxy.start()
        services.stack.push_async_callback(proxy.stop)
        log.info("Modbus proxy on %s serving unit(s) %s", listen, ", ".join(map(str, proxy.unit_ids)))


def _poller(device: SiteDevice, services: Services) -> DevicePoller:
    cfg = device.config

    def factory() -> Any:
        return create_driver(cfg, device_map=device.device_map, services=services.drivers)

    return DevicePoller(
        device_id=cfg.id,
        driver_factory=factory,
        interval_s=cfg.poll_interval_s,
        timeout_s=getattr(cfg, "timeout_s", cfg.poll_interval_s),
        clock=services.clock,
        live=services.live,
        on_samples=services.guard.submit,
        where=_where(cfg),
    )


def _where(cfg: Any) -> str:
    """The device's address and unit for log lines (never credentials: connection URLs hold none)."""
    conn = getattr(cfg, "connection", None) or getattr(cfg, "url", None) or ""
    unit = getattr(cfg, "unit_id", None)
    return f"{conn} unit {unit}" if conn and unit is not None else str(conn)


async def parts(site: Site, services: Services) -> Sequence[Part]:
    await _start_proxies(site, services)
    hub = _device_hub(services)
    if hub is not None:
        services.drivers.mqtt = await services.stack.enter_async_context(hub)
    live = services.live

    def offline(device_id: str) -> list[str]:
        status = live.devices[device_id]
        if status.online is False:
            return [f"device {device_id} is offline"]
        if not status.online:
            return []
        # Online but a configured channel's register is missing or unreadable: the balance would be
        # unknown (or, before issue 21, silently zero), so health says which channel and why.
        reasons = []
        for ch in site.device(device_id).channels:
            sample = live.values.get((device_id, ch.quantity))
            if sample is None or sample.value is None:
                what = "no reading" if sample is None else "an invalid reading"
                reasons.append(f"channel {ch.id} has {what} of {ch.quantity} from device {device_id}")
        return reasons

    services.health.add("devices", lambda: {d: s.as_json()["state"] for d, s in live.devices.items()})
    # Values a device sent that the validity rules refused (issue 15): counted per device with the latest
    # reason, so a meter publishing garbage is visible while its other values keep flowing.
    services.health.add(
        "device_values",
        lambda: {
            d: {"polls": s.polls, "invalid_values": s.invalid_values, "last_invalid": s.last_invalid}
            for d, s in live.devices.items()
        },
    )
    return [
        Part(f"device:{d.id}", _poller(d, services).run, reasons=lambda i=d.id: offline(i))  # type: ignore[misc]
        for d in site.devices
    ]


ROOM = Room("devices", parts, section="devices")
