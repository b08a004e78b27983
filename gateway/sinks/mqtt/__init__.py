"""The MQTT sink room: retained device state and availability, extras, Home Assistant discovery."""
