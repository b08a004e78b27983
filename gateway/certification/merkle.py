"""Merkle roots over ledger chain hashes (16-ary tree).

Leaves are the readings' own chain hashes (already SHA-256 digests, so they are not hashed again).
Interior node = SHA-256(0x01 || child_1 || ... || child_m) over up to 16 consecutive children; a lone
last child is carried up unchanged. Why 16-ary: a month of 10-s readings on 20 channels is ~5 M leaves; a
binary tree costs ~5 M hash calls in Python, a 16-ary one ~0.35 M over the same bytes, with inclusion
proofs still logarithmic (15 siblings per level, 6 levels for a month). An empty list has the root
SHA-256(b"") so that "no readings" is a definite value.

Standard library only: `gia verify` recomputes the roots with this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
_NODE: Final = b"\x01"
ARITY: Final = 16


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root over `leaves` (each 32 bytes) in the given order."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    sha = hashlib.sha256
    join = b"".join
    while len(level) > 1:
        nxt = [sha(_NODE + join(level[i : i + ARITY])).digest() for i in range(0, len(level), ARITY)]
        if len(level) % ARITY == 1:
            nxt[-1] = level[-1]  # a lone last child is carried up unchanged
        level = nxt
    return level[0]


DAY_MS: Final = 86_400_000


def day_of(ts_ms: int) -> str:
    """The UTC day a reading belongs to, YYYY-MM-DD (the Merkle tree is per UTC day)."""
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts_ms // 1000, _dt.UTC).strftime("%Y-%m-%d")
