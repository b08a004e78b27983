"""The devices room: a poller per configured device, the MQTT device hub, and Modbus proxies."""
