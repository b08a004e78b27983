"""OPC UA devices (asyncua): PLCs, SCADA servers and wind-park controllers read through YAML node maps.

The room: `config.py` (the device's config model, joined into `drivers.config.DeviceConfig`),
`nodemap.py` (node maps as data), `convert.py` (server values to samples, pure), `session.py` (one
client connection per server, shared by its devices, reconnecting with the shared backoff),
`driver.py` (subscription or polling reads), `sim.py` (`gia sim` for node maps) and `scan.py`
(`gia scan opc.tcp://...`). Only `session.py`, `sim.py` and `scan.py` import asyncua, and only when
used: a site without OPC UA devices never loads it.

Import order: `drivers.opcua.config` uses `drivers.config`'s shared pieces and `drivers.config` joins
`OpcuaDeviceConfig` into its union at its end. Importing `drivers.config` here first makes either
import order work (`import drivers.opcua.config` alone would otherwise meet a half-built union).
"""

import drivers.config  # noqa: F401  (see the import order above)
