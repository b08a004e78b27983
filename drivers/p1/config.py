"""`driver: p1` devices: what a site operator writes for a meter's P1/HAN customer port.

Light on purpose (pydantic only): `gia check-config` and the settings import it, never dsmr-parser.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.config import ChannelConfig, DeviceId
from drivers.links import LinkSettings, parse_link
from drivers.model import DeviceClass

Variant = Literal["dsmr4", "dsmr5", "belgium", "sweden", "finland"]


def link_of(connection: str, variant: Variant) -> LinkSettings:
    """The port settings: 115200 baud 8N1 (DSMR 5, e-MUCS, the Nordic HAN ports), 7E1 for DSMR 4."""
    dsmr4 = variant == "dsmr4"
    return parse_link(
        connection, default_baud=115200, default_parity="E" if dsmr4 else "N", default_bytesize=7 if dsmr4 else 8
    )


class P1DeviceConfig(BaseModel):
    """A smart meter's P1/HAN port (RJ12) read through a serial adapter or a P1-to-TCP dongle."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    driver: Literal["p1"]
    connection: str = Field(
        description="serial:///dev/ttyUSB0 (115200 baud; 8N1, or 7E1 for dsmr4; add ?baud=..&parity=.. to"
        " override) or tcp://HOST:PORT of a P1-to-TCP dongle"
    )
    variant: Variant = Field(
        default="dsmr5",
        description="the telegram standard of the port: dsmr4, dsmr5 (Netherlands), belgium (Fluvius),"
        " sweden or finland (HAN)",
    )
    device_class: DeviceClass = Field(default="meter", description="meter (a P1 port belongs to a grid meter)")
    poll_interval_s: float = Field(default=10.0, gt=0, le=86400, description="seconds between stored readings, > 0")
    stale_after_intervals: int = Field(
        default=3, ge=1, description="no valid telegram for N poll intervals -> the device is offline"
    )
    timeout_s: float = Field(default=3.0, gt=0, le=60, description="seconds to open the port or connect")
    channels: list[ChannelConfig] = Field(default_factory=list, description="energy registers with site roles")
    serial: str | None = Field(default=None, description="meter serial number, reported with its channels")

    @field_validator("connection")
    @classmethod
    def _check_connection(cls, v: str) -> str:
        parse_link(v)
        return v
