"""The clock guard's rules for clock steps, with injected clocks (issue 15, findings 3 and 9).

The agent-level tests (test_clock_forward.py, test_clock_back.py) move a real process's clock with
libfaketime; these pin each rule on its own, and the last one runs many concurrent submitters on a
deliberately slowed event loop while the clock steps back, to show the guard has no race that lets a
`good` reading through stamped before what it already forwarded.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from drivers.model import Quality, Sample
from gateway.runtime.clockguard import JUMP_TOLERANCE_S, RELEASE_FLOOR, ClockGuard
from tests.runtime.test_clock_safety import FakeClocks

REAL = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
THREE_YEARS = timedelta(days=3 * 365)


class Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.events: list[tuple[str, str, int]] = []

    async def forward(self, samples: Sequence[Sample]) -> None:
        self.samples.extend(samples)

    async def record(self, kind: str, detail: str, ts_ms: int) -> None:
        self.events.append((kind, detail, ts_ms))


def _guard(
    clocks: FakeClocks,
    rec: Recorder,
    *,
    floor: datetime | None = None,
    trust_after_s: float = 300.0,
    max_held: int = 200_000,
) -> ClockGuard:
    return ClockGuard(
        forward=rec.forward,
        record_event=rec.record,
        floor=floor or RELEASE_FLOOR,  # a later floor: what services.py restores from the ledger
        trust_after_s=trust_after_s,
        max_held=max_held,
        wall=lambda: clocks.wall_t,
        mono=lambda: clocks.mono_t,
        synced=lambda: None,
    )


async def _poll(guard: ClockGuard, clocks: FakeClocks, value: float) -> None:
    await guard.submit([Sample("m", "power_w", value, "W", clocks.wall_t)])


async def test_a_forward_jump_is_quarantined_and_restamped_when_the_clock_comes_back() -> None:
    clocks, rec = FakeClocks(), Recorder()
    clocks.wall_t = REAL
    guard = _guard(clocks, rec)
    await _poll(guard, clocks, 1)
    clocks.wall_t += THREE_YEARS  # a spoofed NTP answer, noticed first by a poll, not by a tick
    for i in range(5):
        clocks.advance(1)
        await _poll(guard, clocks, 10 + i)
        await guard.check()
    assert guard.health.quarantined and guard.health.held == 5
    assert guard.floor < REAL + timedelta(minutes=1)  # the floor did not follow the bad clock
    clocks.wall_t -= THREE_YEARS  # corrected
    clocks.advance(1)
    await guard.check()
    await _poll(guard, clocks, 99)
    assert not guard.health.quarantined and guard.health.held == 0
    values = {s.value: s for s in rec.samples}
    assert set(values) == {1, 10, 11, 12, 13, 14, 99}  # nothing lost
    assert all(values[v].quality is Quality.ESTIMATED for v in (10, 11, 12, 13, 14))
    assert [values[v].ts for v in (10, 11, 12, 13, 14)] == [REAL + timedelta(seconds=s) for s in range(1, 6)]
    assert values[99].quality is Quality.GOOD and values[99].ts == REAL + timedelta(seconds=6)


async def test_a_forward_step_that_holds_is_trusted_after_trust_after_s() -> None:
    clocks, rec = FakeClocks(), Recorder()
    clocks.wall_t = REAL
    guard = _guard(clocks, rec, trust_after_s=30)
    await _poll(guard, clocks, 1)
    clocks.wall_t += timedelta(days=2)  # the clock was 2 days slow; NTP corrects it
    for i in range(40):
        await guard.check()
        await _poll(guard, clocks, 100 + i)
        clocks.advance(1)
    assert not guard.health.quarantined and guard.health.held == 0
    assert any(kind == "clock_step_trusted" for kind, _, _ in rec.events)
    assert rec.samples[-1].quality is Quality.GOOD and rec.samples[-1].ts > REAL + timedelta(days=2)
    assert len(rec.samples) == 41


async def test_a_clock_behind_the_floor_set_forward_is_trusted_at_once() -> None:
    """A Pi that booted at a saved time before the newest reading: NTP's step forward is the cure."""
    clocks, rec = FakeClocks(), Recorder()
    clocks.wall_t = REAL
    guard = _guard(clocks, rec, floor=REAL + timedelta(hours=1))
    await _poll(guard, clocks, 1)
    await guard.check()
    assert guard.health.held == 1
    clocks.wall_t = REAL + timedelta(days=3)
    clocks.mono_t += 1
    await _poll(guard, clocks, 2)
    await guard.check()
    assert not guard.health.quarantined and guard.health.held == 0
    by_value = {s.value: s for s in rec.samples}
    assert by_value[2].quality is Quality.GOOD and by_value[1].quality is Quality.ESTIMATED


async def test_a_poisoned_floor_is_lowered_after_trust_after_s_not_held_for_years() -> None:
    clocks, rec = FakeClocks(), Recorder()
    clocks.wall_t = REAL
    guard = _guard(clocks, rec, floor=REAL + THREE_YEARS, trust_after_s=10, max_held=1000)
    for i in range(12):
        await _poll(guard, clocks, i)
        await guard.check()
        clocks.advance(1)
    assert guard.health.floor_lowered == 1 and guard.health.held == 0 and guard.health.dropped == 0
    assert {s.value for s in rec.samples} == set(range(12))
    assert [k for k, _, _ in rec.events] == ["clock_floor_lowered"]
    assert max(s.ts for s in rec.samples) <= clocks.wall_t


async def test_held_readings_are_stamped_from_trusted_time_on_shutdown() -> None:
    clocks, rec = FakeClocks(), Recorder()
    clocks.wall_t = REAL
    guard = _guard(clocks, rec)
    await _poll(guard, clocks, 1)
    clocks.wall_t += THREE_YEARS
    clocks.advance(1)
    await _poll(guard, clocks, 2)
    held = guard.take_held()
    assert [(s.value, s.ts, s.quality) for s in held] == [(2, REAL + timedelta(seconds=1), Quality.ESTIMATED)]


async def test_no_good_reading_slips_behind_the_floor_on_a_slow_loop() -> None:
    """Finding 9: 20 pollers stamp, read (a random await) and submit while the event loop is slowed by
    blocking work on every forward, the check tick runs concurrently, and the wall clock steps back 3 s.
    Every `good` reading forwarded must be at or after the newest already forwarded, less the tolerance."""
    offset = [0.0]
    rng = random.Random(15)
    forwarded: list[Sample] = []
    violations: list[tuple[Sample, datetime]] = []

    async def slow_forward(samples: Sequence[Sample]) -> None:
        time.sleep(0.002)  # blocking: a busy machine
        await asyncio.sleep(rng.uniform(0, 0.01))
        newest = max((s.ts for s in forwarded), default=None)
        for s in samples:
            if newest is not None and s.quality is Quality.GOOD and s.ts < newest - timedelta(seconds=JUMP_TOLERANCE_S):
                violations.append((s, newest))
        forwarded.extend(samples)

    async def nothing(*_a: object) -> None:
        return None

    guard = ClockGuard(
        forward=slow_forward,
        record_event=nothing,
        wall=lambda: datetime.now(UTC) + timedelta(seconds=offset[0]),
        mono=time.monotonic,
        synced=lambda: None,
    )

    async def poller(i: int, stop: float) -> None:
        while time.monotonic() < stop:
            ts = guard.wall()
            await asyncio.sleep(rng.uniform(0, 0.05))  # the read; the clock may step meanwhile
            time.sleep(0.001)
            await guard.submit([Sample(f"d{i}", "power_w", float(i), "W", ts)])

    async def ticker(stop: float) -> None:
        while time.monotonic() < stop:
            await guard.check()
            await asyncio.sleep(0.02)

    stop = time.monotonic() + 5.0
    async with asyncio.TaskGroup() as tg:
        for i in range(20):
            tg.create_task(poller(i, stop))
        tg.create_task(ticker(stop))
        await asyncio.sleep(1.0)
        offset[0] = -3.0  # the wall clock steps back
    await guard.check()
    assert guard.health.jumps >= 1 and guard.health.restamped > 0  # the step was seen and held
    assert not violations, f"{len(violations)} good readings behind the floor, e.g. {violations[0]}"


async def test_a_reading_stamped_during_the_jump_but_submitted_after_it_is_restamped_not_quarantined() -> None:
    """Seen in the attack soak: a poll that read the clock while it was 3 years ahead handed its samples in
    after the clock had come back; the guard started a second quarantine ("-0 s ahead", held for a tick).
    The clock is right again, so the sample is re-stamped to trusted time at once (`estimated`)."""
    clocks, rec = FakeClocks(), Recorder()
    clocks.wall_t = REAL
    guard = _guard(clocks, rec)
    await _poll(guard, clocks, 1)
    late = Sample("m", "power_w", 2.0, "W", REAL + THREE_YEARS)  # read while the clock was ahead
    clocks.advance(1)
    clocks.wall_t = REAL + timedelta(seconds=1)  # ...and the clock is back before it is submitted
    await guard.submit([late, Sample("n", "power_w", 3.0, "W", clocks.wall_t)])
    assert not guard.health.quarantined and guard.health.held == 0
    by_value = {s.value: s for s in rec.samples}
    assert by_value[2.0].quality is Quality.ESTIMATED
    assert abs((by_value[2.0].ts - clocks.wall_t).total_seconds()) < 1
    assert by_value[3.0].quality is Quality.GOOD and by_value[3.0].ts == clocks.wall_t
    assert guard.floor < REAL + timedelta(minutes=1)


async def test_trusted_time_does_not_follow_a_jump_ahead() -> None:
    """What the certification room closes months by (ClockGuard.trusted_now): the wall clock while it is
    trusted, anchor time while it is far ahead, from the first instant, before any poll or tick saw it."""
    clocks, rec = FakeClocks(), Recorder()
    clocks.wall_t = REAL
    guard = _guard(clocks, rec)
    assert guard.trusted_now() == REAL
    clocks.wall_t += THREE_YEARS
    clocks.advance(2)
    assert guard.trusted_now() == REAL + timedelta(seconds=2)
    await _poll(guard, clocks, 1)
    await guard.check()
    assert guard.health.quarantined and guard.trusted_now() == REAL + timedelta(seconds=2)
    clocks.wall_t -= THREE_YEARS  # corrected
    clocks.advance(1)
    await guard.check()
    assert not guard.health.quarantined and guard.trusted_now() == clocks.wall_t == REAL + timedelta(seconds=3)


async def test_no_trusted_time_before_the_clock_is_set() -> None:
    clocks, rec = FakeClocks(), Recorder()  # a Pi booted in 1970, before NTP
    guard = _guard(clocks, rec)
    assert guard.trusted_now() is None
