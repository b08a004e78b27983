"""The durable, hash-chained local ledger and its async writer."""

from gateway.ledger.store import (
    GENESIS,
    ChainCheck,
    Entry,
    Event,
    Ledger,
    LedgerError,
    canonical_entry,
    chain_hash,
)

__all__ = [
    "GENESIS",
    "ChainCheck",
    "Entry",
    "Event",
    "Ledger",
    "LedgerError",
    "canonical_entry",
    "chain_hash",
]
