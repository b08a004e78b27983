"""Supervision: a failing part restarts alone, with backoff, and health says what happened."""

from __future__ import annotations

import asyncio

import pytest

from gateway.runtime.supervisor import PartState, Supervisor


async def test_a_failing_part_restarts_alone_and_reports_it() -> None:
    sup = Supervisor()
    runs = {"flaky": 0, "steady": 0}

    async def flaky() -> None:
        runs["flaky"] += 1
        if runs["flaky"] < 3:
            raise RuntimeError(f"boom {runs['flaky']}")
        await asyncio.sleep(3600)

    async def steady() -> None:
        runs["steady"] += 1
        await asyncio.sleep(3600)

    sup.add("flaky", flaky, max_backoff_s=0.05)
    sup.add("steady", steady)
    for part in sup._parts.values():
        part.backoff.initial_s = 0.01
    task = asyncio.create_task(sup.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if runs["flaky"] >= 3:
            break
    health = sup.health()
    assert runs == {"flaky": 3, "steady": 1}  # the steady part was never restarted
    assert health["flaky"].restarts == 2 and health["flaky"].last_error == "RuntimeError: boom 2"
    assert health["flaky"].state is PartState.RUNNING and health["steady"].state is PartState.RUNNING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(h.state is PartState.STOPPED for h in sup.health().values())


def test_part_names_are_unique() -> None:
    sup = Supervisor()

    async def part() -> None:
        return None

    sup.add("a", part)
    with pytest.raises(ValueError, match="duplicate"):
        sup.add("a", part)


async def test_a_part_cancelled_by_no_one_is_restarted_not_lost() -> None:
    """A part that ends with CancelledError while the supervisor runs (a stray request left by a library)
    is restarted and reported; cancelling the supervisor still stops every part."""
    sup = Supervisor()
    runs = {"stray": 0}

    async def stray() -> None:
        runs["stray"] += 1
        if runs["stray"] == 1:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # as a TaskGroup that never uncancels its parent would leave it
            await asyncio.sleep(0)
        await asyncio.sleep(3600)

    sup.add("stray", stray)
    sup._parts["stray"].backoff.initial_s = 0.01
    task = asyncio.create_task(sup.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if runs["stray"] >= 2:
            break
    health = sup.health()["stray"]
    assert runs["stray"] == 2 and health.restarts == 1 and "cancellation" in (health.last_error or "")
    assert health.state is PartState.RUNNING
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sup.health()["stray"].state is PartState.STOPPED
