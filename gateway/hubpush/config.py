"""The gateway's `hub:` section: where the area hub is and how this site proves who it is.

    hub:
      url: https://hub.zemgale.example:8443     # the hub's push API (http only to a loopback hub)
      token_file: /etc/gia/hub.token             # the per-site token `gia hub enroll --token-file` wrote
      ca_file: /etc/gia/hub-ca.pem               # trust the hub's certificate (a private CA); default: system CAs
      evidence: true                             # also push each report's evidence bundle (zip)

The token never sits in the URL and is never logged; `GIA_HUB__TOKEN` works as for every secret.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.credentials import refuse_url_credentials


class HubPushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="the area hub's base URL, e.g. https://hub.example:8443")
    token: SecretStr | None = Field(default=None, description="this site's push token (gia hub enroll)")
    token_file: Path | None = Field(default=None, description="file holding the push token")
    ca_file: Path | None = Field(default=None, description="PEM CA certificate(s) to trust for the hub's TLS")
    timeout_s: float = Field(default=30.0, gt=0, le=600, description="seconds to wait for the hub's answer")
    evidence: bool = Field(default=False, description="push each report's evidence bundle (zip) after it")
    retry_max_s: float = Field(default=300.0, ge=1, le=86400, description="longest wait between retries")
    poll_s: float = Field(default=30.0, gt=0, le=3600, description="how often new closings are looked for")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        refuse_url_credentials(v, "give the site's push token as hub.token_file")
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{v!r} is not an https URL; write e.g. https://hub.example:8443")
        if parts.scheme == "http":
            try:
                loopback = ipaddress.ip_address(parts.hostname).is_loopback
            except ValueError:
                loopback = parts.hostname == "localhost"
            if not loopback:
                raise ValueError("the hub is reached over https (http only to a hub on this machine)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _token(self) -> HubPushConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of 'token' or 'token_file' (the site's push token)")
        return self

    def token_value(self, base: Path) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        path = self.token_file if self.token_file.is_absolute() else base / self.token_file
        return path.read_text().strip()
