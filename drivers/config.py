"""Configuration models for devices: what a site operator writes under `devices:` in gia.yaml.

They live in `drivers/` because a driver is built from exactly this and nothing else; `gateway.settings`
composes them into the whole configuration. Every field has a description that `gia check-config`
prints as the fix when the field is wrong.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.model import DeviceClass

DeviceId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="lowercase letters, digits, '-' or '_' (it becomes an MQTT topic level and an InfluxDB tag)",
    ),
]

Role = Literal[
    "grid_import",
    "grid_export",
    "generation",
    "consumption",
    "storage_charge",
    "storage_discharge",
    "auxiliary",
]
Source = Literal["wind", "pv", "chp", "other"]


class ChannelConfig(BaseModel):
    """A metering channel: an energy register of this device with a role in the site's balance."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(
        description="one of grid_import, grid_export, generation, consumption, storage_charge,"
        " storage_discharge, auxiliary"
    )
    quantity: Literal["energy_import_wh", "energy_export_wh"] = Field(
        description="the cumulative energy register this channel reads: energy_import_wh or energy_export_wh"
    )
    id: str | None = Field(default=None, description="channel id in reports; default '<device>.<role>'")
    source: Source | None = Field(default=None, description="for generation: wind, pv, chp or other")
    renewable: bool | None = Field(default=None, description="for generation: true when the source is renewable")
    rated_power_w: float | None = Field(default=None, gt=0, description="capacity in W, for validation rules")
    multiplier: int = Field(default=1, ge=1, description="CT x VT ratio applied to the register (integer)")
    register_modulus_wh: int | None = Field(
        default=None, gt=0, description="register wraps at this value (Wh); default from the device map"
    )

    @model_validator(mode="after")
    def _generation_needs_source(self) -> ChannelConfig:
        if self.role == "generation" and (self.source is None or self.renewable is None):
            raise ValueError("a generation channel needs 'source' (wind|pv|chp|other) and 'renewable' (true|false)")
        return self


class ModbusDeviceConfig(BaseModel):
    """A Modbus TCP / RTU / RTU-over-TCP device read through a register map (or SunSpec discovery)."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    driver: Literal["modbus"] = "modbus"
    connection: str = Field(
        description="tcp://HOST[:PORT], rtu:///dev/ttyUSB0?baud=9600&parity=N&stopbits=1, or rtu+tcp://HOST:PORT"
    )
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id, 0..255 (usually 1..247)")
    map: str | None = Field(
        default=None, description="a bundled map name such as 'eastron-sdm630' or a path to a map YAML file"
    )
    sunspec: bool = Field(default=False, description="discover SunSpec models instead of using a map")
    device_class: DeviceClass | None = Field(
        default=None, description="meter, inverter, wind_turbine or battery; default from the map"
    )
    poll_interval_s: float = Field(default=10.0, gt=0, le=86400, description="seconds between polls, > 0")
    timeout_s: float = Field(default=3.0, gt=0, le=60, description="seconds to wait for one response")
    channels: list[ChannelConfig] = Field(default_factory=list, description="energy registers with site roles")
    serial: str | None = Field(default=None, description="meter serial number, reported with its channels")
    options: dict[str, float | int | bool] = Field(
        default_factory=dict, description="device quirks, e.g. pause_after_connect_s, max_registers_per_read"
    )
    proxy: str | None = Field(
        default=None,
        description="tcp://HOST:PORT on which to re-serve the registers the gateway polls from this device,"
        " for other local clients (devices that accept only one Modbus client)",
    )
    proxy_max_clients: int = Field(
        default=8,
        ge=1,
        le=256,
        description="clients the proxy serves at once; more are closed when accepted (idle sockets cannot"
        " use up the agent's descriptors). Devices sharing one proxy address share the largest value",
    )
    proxy_idle_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="a proxy client that sends nothing for this long is closed"
    )

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, v: str | None) -> str | None:
        if v is not None and parse_connection(v).scheme != "tcp":
            raise ValueError(f"{v!r}: the proxy listens on tcp://HOST:PORT")
        return v

    @field_validator("connection")
    @classmethod
    def _check_connection(cls, v: str) -> str:
        parse_connection(v)
        return v

    @model_validator(mode="after")
    def _map_or_sunspec(self) -> ModbusDeviceConfig:
        if (self.map is None) == (not self.sunspec):
            raise ValueError("set exactly one of 'map' (a device map name) or 'sunspec: true'")
        return self


class MqttDeviceConfig(BaseModel):
    """A device that publishes its readings over MQTT (Tasmota, Shelly, or custom JSON)."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    driver: Literal["mqtt"]
    topic: str = Field(description="the topic the device publishes its readings on, e.g. tele/meter1/SENSOR")
    profile: str | None = Field(default=None, description="a bundled payload profile: tasmota-sml, shelly-gen2-em")
    fields: dict[str, str] = Field(
        default_factory=dict, description="quantity -> JSON path in the payload, e.g. power_w: ENERGY.Power"
    )
    device_class: DeviceClass = Field(default="meter", description="meter, inverter, wind_turbine or battery")
    poll_interval_s: float = Field(default=10.0, gt=0, le=86400, description="expected seconds between messages")
    stale_after_intervals: int = Field(default=3, ge=1, description="no message for N intervals -> stale")
    channels: list[ChannelConfig] = Field(default_factory=list)
    serial: str | None = None

    @model_validator(mode="after")
    def _profile_or_fields(self) -> MqttDeviceConfig:
        if self.profile is None and not self.fields:
            raise ValueError("set 'profile' (e.g. tasmota-sml) or 'fields' (quantity: JSON path)")
        return self


class Connection(BaseModel):
    """A parsed Modbus connection URL."""

    scheme: Literal["tcp", "rtu", "rtu+tcp"]
    host: str | None = None
    port: int | None = None
    device: str | None = None  # serial device path
    baud: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8

    @property
    def bus_key(self) -> str:
        """Identity of the physical connection: devices with the same key share one bus object."""
        if self.scheme == "rtu":
            return f"rtu://{self.device}"
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_connection(url: str) -> Connection:
    """Parse and validate a Modbus connection URL, with a message that says what a good one looks like."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("tcp", "rtu+tcp"):
        if not parts.hostname:
            raise ValueError(f"{url!r} has no host; write {scheme}://192.0.2.10:502")
        try:
            port = parts.port or 502
        except ValueError:
            raise ValueError(f"{url!r}: port must be 1..65535") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"{url!r}: port must be 1..65535")
        return Connection(scheme=scheme, host=parts.hostname, port=port)
    if scheme == "rtu":
        if not parts.path or parts.path == "/":
            raise ValueError(f"{url!r} has no serial device; write rtu:///dev/ttyUSB0?baud=9600")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(q) - {"baud", "parity", "stopbits", "bytesize"}
        if unknown:
            raise ValueError(f"{url!r}: unknown option(s) {', '.join(sorted(unknown))}; use baud, parity, stopbits")
        try:
            baud = int(q.get("baud", "9600"))
            stopbits = int(q.get("stopbits", "1"))
            bytesize = int(q.get("bytesize", "8"))
        except ValueError:
            raise ValueError(f"{url!r}: baud, stopbits and bytesize must be integers") from None
        if baud not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400):
            raise ValueError(f"{url!r}: baud {baud} is not a standard rate (9600, 19200, 38400, 115200...)")
        parity = q.get("parity", "N").upper()
        if parity not in ("N", "E", "O"):
            raise ValueError(f"{url!r}: parity must be N, E or O")
        return Connection(
            scheme="rtu",
            device=parts.path,
            baud=baud,
            parity=parity,
            stopbits=stopbits,
            bytesize=bytesize,
        )
    raise ValueError(f"{url!r}: scheme must be tcp://, rtu:// or rtu+tcp://")


# The meter-port and charger rooms keep their device models beside their drivers; those modules use
# the field types above, so they are imported here, after them (each room's __init__ imports this
# module first, which keeps the order whichever side is imported first).
from drivers.mbus.config import MbusDeviceConfig  # noqa: E402
from drivers.ocpp.config import OcppDeviceConfig  # noqa: E402
from drivers.opcua.config import OpcuaDeviceConfig  # noqa: E402
from drivers.p1.config import P1DeviceConfig  # noqa: E402
from drivers.sml.config import SmlDeviceConfig  # noqa: E402

DeviceConfig = Annotated[
    ModbusDeviceConfig
    | MqttDeviceConfig
    | OpcuaDeviceConfig
    | P1DeviceConfig
    | SmlDeviceConfig
    | MbusDeviceConfig
    | OcppDeviceConfig,
    Field(discriminator="driver"),
]

#: driver name -> its config model (check-config walks the union's branches by these names)
DEVICE_MODELS: dict[str, type[BaseModel]] = {
    "modbus": ModbusDeviceConfig,
    "mqtt": MqttDeviceConfig,
    "opcua": OpcuaDeviceConfig,
    "p1": P1DeviceConfig,
    "sml": SmlDeviceConfig,
    "mbus": MbusDeviceConfig,
    "ocpp": OcppDeviceConfig,
}
