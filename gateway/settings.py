"""The one settings model: gia.yaml + `GIA_` environment variables (+ secret files), validated at start.

Precedence, highest first: environment (`GIA_MQTT__PASSWORD`, nested with `__`), secret files (in
`$CREDENTIALS_DIRECTORY` as systemd's LoadCredential= provides them, or the directory in `GIA_SECRETS_DIR`),
then the YAML file. Secrets are `SecretStr` so they never show up in logs or `check-config` output;
each secret can also be given as a `*_file` path.

`load_settings` raises `ConfigError` holding *every* problem found (schema and cross-references, device
maps included) as `Problem(path, message, fix)`: one line each, no traceback. The agent refuses to start
on any of them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from drivers.config import DEVICE_MODELS, DeviceConfig
from drivers.errors import GiaError
from forecasting.config import ForecastingConfig
from gateway.certification.config import CertificationConfig
from gateway.control.config import ControlConfig
from gateway.credentials import check_token, redact_url, redact_urls, refuse_url_credentials, token_problem
from gateway.flexibility.config import FlexibilityConfig
from gateway.hubpush.config import HubPushConfig

if TYPE_CHECKING:
    from gateway.i18n import Translator
    from gateway.rooms import Room
    from gateway.site.resolve import Site

DEFAULT_CONFIG_PATHS = (Path("gia.yaml"), Path("/etc/gia/gia.yaml"))


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latitude: float = Field(ge=-90, le=90, description="decimal degrees, -90..90")
    longitude: float = Field(ge=-180, le=180, description="decimal degrees, -180..180")


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="lowercase id, e.g. 'riga-north'")
    name: str = Field(default="", description="a human-readable site name")
    area: str | None = Field(default=None, description="the industrial area this site belongs to")
    timezone: str = Field(default="UTC", description="an IANA time zone such as Europe/Riga")
    location: Location | None = Field(default=None, description="latitude/longitude, for PV and weather")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Europe/Riga") from None
        return v


class LedgerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(default=None, description="ledger file; default <data_dir>/ledger.db")
    commit_interval_s: float = Field(default=1.0, gt=0, le=60, description="seconds between batched commits")
    max_batch: int = Field(default=5000, ge=1, description="commit early when this many samples are queued")
    max_queue: int = Field(default=100_000, ge=100, description="samples held in memory before back-pressure")
    retention_days: float = Field(default=30, gt=0, description="days to keep forwarded instant readings")
    counter_retention_days: float = Field(
        default=400, ge=400, description="days to keep energy-register readings (>= 400: certification)"
    )
    min_free_mb: float = Field(
        default=200, ge=0, description="below this much free disk, old instant readings are pruned first"
    )
    reserve_mb: float = Field(default=16, ge=0, description="space kept in reserve so the ledger can always prune")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="FULL survives power cuts; NORMAL only process crashes"
    )


class ClockConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    require_ntp_sync: bool = Field(
        default=False, description="also require the kernel to report NTP sync before readings are stamped"
    )
    max_held: int = Field(
        default=200_000,
        ge=1000,
        description="memory backstop: readings held while the clock has no trusted time at all (never set)",
    )
    max_step_s: float = Field(
        default=60.0,
        gt=0,
        description="a forward step of the clock up to this is trusted at once; readings stamped further ahead"
        " of monotonic time are quarantined (a bad or spoofed NTP answer)",
    )
    trust_after_s: float = Field(
        default=300.0,
        gt=0,
        description="how long a new clock time must hold steadily before it is trusted (a large forward step"
        " ends its quarantine; a clock behind the newest stored reading lowers that floor): the hold is"
        " sized in time",
    )


def _secret(value: SecretStr | None, file: Path | None) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    return None


def _check_url(v: str, schemes: Sequence[str], example: str, credentials_fix: str = "use the *_file fields") -> str:
    """A URL of one of `schemes` with a host, a valid port and no credentials (issue 15: a password in
    a URL was echoed by /healthz, the log and check-config). Messages show the URL redacted."""
    refuse_url_credentials(v, credentials_fix)
    parts = urlsplit(v)
    shown = repr(redact_url(v))
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"{shown} is not a {'/'.join(schemes)} URL; write e.g. {example}")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{shown}: port must be 1..65535") from None
    return v


class InfluxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s)://HOST:8086 of InfluxDB")
    api: Literal["v2", "v1"] = Field(default="v2", description="v2 (token/org/bucket: 2.x, 3.x, Cloud) or v1 (db)")
    token: SecretStr | None = Field(default=None, description="API token (v2); or set GIA_INFLUXDB__TOKEN")
    token_file: Path | None = Field(default=None, description="file holding the API token (v2)")
    org: str | None = Field(default=None, description="organisation (v2)")
    bucket: str | None = Field(default=None, description="bucket (v2)")
    database: str | None = Field(default=None, description="database (v1)")
    retention_policy: str | None = Field(default=None, description="retention policy (v1), default the db's")
    username: str | None = Field(default=None, description="user (v1)")
    password: SecretStr | None = Field(default=None, description="password (v1); or GIA_INFLUXDB__PASSWORD")
    password_file: Path | None = None
    # 1000 bounds what a catch-up after an outage holds in memory at once (each entry costs ~1.2 KB on
    # its way to the request; 5000 left a 6 MB high-water mark in the agent's RSS for good, measured by
    # bench/soak.py) and still writes ~500 k entries/s to InfluxDB 1.6 (bench/influx_sink.py).
    batch_size: int = Field(
        default=1000, ge=1, le=100_000, description="ledger entries (single values) per write request"
    )
    timeout_s: float = Field(default=10.0, gt=0, description="seconds per write request")
    verify_tls: bool = Field(default=True, description="verify the server certificate (https)")
    ca_file: Path | None = Field(default=None, description="CA bundle for a private server certificate")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(
            v,
            ("http", "https"),
            "http://127.0.0.1:8086",
            "give them as influxdb.token_file (v2) or influxdb.username and influxdb.password_file (v1)",
        )

    @model_validator(mode="after")
    def _flavour_fields(self) -> InfluxConfig:
        if self.api == "v2":
            missing = [n for n in ("org", "bucket") if getattr(self, n) is None]
            if self.token is None and self.token_file is None:
                missing.insert(0, "token")
            if missing:
                raise ValueError(
                    f"InfluxDB v2 needs {', '.join(missing)}; set them (token via GIA_INFLUXDB__TOKEN)"
                    " or use api: v1 with database"
                )
        elif self.database is None:
            raise ValueError("InfluxDB v1 needs 'database'")
        return self

    def token_value(self) -> str | None:
        return _secret(self.token, self.token_file)

    def password_value(self) -> str | None:
        return _secret(self.password, self.password_file)


class MqttTls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca_file: Path | None = Field(default=None, description="CA certificate to verify the broker")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="client key (mutual TLS)")
    insecure: bool = Field(default=False, description="skip broker hostname verification (testing only)")


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="mqtt://HOST:1883 or mqtts://HOST:8883")
    username: str | None = Field(default=None, description="broker user")
    password: SecretStr | None = Field(default=None, description="broker password; or GIA_MQTT__PASSWORD")
    password_file: Path | None = None
    tls: MqttTls | None = Field(default=None, description="TLS settings; mqtts:// enables TLS with system CAs")
    prefix: str = Field(default="gia/{site}", description="topic prefix; {site} is replaced by the site id")
    qos: Literal[0, 1, 2] = Field(default=1, description="0, 1 or 2")
    client_id: str | None = Field(default=None, description="MQTT client id; default gia-<site>")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    timeout_s: float = Field(default=10.0, gt=0, description="seconds to connect or publish")
    homeassistant_discovery: bool = Field(default=False, description="publish Home Assistant discovery configs")
    discovery_prefix: str = Field(default="homeassistant")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(
            v, ("mqtt", "mqtts"), "mqtt://127.0.0.1:1883", "give them as mqtt.username and mqtt.password_file"
        )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError(f"{v!r}: a topic prefix has no wildcards (#, +) and no leading/trailing '/'")
        return v

    def password_value(self) -> str | None:
        return _secret(self.password, self.password_file)

    @property
    def tls_enabled(self) -> bool:
        return self.tls is not None or urlsplit(self.url).scheme == "mqtts"


Role = Literal["viewer", "certifier", "admin"]


class ApiToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="who holds the token (shown in logs instead of the token)")
    token: SecretStr | None = Field(default=None, description="the bearer token; at least 32 characters")
    token_file: Path | None = Field(default=None, description="file holding the token")
    roles: list[Role] = Field(min_length=1, description="viewer, certifier and/or admin")
    sites: list[str] = Field(default_factory=lambda: ["*"], description="site ids this token may read, or '*'")

    @model_validator(mode="after")
    def _has_token(self) -> ApiToken:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of 'token' or 'token_file'")
        if self.token is not None:
            check_token(self.token.get_secret_value())  # a token_file is read and checked by _check_secrets
        return self

    def value(self) -> str:
        v = _secret(self.token, self.token_file)
        assert v is not None
        return v


class HttpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    listen: str = Field(default="127.0.0.1:8080", description="HOST:PORT to serve the web page and API on")
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate to serve HTTPS")
    tls_key_file: Path | None = Field(default=None, description="PEM key to serve HTTPS")
    tokens: list[ApiToken] = Field(default_factory=list, description="bearer tokens with roles")
    anonymous_viewer_on_loopback: bool = Field(
        default=False, description="let clients on 127.0.0.1/::1 view the page and live API without a token"
    )
    max_connections: int = Field(
        default=100,
        ge=4,
        le=10_000,
        description="open HTTP connections at most; more are closed when accepted (idle sockets cannot "
        "use up the descriptors devices and the ledger need). Lowered at start if the process's "
        "descriptor limit (LimitNOFILE) is too small for it",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="a new connection that sends no complete request in this time is closed"
    )
    keep_alive_s: float = Field(
        default=5.0, ge=1, le=300, description="an idle keep-alive connection is closed after this time"
    )
    expensive_per_client: int = Field(
        default=4,
        ge=1,
        le=100,
        description="history, report and evidence requests one client may have in flight; more get 429 "
        "with Retry-After (a viewer cannot queue the reader threads full)",
    )
    report_builds: int = Field(
        default=1, ge=1, le=8, description="report, PDF and evidence builds at once (each uses a CPU core)"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks of reverse proxies whose X-Forwarded-For is believed (default none)",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an IP address or network such as 10.0.0.5 or 10.0.0.0/24") from None
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{v!r}: write HOST:PORT, e.g. 127.0.0.1:8080")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{v!r}: port must be 1..65535")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if host != "localhost":
                raise ValueError(f"{v!r}: host must be an IP address or localhost") from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        if self.trusted_proxies and self.anonymous_viewer_on_loopback:
            # Behind a proxy every visitor arrives from the proxy's address (often loopback): anonymous
            # viewing "on loopback" would then be anonymous viewing for the whole network.
            raise ValueError(
                "anonymous_viewer_on_loopback cannot be used behind a proxy (trusted_proxies is set);"
                " remove one of them and give viewers a token"
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class Settings(BaseSettings):
    """The whole configuration. Build it with `load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="GIA_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    site: SiteConfig = Field(description="the site: id, name, area, timezone, location")
    data_dir: Path = Field(default=Path("/var/lib/gia"), description="where the ledger, keys and models live")
    devices: list[DeviceConfig] = Field(default_factory=list, description="the devices to poll")
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    clock: ClockConfig = Field(default_factory=ClockConfig, description="clock safety (no RTC on a Pi)")
    influxdb: InfluxConfig | None = Field(default=None, description="InfluxDB sink; omit to disable")
    mqtt: MqttConfig | None = Field(default=None, description="MQTT sink; omit to disable")
    http: HttpConfig = Field(default_factory=HttpConfig)
    forecasting: ForecastingConfig = Field(default_factory=ForecastingConfig)
    flexibility: FlexibilityConfig = Field(default_factory=FlexibilityConfig)
    control: ControlConfig = Field(default_factory=ControlConfig, description="acting on the plan (off by default)")
    hub: HubPushConfig | None = Field(
        default=None, description="push reports and key transitions to the area hub over HTTPS; omit to disable"
    )
    certification: CertificationConfig = Field(default_factory=CertificationConfig)
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats secret files beats the YAML file (passed as init kwargs by load_settings).
        return (env_settings, file_secret_settings, init_settings)

    @property
    def ledger_path(self) -> Path:
        return self.ledger.path if self.ledger.path is not None else self.data_dir / "ledger.db"

    def device(self, device_id: str) -> DeviceConfig:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)


def _(message: str) -> str:
    """Marks a message for the catalogue (tests/i18n/catalogue.py extracts it); `Problem.render`
    translates it when a command shows it."""
    return message


#: pydantic's error types an operator meets most, as catalogue messages filled from the error's context.
#: English keeps pydantic's own wording ("Input should be greater than 0"); other languages use these.
PYDANTIC_MESSAGES: Final[dict[str, str]] = {
    "greater_than": _("must be greater than {gt}"),
    "greater_than_equal": _("must be at least {ge}"),
    "less_than": _("must be less than {lt}"),
    "less_than_equal": _("must be at most {le}"),
    "int_parsing": _("must be a whole number"),
    "int_type": _("must be a whole number"),
    "int_from_float": _("must be a whole number"),
    "float_parsing": _("must be a number"),
    "float_type": _("must be a number"),
    "bool_parsing": _("must be true or false"),
    "bool_type": _("must be true or false"),
    "string_type": _("must be text"),
    "string_too_short": _("must be at least {min_length} characters long"),
    "too_short": _("must have at least {min_length} items"),
    "list_type": _("must be a list"),
    "dict_type": _("must be a section (key: value lines)"),
    "model_type": _("must be a section (key: value lines)"),
    "literal_error": _("must be one of {expected}"),
    "enum": _("must be one of {expected}"),
    "extra_forbidden": _("unknown field (misspelt, or in the wrong section)"),
    "missing": _("required field is missing"),
}
UNKNOWN_FIELD_FIX: Final = _("remove it or check its spelling against deploy/gia.example.yaml")


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str
    fix: str = ""
    #: the catalogue message `message` says in English, and its fields: what `render` translates
    msgid: str = ""
    values: tuple[tuple[str, str], ...] = ()
    fix_msgid: str = ""

    def __str__(self) -> str:
        return self._line(self.message, self.fix, "fix")

    def render(self, t: Translator) -> str:
        """The line in `t`'s language: the catalogue's message where there is one, else the English text
        (a validator's own sentence, a field's description)."""
        if t.lang == "en":
            return str(self)
        message = t(self.msgid, **dict(self.values)) if self.msgid else self.message
        fix = t(self.fix_msgid) if self.fix_msgid else self.fix
        return self._line(message, fix, t("fix"))

    def _line(self, message: str, fix: str, fix_word: str) -> str:
        # redact_urls: no validator echoes a URL's credentials, and none ever will by accident either
        line = redact_urls(f"{self.path}: {message}" + (f" — {fix_word}: {fix}" if fix else ""))
        # One problem, one line: a key or value from the file may hold a newline or control
        # characters, which must neither split the line nor forge another one.
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


class ConfigError(GiaError):
    exit_code = 2
    http_status = 400
    error_code = "bad_config"

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(str(p) for p in problems))


def find_config(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[0]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(loc[i - 1], int) and part in DEVICE_MODELS and loc[0] == "devices":
            continue  # the discriminated union's branch name: not part of the user's path
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _fix_for(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The field's description is its fix: walk the models along the error path to find it."""
    current: Any = model
    description = ""
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None:
            if part in DEVICE_MODELS:
                current = DEVICE_MODELS[part]
            continue
        info = fields.get(part)
        if info is None:
            if part in DEVICE_MODELS:
                current = DEVICE_MODELS[part]
            continue
        description = info.description or ""
        current = _model_of(info.annotation)
    return description


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _problems_from_validation(exc: ValidationError, model: type[Settings] = Settings) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        msgid = PYDANTIC_MESSAGES.get(err["type"], "")
        values = tuple(
            (k, str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
            for k, v in (err.get("ctx") or {}).items()
        )
        fix_msgid = ""
        if err["type"] == "extra_forbidden":
            msg = msgid
            fix = fix_msgid = UNKNOWN_FIELD_FIX
        elif err["type"] == "missing":
            msg = msgid
            fix = _fix_for(model, loc)
        else:
            fix = _fix_for(model, loc)
        problems.append(Problem(_loc(loc), msg, fix, msgid=msgid, values=values, fix_msgid=fix_msgid))
    return problems


#: Checks that need the whole configuration (cross-references). Each returns problems, never raises.
CrossCheck = Callable[[Settings, Path], list[Problem]]


def _check_devices_raw(raw: dict[str, Any], base: Path) -> list[Problem]:
    """Device checks that work on the raw file, so they are reported even when other fields are wrong."""
    problems: list[Problem] = []
    devices = raw.get("devices")
    if not isinstance(devices, list):
        return problems
    seen: dict[str, int] = {}
    channel_ids: dict[str, str] = {}
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            continue
        dev_id = dev.get("id")
        if isinstance(dev_id, str):
            if dev_id in seen:
                problems.append(
                    Problem(
                        f"devices[{i}].id",
                        f"duplicate device id {dev_id!r} (also devices[{seen[dev_id]}])",
                        "give every device its own id",
                    )
                )
            seen.setdefault(dev_id, i)
        channels = dev.get("channels")
        for j, ch in enumerate(channels if isinstance(channels, list) else []):
            if not isinstance(ch, dict):
                continue
            cid = ch.get("id") or f"{dev_id}.{ch.get('role')}"
            if not isinstance(cid, str):
                continue  # the schema reports a non-text id; it cannot collide with anything here
            if cid in channel_ids:
                problems.append(
                    Problem(
                        f"devices[{i}].channels[{j}]",
                        f"duplicate channel id {cid!r}",
                        "set a distinct 'id' on one of the channels",
                    )
                )
            channel_ids[cid] = str(dev_id)
    return problems


def _check_maps_raw(raw: dict[str, Any], base: Path) -> list[Problem]:
    """Map problems of a file whose schema is wrong too (a valid file's maps are loaded, once, by
    `gateway.site.resolve.resolve_site`), so one run of check-config names every mistake."""
    from drivers.maps import MapError, load_map

    problems: list[Problem] = []
    devices = raw.get("devices")
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        map_name = dev.get("map") if isinstance(dev, dict) else None
        if isinstance(map_name, str) and dev.get("driver", "modbus") == "modbus":
            try:
                load_map(map_name, base_dir=base)
            except MapError as exc:
                problems.append(
                    Problem(
                        f"devices[{i}].map",
                        str(exc),
                        "use a bundled map name (see 'gia sim --list') or a valid map file",
                    )
                )
    return problems


class _FileToken(Protocol):
    token_file: Path | None


def token_file_problems(section: str, tokens: Sequence[_FileToken]) -> list[Problem]:
    """Weak tokens read from `token_file`s (inline ones are checked by the model): an empty or short
    file is a config error naming the field, as an inline token is (issue 15, finding 1). Shared by the
    agent's `http:` and the hub's `hub.http:` sections."""
    problems = []
    for i, t in enumerate(tokens):
        if t.token_file is None or not t.token_file.is_file():
            continue  # a missing file is reported with the other missing files
        try:
            value = t.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(f"{section}.tokens[{i}].token_file", f"cannot be read ({exc})", "check the file"))
            continue
        problem = token_problem(value)
        if problem is not None:
            fix = f"write a strong one into it: openssl rand -hex 32 > {t.token_file}"
            problems.append(Problem(f"{section}.tokens[{i}].token_file", problem, fix))
    return problems


def _check_secrets(settings: Settings, base: Path) -> list[Problem]:
    problems: list[Problem] = []
    files: list[tuple[str, Path | None]] = []
    if settings.influxdb is not None:
        files += [
            ("influxdb.token_file", settings.influxdb.token_file),
            ("influxdb.password_file", settings.influxdb.password_file),
        ]
    if settings.mqtt is not None:
        files.append(("mqtt.password_file", settings.mqtt.password_file))
        if settings.mqtt.tls is not None:
            files += [
                ("mqtt.tls.ca_file", settings.mqtt.tls.ca_file),
                ("mqtt.tls.cert_file", settings.mqtt.tls.cert_file),
                ("mqtt.tls.key_file", settings.mqtt.tls.key_file),
            ]
        if settings.mqtt.username and settings.mqtt.password_value() is None:
            problems.append(
                Problem(
                    "mqtt.password",
                    f"user {settings.mqtt.username!r} has no password",
                    "set GIA_MQTT__PASSWORD or mqtt.password_file",
                )
            )
    files += [
        ("http.tls_cert_file", settings.http.tls_cert_file),
        ("http.tls_key_file", settings.http.tls_key_file),
    ]
    files += [(f"http.tokens[{i}].token_file", t.token_file) for i, t in enumerate(settings.http.tokens)]
    problems += token_file_problems("http", settings.http.tokens)
    files += [  # chargers' passwords and TLS files (OCPP devices; OPC UA devices check theirs themselves)
        (f"devices[{i}].{name}", getattr(d, name, None))
        for i, d in enumerate(settings.devices)
        if d.driver == "ocpp"
        for name in ("password_file", "tls_cert_file", "tls_key_file")
    ]
    for path, f in files:
        if f is not None and not f.is_file():
            problems.append(Problem(path, f"file {str(f)!r} does not exist", "create it or correct the path"))
    if settings.http.enabled and not settings.http.tokens and not settings.http.anonymous_viewer_on_loopback:
        problems.append(
            Problem(
                "http.tokens",
                "the HTTP API has no tokens, so nobody can use it",
                "add a token (openssl rand -hex 32) with roles, or set http.enabled: false",
            )
        )
    host = settings.http.host
    if settings.http.anonymous_viewer_on_loopback and host not in ("127.0.0.1", "::1", "localhost"):
        problems.append(
            Problem(
                "http.anonymous_viewer_on_loopback",
                f"only allowed when listening on loopback, not {host}",
                "listen on 127.0.0.1 or remove anonymous_viewer_on_loopback",
            )
        )
    return problems


def _check_mqtt_devices(settings: Settings, base: Path) -> list[Problem]:
    if settings.mqtt is not None:
        return []
    return [
        Problem(f"devices[{i}]", f"MQTT device {d.id!r} needs a broker", "add an mqtt: section with the broker url")
        for i, d in enumerate(settings.devices)
        if d.driver == "mqtt"
    ]


def _check_opcua_devices(settings: Settings, base: Path) -> list[Problem]:
    """OPC UA devices: the node map loads, the certificate and password files exist."""
    from drivers.opcua.config import OpcuaDeviceConfig, device_problems

    return [
        Problem(f"devices[{i}].{field}", message, fix)
        for i, d in enumerate(settings.devices)
        if isinstance(d, OpcuaDeviceConfig)
        for field, message, fix in device_problems(d, base)
    ]


def _check_flexibility(settings: Settings, base: Path) -> list[Problem]:
    from gateway.flexibility.checks import check_flexibility

    return check_flexibility(settings, base)


def _check_control(settings: Settings, base: Path) -> list[Problem]:
    from gateway.control.checks import check_control

    return check_control(settings, base)


CROSS_CHECKS: list[CrossCheck] = [
    _check_secrets,
    _check_mqtt_devices,
    _check_opcua_devices,
    _check_flexibility,
    _check_control,
]


def _is_path_key(key: object) -> bool:
    return isinstance(key, str) and (key.endswith(("_file", "_dir")) or key == "path")


def _resolve_paths(raw: Any, base: Path, _seen: set[int] | None = None) -> None:
    """Relative paths in the file are relative to the file, not to wherever the agent was started:
    `data_dir`, every `*_file` (token files, TLS files, password files), `*_dir` and `path`, in every
    section. (Before issue 21 only `data_dir` was, so `token_file: viewer-token` failed from another
    working directory.) YAML anchors can make a node contain itself (`a: &x [*x]`): each node is
    visited once."""
    seen = _seen if _seen is not None else set()
    if id(raw) in seen:
        return
    if isinstance(raw, dict):
        seen.add(id(raw))
        for key, value in raw.items():
            if _is_path_key(key) and isinstance(value, str) and value and not os.path.isabs(value):
                raw[key] = str(base / value)
            else:
                _resolve_paths(value, base, seen)
    elif isinstance(raw, list):
        seen.add(id(raw))
        for item in raw:
            _resolve_paths(item, base, seen)


@dataclass(frozen=True, slots=True)
class Config:
    """What a command starts from: the settings, the site resolved from them, and the config's folder."""

    settings: Settings
    site: Site
    base_dir: Path
    #: the file they were read from
    path: Path | None = None


def _registered_rooms() -> Sequence[Room]:
    """The registry's rooms, so a room's own section (one added with its folder and a registry line, such
    as `hub:`) is accepted by every command. Imported when a file is loaded: the registry imports the
    rooms, which import this module."""
    from gateway.registry import ROOMS

    return ROOMS


def settings_class(rooms: Sequence[Room] = ()) -> type[Settings]:
    """`Settings` plus a section for each room whose section it does not declare already.

    The built-in rooms' sections are declared on `Settings` itself (typed, documented in the example
    file); a room added later (a new sink, a protocol) brings its own config model and gets its section
    here, so adding it touches its folder and the registry only.
    """
    extra: dict[str, Any] = {
        r.section: (r.config | None, Field(default=None, description=f"the {r.name} room; omit to disable"))
        for r in rooms
        if r.section and r.config is not None and r.section not in Settings.model_fields
    }
    if not extra:
        return Settings
    model: type[Settings] = create_model("Settings", __base__=Settings, **extra)
    return model


def load_settings(
    path: Path | None = None, *, extra_checks: Sequence[CrossCheck] = (), rooms: Sequence[Room] = ()
) -> Settings:
    """Read and validate the configuration; raise ConfigError with every problem found.

    Device maps are not loaded here (see `load_config`, which also resolves the site)."""
    settings, _base, problems, source = _load(path, extra_checks, rooms)
    if problems:
        raise ConfigError(problems, source)
    return settings


def load_config(
    path: Path | None = None, *, extra_checks: Sequence[CrossCheck] = (), rooms: Sequence[Room] = ()
) -> Config:
    """The settings and the resolved site (each device map loaded once); ConfigError with every problem.

    `rooms`: rooms beyond the built-in ones whose config sections the file may hold."""
    from gateway.site.resolve import resolve_site

    settings, base, problems, source = _load(path, extra_checks, rooms)
    try:
        site = resolve_site(settings, base_dir=base)
    except ConfigError as exc:
        problems = problems + exc.problems
    if problems:
        raise ConfigError(problems, source)
    return Config(settings, site, base, find_config(path).resolve())


def _load(
    path: Path | None, extra_checks: Sequence[CrossCheck], rooms: Sequence[Room]
) -> tuple[Settings, Path, list[Problem], str]:
    cfg_path = find_config(path)
    if not cfg_path.exists():
        raise ConfigError(
            [
                Problem(
                    str(cfg_path),
                    "configuration file not found",
                    "pass --config FILE or copy deploy/gia.example.yaml to /etc/gia/gia.yaml",
                )
            ]
        )
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(str(cfg_path), f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8")]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [Problem(str(cfg_path), f"cannot be read: {exc.strerror}", "check the path and its permissions")]
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(
            [
                Problem(
                    f"{cfg_path} ({where})",
                    f"not valid YAML: {getattr(exc, 'problem', exc)}",
                    "check indentation and quoting at that line",
                )
            ]
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            [
                Problem(
                    str(cfg_path),
                    "the file must be a YAML mapping (site:, devices:, ...)",
                    "start from deploy/gia.example.yaml",
                )
            ]
        )
    odd = [k for k in raw if not isinstance(k, str)]
    if odd:
        raise ConfigError(
            [
                Problem(
                    "(top level)",
                    f"key {k!r} is not a section name",
                    "top-level keys are site, devices, ledger, mqtt, ...",
                )
                for k in odd
            ]
        )
    base = cfg_path.resolve().parent
    _resolve_paths(raw, base)
    secrets_dir = os.environ.get("GIA_SECRETS_DIR") or os.environ.get("CREDENTIALS_DIRECTORY")
    raw_problems = _check_devices_raw(raw, base)
    try:
        model = settings_class(rooms or _registered_rooms())
        settings = model(**raw, _secrets_dir=secrets_dir)
    except ValidationError as exc:
        schema_problems = _problems_from_validation(exc, model)
        known = {(p.path, p.message) for p in schema_problems}
        extra = [p for p in raw_problems + _check_maps_raw(raw, base) if (p.path, p.message) not in known]
        raise ConfigError(schema_problems + extra, str(cfg_path)) from None
    problems = raw_problems + [p for check in [*CROSS_CHECKS, *extra_checks] for p in check(settings, base)]
    return settings, base, problems, str(cfg_path)
