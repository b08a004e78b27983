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
          policy: {min_energy_coverage: "0.99", max_estimated_share: "0.01"}   # certification Policy fields
          shared_generators:
            - {id: kaigu-wind, site: laflora, channel: wind.generation, allocation: hourly_pro_rata}
          criteria:
            - {name: renewable_share, basis: market, threshold: "0.5"}
            - {name: co2_intensity, basis: location, threshold: "250"}

The database password never sits in the URL (it would end up in logs and process lists): a URL that
carries one is refused with the fix; give it as `database.password_file` or `GIA_HUB__DATABASE__PASSWORD`.
Problems come back as the agent's `ConfigError` (one line per problem: path, what, fix).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.credentials import check_token
from gateway.settings import (
    ConfigError,
    HttpConfig,
    InfluxConfig,
    MqttConfig,
    Problem,
    Role,
    _problems_from_validation,
    _secret,
    token_file_problems,
)

if TYPE_CHECKING:
    from gateway.certification.policy import Policy

DEFAULT_HUB_CONFIG_PATHS = (Path("hub.yaml"), Path("/etc/gia/hub.yaml"))
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class SharedGeneratorConfig(BaseModel):
    """A generator several sites of the area share (a wind park with its producer as one user)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN, description="the generator's id, e.g. 'kaigu-wind'")
    site: str = Field(description="the site whose reports meter it")
    channel: str = Field(description="its channel id in that site's reports, e.g. 'wind.generation'")
    allocation: Literal["contracted", "hourly_pro_rata"] = Field(
        description="contracted: fixed shares of the output; hourly_pro_rata: each hour's output split in"
        " proportion to the participants' consumption that hour"
    )
    shares: dict[str, str] = Field(default_factory=dict, description="contracted: site -> share ('0.3'); sum <= 1")
    participants: list[str] = Field(
        default_factory=list, description="hourly_pro_rata: the sites sharing it (default: every site of the area)"
    )


class CriterionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["renewable_share", "co2_intensity", "verified_consumption_share", "data_completeness"]
    basis: str | None = Field(
        default=None,
        description="renewable_share: physical | market | hourly; co2_intensity: location | market (kg/MWh)",
    )
    threshold: str = Field(description="a decimal string: a minimum (shares), a maximum (co2_intensity, kg/MWh)")


class AreaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN, description="lowercase area id, e.g. 'zemgale'")
    name: str = Field(default="", description="a human-readable area name")
    policy: dict[str, Any] = Field(
        default_factory=dict,
        description="the area's grading policy: fields of gateway.certification.policy.Policy (default: the"
        " scheme's published defaults); the area sets the thresholds, not the site",
    )
    timezone: str = Field(default="Europe/Riga", description="the area's civil months (deadlines, area reports)")
    shared_generators: list[SharedGeneratorConfig] = Field(default_factory=list)
    criteria: list[CriterionConfig] = Field(default_factory=list, description="the area's criteria set")
    deadline_days: int = Field(
        default=10,
        ge=0,
        le=366,
        description="the monthly area report is built once every site is in, or this"
        " many days after the month's end naming the sites missing",
    )

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: dict[str, Any]) -> dict[str, Any]:
        from gateway.certification.policy import policy_from_mapping

        policy_from_mapping(v)  # raises PolicyError (a ValueError) naming the field
        return v

    @model_validator(mode="after")
    def _definition(self) -> AreaConfig:
        from gateway.certification.area import definition_from_mapping

        definition_from_mapping(self.definition_json())  # raises AreaError (a ValueError) naming the problem
        return self

    def grading_policy(self) -> Policy:
        from gateway.certification.policy import policy_from_mapping

        return policy_from_mapping({"name": f"area {self.id} policy", **self.policy})

    def definition_json(self) -> dict[str, Any]:
        """What the area's reports embed and a verifier recomputes with (`certification.area`)."""
        return {
            "shared_generators": [g.model_dump() for g in self.shared_generators],
            "criteria": [c.model_dump() for c in self.criteria],
            "deadline_days": self.deadline_days,
            "timezone": self.timezone,
        }


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


class HubToken(BaseModel):
    """A portal/API token: roles (viewer, certifier, admin) scoped to areas, as the gateway's are to sites."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="who holds the token (shown in logs instead of the token)")
    token: SecretStr | None = Field(default=None, description="the bearer token; at least 32 characters")
    token_file: Path | None = Field(default=None, description="file holding the token")
    roles: list[Role] = Field(min_length=1, description="viewer, certifier and/or admin")
    areas: list[str] = Field(default_factory=lambda: ["*"], description="area ids this token may read, or '*'")

    @model_validator(mode="after")
    def _has_token(self) -> HubToken:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of 'token' or 'token_file'")
        if self.token is not None:
            check_token(self.token.get_secret_value())  # the same rule as the agent's tokens (token_file: below)
        return self

    def value(self) -> str:
        v = _secret(self.token, self.token_file)
        assert v is not None
        return v


class HubHttpConfig(HttpConfig):
    """As the agent's `http:` section, on another default port, with a request body limit and tokens
    scoped to areas (`anonymous_viewer_on_loopback` lets the portal be viewed from the hub's machine)."""

    listen: str = Field(default="127.0.0.1:8090", description="HOST:PORT to serve the hub API on")
    tokens: list[HubToken] = Field(default_factory=list, description="bearer tokens with roles, scoped to areas")  # type: ignore[assignment]
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="larger requests are refused (413)"
    )


class LiveConfig(BaseModel):
    """The area live view: the sites' live state from the central broker (`gateway/hub/live.py`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="consume the sites' live state (needs hub.mqtt)")
    share_group: str | None = Field(
        default="gia-hub",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="MQTT v5 shared-subscription group for `.../+/state`: the hub replicas of one group split"
        " the messages; null subscribes to every message (one replica)",
    )
    stale_after_s: float = Field(
        default=90.0, gt=0, le=86_400, description="a device (a site) not heard from this long is shown stale"
    )
    max_pending: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="site/device states waiting for the database at most; beyond, new keys are shed (counted)",
    )
    flush_s: float = Field(default=1.0, gt=0, le=60, description="live state is written to the database this often")
    stream_s: float = Field(default=2.0, gt=0, le=60, description="the live page's server-sent events interval")
    influxdb: InfluxConfig | None = Field(
        default=None,
        description="write the live view to InfluxDB (measurement `area`, tags area and site) every influx_interval_s",
    )
    influx_interval_s: float = Field(
        default=10.0, ge=1, le=3600, description="seconds between `area` points (aligned: replicas write the same)"
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
    max_evidence_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, le=2 * 1024 * 1024 * 1024, description="larger evidence zips are refused"
    )
    area_check_s: float = Field(
        default=60.0, gt=0, le=3600, description="how often due area reports are looked for (also after each report)"
    )
    live: LiveConfig = Field(default_factory=LiveConfig, description="the area live view (needs hub.mqtt)")

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
    files += [(f"hub.http.tokens[{i}].token_file", t.token_file) for i, t in enumerate(h.http.tokens)]
    weak = token_file_problems("hub.http", h.http.tokens)
    if h.database is not None:
        files.append(("hub.database.password_file", h.database.password_file))
    if h.mqtt is not None:
        files.append(("hub.mqtt.password_file", h.mqtt.password_file))
        if h.mqtt.tls is not None:
            files += [("hub.mqtt.tls.ca_file", h.mqtt.tls.ca_file), ("hub.mqtt.tls.cert_file", h.mqtt.tls.cert_file)]
    return weak + [
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
    http = hub.get("http") if isinstance(hub, dict) else None
    for t in http.get("tokens", []) if isinstance(http, dict) and isinstance(http.get("tokens"), list) else []:
        if isinstance(t, dict) and isinstance(t.get("token_file"), str) and not os.path.isabs(t["token_file"]):
            t["token_file"] = str(base / t["token_file"])
    secrets_dir = os.environ.get("GIA_SECRETS_DIR") or os.environ.get("CREDENTIALS_DIRECTORY")
    try:
        settings = HubSettings(**raw, _secrets_dir=secrets_dir)
    except ValidationError as exc:
        raise ConfigError(_problems_from_validation(exc), str(cfg)) from None
    problems = _check_files(settings)
    if problems:
        raise ConfigError(problems, str(cfg))
    return settings
