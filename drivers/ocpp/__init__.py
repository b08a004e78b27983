"""OCPP 1.6J central system for the site's EV chargers: each charger (connector) is a device.

The device config model lives beside the driver (`drivers.ocpp.config`) and joins the `DeviceConfig`
union in drivers/config.py, which imports it after the shared field types it uses; importing
drivers.config first, here, keeps that order whichever module is imported first.
"""

import drivers.config  # noqa: F401  (see the docstring: import order of the config union)
