"""`driver: sml` devices: a meter's optical info interface (IR head) speaking SML.

Light on purpose (pydantic only): the settings import it, never smllib.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.config import ChannelConfig, DeviceId
from drivers.links import LinkSettings, parse_link
from drivers.model import DeviceClass


def link_of(connection: str) -> LinkSettings:
    """The port settings: 9600 baud 8N1, what the info interface of German meters uses."""
    return parse_link(connection, default_baud=9600)


class SmlDeviceConfig(BaseModel):
    """A meter's SML info interface read through an optical head (USB) or a head on a TCP serial server."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    driver: Literal["sml"]
    connection: str = Field(
        description="serial:///dev/ttyUSB0 (9600 baud 8N1; add ?baud=.. to override) or tcp://HOST:PORT"
        " of a serial server with the optical head"
    )
    crc: Literal["x25", "kermit"] = Field(
        default="x25", description="frame checksum: x25 (the SML standard) or kermit (some older Holley meters)"
    )
    device_class: DeviceClass = Field(default="meter", description="meter (an SML interface belongs to a meter)")
    poll_interval_s: float = Field(default=10.0, gt=0, le=86400, description="seconds between stored readings, > 0")
    stale_after_intervals: int = Field(
        default=3, ge=1, description="no valid frame for N poll intervals -> the device is offline"
    )
    timeout_s: float = Field(default=3.0, gt=0, le=60, description="seconds to open the port or connect")
    channels: list[ChannelConfig] = Field(default_factory=list, description="energy registers with site roles")
    serial: str | None = Field(default=None, description="meter serial number, reported with its channels")

    @field_validator("connection")
    @classmethod
    def _check_connection(cls, v: str) -> str:
        parse_link(v)
        return v
