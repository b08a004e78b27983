"""Connections several devices share: Modbus buses (`BusPool`), the MQTT device hub, M-Bus lines and
OCPP central systems. The agent enters one `DriverServices` for its lifetime and passes it to
`drivers.factory.create_driver`; each protocol's part is created on first use, so a site without M-Bus
meters or chargers never imports pyMeterBus, the ocpp library or websockets. The MQTT hub needs the
broker's settings, so its owner (the agent's devices room) sets `mqtt` and enters it.

`create_port_driver` builds the drivers of the meter-port and charger rooms (p1, sml, mbus, ocpp);
it is the factory's one line for them.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from drivers.base import Driver, PermanentError
from drivers.mbus.config import MbusDeviceConfig
from drivers.modbus.bus import BusPool
from drivers.ocpp.config import OcppDeviceConfig
from drivers.p1.config import P1DeviceConfig
from drivers.sml.config import SmlDeviceConfig

if TYPE_CHECKING:
    from drivers.mbus.bus import MbusPool
    from drivers.mqtt.driver import MqttHub
    from drivers.ocpp.central import CentralSystems
    from drivers.opcua.session import OpcuaPool


class DriverServices:
    """The shared connections of one agent (or one `gia read`); closes them on exit."""

    def __init__(self, *, mqtt: MqttHub | None = None, base_dir: Path | None = None) -> None:
        self.pool = BusPool()
        self.mqtt = mqtt
        #: where relative paths in device configs start (the config file's folder)
        self.base_dir = base_dir if base_dir is not None else Path.cwd()
        self._mbus: MbusPool | None = None
        self._ocpp: CentralSystems | None = None
        self._opcua: OpcuaPool | None = None

    @property
    def opcua(self) -> OpcuaPool:
        """OPC UA sessions, one per endpoint, shared by the devices on that server."""
        if self._opcua is None:
            from drivers.opcua.session import OpcuaPool

            self._opcua = OpcuaPool()
        return self._opcua

    @property
    def mbus(self) -> MbusPool:
        if self._mbus is None:
            from drivers.mbus.bus import MbusPool

            self._mbus = MbusPool()
        return self._mbus

    @property
    def ocpp(self) -> CentralSystems:
        if self._ocpp is None:
            from drivers.ocpp.central import CentralSystems

            self._ocpp = CentralSystems()
        return self._ocpp

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._opcua is not None:
            await self._opcua.__aexit__(None, None, None)
        if self._ocpp is not None:
            await self._ocpp.aclose()
        if self._mbus is not None:
            await self._mbus.aclose()
        await self.pool.aclose()


PortConfig = P1DeviceConfig | SmlDeviceConfig | MbusDeviceConfig | OcppDeviceConfig


def create_port_driver(cfg: object, services: DriverServices | None) -> Driver | None:
    """The driver for a p1/sml/mbus/ocpp device, or None for any other config (raises PermanentError)."""
    if isinstance(cfg, P1DeviceConfig):
        from drivers.p1.driver import P1Driver

        return P1Driver.from_config(cfg)
    if isinstance(cfg, SmlDeviceConfig):
        from drivers.sml.driver import SmlDriver

        return SmlDriver.from_config(cfg)
    if isinstance(cfg, MbusDeviceConfig | OcppDeviceConfig):
        if services is None:
            raise PermanentError(f"{cfg.id}: {cfg.driver} devices need the agent's shared services (DriverServices)")
        if isinstance(cfg, MbusDeviceConfig):
            from drivers.mbus.driver import MbusDriver

            try:
                return MbusDriver.from_config(cfg, services.mbus)
            except ValueError as exc:
                raise PermanentError(f"{cfg.id}: connection: {exc}") from None
        from drivers.ocpp.driver import OcppDriver

        return OcppDriver.from_config(cfg, services.ocpp)
    return None
