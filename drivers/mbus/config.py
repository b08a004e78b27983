"""`driver: mbus` devices: a wired M-Bus meter read by primary address.

Light on purpose (pydantic only): the settings import it, never pyMeterBus.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.config import ChannelConfig, DeviceId
from drivers.links import LinkSettings, parse_link
from drivers.model import QUANTITIES, DeviceClass


def link_of(connection: str) -> LinkSettings:
    """The line settings: 2400 baud 8E1, the M-Bus default (EN 13757-2)."""
    return parse_link(connection, default_baud=2400, default_parity="E")


class MbusDeviceConfig(BaseModel):
    """A wired M-Bus meter (heat, cooling, electricity) on a level converter or an M-Bus TCP gateway."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    driver: Literal["mbus"]
    connection: str = Field(
        description="serial:///dev/ttyUSB0 (2400 baud 8E1; add ?baud=300|9600 to override) or tcp://HOST:PORT"
        " of a transparent M-Bus gateway; meters on the same line share it"
    )
    address: int = Field(ge=0, le=250, description="the meter's primary M-Bus address, 0..250")
    device_class: DeviceClass = Field(default="meter", description="meter, inverter, wind_turbine or battery")
    poll_interval_s: float = Field(
        default=60.0, gt=0, le=86400, description="seconds between reads, > 0 (battery meters: 60 or more)"
    )
    timeout_s: float = Field(default=3.0, gt=0, le=60, description="seconds to wait for the meter's answer")
    records: dict[str, int] = Field(
        default_factory=dict,
        description="quantity -> index of the data record in the meter's answer (0-based, as `gia read`"
        " lists them; a meter answering in several telegrams is counted on across all of them),"
        " overriding the defaults for the meter's medium",
    )
    channels: list[ChannelConfig] = Field(default_factory=list, description="energy registers with site roles")
    serial: str | None = Field(default=None, description="meter serial number, reported with its channels")
    medium: Literal["auto", "electricity", "heat"] = Field(
        default="auto", description="auto (from the meter's header), electricity or heat: which default mapping"
    )

    @field_validator("connection")
    @classmethod
    def _check_connection(cls, v: str) -> str:
        parse_link(v)
        return v

    @field_validator("records")
    @classmethod
    def _check_records(cls, v: dict[str, int]) -> dict[str, int]:
        for quantity, index in v.items():
            if quantity not in QUANTITIES:
                raise ValueError(f"records.{quantity}: unknown quantity; use e.g. energy_import_wh, heat_energy_wh")
            if not 0 <= index < 256:
                raise ValueError(f"records.{quantity}: record index must be 0..255")
        return v
