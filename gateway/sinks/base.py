"""What a sink is: something that forwards committed ledger entries downstream, idempotently.

A sink never sees a reading before the ledger has committed it, and it must tolerate seeing the same
entries again (after a crash between sending and saving the cursor): `send` has to be idempotent
downstream (InfluxDB: the same point overwrites itself; MQTT: retained state with the entry's seq).
The `Forwarder` (gateway/forwarder.py) owns the cursor, batching and retry; a sink only connects and sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from drivers.errors import GiaError
from gateway.ledger.store import Poll


class Sink(Protocol):
    #: The ledger cursor name; stable across restarts (e.g. "influxdb", "mqtt").
    name: str
    #: Most entries `send` accepts at once.
    batch_size: int

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def send(self, polls: Sequence[Poll]) -> None:
        """Deliver whole polls (oldest first) and return only once the receiver acknowledged them.

        Raise `SinkError` (transient: the forwarder retries with backoff, reconnecting via a new context)
        or `SinkRejected` (the receiver refused the data itself: logged, counted, skipped after retries).
        """
        ...


class SinkError(GiaError):
    """Transient failure (connection refused, timeout, 5xx, 429): retry later from the same cursor."""


class SinkRejected(SinkError):
    """The receiver refused this batch as such (400 bad data, 413 too large): split or skip, and count it."""
