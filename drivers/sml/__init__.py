"""SML (Smart Message Language) meters read through an optical head: German "moderne Messeinrichtung"
and smart meters push SML frames on their info interface every 1-4 s.

The device config model lives beside the driver (`drivers.sml.config`) and joins the `DeviceConfig`
union in drivers/config.py, which imports it after the shared field types it uses; importing
drivers.config first, here, keeps that order whichever module is imported first.
"""

import drivers.config  # noqa: F401  (see the docstring: import order of the config union)
