"""Latest-value outboxes for live extras (forecasts, signals, reports) that are not ledger entries.

Only the newest value per key matters (a retained MQTT topic, an InfluxDB point set that overwrites
itself), so an outbox keeps one value per key and a change flag. A sink's side task publishes the whole
snapshot on (re)connect and whatever changed afterwards; nothing queues up while a receiver is down.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LatestOutbox(Generic[K, V]):
    def __init__(self) -> None:
        self._latest: dict[K, V] = {}
        self._changed = asyncio.Event()

    def put(self, key: K, value: V) -> None:
        self._latest[key] = value
        self._changed.set()

    def get(self, key: K) -> V | None:
        return self._latest.get(key)

    def snapshot(self) -> dict[K, V]:
        return dict(self._latest)

    async def wait_changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()
