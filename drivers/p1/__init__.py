"""P1/HAN customer ports of smart meters (Netherlands, Belgium, Sweden, Finland): DSMR telegrams.

The device config model lives beside the driver (`drivers.p1.config`) and joins the `DeviceConfig`
union in drivers/config.py, which imports it after the shared field types it uses; importing
drivers.config first, here, keeps that order whichever module is imported first.
"""

import drivers.config  # noqa: F401  (see the docstring: import order of the config union)
