"""`driver: ocpp` devices: a charger (one connector of it) that connects to the gateway's central system.

Light on purpose (pydantic only): the settings import it, never the ocpp library or websockets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.config import ChannelConfig, DeviceId
from drivers.model import DeviceClass

#: OCPP identities are CiString48 and the last path segment of the charger's URL: keep them URL-safe.
CHARGE_POINT_ID = r"^[A-Za-z0-9._~:@+-]{1,48}$"


def parse_listen(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ws://HOST:PORT or wss://HOST:PORT, with a message naming the fix."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r}: write ws://HOST:PORT (or wss://HOST:PORT with TLS)")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host; write ws://0.0.0.0:9000 to listen on every interface")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: port must be 1..65535") from None
    if port is None:
        raise ValueError(f"{url!r}: give the port, e.g. ws://0.0.0.0:9000")
    if parts.path not in ("", "/"):
        raise ValueError(f"{url!r}: no path here; chargers connect to <listen>/ocpp/<charge_point_id>")
    return parts.scheme, parts.hostname, port


class OcppDeviceConfig(BaseModel):
    """One connector of an OCPP 1.6J charger; devices with the same `listen` share one central system."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    driver: Literal["ocpp"]
    charge_point_id: str = Field(
        pattern=CHARGE_POINT_ID,
        description="the charger's OCPP identity (1-48 letters, digits or ._~:@+-); set the charger's central"
        " system URL to ws://GATEWAY:PORT/ocpp/<charge_point_id>",
    )
    connector_id: int = Field(
        default=1, ge=0, le=16, description="the connector this device reads (0: the charger's main meter)"
    )
    listen: str = Field(
        default="ws://0.0.0.0:9000",
        description="ws://HOST:PORT where the central system listens (wss:// with tls_cert_file and tls_key_file)",
    )
    security_profile: Literal[0, 1, 2] = Field(
        default=1,
        description="OCPP security profile: 1 basic auth (default), 2 basic auth over TLS, 0 none (trusted LAN only)",
    )
    password_file: Path | None = Field(
        default=None,
        description="file holding the charger's basic-auth password, 16+ characters (the charger's"
        " AuthorizationKey); required for security profiles 1 and 2",
    )
    tls_cert_file: Path | None = Field(default=None, description="server certificate (PEM) for wss://")
    tls_key_file: Path | None = Field(default=None, description="server private key (PEM) for wss://")
    heartbeat_interval_s: int = Field(default=300, ge=10, le=86400, description="heartbeat interval given at boot")
    trigger_meter_values: bool = Field(
        default=True,
        description="ask an idle charger for its meter values (TriggerMessage) when they are older than the"
        " stale limit, so the energy register keeps good readings between sessions",
    )
    charging_rate_unit: Literal["W", "A"] = Field(
        default="W", description="unit of charging limits sent to the charger: W, or A for chargers that only take A"
    )
    phases: Literal[1, 3] = Field(default=3, description="phases the charger uses (to turn a W limit into A)")
    nominal_voltage_v: float = Field(default=230.0, gt=0, description="phase voltage (to turn a W limit into A)")
    device_class: DeviceClass = Field(default="meter", description="meter (a charger is read as a consumer's meter)")
    poll_interval_s: float = Field(default=10.0, gt=0, le=86400, description="seconds between stored readings, > 0")
    stale_after_intervals: int = Field(
        default=3, ge=1, description="meter values older than N poll intervals are stored as stale"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="seconds to wait for the charger's answers")
    channels: list[ChannelConfig] = Field(default_factory=list, description="energy registers with site roles")
    serial: str | None = Field(default=None, description="charger or meter serial number, reported with its channels")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @model_validator(mode="after")
    def _security(self) -> OcppDeviceConfig:
        scheme = parse_listen(self.listen)[0]
        if self.security_profile in (1, 2) and self.password_file is None:
            raise ValueError(
                f"security profile {self.security_profile} needs 'password_file' (the charger's basic-auth"
                " password, 16+ characters); or set security_profile: 0 on a trusted network"
            )
        if self.security_profile == 2 and (scheme != "wss" or self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError("security profile 2 needs listen: wss://HOST:PORT with tls_cert_file and tls_key_file")
        if scheme == "wss" and (self.tls_cert_file is None or self.tls_key_file is None):
            raise ValueError("listen: wss:// needs tls_cert_file and tls_key_file")
        return self
