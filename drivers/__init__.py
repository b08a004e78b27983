"""Device drivers: Modbus and MQTT readers that turn device registers into `Sample`s.

This package never imports `gateway`: a driver must be usable (and testable) on its own, and the
agent's runtime must not leak into device code.
"""
