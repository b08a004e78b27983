"""Configuration of an OPC UA device: what a site operator writes under `devices:` with `driver: opcua`.

It is joined into `drivers.config.DeviceConfig` (the discriminated union on `driver`). Every field has
a description that `gia check-config` prints as the fix when the field is wrong.

Secrets never sit in the file or the URL: the password is read from `password_file` (a systemd
credential or a root-only file), and a username is refused unless messages are encrypted
(SignAndEncrypt): a server may ask for the password unencrypted inside the channel (its user token
policy None, OPC UA 10000-4, 7.41.2.3; asyncua's server does), so only an encrypted channel keeps it
from being readable on the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.config import ChannelConfig, DeviceId
from drivers.model import DeviceClass
from drivers.opcua.nodemap import check_root

DEFAULT_PORT = 4840  # IANA "opcua-tcp"


class OpcuaSecurity(BaseModel):
    """Message security with certificates: the client's own pair and the server's, pinned."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["Basic256Sha256"] = Field(
        default="Basic256Sha256", description="security policy: Basic256Sha256 (omit 'security:' for None)"
    )
    mode: Literal["Sign", "SignAndEncrypt"] = Field(
        default="SignAndEncrypt", description="Sign or SignAndEncrypt (the default: readings stay private)"
    )
    certificate: Path = Field(description="the gateway's application certificate (PEM or DER file)")
    private_key: Path = Field(description="the private key of that certificate (PEM or DER file, unencrypted)")
    server_certificate: Path = Field(
        description="the server's certificate (PEM or DER file): only this server is trusted, so export it"
        " from the server and copy it here"
    )
    application_uri: str | None = Field(
        default=None,
        description="the gateway's application URI; default: the URI in the certificate's subjectAltName",
    )

    def files(self) -> list[tuple[str, Path]]:
        return [
            ("certificate", self.certificate),
            ("private_key", self.private_key),
            ("server_certificate", self.server_certificate),
        ]


def check_endpoint(url: str) -> str:
    """opc.tcp://HOST[:PORT][/PATH], without credentials (they belong in username/password_file)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "opc.tcp" or not parts.hostname:
        raise ValueError(f"{url!r} is not an OPC UA endpoint; write opc.tcp://192.0.2.20:4840")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "the endpoint URL holds credentials; remove them and set 'username' and 'password_file' instead"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{url!r}: port must be 1..65535") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{url!r}: port must be 1..65535")
    return url


class OpcuaDeviceConfig(BaseModel):
    """A device on an OPC UA server (a PLC, a SCADA server, a wind-park controller) read through a node map."""

    model_config = ConfigDict(extra="forbid")

    id: DeviceId
    driver: Literal["opcua"]
    endpoint: str = Field(description="opc.tcp://HOST[:PORT][/PATH] of the OPC UA server (no credentials)")
    map: str = Field(
        description="a bundled OPC UA node map such as 'iec61400-25-wind-turbine' or a path to a node map YAML file"
    )
    root: str | None = Field(
        default=None,
        description="where the map's browse paths start: a browse path from the Objects folder (e.g. WTG01)"
        " or a node id; default from the map",
    )
    namespace: str | None = Field(
        default=None,
        description="namespace URI of the map's browse names on this server; default from the map"
        " ('gia scan' prints it)",
    )
    mode: Literal["subscription", "polling"] = Field(
        default="subscription",
        description="subscription (the server reports changes; read returns the latest) or polling (one"
        " batched Read per poll)",
    )
    poll_interval_s: float = Field(default=10.0, gt=0, le=86400, description="seconds between readings, > 0")
    sampling_interval_s: float | None = Field(
        default=None, gt=0, le=86400, description="subscription: how often the server samples; default poll_interval_s"
    )
    stale_after_intervals: int = Field(
        default=3, ge=1, description="subscription: silent for N poll intervals -> values are stale"
    )
    verify_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="subscription: re-read every node this often to notice nodes a server deleted without"
        " telling (0: never)",
    )
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="seconds to wait for one request")
    security: OpcuaSecurity | None = Field(
        default=None, description="Basic256Sha256 with certificates; omit for security policy None"
    )
    username: str | None = Field(default=None, description="user name; the password comes from password_file")
    password_file: Path | None = Field(default=None, description="file holding the password (one line)")
    device_class: DeviceClass | None = Field(
        default=None, description="meter, inverter, wind_turbine or battery; default from the map"
    )
    channels: list[ChannelConfig] = Field(default_factory=list, description="energy registers with site roles")
    serial: str | None = Field(default=None, description="meter serial number, reported with its channels")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_endpoint(v)

    @field_validator("root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        return None if v is None else check_root(v)

    @model_validator(mode="after")
    def _credentials(self) -> OpcuaDeviceConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("set both 'username' and 'password_file', or neither (anonymous)")
        if self.username is not None and (self.security is None or self.security.mode != "SignAndEncrypt"):
            raise ValueError(
                "a username needs 'security:' with mode SignAndEncrypt (Basic256Sha256 with certificates):"
                " otherwise the password may cross the network readable"
            )
        return self

    def files(self) -> list[tuple[str, Path]]:
        """(field path, file) of every file this device needs, for check-config."""
        out = [(f"security.{name}", path) for name, path in self.security.files()] if self.security else []
        if self.password_file is not None:
            out.append(("password_file", self.password_file))
        return out


def resolve(path: Path, base_dir: Path) -> Path:
    """Relative paths in the config are relative to the config file's directory."""
    path = path.expanduser()
    return path if path.is_absolute() else base_dir / path


def device_problems(cfg: OpcuaDeviceConfig, base_dir: Path) -> list[tuple[str, str, str]]:
    """(field, what is wrong, how to fix) for what the schema cannot see: the map and the files."""
    from drivers.maps import MapError
    from drivers.opcua.nodemap import load_node_map

    problems: list[tuple[str, str, str]] = []
    try:
        load_node_map(cfg.map, base_dir=base_dir)
    except MapError as exc:
        problems.append(("map", str(exc), "use a bundled node map (see 'gia sim --list') or a valid node map file"))
    for field, path in cfg.files():
        if not resolve(path, base_dir).is_file():
            problems.append((field, f"file {str(path)!r} does not exist", "create it or correct the path"))
    return problems
