"""The plug every feature room offers the composition root, and the shared services rooms receive.

A *room* is a feature in its own folder (devices, ledger, each sink, certification, forecasting, the
HTTP API, ...): a config section of its own (a pydantic model) and one async function that turns the
resolved site and the shared services into named `Part`s. A part is a supervised task (restarted with
backoff when it fails) with a `reasons()` callable saying why it makes the agent unhealthy right now.
The composition root (gateway/agent.py) builds the services, asks every registered room for its parts,
and runs them; `/healthz` is the union of the parts' reasons plus the sections rooms publish on the
`HealthBoard`. Adding a sink, a protocol or a room touches its folder and one line of the registry
(gateway/registry.py) — nothing else.

Rooms cooperate only through `Services`: the ledger's writer and reader, the clock and its guard (where
samples enter), the live snapshot, the connections devices share, the retained MQTT outbox that reports and
forecasts publish into, the providers the HTTP API serves, and the sinks' cursors that retention and the
disk guard respect. Nothing is global: two agents can run in one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    from drivers.services import DriverServices
    from gateway.i18n import Translator
    from gateway.ledger.reader import LedgerReader
    from gateway.ledger.writer import LedgerWriter
    from gateway.runtime.clock import Clock
    from gateway.runtime.clockguard import ClockGuard
    from gateway.runtime.diskguard import DiskGuard
    from gateway.runtime.live import LiveState
    from gateway.settings import Settings
    from gateway.sinks.outbox import LatestOutbox
    from gateway.site.resolve import Site


def no_reasons() -> list[str]:
    return []


@dataclass(frozen=True)
class Part:
    """A named, supervised task of a room: `run` until cancelled; `reasons()` why it is unhealthy now."""

    name: str
    run: Callable[[], Awaitable[None]]
    reasons: Callable[[], list[str]] = no_reasons
    max_backoff_s: float = 60.0


class ReportProvider(Protocol):
    """What certification offers the API (gateway/certification/service.py: ReportService)."""

    def report_json(self, site: str, month: str) -> bytes: ...

    def report_csv(self, site: str, month: str) -> bytes: ...

    def report_pdf(self, site: str, month: str, t: Translator | None = None) -> bytes: ...

    def write_evidence_zip(self, site: str, month: str, out: Any) -> None: ...

    def public_keys(self) -> list[dict[str, str]]: ...

    def recent_months(self) -> tuple[str, str]: ...


def _nothing(*_args: Any) -> Any:
    return None


@dataclass
class Providers:
    """What the HTTP API serves that other rooms compute (set by those rooms, read by the API room)."""

    reports: ReportProvider | None = None
    forecast: Callable[[str], dict[str, Any] | None] = _nothing
    flexibility: Callable[[], dict[str, Any] | None] = _nothing
    #: more routes: each is called with (the FastAPI app, the API's Authenticator) when the app is built
    routes: list[Callable[[Any, Any], None]] = field(default_factory=list)


@dataclass
class HealthBoard:
    """Sections of `/healthz` that rooms publish: `add("sinks", fn, key="mqtt")` puts `fn()` at
    `health["sinks"]["mqtt"]`; without a key, `fn()` is the whole section."""

    _sections: dict[str, dict[str | None, Callable[[], Any]]] = field(default_factory=dict)

    def add(self, section: str, fn: Callable[[], Any], *, key: str | None = None) -> None:
        self._sections.setdefault(section, {})[key] = fn

    def sections(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, entries in self._sections.items():
            if None in entries:
                out[name] = entries[None]()
            else:
                out[name] = {str(k): fn() for k, fn in entries.items()}
        return out


@dataclass
class Services:
    """What the composition root builds once and every room may use."""

    settings: Settings
    site: Site
    base_dir: Path
    clock: Clock
    writer: LedgerWriter
    reader: LedgerReader
    #: where samples enter the ledger (the clock guard stamps or holds them first)
    guard: ClockGuard
    disk: DiskGuard
    live: LiveState
    #: the connections devices share (Modbus buses, MQTT device hub, M-Bus lines, OCPP servers)
    drivers: DriverServices
    #: resources a room keeps open for the agent's lifetime (entered in room order, left in reverse)
    stack: contextlib.AsyncExitStack
    health: HealthBoard
    #: latest retained MQTT message per topic (reports, forecasts, flexibility); published by the MQTT sink
    retained: LatestOutbox[str, bytes]
    #: latest InfluxDB lines per key (forecasts, flexibility); written by the InfluxDB sink
    influx_extras: LatestOutbox[str, list[str]]
    providers: Providers = field(default_factory=Providers)
    #: sink name -> its forwarded cursor (retention and the disk guard never prune what a sink still needs)
    cursors: dict[str, Callable[[], int]] = field(default_factory=dict)
    #: True once the agent is stopping (a part that ends then is not an error)
    stopping: Callable[[], bool] = lambda: False
    #: the whole `/healthz` report (set by the composition root)
    report: Callable[[], dict[str, Any]] = dict
    #: called first when a stop is requested (the HTTP server starts closing its connections)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    #: the file the settings came from (the device setup page changes it); None when built in code
    config_path: Path | None = None

    def forwarded_seq(self) -> int:
        """The highest seq every sink has forwarded (the ledger head when there are no sinks)."""
        return min((c() for c in self.cursors.values()), default=self.writer.head_seq)

    def section(self, name: str) -> Any:
        """A room's config section (None when the file omits it)."""
        return getattr(self.settings, name, None)


PartsFn = Callable[["Site", Services], Awaitable[Sequence[Part]]]


@dataclass(frozen=True)
class Room:
    """A feature: its config section (name and model; None for rooms without one) and its parts."""

    name: str
    parts: PartsFn
    section: str | None = None
    config: type[BaseModel] | None = None
