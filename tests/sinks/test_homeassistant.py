"""Home Assistant MQTT discovery messages: HA's documented keys, units, state classes, retain, removal.

The key lists below are written down from Home Assistant's MQTT discovery and MQTT sensor docs
(https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery,
https://www.home-assistant.io/integrations/sensor.mqtt/, and the sensor device-class unit table at
https://www.home-assistant.io/integrations/sensor/#device-class), fixed here so a change in the
builder that HA would reject fails a test.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from drivers.maps import load_map
from drivers.model import QUANTITIES
from gateway.sinks.mqtt.discovery import (
    DiscoveryContext,
    DiscoveryDevice,
    config_topic,
    device_from_map,
    discovery_messages,
    removal_messages,
    sensor_config,
    sensor_from_topic,
    state_class,
)
from gateway.sinks.mqtt.topics import Topics
from tests.servers import MosquittoBroker, find_binary

# -- what Home Assistant documents --------------------------------------------------------------------
#: Required by the MQTT sensor platform.
SENSOR_REQUIRED = {"state_topic"}
#: Required for an entity to be grouped under a device and to be editable in HA's UI.
DISCOVERY_REQUIRED = {"unique_id", "device"}
#: A device block needs at least one of these (HA: "identifiers or connections").
DEVICE_ID_KEYS = {"identifiers", "connections"}
#: Every key HA's MQTT sensor schema (plus the discovery/entity base schema) accepts.
SENSOR_ALLOWED = {
    "availability", "availability_mode", "availability_template", "availability_topic", "default_entity_id",
    "device", "device_class", "enabled_by_default", "encoding", "entity_category", "entity_picture",
    "expire_after", "force_update", "icon", "json_attributes_template", "json_attributes_topic",
    "last_reset_value_template", "name", "object_id", "options", "origin", "payload_available",
    "payload_not_available", "platform", "qos", "state_class", "state_topic", "suggested_display_precision",
    "unique_id", "unit_of_measurement", "value_template",
}  # fmt: skip
DEVICE_ALLOWED = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
ORIGIN_REQUIRED = {"name"}
STATE_CLASSES = {"measurement", "total", "total_increasing", "measurement_angle"}
#: device_class -> units HA accepts for it (None: no unit).
DEVICE_CLASS_UNITS: dict[str, set[str | None]] = {
    "power": {"W", "kW", "MW", "GW", "TW", "mW", "BTU/h"},
    "energy": {"Wh", "kWh", "MWh", "GWh", "TWh", "mWh", "MJ", "GJ", "cal", "kcal", "Mcal", "Gcal"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "current": {"A", "mA"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "reactive_power": {"var", "kvar"},
    "apparent_power": {"VA", "kVA"},
    "power_factor": {None, "%"},
    "wind_speed": {"m/s", "km/h", "mph", "kn", "ft/s", "Beaufort"},
    "battery": {"%"},
    "temperature": {"°C", "°F", "K"},
}
#: state_class total_increasing is only valid for these device classes (or none).
TOTAL_INCREASING_CLASSES = {"energy", "gas", "water", "volume", "monetary", "data_size", None}

SITE = "riga-north"
CTX = DiscoveryContext(site=SITE, topics=Topics.for_site("gia/{site}", SITE), sw_version="0.1.0")
ALL = DiscoveryDevice("everything", tuple(QUANTITIES), manufacturer="ACME", model="X1", device_class="meter")


@pytest.mark.parametrize("quantity", sorted(QUANTITIES))
def test_every_quantity_is_a_valid_ha_sensor(quantity: str) -> None:
    cfg = sensor_config(CTX, ALL, quantity)
    assert cfg.keys() >= SENSOR_REQUIRED
    assert cfg.keys() >= DISCOVERY_REQUIRED
    assert cfg.keys() <= SENSOR_ALLOWED, cfg.keys() - SENSOR_ALLOWED
    assert cfg["device"].keys() & DEVICE_ID_KEYS
    assert cfg["device"].keys() <= DEVICE_ALLOWED
    assert cfg["origin"].keys() >= ORIGIN_REQUIRED
    assert cfg["state_topic"] == f"gia/{SITE}/everything/state"
    assert cfg["availability_topic"] == f"gia/{SITE}/everything/availability"
    assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
    assert cfg["unique_id"] == f"gia_{SITE}_everything_{quantity}"
    assert cfg["default_entity_id"] == f"sensor.gia_{SITE}_everything_{quantity}"
    assert quantity in cfg["value_template"] and "value_json" in cfg["value_template"]
    dc = cfg.get("device_class")
    if dc is not None:
        assert cfg.get("unit_of_measurement") in DEVICE_CLASS_UNITS[dc], (quantity, dc, cfg.get("unit_of_measurement"))
    sc = cfg.get("state_class")
    assert sc is None or sc in STATE_CLASSES
    if sc == "total_increasing":
        assert dc in TOTAL_INCREASING_CLASSES


def test_state_classes_follow_the_quantity_kind() -> None:
    assert state_class("energy_import_wh") == "total_increasing"
    assert state_class("energy_export_wh") == "total_increasing"
    for q in ("power_w", "voltage_l1_v", "soc_pct", "wind_speed_ms", "temperature_c", "frequency_hz"):
        assert state_class(q) == "measurement"
    assert state_class("status") is None  # an enumerated code: no statistics
    # the one quantity table says how each is shown (a new quantity cannot be added without a label)
    assert all(q.label for q in QUANTITIES.values())
    assert (QUANTITIES["temperature_c"].display_unit, QUANTITIES["power_factor"].display_unit) == ("°C", None)
    assert QUANTITIES["wind_direction_deg"].display_unit == "°" and QUANTITIES["power_w"].sensor_class == "power"


def test_units_and_classes_for_the_energy_quantities() -> None:
    cfg = sensor_config(CTX, ALL, "energy_import_wh")
    assert (cfg["device_class"], cfg["unit_of_measurement"], cfg["state_class"]) == ("energy", "Wh", "total_increasing")
    cfg = sensor_config(CTX, ALL, "power_w")
    assert (cfg["device_class"], cfg["unit_of_measurement"], cfg["state_class"]) == ("power", "W", "measurement")
    assert sensor_config(CTX, ALL, "temperature_c")["unit_of_measurement"] == "°C"
    assert "unit_of_measurement" not in sensor_config(CTX, ALL, "power_factor")


def test_messages_are_retained_grouped_per_device_and_stable() -> None:
    grid = device_from_map("grid", load_map("eastron-sdm630"))
    battery = device_from_map("battery", load_map("victron-gx"))
    msgs = discovery_messages(CTX, [grid, battery])
    assert len(msgs) == len(set(grid.quantities)) + len(set(battery.quantities))
    assert all(m.retain and m.qos == 1 and not m.is_removal for m in msgs)
    assert msgs == discovery_messages(CTX, [grid, battery])  # byte-for-byte stable
    by_device: dict[str, set[str]] = {}
    for m in msgs:
        cfg = json.loads(m.payload)
        pair = sensor_from_topic(m.topic, site=SITE)
        assert pair is not None and cfg["state_topic"] == f"gia/{SITE}/{pair[0]}/state"
        assert cfg["unique_id"] == f"gia_{SITE}_{pair[0]}_{pair[1]}"
        by_device.setdefault(cfg["device"]["identifiers"][0], set()).add(cfg["unique_id"])
        assert cfg["device"]["manufacturer"] in ("Eastron", "Victron Energy", "Victron")
    assert set(by_device) == {f"gia_{SITE}_grid", f"gia_{SITE}_battery"}
    first = json.loads(msgs[0].payload)
    assert first["device"]["model"] and first["device"]["name"]
    assert len({json.loads(m.payload)["unique_id"] for m in msgs}) == len(msgs)


def test_removed_device_and_quantity_get_empty_retained_payloads() -> None:
    grid = DiscoveryDevice("grid", ("power_w", "energy_import_wh"))
    hall = DiscoveryDevice("hall", ("power_w",))
    slimmer_grid = DiscoveryDevice("grid", ("power_w",))
    removals = removal_messages(CTX, [grid, hall], [slimmer_grid])
    assert [(m.topic, m.payload, m.retain) for m in removals] == [
        (f"homeassistant/sensor/gia_{SITE}_grid/energy_import_wh/config", b"", True),
        (f"homeassistant/sensor/gia_{SITE}_hall/power_w/config", b"", True),
    ]
    assert removal_messages(CTX, [grid], [grid]) == []
    # The previous set can come from the broker's retained topics instead of a local file.
    seen = [m.topic for m in discovery_messages(CTX, [grid, hall])] + [
        "homeassistant/sensor/gia_other-site_x/power_w/config",
        "homeassistant/sensor/shelly_1/power/config",
    ]
    pairs = [p for t in seen if (p := sensor_from_topic(t, site=SITE)) is not None]
    assert sorted(pairs) == [("grid", "energy_import_wh"), ("grid", "power_w"), ("hall", "power_w")]
    assert removal_messages(CTX, pairs, [slimmer_grid]) == removals


def test_bad_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="discovery"):
        sensor_config(CTX, DiscoveryDevice("bad/id", ("power_w",)), "power_w")
    with pytest.raises(ValueError, match="prefix"):
        config_topic("home/#", SITE, "grid", "power_w")


@pytest.mark.mosquitto
def test_retained_discovery_and_removal_on_a_real_broker(mosquitto_fresh: MosquittoBroker) -> None:
    """Published as the sink will (retained, QoS 1): a late subscriber sees them; removal clears them."""
    pub, sub = find_binary("mosquitto_pub"), find_binary("mosquitto_sub")
    args = mosquitto_fresh.client_args()
    grid = DiscoveryDevice("grid", ("power_w", "energy_import_wh"), manufacturer="Eastron", model="SDM630")

    def publish(topic: str, payload: bytes) -> None:
        cmd = [pub, *args, "-t", topic, "-q", "1", "-r"]
        cmd += ["-n"] if payload == b"" else ["-s"]
        subprocess.run(cmd, input=payload, check=True, timeout=10)

    def retained() -> dict[str, bytes]:
        out = subprocess.run(
            [sub, *args, "-t", "homeassistant/#", "-v", "--retained-only", "-W", "1"],
            capture_output=True, timeout=10,
        )  # fmt: skip
        found = {}
        for line in out.stdout.splitlines():
            topic, _, payload = line.partition(b" ")
            found[topic.decode()] = payload
        return found

    for m in discovery_messages(CTX, [grid]):
        publish(m.topic, m.payload)
    got = retained()
    assert set(got) == {m.topic for m in discovery_messages(CTX, [grid])}
    assert json.loads(got[config_topic("homeassistant", SITE, "grid", "power_w")])["device_class"] == "power"
    for m in removal_messages(CTX, [grid], [DiscoveryDevice("grid", ("power_w",))]):
        publish(m.topic, m.payload)
    assert set(retained()) == {config_topic("homeassistant", SITE, "grid", "power_w")}
