"""The latest committed entries, kept in memory by the writer for the sinks.

Why: every sink read its batches back from SQLite, and Python's sqlite3 releases the GIL around every
row it steps. With the event loop's thread busy (the attack soak: 50 meters, a flood of MQTT garbage,
viewers), each re-acquisition waited for it: reading 1000 entries took 0.75 s instead of 7 ms, two sinks
did so continuously, and the GIL hand-offs slowed the loop and the commits with them (commit interval
p99 3-5 s). The writer has the entries in hand when their commit returns, so it keeps the latest
`max_entries` here; a sink within that window is served from memory, one further behind (after an
outage, at start) reads the ledger as before. Only committed entries enter, in seq order, contiguous;
anything else (a gap) clears the window, and the reader then falls back to the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.ledger.store import Entry, Poll, group_polls

#: entries kept: ~40 s of a 50-meter site at 1 s (~4 MB); a sink further behind reads the ledger
DEFAULT_MAX_ENTRIES = 20_000


class CommittedTail:
    """A contiguous window of the latest committed entries (event-loop thread only)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: list[Entry] = []
        #: reads answered from memory, and those left to the ledger (health, tests)
        self.hits = 0
        self.misses = 0

    @property
    def first_seq(self) -> int | None:
        return self._entries[0].seq if self._entries else None

    @property
    def last_seq(self) -> int | None:
        return self._entries[-1].seq if self._entries else None

    def extend(self, entries: Sequence[Entry]) -> None:
        """Entries just committed, in seq order (a batch that does not follow on starts a new window)."""
        if not entries:
            return
        last = self.last_seq
        if last is not None and entries[0].seq != last + 1:
            self._entries.clear()
        self._entries.extend(entries)
        if len(self._entries) > 2 * self.max_entries:  # trimmed in halves: amortised O(1) per entry
            del self._entries[: len(self._entries) - self.max_entries]

    def polls_after(self, seq: int, limit: int) -> list[Poll] | None:
        """What `Ledger.read_polls_after(seq, limit)` returns, when this window holds entry seq + 1;
        None when it does not (read the ledger)."""
        first = self.first_seq
        if first is None or not first <= seq + 1 <= self._entries[-1].seq:
            self.misses += 1
            return None
        start = seq + 1 - first
        self.hits += 1
        return group_polls(self._entries[start : start + limit], limit)
