"""The hub's configuration: a YAML file with a `hub:` section (+ `GIA_HUB__...` environment variables).

    hub:
      data_dir: /var/lib/gia-hub            # the hub's key, and the SQLite database by default
      database: postgresql://gia@db.example:5432/gia_hub   # default sqlite:///<data_dir>/hub.db
      # database: {url: postgresql://gia@db:5432/gia_hub, password_file: /run/secrets/db}
      mqtt: {url: mqtts://broker.example:8883, username: hub, password_file: /run/secrets/mqtt}
      http: {listen: 0.0.0.0:8443, tls_cert_file: ..., tls_key_file: ...}
      areas:
        - id: zemgale
          name: Zemgale green industrial area
          policy: {min_energy_coverage: "0.99", max_estimated_share: "0.01"}

The database password never sits in the URL (it would end up in logs and process lists): a URL that
carries one is refused with the fix; give it as `database.password_file` or `GIA_HUB__DATABASE__PASSWORD`.
Problems come back as the agent's `ConfigError` (one line per problem: path, what, fix).
"""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.settings import ConfigError, HttpConfig, MqttConfig, Problem, _problems_from_validation

DEFAULT_HUB_CONFIG_PATHS = (Path("hub.yaml"), Path("/etc/gia/hub.yaml"))
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def _decimal(v: str, what: str) -> str:
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise ValueError(f"{what} {v!r} is not a decimal string such as '0.99'") from None
    if not Decimal(0) <= d <= Decimal(1):
        raise ValueError(f"{what} {v!r} must be between 0 and 1")
    return v


class GradingPolicy(BaseModel):
    """The area's grading thresholds: the area sets them, not the site (a site may only be stricter)."""

    model_config = ConfigDict(extra="forbid")
    min_energy_coverage: str = Field(default="0.99", description="verified needs measured/total >= this")
    max_estimated_share: str = Field(default="0.01", description="verified needs estimated/total <= this")

    @field_validator("min_energy_coverage", "max_estimated_share")
    @classmethod
    def _dec(cls, v: str) -> str:
        return _decimal(v, "threshold")


class AreaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN, description="lowercase area id, e.g. 'zemgale'")
    name: str = Field(default="", description="a human-readable area name")
    policy: GradingPolicy = Field(default_factory=GradingPolicy, description="the area's grading thresholds")


class DatabaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="sqlite:///PATH or postgresql://USER@HOST:PORT/DB (no password in the URL)")
    password: SecretStr | None = Field(default=None, description="database password; or GIA_HUB__DATABASE__PASSWORD")
    password_file: Path | None = Field(default=None, description="file holding the database password")
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120, description="seconds to connect")
    pool_size: int = Field(default=5, ge=1, le=100, description="connections kept open (PostgreSQL)")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(v)
        except ArgumentError:
            raise ValueError("not a database URL; write sqlite:///PATH or postgresql://USER@HOST:5432/DB") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"database {url.get_backend_name()!r} is not supported; use sqlite or postgresql")
        if url.password is not None:
            # Never echo the URL: it holds the secret.
            raise ValueError(
                "the database URL contains a password; remove it and use database.password_file"
                " or GIA_HUB__DATABASE__PASSWORD"
            )
        return v

    def password_value(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


class HubHttpConfig(HttpConfig):
    """As the agent's `http:` section, on another default port, with a request body limit."""

    listen: str = Field(default="127.0.0.1:8090", description="HOST:PORT to serve the hub API on")
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="larger requests are refused (413)"
    )


class HubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(default=Path("/var/lib/gia-hub"), description="the hub's key and SQLite database")
    database: DatabaseConfig | None = Field(
        default=None, description="database URL (sqlite:///PATH or postgresql://...); default <data_dir>/hub.db"
    )
    mqtt: MqttConfig | None = Field(default=None, description="the central broker the sites bridge to")
    http: HubHttpConfig = Field(default_factory=HubHttpConfig)
    areas: list[AreaConfig] = Field(default_factory=list, description="the industrial areas this hub serves")
    max_report_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="larger reports are refused"
    )

    @field_validator("database", mode="before")
    @classmethod
    def _bare_url(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _unique_areas(self) -> HubConfig:
        ids = [a.id for a in self.areas]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"area ids must be unique: {', '.join(dup)}")
        return self

    @property
    def database_config(self) -> DatabaseConfig:
        return self.database or DatabaseConfig(url=f"sqlite:///{self.data_dir / 'hub.db'}")

    def area(self, area_id: str) -> AreaConfig | None:
        return next((a for a in self.areas if a.id == area_id), None)


class HubSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GIA_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )
    hub: HubConfig = Field(default_factory=HubConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, file_secret_settings, init_settings)


def find_hub_config(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    return next((p for p in DEFAULT_HUB_CONFIG_PATHS if p.exists()), DEFAULT_HUB_CONFIG_PATHS[0])


def _check_files(s: HubSettings) -> list[Problem]:
    h = s.hub
    files: list[tuple[str, Path | None]] = [
        ("hub.http.tls_cert_file", h.http.tls_cert_file),
        ("hub.http.tls_key_file", h.http.tls_key_file),
    ]
    if h.database is not None:
        files.append(("hub.database.password_file", h.database.password_file))
    if h.mqtt is not None:
        files.append(("hub.mqtt.password_file", h.mqtt.password_file))
        if h.mqtt.tls is not None:
            files += [("hub.mqtt.tls.ca_file", h.mqtt.tls.ca_file), ("hub.mqtt.tls.cert_file", h.mqtt.tls.cert_file)]
    return [
        Problem(path, f"file {str(f)!r} does not exist", "create it or correct the path")
        for path, f in files
        if f is not None and not f.is_file()
    ]


def load_hub_settings(path: Path | None = None) -> HubSettings:
    """Read and validate the hub's config; raise ConfigError with every problem found."""
    cfg = find_hub_config(path)
    if not cfg.exists():
        raise ConfigError([Problem(str(cfg), "configuration file not found", "pass --config FILE (see hub.yaml)")])
    try:
        raw = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError([Problem(str(cfg), f"cannot be read as YAML ({exc})", "check the file")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([Problem(str(cfg), "the file must be a YAML mapping with a hub: section", "")])
    hub = raw.get("hub")
    base = cfg.resolve().parent
    if isinstance(hub, dict) and isinstance(hub.get("data_dir"), str) and not os.path.isabs(hub["data_dir"]):
        hub["data_dir"] = str(base / hub["data_dir"])
    if isinstance(hub, dict) and isinstance(hub.get("database"), str) and hub["database"].startswith("sqlite:///"):
        rel = hub["database"].removeprefix("sqlite:///")
        if rel and not os.path.isabs(rel):
            hub["database"] = f"sqlite:///{base / rel}"
    secrets_dir = os.environ.get("GIA_SECRETS_DIR") or os.environ.get("CREDENTIALS_DIRECTORY")
    try:
        settings = HubSettings(**raw, _secrets_dir=secrets_dir)
    except ValidationError as exc:
        raise ConfigError(_problems_from_validation(exc), str(cfg)) from None
    problems = _check_files(settings)
    if problems:
        raise ConfigError(problems, str(cfg))
    return settings
