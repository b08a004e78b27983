"""Clock safety: no reading is stored with a timestamp the gateway cannot trust.

A Raspberry Pi has no real-time clock: after a power cut it boots in 1970 (or at the last saved time)
until NTP answers. Stamping readings then would put them in the wrong month of a certified report. And
an NTP answer can be wrong (a bad or spoofed server): before issue 15 one answer 3 years ahead, stored
for 5 s, became the guard's floor and stopped recording for 3 years, across restarts. The guard sits
between the pollers and the ledger:

* It keeps an *anchor*: the offset of the wall clock against the monotonic clock (which never jumps)
  that it trusts. Slow drift and steps up to `max_step_s` move the anchor at once.
* A reading stamped more than `max_step_s` *ahead* of anchor time (monotonic time plus the anchor) is
  *quarantined*: held, not stored, and the floor does not follow it. If the clock comes back, the
  quarantined readings are committed re-stamped `estimated`; if the new time holds steadily for
  `trust_after_s`, it was a real correction: the anchor moves and they are committed re-stamped too.
* The wall clock is *plausible* when it is at or after a floor: the later of a release floor and the
  newest plausible reading stored so far (time must not run backwards; a 2-s tolerance absorbs
  interleaved polls). Optionally the kernel must also report NTP synchronisation. While it is not,
  readings are *held* with the monotonic time of the read. When the clock passes the floor again they
  are re-stamped `now - (monotonic now - monotonic at read)`, marked `estimated`, and committed.
* A hold is sized in time, not count: once a steady wall clock (at or after the release floor) has
  stayed behind the floor for `trust_after_s`, the floor is what was wrong (a reading stored from a
  bad clock, restored from the ledger at start): the guard lowers it to the wall clock, records
  `clock_floor_lowered`, and releases. No ledger surgery is ever needed. `max_held` is only a memory
  backstop (a clock in 1970 has no trusted time to stamp with); what it drops is counted in health.
* On shutdown held readings are committed `estimated`, stamped from the anchor; only readings that
  have no trusted time at all (the clock never left 1970) are given up, counted and logged.
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
    #: the wall clock is ahead of trusted (monotonic-derived) time by more than `max_step_s`
    quarantined: bool = False
    #: how far ahead, in seconds, while quarantined
    ahead_s: float = 0.0
    floor_lowered: int = 0


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
    #: a forward step up to this is trusted at once; a larger one is quarantined (see the module doc)
    max_step_s: float = 60.0
    #: how long a new time must hold steadily before it is trusted over the anchor or the floor
    trust_after_s: float = 300.0
    wall: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    mono: Callable[[], float] = field(default=time.monotonic)
    synced: Callable[[], bool | None] = field(default=kernel_clock_synchronised)
    health: ClockHealth = field(default_factory=ClockHealth)

    def __post_init__(self) -> None:
        self._held: deque[tuple[float, Sample]] = deque()
        self._offset = self._wall_minus_mono()
        # No anchor while the clock is before the release floor (a Pi booted in 1970): nothing to trust.
        self._anchor: float | None = self._offset if self.wall() >= RELEASE_FLOOR else None
        self._quarantine_since: float | None = None  # monotonic time the quarantine began
        self._steady_since = self.mono()  # monotonic time of the last jump (the wall has been steady since)
        self._behind_since: float | None = None  # monotonic time the wall fell behind the floor
        self.health.floor = iso_utc(self.floor)
        self.health.plausible = self._plausible()

    def _wall_minus_mono(self) -> float:
        return self.wall().timestamp() - self.mono()

    def _anchor_time(self, mono: float) -> datetime | None:
        """Trusted time at monotonic instant `mono` (None when there is no anchor yet)."""
        if self._anchor is None:
            return None
        return datetime.fromtimestamp(mono + self._anchor, UTC)

    def trusted_now(self) -> datetime | None:
        """The time the gateway trusts now, for decisions that must not follow a bad clock (closing a
        month, publishing its signed report): the wall clock while it is trusted; anchor time (monotonic
        time plus the last trusted offset) while it is quarantined, far ahead of anchor time, or behind
        the floor; None while there is no trusted time at all (a Pi booted in 1970, before NTP).

        Why: the certification room asked the wall clock. A clock 3 years ahead for 5 s (one bad NTP
        answer) closed, signed and published the current month from a partial ledger, and every month
        up to 2029 after it (bench/soak.py --attack)."""
        mono = self.mono()
        trusted = self._anchor_time(mono)
        if trusted is None:
            return None
        wall = self.wall()
        if self._quarantine_since is not None or not self._plausible() or self._ahead(wall, mono):
            return trusted
        return wall

    def _ahead(self, ts: datetime, mono: float) -> bool:
        """Whether `ts` is further ahead of trusted time than a step the guard accepts at once."""
        trusted = self._anchor_time(mono)
        return trusted is not None and (ts - trusted).total_seconds() > self.max_step_s

    def _plausible(self) -> bool:
        # The floor follows what has been stored, so a clock stepped back while running is caught too;
        # the tolerance absorbs concurrent polls whose read instants interleave.
        if self.wall() < self.floor - timedelta(seconds=JUMP_TOLERANCE_S):
            return False
        return not (self.require_ntp_sync and self.synced() is False)

    async def submit(self, samples: Sequence[Sample]) -> None:
        """What pollers call instead of the ledger writer. Judged per submission, on the samples' own
        timestamps: a clock stepped back or far forward between two `check` ticks must not slip through
        (the floor must never follow a reading from a clock far ahead of monotonic time)."""
        tolerance = timedelta(seconds=JUMP_TOLERANCE_S)
        now = self.mono()
        # A clock behind the floor that steps forward is being set (NTP after a boot at a saved time):
        # that step is the cure, not an attack; `check` moves the anchor to it.
        setting = self._behind_since is not None
        if self._quarantine_since is None and not setting and any(self._ahead(s.ts, now) for s in samples):
            if self._ahead(self.wall(), now):
                self._start_quarantine(now)
            else:
                # Read while the clock was ahead, handed in after it came back (a poll spanning the
                # correction): the clock is right again, so no quarantine; these readings take trusted
                # time now, flagged `estimated`, like the ones a quarantine releases.
                samples = self._restamped_ahead(samples, now)
        if (
            self._quarantine_since is None
            and self._plausible()
            and all(s.ts >= self.floor - tolerance for s in samples)
        ):
            newest = max((s.ts for s in samples), default=None)
            if newest is not None and newest > self.floor:
                self.floor = newest
            await self.forward(samples)
            return
        for s in samples:
            if len(self._held) >= self.max_held:
                self._held.popleft()
                self.health.dropped += 1
            self._held.append((now, s))
        self.health.held = len(self._held)

    def _restamped_ahead(self, samples: Sequence[Sample], now: float) -> list[Sample]:
        trusted = self._anchor_time(now)
        assert trusted is not None  # `_ahead` is only true with an anchor
        out = []
        for s in samples:
            if self._ahead(s.ts, now):
                s = replace(s, ts=trusted, quality=Quality.worst([s.quality, Quality.ESTIMATED]))
                self.health.restamped += 1
            out.append(s)
        return out

    def _start_quarantine(self, now: float) -> None:
        trusted = self._anchor_time(now)
        self._quarantine_since = now
        self.health.quarantined = True
        self.health.ahead_s = round(self._wall_minus_mono() - (self._anchor or 0.0), 3)
        log.error(
            "system clock %s is %.0f s ahead of trusted time %s: readings are quarantined until it comes back"
            " or holds steadily for %g s",
            iso_utc(self.wall()),
            self.health.ahead_s,
            iso_utc(trusted) if trusted else "?",
            self.trust_after_s,
        )

    async def check(self) -> None:
        """One tick: detect jumps, judge the anchor and the floor, release held readings when it can."""
        offset = self._wall_minus_mono()
        delta = offset - self._offset
        now_mono = self.mono()
        if abs(delta) > JUMP_TOLERANCE_S:
            now = self.wall()
            before = now - timedelta(seconds=delta)
            detail = json.dumps({"from": iso_utc(before), "to": iso_utc(now), "delta_s": round(delta, 3)})
            self.health.jumps += 1
            self.health.last_jump = detail
            self._steady_since = now_mono
            log.warning("system clock jumped by %+.1f s (%s -> %s)", delta, iso_utc(before), iso_utc(now))
            await self.record_event("clock_jump", detail, to_ms(now))
        self._offset = offset
        await self._judge_anchor(offset, now_mono)
        await self._judge_floor(now_mono)
        was = self.health.plausible
        self.health.plausible = self._plausible() and self._quarantine_since is None
        self.health.floor = iso_utc(self.floor)
        if self.health.plausible and not was:
            log.info(
                "system clock is plausible again (%s); releasing %d held readings",
                iso_utc(self.wall()),
                len(self._held),
            )
        elif was and not self.health.plausible and self._quarantine_since is None:
            log.error(
                "system clock %s is before %s: holding readings until it is set",
                iso_utc(self.wall()),
                iso_utc(self.floor),
            )
        if self.health.plausible and self._held:
            await self._release()

    async def _judge_anchor(self, offset: float, now_mono: float) -> None:
        steady_s = now_mono - self._steady_since
        if self._anchor is None:
            # The clock is set (it left 1970): that time is the anchor from now on.
            if self.wall() >= RELEASE_FLOOR and not (self.require_ntp_sync and self.synced() is False):
                self._anchor = offset
            return
        ahead = offset - self._anchor
        if ahead <= self.max_step_s:
            # Drift, a small step, or any step back (the floor keeps the order): follow it. A quarantine
            # ends: the clock came back to trusted time.
            self._anchor = offset
            if self._quarantine_since is not None:
                log.warning("system clock is back to trusted time (%s): quarantine over", iso_utc(self.wall()))
                self._end_quarantine()
            return
        if self._quarantine_since is None and self._behind_since is not None:
            # The clock was behind the floor (booted at a saved time) and is now set forward: NTP's answer.
            self._anchor = offset
            return
        if self._quarantine_since is None:
            self._start_quarantine(now_mono)
            return
        self.health.ahead_s = round(ahead, 3)
        if steady_s >= self.trust_after_s:
            detail = json.dumps({"ahead_s": round(ahead, 3), "steady_s": round(steady_s, 1)})
            log.warning("system clock has held %+.0f s for %.0f s: trusting it", ahead, steady_s)
            await self.record_event("clock_step_trusted", detail, to_ms(self.wall()))
            self._anchor = offset
            self._end_quarantine()

    def _end_quarantine(self) -> None:
        self._quarantine_since = None
        self.health.quarantined = False
        self.health.ahead_s = 0.0

    async def _judge_floor(self, now_mono: float) -> None:
        if self.wall() >= self.floor - timedelta(seconds=JUMP_TOLERANCE_S):
            self._behind_since = None
            return
        if self._behind_since is None:
            self._behind_since = now_mono
        wall = self.wall()
        trustworthy = wall >= RELEASE_FLOOR and not (self.require_ntp_sync and self.synced() is False)
        held_for = now_mono - max(self._behind_since, self._steady_since)
        if trustworthy and held_for >= self.trust_after_s:
            # A steady clock behind the floor for this long: the floor came from a bad clock (a reading
            # stored before this fix, restored from the ledger). Trust the clock; say so in the ledger.
            detail = json.dumps(
                {"from": iso_utc(self.floor), "to": iso_utc(wall), "to_ms": to_ms(wall), "held_s": round(held_for, 1)}
            )
            log.error("clock floor %s is ahead of a steady clock %s: lowering it", iso_utc(self.floor), iso_utc(wall))
            await self.record_event("clock_floor_lowered", detail, to_ms(wall))
            self.floor = wall
            self._behind_since = None
            self.health.floor_lowered += 1

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
        newest = max((s.ts for s in batch), default=None)
        if newest is not None and newest > self.floor:
            self.floor = newest
        await self.forward(batch)

    def take_held(self) -> list[Sample]:
        """Shutdown: every held reading re-stamped from the anchor (trusted time), `estimated`.

        Readings with no trusted time (the clock never left 1970, so no anchor) cannot be stamped and are
        given up: counted in `dropped` and logged."""
        out: list[Sample] = []
        lost = 0
        while self._held:
            read_mono, s = self._held.popleft()
            ts = self._anchor_time(read_mono)
            if ts is None or ts < RELEASE_FLOOR:
                lost += 1
                continue
            out.append(replace(s, ts=ts, quality=Quality.worst([s.quality, Quality.ESTIMATED])))
        self.health.held = 0
        self.health.restamped += len(out)
        if lost:
            self.health.dropped += lost
            log.error("shutdown: %d held readings had no trusted time (clock never set) and are lost", lost)
        if out:
            log.warning("shutdown: committing %d held readings re-stamped from monotonic time (estimated)", len(out))
        return out

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
    """The wall clock when the guard would accept it: at or after the release floor and the ledger's clock
    floor (`Ledger.clock_floor_ms`: the newest stored reading, or where the guard lowered a floor that
    a bad clock had poisoned; the same floor `ClockGuard` holds readings against). What commands that record a time of
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
