"""The rooms the agent runs, in the order their parts are built (one line per room).

Order matters only where a room serves another: certification and forecasting set what the HTTP API
serves before the HTTP room builds its app; the sinks register their cursors before retention reads them
(retention runs hourly, long after start).
"""

from __future__ import annotations

from gateway.api.room import ROOM as HTTP
from gateway.certification.room import ROOM as CERTIFICATION
from gateway.control.room import ROOM as CONTROL
from gateway.devices.room import ROOM as DEVICES
from gateway.forecasts.runner import ROOM as FORECASTING
from gateway.hubpush.room import ROOM as HUB
from gateway.ledger.room import ROOM as LEDGER
from gateway.rooms import Room
from gateway.runtime.room import ROOM as RUNTIME
from gateway.sinks.influx.room import ROOM as INFLUXDB
from gateway.sinks.mqtt.room import ROOM as MQTT

ROOMS: tuple[Room, ...] = (LEDGER, DEVICES, INFLUXDB, MQTT, CERTIFICATION, HUB, FORECASTING, CONTROL, HTTP, RUNTIME)
