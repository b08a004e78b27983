"""Merkle roots over ledger chain hashes: one root per UTC day, one root over the days.

Leaves are the readings' own chain hashes (already SHA-256 digests, so they are not hashed again).
Interior nodes are SHA-256(0x01 || left || right); an odd node is carried up unchanged (as in
Bitcoin-free RFC 6962 style trees, without duplicating it, so no two leaf lists share a root by padding).
An empty list has the root SHA-256(b"") so that "no readings" is a definite value.

The day tree lets a certifier check one day of readings against the signed report without the whole
month; the month root commits to every reading the report used. Standard library only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
_NODE: Final = b"\x01"


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root over `leaves` (each 32 bytes) in the given order."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    sha = hashlib.sha256
    while len(level) > 1:
        nxt = [sha(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


DAY_MS: Final = 86_400_000


def day_of(ts_ms: int) -> str:
    """The UTC day a reading belongs to, YYYY-MM-DD (the Merkle tree is per UTC day)."""
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts_ms // 1000, _dt.UTC).strftime("%Y-%m-%d")
