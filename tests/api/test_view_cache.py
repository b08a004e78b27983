"""History answers shared and reused (gateway/api/room.py ViewCache): a crowd of viewers asking for the
same view costs one computation; answers expire; a failure is not kept."""

from __future__ import annotations

import asyncio

import pytest

from gateway.api.room import ViewCache


async def test_concurrent_askers_share_one_computation_and_answers_expire() -> None:
    runs = 0

    async def compute() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return runs

    cache = ViewCache(ttl_s=0.3, max_entries=4)
    answers = await asyncio.gather(*(cache.get("year", compute) for _ in range(20)))
    assert answers == [1] * 20 and runs == 1
    assert await cache.get("year", compute) == 1  # within the lifetime: reused
    await asyncio.sleep(0.35)
    assert await cache.get("year", compute) == 2 and runs == 2


async def test_a_failure_is_not_kept_and_the_cache_is_bounded() -> None:
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError("reader gone")

    cache = ViewCache(ttl_s=60, max_entries=2)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await cache.get("k", failing)
    assert calls == 2

    async def value() -> str:
        return "v"

    for key in ("a", "b", "c"):
        await cache.get(key, value)
    assert len(cache._entries) == 2
