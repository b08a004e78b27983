"""M-Bus (EN 13757-2/-3) heat, water and energy meters: primary addressing over a serial level
converter or a transparent TCP gateway.

The device config model lives beside the driver (`drivers.mbus.config`) and joins the `DeviceConfig`
union in drivers/config.py, which imports it after the shared field types it uses; importing
drivers.config first, here, keeps that order whichever module is imported first.
"""

import drivers.config  # noqa: F401  (see the docstring: import order of the config union)
