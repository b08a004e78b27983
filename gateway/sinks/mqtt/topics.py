"""MQTT topic names, built and validated in one place (the contract's names; see CONTRACT.md)."""

from __future__ import annotations

from dataclasses import dataclass


def _level(value: str, what: str) -> str:
    if not value or any(c in value for c in "/#+\0"):
        raise ValueError(f"{what} {value!r} cannot be an MQTT topic level (no '/', '#', '+' or empty)")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str  # already formatted, e.g. "gia/riga-north"

    @classmethod
    def for_site(cls, template: str, site: str) -> Topics:
        return cls(template.replace("{site}", _level(site, "site id")))

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    def state(self, device: str) -> str:
        return f"{self.prefix}/{_level(device, 'device id')}/state"

    def availability(self, device: str) -> str:
        return f"{self.prefix}/{_level(device, 'device id')}/availability"

    def forecast(self, target: str) -> str:
        return f"{self.prefix}/forecast/{_level(target, 'forecast target')}"

    @property
    def flex_signal(self) -> str:
        return f"{self.prefix}/flex/signal"

    def flex_s2(self, message: str) -> str:
        return f"{self.prefix}/flex/s2/{_level(message, 'S2 message type')}"

    def report(self, month: str) -> str:
        return f"{self.prefix}/report/{_level(month, 'month')}"

    @property
    def key_transitions(self) -> str:
        """The site's key-transition statements (retained; the area hub follows them from a pinned key)."""
        return f"{self.prefix}/keys/transition"
