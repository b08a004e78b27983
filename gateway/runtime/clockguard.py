"""Clock safety: no reading is stored with a timestamp the gateway cannot trust.

A Raspberry Pi has no real-time clock: after a power cut it boots in 1970 (or at the last saved time)
until NTP answers. Stamping readings then would put them in the wrong month of a certified report. The
guard sits between the pollers and the ledger:

* The wall clock is *plausible* when it is at or after a floor: the later of a release floor and the
  newest reading stored so far (time must not run backwards, across restarts or while running; a
  2-s tolerance absorbs interleaved polls). Optionally the kernel must also report NTP
  synchronisation (`clock.require_ntp_sync`).
* While it is not plausible, readings are *held* in memory together with the monotonic time of the
  read (which does not jump). When the clock becomes plausible they are re-stamped
  `now - (monotonic now - monotonic at read)`, marked `estimated` (the time is reconstructed), and
  committed. The hold buffer is bounded; what it drops is counted and reported in health.
* Every jump of the wall clock against the monotonic clock beyond a tolerance is recorded in the
  ledger's event table (`clock_jump`, with both times), so the certification layer can see it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from drivers.errors import GiaError
from drivers.model import Quality, Sample, iso_utc, to_ms

log = logging.getLogger(__name__)

#: No reading of this release can be older than this (the release date, rounded down).
RELEASE_FLOOR = datetime(2026, 1, 1, tzinfo=UTC)
JUMP_TOLERANCE_S = 2.0


def kernel_clock_synchronised() -> bool | None:
    """adjtimex(2) state: True synced, False unsynchronised (TIME_ERROR), None when it cannot be asked."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes=0 only reads
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != 5  # TIME_ERROR: the clock is not synchronised


@dataclass
class ClockHealth:
    plausible: bool = False
    held: int = 0
    restamped: int = 0
    dropped: int = 0
    jumps: int = 0
    last_jump: str | None = None
    floor: str = ""


SampleSink = Callable[[Sequence[Sample]], Awaitable[None]]
EventSink = Callable[[str, str, int], Awaitable[None]]  # (kind, detail json, ts_ms)


@dataclass
class ClockGuard:
    """Between pollers and ledger. `wall` and `mono` are injectable for tests; defaults are the real clocks."""

    forward: SampleSink
    record_event: EventSink
    floor: datetime = RELEASE_FLOOR
    require_ntp_sync: bool = False
    max_held: int = 200_000
    wall: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    mono: Callable[[], float] = field(default=time.monotonic)
    synced: Callable[[], bool | None] = field(default=kernel_clock_synchronised)
    health: ClockHealth = field(default_factory=ClockHealth)

    def __post_init__(self) -> None:
        self._held: deque[tuple[float, Sample]] = deque()
        self._offset = self._wall_minus_mono()
        self.health.floor = iso_utc(self.floor)
        self.health.plausible = self._plausible()

    def _wall_minus_mono(self) -> float:
        return self.wall().timestamp() - self.mono()

    def _plausible(self) -> bool:
        # The floor follows what has been stored, so a clock stepped back while running is caught too;
        # the tolerance absorbs concurrent polls whose read instants interleave.
        if self.wall() < self.floor - timedelta(seconds=JUMP_TOLERANCE_S):
            return False
        return not (self.require_ntp_sync and self.synced() is False)

    async def submit(self, samples: Sequence[Sample]) -> None:
        """What pollers call instead of the ledger writer. Judged per submission, on the samples' own
        timestamps: a clock stepped back between two `check` ticks must not slip through."""
        tolerance = timedelta(seconds=JUMP_TOLERANCE_S)
        if self._plausible() and all(s.ts >= self.floor - tolerance for s in samples):
            newest = max((s.ts for s in samples), default=None)
            if newest is not None and newest > self.floor:
                self.floor = newest
            await self.forward(samples)
            return
        now = self.mono()
        for s in samples:
            if len(self._held) >= self.max_held:
                self._held.popleft()
                self.health.dropped += 1
            self._held.append((now, s))
        self.health.held = len(self._held)

    async def check(self) -> None:
        """One tick: detect jumps, and release held readings once the clock is plausible."""
        offset = self._wall_minus_mono()
        delta = offset - self._offset
        if abs(delta) > JUMP_TOLERANCE_S:
            now = self.wall()
            before = now - timedelta(seconds=delta)
            detail = json.dumps({"from": iso_utc(before), "to": iso_utc(now), "delta_s": round(delta, 3)})
            self.health.jumps += 1
            self.health.last_jump = detail
            log.warning("system clock jumped by %+.1f s (%s -> %s)", delta, iso_utc(before), iso_utc(now))
            await self.record_event("clock_jump", detail, to_ms(now))
        self._offset = offset
        was = self.health.plausible
        self.health.plausible = self._plausible()
        self.health.floor = iso_utc(self.floor)
        if self.health.plausible and not was:
            log.info(
                "system clock is plausible again (%s); releasing %d held readings",
                iso_utc(self.wall()),
                len(self._held),
            )
        elif was and not self.health.plausible:
            log.error(
                "system clock %s is before %s: holding readings until it is set",
                iso_utc(self.wall()),
                iso_utc(self.floor),
            )
        if self.health.plausible and self._held:
            await self._release()

    async def _release(self) -> None:
        now_wall, now_mono = self.wall(), self.mono()
        batch = []
        while self._held:
            read_mono, s = self._held.popleft()
            ts = now_wall - timedelta(seconds=now_mono - read_mono)
            quality = Quality.worst([s.quality, Quality.ESTIMATED])
            batch.append(replace(s, ts=ts, quality=quality))
        self.health.restamped += len(batch)
        self.health.held = 0
        await self.forward(batch)

    async def run(self) -> None:
        if not self.health.plausible:
            log.error(
                "system clock %s is before %s: holding readings until it is set",
                iso_utc(self.wall()),
                iso_utc(self.floor),
            )
        while True:
            await self.check()
            await asyncio.sleep(1.0)


class ClockImplausible(GiaError):
    """The wall clock is before what the ledger has stored (or the release floor): no time can be taken."""

    exit_code = 2
    http_status = 503
    error_code = "clock_implausible"


def guarded_now(newest_ms: int | None, *, wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> datetime:
    """The wall clock when the guard would accept it: at or after the release floor and the newest stored
    reading (the same floor `ClockGuard` holds readings against). What commands that record a time of
    their own (`gia meter-replacement`'s `recorded_at`, `gia keys rotate`) use, so a record cannot be
    stamped earlier than what the ledger already holds."""
    now = wall()
    floor = (
        max(RELEASE_FLOOR, datetime.fromtimestamp(newest_ms / 1000, UTC)) if newest_ms is not None else RELEASE_FLOOR
    )
    if now < floor - timedelta(seconds=JUMP_TOLERANCE_S):
        raise ClockImplausible(
            f"system clock {iso_utc(now)} is before {iso_utc(floor)} (the newest stored reading or the release"
            " floor): set the clock (NTP) and retry"
        )
    return now
