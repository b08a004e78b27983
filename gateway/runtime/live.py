"""The live snapshot: latest value of every quantity and the availability of every device.

Pollers write it right after a read (before the ledger commit, for latency); the web page, the SSE
stream, the MQTT availability topics and /healthz read it. It is never a source of record: the ledger
is. Subscribers get bounded queues; a slow subscriber loses old events (counted), never blocks a poller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from drivers.model import Sample, iso_utc


@dataclass
class DeviceStatus:
    id: str
    device_class: str
    online: bool | None = None  # None: not polled yet
    last_ok: datetime | None = None
    last_error: str | None = None
    polls: int = 0
    #: polls that returned values (each one a reading handed to the ledger): the soak counts them
    #: against the ledger to show no reading was lost between the device and the disk
    readings: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    overruns: int = 0
    #: values the device sent that the validity rules refused (stored `invalid`), and the latest reason
    invalid_values: int = 0
    last_invalid: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "class": self.device_class,
            "state": "unknown" if self.online is None else ("online" if self.online else "offline"),
            "last_reading": iso_utc(self.last_ok) if self.last_ok else None,
            "last_error": self.last_error,
            "polls": self.polls,
            "readings": self.readings,
            "errors": self.errors,
            "overruns": self.overruns,
            "invalid_values": self.invalid_values,
            "last_invalid": self.last_invalid,
        }


EventKind = Literal["samples", "availability"]


@dataclass(frozen=True, slots=True)
class LiveEvent:
    kind: EventKind
    device: str
    samples: tuple[Sample, ...] = ()
    online: bool | None = None


@dataclass
class Subscription:
    queue: asyncio.Queue[LiveEvent]
    dropped: int = 0
    #: the kinds of event this subscriber wants (None: all). The MQTT sink wants availability only: with
    #: every event queued for it, a sink waiting on a slow broker held 10 000 events of samples (~8 MB
    #: in the attack soak) it would only have skipped
    kinds: frozenset[EventKind] | None = None

    async def get(self) -> LiveEvent:
        return await self.queue.get()


@dataclass
class LiveState:
    devices: dict[str, DeviceStatus] = field(default_factory=dict)
    values: dict[tuple[str, str], Sample] = field(default_factory=dict)
    _subs: list[Subscription] = field(default_factory=list)

    @classmethod
    def for_devices(cls, classes: dict[str, str]) -> LiveState:
        return cls(devices={d: DeviceStatus(d, c) for d, c in classes.items()})

    def subscribe(self, maxsize: int = 1000, *, kinds: frozenset[EventKind] | None = None) -> Subscription:
        sub = Subscription(asyncio.Queue(maxsize=maxsize), kinds=kinds)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def _emit(self, event: LiveEvent) -> None:
        for sub in self._subs:
            if sub.kinds is not None and event.kind not in sub.kinds:
                continue
            if sub.queue.full():
                sub.queue.get_nowait()  # drop the oldest: live views want the newest
                sub.dropped += 1
            sub.queue.put_nowait(event)

    def update(self, device: str, samples: Sequence[Sample]) -> None:
        status = self.devices.get(device)
        for s in samples:
            self.values[(s.device, s.quantity)] = s
            if s.reason is not None and status is not None:
                # Refused by a validity rule (issue 15): counted in health with the reason, per device.
                status.invalid_values += 1
                status.last_invalid = f"{s.quantity}: {s.reason}"
        self._emit(LiveEvent("samples", device, tuple(samples)))

    def set_online(self, device: str, online: bool) -> bool:
        """Record availability; returns True when it changed (callers log transitions, not every poll)."""
        status = self.devices[device]
        changed = status.online != online
        status.online = online
        if changed:
            self._emit(LiveEvent("availability", device, online=online))
        return changed

    def latest(self, device: str) -> list[Sample]:
        return [s for (d, _), s in self.values.items() if d == device]
