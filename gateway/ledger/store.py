"""The durable local ledger: every reading is committed here before anything forwards it.

Why SQLite in WAL mode with `synchronous=FULL`: a committed transaction survives a killed process *and*
a power cut (the WAL is fsynced at commit), readers never block the writer, and the file is one
portable artefact a backup can copy consistently. Commits are batched by the caller (see
`writer.LedgerWriter`) so that an SD card sees one fsync per batch, not one per sample.

Tamper evidence: every entry carries a chain hash

    hash_n = SHA-256(hash_{n-1} || JCS(entry_n))

where JCS is the RFC 8785 canonical JSON of the entry (`seq`, `ts`, `device`, `quantity`, `value`,
`unit`, `quality`) and hash_0 is 32 zero bytes. Changing, deleting or reordering any kept entry breaks
every later hash. Retention prunes the *payload* of old instant readings but keeps their seq and chain
hash, so the chain over the entries that remain (energy registers, kept for certification) still
verifies from the first entry.

Sequence numbers are SQLite rowids of an `INTEGER PRIMARY KEY` that is never reused (`AUTOINCREMENT`
is unnecessary: rows are never deleted from the top, only pruned in place).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import rfc8785

from drivers.errors import GiaError
from drivers.model import Quality, Sample, Value, is_counter, to_ms

GENESIS: Final = bytes(32)
SCHEMA_VERSION: Final = 2

_INSERT_COLUMNS: Final = "seq, ts_ms, device, quantity, value, unit, quality, counter, hash"
#: rows per INSERT statement, largest first: a batch of n rows is written by one statement per set bit
#: of n (at most 9 statements from 9 fixed texts, all in sqlite3's statement cache)
_INSERT_SIZES: Final = tuple(1 << b for b in range(8, -1, -1))
_INSERT_SQL: Final = {
    n: f"INSERT INTO readings ({_INSERT_COLUMNS}) VALUES " + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    for n in _INSERT_SIZES
}

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    seq      INTEGER PRIMARY KEY,
    ts_ms    INTEGER,
    device   TEXT,
    quantity TEXT,
    value    ANY,
    unit     TEXT,
    quality  TEXT,
    counter  INTEGER NOT NULL DEFAULT 0,
    pruned   INTEGER NOT NULL DEFAULT 0,
    hash     BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS readings_series ON readings (device, quantity, ts_ms) WHERE pruned = 0;
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts_ms);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS report_archive (
    site     TEXT NOT NULL,
    month    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    data     BLOB NOT NULL,
    event_id INTEGER NOT NULL,
    PRIMARY KEY (site, month, version)
) STRICT;
CREATE INDEX IF NOT EXISTS report_archive_sha ON report_archive (sha256);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY,
    ts_ms    INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    device   TEXT,
    detail   TEXT NOT NULL,
    hash     BLOB
) STRICT;
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """A committed ledger entry. `value` etc. are None only for pruned entries (`pruned=True`)."""

    seq: int
    ts_ms: int
    device: str
    quantity: str
    value: Value
    unit: str
    quality: Quality
    hash: bytes
    pruned: bool = False


@dataclass(frozen=True, slots=True)
class Poll:
    """The entries of one poll of one device: consecutive entries with the same (device, ts).

    A poll is appended contiguously and read back as this one unit, so every consumer (an InfluxDB
    point, an MQTT state message) sees it whole, and nobody regroups flattened entries.
    """

    device: str
    ts_ms: int
    entries: tuple[Entry, ...]

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq


def group_polls(entries: Sequence[Entry], limit: int) -> list[Poll]:
    """Consecutive entries (at most `limit`, as read) as whole polls; the last poll, possibly cut by the
    limit, is left for the next read unless it is the only one (see `Ledger.read_polls_after`)."""
    polls: list[Poll] = []
    run: list[Entry] = []
    for e in entries:
        if run and (run[0].device != e.device or run[0].ts_ms != e.ts_ms):
            polls.append(Poll(run[0].device, run[0].ts_ms, tuple(run)))
            run = []
        run.append(e)
    if run and (len(entries) < limit or not polls):
        polls.append(Poll(run[0].device, run[0].ts_ms, tuple(run)))
    return polls


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    ts_ms: int
    kind: str
    device: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class ChainCheck:
    ok: bool
    entries: int
    head_seq: int
    head_hash: bytes
    problem: str | None = None


_json_string = json.encoder.encode_basestring  # RFC 8785 string rules (non-ASCII kept, controls escaped)


def _json_number(value: Value) -> str:
    """RFC 8785 number text. Fast paths where Python's repr is ECMAScript's; the library for the rest."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"  # also -0.0, as ECMAScript prints it
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if 1e-4 <= abs(value) < 1e16:
        return repr(value)  # shortest round-trip digits in fixed notation: identical in both languages
    return str(rfc8785.dumps(value).decode())


def canonical_entry(seq: int, ts_ms: int, device: str, quantity: str, value: Value, unit: str, quality: str) -> bytes:
    """RFC 8785 bytes of one entry: what the chain hashes and what the evidence bundle re-hashes.

    Written out for this one fixed schema (keys already in RFC 8785 order) because the general
    library spends ~40 us per entry, which capped ingest at ~28 k readings/s; a property test holds
    this byte-identical to `rfc8785.dumps` of the same object.
    """
    return (
        f'{{"device":{_json_string(device)},"quality":{_json_string(quality)},'
        f'"quantity":{_json_string(quantity)},"seq":{int(seq)},"ts":{int(ts_ms)},'
        f'"unit":{_json_string(unit)},"value":{_json_number(value)}}}'
    ).encode()


def canonical_event(event_id: int, ts_ms: int, kind: str, device: str | None, detail: str) -> bytes:
    """RFC 8785 bytes of one event (the events table's own chain hashes these)."""
    return rfc8785.dumps({"id": event_id, "ts": ts_ms, "kind": kind, "device": device, "detail": detail})


def chain_hash(prev: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev + canonical).digest()


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Schema 2 chains the events table: add the column and chain what a schema-1 ledger holds."""
    cols = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "hash" not in cols:
        db.execute("ALTER TABLE events ADD COLUMN hash BLOB")
    prev = GENESIS
    rows = db.execute("SELECT id, ts_ms, kind, device, detail FROM events ORDER BY id").fetchall()
    for n, (old_id, ts_ms, kind, device, detail) in enumerate(rows, start=1):
        if old_id != n:  # ids renumbered densely so the chain can prove nothing is missing
            db.execute("UPDATE events SET id = ? WHERE id = ?", (n, old_id))
        prev = chain_hash(prev, canonical_event(n, ts_ms, kind, device, detail))
        db.execute("UPDATE events SET hash = ? WHERE id = ?", (prev, n))


_MIGRATIONS: Final = {1: _migrate_1_to_2}


def append_event(db: sqlite3.Connection, kind: str, detail: str, *, ts_ms: int, device: str | None = None) -> int:
    """Chain one event onto the events table inside the caller's open write transaction (BEGIN
    IMMEDIATE), so a caller can commit it together with rows of its own (the report archive does)."""
    last = db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    event_id = (int(last[0]) + 1) if last else 1
    prev = bytes(last[1]) if last and last[1] is not None else GENESIS
    h = chain_hash(prev, canonical_event(event_id, ts_ms, kind, device, detail))
    db.execute(
        "INSERT INTO events (id, ts_ms, kind, device, detail, hash) VALUES (?, ?, ?, ?, ?, ?)",
        (event_id, ts_ms, kind, device, detail, h),
    )
    return event_id


class LedgerError(GiaError):
    """The ledger file is unusable (corrupt, wrong schema, chain broken): the message says what to do."""

    http_status = 503
    error_code = "ledger_unavailable"


class Ledger:
    """Synchronous SQLite ledger. Not thread-safe: one owner thread (see `writer.LedgerWriter`)."""

    def __init__(self, path: Path | str, *, synchronous: str = "FULL", readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute(f"PRAGMA synchronous = {synchronous}")
                # Keep the WAL small: checkpoint every ~1 MiB and give the file back afterwards, so a
                # nearly full SD card never holds megabytes of WAL the ledger cannot checkpoint.
                self._db.execute("PRAGMA wal_autocheckpoint = 256")
                self._db.execute("PRAGMA journal_size_limit = 4194304")
                self._db.executescript(SCHEMA)
                self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerError(
                f"{self.path}: not a usable ledger ({exc}); restore it with 'gia restore' or move it aside"
            ) from None
        self._head_seq, self._head_hash = self._load_head()

    # -- schema -------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Bring an older ledger to this release's schema, one step at a time, each in a transaction."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            return
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path}: ledger schema {version} is newer than this gateway ({SCHEMA_VERSION}); "
                "upgrade the gateway"
            )
        while version < SCHEMA_VERSION:
            step = _MIGRATIONS[version]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                step(self._db)
                version += 1
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _load_head(self) -> tuple[int, bytes]:
        row = self._db.execute("SELECT seq, hash FROM readings ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return 0, GENESIS
        return int(row[0]), bytes(row[1])

    def close(self) -> None:
        self._db.close()

    def refresh_head(self) -> None:
        """Re-read the head (a read-only connection's view moves on as the writer commits)."""
        self._head_seq, self._head_hash = self._load_head()

    # -- writing ------------------------------------------------------------------------------------
    @property
    def head(self) -> tuple[int, bytes]:
        """(seq, chain hash) of the last committed entry; (0, GENESIS) when empty."""
        return self._head_seq, self._head_hash

    def append(self, samples: Iterable[Sample]) -> int:
        """Append and commit in one transaction; returns the new head seq. All or nothing."""
        self.append_entries(samples)
        return self._head_seq

    def chained_rows(self, samples: Iterable[Sample]) -> list[tuple[Any, ...]]:
        """The rows `samples` become after the head: seq, ts, ..., counter flag, chain hash (not stored)."""
        seq, prev = self._head_seq, self._head_hash
        rows: list[tuple[Any, ...]] = []
        for s in samples:
            seq += 1
            ts_ms = to_ms(s.ts)
            prev = chain_hash(prev, canonical_entry(seq, ts_ms, s.device, s.quantity, s.value, s.unit, s.quality.value))
            rows.append(
                (seq, ts_ms, s.device, s.quantity, s.value, s.unit, s.quality.value, int(is_counter(s.quantity)), prev)
            )
        return rows

    def append_entries(self, samples: Iterable[Sample]) -> list[Entry]:
        """`append`, returning the committed entries as `read_after` would read them back (the
        writer keeps the latest in memory for the sinks: `gateway.ledger.tail`)."""
        rows = self.chained_rows(samples)
        if not rows:
            return []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            # Multi-row INSERTs, not executemany: sqlite3 releases the GIL around every step, and
            # executemany steps once per row. With the event loop busy (the attack soak: a flood of
            # MQTT garbage, viewers, idle sockets) each re-acquisition waits up to the interpreter's
            # switch interval (5 ms), so 500 rows took seconds and the commit interval's p99 went to
            # 3-5 s. A 256-row statement is one step. bench/ledger_contention.py measures both.
            at = 0
            for n in _INSERT_SIZES:
                while len(rows) - at >= n:
                    self._db.execute(_INSERT_SQL[n], [v for row in rows[at : at + n] for v in row])
                    at += n
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._head_seq, self._head_hash = rows[-1][0], rows[-1][8]
        return [
            Entry(
                seq=r[0],
                ts_ms=r[1],
                device=r[2],
                quantity=r[3],
                value=r[4],
                unit=r[5],
                quality=Quality(r[6]),
                hash=r[8],
            )
            for r in rows
        ]

    def record_event(self, kind: str, detail: str, *, ts_ms: int, device: str | None = None) -> int:
        """Record something certification must see (clock jump, meter replacement, reset).

        Events are hash-chained like readings (their own chain: `verify_events`), so deleting a clock
        jump or slipping in a meter replacement after the fact is evident.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            event_id = append_event(self._db, kind, detail, ts_ms=ts_ms, device=device)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return event_id

    def verify_events(self) -> ChainCheck:
        """Re-walk the events' chain (ids must run 1, 2, 3... with no gap)."""
        prev, n = GENESIS, 0
        for row in self._db.execute("SELECT id, ts_ms, kind, device, detail, hash FROM events ORDER BY id"):
            event_id, ts_ms, kind, device, detail, h = row
            if event_id != n + 1:
                return ChainCheck(False, n, event_id, prev, f"event {n + 1} is missing (next is {event_id})")
            if h is None or chain_hash(prev, canonical_event(event_id, ts_ms, kind, device, detail)) != bytes(h):
                return ChainCheck(False, n, event_id, prev, f"event {event_id} does not match its chain hash")
            prev, n = bytes(h), n + 1
        return ChainCheck(True, n, n, prev)

    def events(self, *, kind: str | None = None, since_ms: int | None = None) -> list[Event]:
        sql = "SELECT id, ts_ms, kind, device, detail FROM events WHERE 1=1"
        args: list[str | int] = []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        if since_ms is not None:
            sql += " AND ts_ms >= ?"
            args.append(since_ms)
        return [Event(*row) for row in self._db.execute(sql + " ORDER BY id", args)]

    # -- cursors ------------------------------------------------------------------------------------
    def cursor(self, name: str) -> int:
        row = self._db.execute("SELECT seq FROM cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_cursor(self, name: str, seq: int, *, now_ms: int) -> None:
        if seq > self._head_seq:
            raise ValueError(f"cursor {name} beyond head ({seq} > {self._head_seq})")
        self._db.execute(
            "INSERT INTO cursors (name, seq, updated_ms) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
            (name, seq, now_ms),
        )

    def cursors(self) -> dict[str, int]:
        return {name: int(seq) for name, seq in self._db.execute("SELECT name, seq FROM cursors")}

    # -- reading ------------------------------------------------------------------------------------
    _COLS: Final = "seq, ts_ms, device, quantity, value, unit, quality, hash, pruned"

    @staticmethod
    def _entry(row: Sequence[Any]) -> Entry:
        seq, ts_ms, device, quantity, value, unit, quality, h, pruned = row
        return Entry(
            seq=int(seq),
            ts_ms=int(ts_ms) if ts_ms is not None else 0,
            device=str(device or ""),
            quantity=str(quantity or ""),
            value=value,
            unit=str(unit or ""),
            quality=Quality(quality) if quality else Quality.INVALID,
            hash=bytes(h),
            pruned=bool(pruned),
        )

    def read_after(self, seq: int, limit: int = 1000) -> list[Entry]:
        """Entries with seq > `seq`, oldest first, pruned ones skipped (a sink never forwards a hole)."""
        rows = self._db.execute(
            f"SELECT {self._COLS} FROM readings WHERE seq > ? AND pruned = 0 ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [self._entry(r) for r in rows]

    def read_polls_after(self, seq: int, limit: int = 1000) -> list[Poll]:
        """Whole polls with entries after `seq`, oldest first, about `limit` entries in all.

        A poll cut by the limit is left for the next call, unless it is the only one: a poll larger than
        the limit comes in parts, each written downstream as the same point (InfluxDB merges the fields of
        one point; an MQTT state carries the part). Pruned entries are skipped.
        """
        return group_polls(self.read_after(seq, limit), limit)

    def series(self, device: str, quantity: str, start_ms: int, end_ms: int) -> list[Entry]:
        """Kept entries of one series with start_ms <= ts < end_ms, in time order."""
        rows = self._db.execute(
            f"SELECT {self._COLS} FROM readings WHERE device = ? AND quantity = ? AND ts_ms >= ? AND ts_ms < ?"
            " AND pruned = 0 ORDER BY ts_ms, seq",
            (device, quantity, start_ms, end_ms),
        )
        return [self._entry(r) for r in rows]

    def last_before(self, device: str, quantity: str, ts_ms: int) -> Entry | None:
        row = self._db.execute(
            f"SELECT {self._COLS} FROM readings WHERE device = ? AND quantity = ? AND ts_ms < ? AND pruned = 0"
            " ORDER BY ts_ms DESC, seq DESC LIMIT 1",
            (device, quantity, ts_ms),
        ).fetchone()
        return self._entry(row) if row else None

    def first_at_or_after(self, device: str, quantity: str, ts_ms: int) -> Entry | None:
        row = self._db.execute(
            f"SELECT {self._COLS} FROM readings WHERE device = ? AND quantity = ? AND ts_ms >= ? AND pruned = 0"
            " ORDER BY ts_ms, seq LIMIT 1",
            (device, quantity, ts_ms),
        ).fetchone()
        return self._entry(row) if row else None

    def iter_all(self, start_seq: int = 1, end_seq: int | None = None, batch: int = 10_000) -> Iterator[Entry]:
        """Every entry including pruned ones, in seq order: what chain verification walks."""
        seq = start_seq - 1
        while True:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM readings WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (seq, end_seq if end_seq is not None else self._head_seq, batch),
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield self._entry(r)
            seq = int(rows[-1][0])

    def hash_at(self, seq: int) -> bytes:
        """The chain hash after entry `seq` (GENESIS for seq <= 0); KeyError when there is no such entry."""
        if seq <= 0:
            return GENESIS
        row = self._db.execute("SELECT hash FROM readings WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise KeyError(seq)
        return bytes(row[0])

    # -- what certification reads (plain tuples: a month of 10-s readings is ~260 k rows per channel,
    #    and building a dataclass per row costs more than the whole computation) --------------------
    def register_rows(
        self, device: str, quantity: str, start_ms: int, end_ms: int, *, max_seq: int
    ) -> list[tuple[int, Any, int, bytes, int]]:
        """(ts_ms, value, seq, hash, usable) of kept readings in [start_ms, end_ms) with seq <= max_seq, in
        (ts, seq) order; `usable` is 1 for a good integer reading (what the method may use), else 0."""
        return self._db.execute(
            "SELECT ts_ms, value, seq, hash, quality = 'good' AND typeof(value) = 'integer' FROM readings"
            " WHERE device = ? AND quantity = ? AND ts_ms >= ? AND ts_ms < ? AND pruned = 0 AND seq <= ?"
            " ORDER BY ts_ms, seq",
            (device, quantity, start_ms, end_ms, max_seq),
        ).fetchall()

    def usable_register_row(
        self, device: str, quantity: str, ts_ms: int, *, before: bool, max_seq: int
    ) -> tuple[int, int, int, bytes] | None:
        """(ts_ms, value, seq, hash) of the nearest usable reading before `ts_ms` (or at/after it)."""
        where = "ts_ms < ? ORDER BY ts_ms DESC, seq DESC" if before else "ts_ms >= ? ORDER BY ts_ms, seq"
        row = self._db.execute(
            "SELECT ts_ms, value, seq, hash FROM readings WHERE device = ? AND quantity = ? AND pruned = 0"
            f" AND quality = 'good' AND typeof(value) = 'integer' AND seq <= ? AND {where} LIMIT 1",
            (device, quantity, max_seq, ts_ms),
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2]), bytes(row[3])) if row else None

    def usable_rows_with_prev_hash(
        self, device: str, quantity: str, first_ms: int, last_ms: int, *, max_seq: int
    ) -> Iterator[tuple[int, int, int, str, str, bytes, bytes]]:
        """(seq, ts_ms, value, unit, quality, hash, previous entry's hash) of usable readings in
        [first_ms, last_ms], in (ts, seq) order: the evidence bundle's lines."""
        cur = self._db.execute(
            "SELECT r.seq, r.ts_ms, r.value, r.unit, r.quality, r.hash, p.hash FROM readings r"
            " LEFT JOIN readings p ON p.seq = r.seq - 1"
            " WHERE r.device = ? AND r.quantity = ? AND r.ts_ms >= ? AND r.ts_ms <= ?"
            " AND r.pruned = 0 AND r.quality = 'good' AND typeof(r.value) = 'integer' AND r.seq <= ?"
            " ORDER BY r.ts_ms, r.seq",
            (device, quantity, first_ms, last_ms, max_seq),
        )
        for seq, ts_ms, value, unit, quality, h, prev in cur:
            yield (
                int(seq),
                int(ts_ms),
                int(value),
                str(unit),
                str(quality),
                bytes(h),
                bytes(prev) if prev is not None else GENESIS,
            )

    def first_counter_ms(self) -> int | None:
        """The time of the oldest kept energy-register reading (None when there is none)."""
        row = self._db.execute("SELECT min(ts_ms) FROM readings WHERE counter = 1 AND pruned = 0").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def events_head(self) -> tuple[int, bytes] | None:
        """(id, chain hash) of the last event; (0, GENESIS) when there is none; None for a schema-1 ledger
        not yet migrated (its events carry no chain, so a report cannot commit to one)."""
        try:
            row = self._db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            return None
        if row is None:
            return (0, GENESIS)
        return (int(row[0]), bytes(row[1])) if row[1] is not None else None

    def event_hash_at(self, event_id: int) -> bytes:
        """The events chain hash after event `event_id` (GENESIS for 0); KeyError when there is none."""
        if event_id <= 0:
            return GENESIS
        row = self._db.execute("SELECT hash FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None or row[0] is None:
            raise KeyError(event_id)
        return bytes(row[0])

    def events_rows(self, max_id: int) -> Iterator[tuple[int, int, str, str | None, str, bytes]]:
        """Every event up to `max_id` with its chain hash, in chain order (for the evidence bundle)."""
        for eid, ts_ms, kind, device, detail, h in self._db.execute(
            "SELECT id, ts_ms, kind, device, detail, hash FROM events WHERE id <= ? ORDER BY id", (max_id,)
        ):
            yield int(eid), int(ts_ms), str(kind), device, str(detail), bytes(h)

    def trend_buckets(
        self, device: str, quantity: str, start_ms: int, end_ms: int, bucket_ms: int, *, max_rows: int
    ) -> list[tuple[int, int, float, float, float]] | None:
        """(bucket start, readings, mean, min, max) of the good/estimated numeric readings of one series in
        [start_ms, end_ms), or None when the range holds more than `max_rows` readings (then the caller
        samples instead: aggregating a month of 1-s readings would hold a reader thread for seconds)."""
        where = "device = ? AND quantity = ? AND ts_ms >= ? AND ts_ms < ? AND pruned = 0"
        args = (device, quantity, start_ms, end_ms)
        (n,) = self._db.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM readings WHERE {where} LIMIT ?)", (*args, max_rows + 1)
        ).fetchone()
        if n > max_rows:
            return None
        rows = self._db.execute(
            f"SELECT (ts_ms - ?) / ? AS b, count(*), avg(value), min(value), max(value) FROM readings WHERE {where}"
            " AND quality IN ('good', 'estimated') AND typeof(value) IN ('integer', 'real') GROUP BY b ORDER BY b",
            (start_ms, bucket_ms, *args),
        )
        return [(start_ms + int(b) * bucket_ms, int(c), float(a), float(lo), float(hi)) for b, c, a, lo, hi in rows]

    def newest_ts_ms(self) -> int | None:
        """The latest reading time in the ledger (kept entries): time must not run back past it."""
        row = self._db.execute("SELECT max(ts_ms) FROM readings WHERE pruned = 0").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def clock_floor_ms(self) -> int | None:
        """The time the clock must not run back past: the newest reading, unless the clock guard has since
        lowered its floor (event `clock_floor_lowered`: readings stamped by a bad clock, far ahead).
        Then only what was committed after that event counts, and the floor it was lowered to, so a
        restart does not hold readings against the bad stamps again (issue 15)."""
        row = self._db.execute(
            "SELECT detail FROM events WHERE kind = 'clock_floor_lowered' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            try:
                detail = json.loads(row[0])
                seq, to_ms = int(detail["head_seq"]), int(detail["to_ms"])
            except (ValueError, KeyError, TypeError):
                return self.newest_ts_ms()
            after = self._db.execute("SELECT max(ts_ms) FROM readings WHERE pruned = 0 AND seq > ?", (seq,)).fetchone()
            return max(to_ms, int(after[0])) if after and after[0] is not None else to_ms
        return self.newest_ts_ms()

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM readings").fetchone()[0])

    # -- integrity ----------------------------------------------------------------------------------
    def verify(self, start_seq: int = 1, end_seq: int | None = None) -> ChainCheck:
        """Re-walk the chain. Pruned entries are taken on their stored hash; kept ones are recomputed."""
        prev = self.hash_at(start_seq - 1) if start_seq > 1 else GENESIS
        expected_seq = start_seq
        n = 0
        for e in self.iter_all(start_seq, end_seq):
            if e.seq != expected_seq:
                return ChainCheck(False, n, e.seq, prev, f"entry {expected_seq} is missing (next is {e.seq})")
            if not e.pruned:
                h = chain_hash(
                    prev,
                    canonical_entry(e.seq, e.ts_ms, e.device, e.quantity, e.value, e.unit, e.quality.value),
                )
                if h != e.hash:
                    return ChainCheck(False, n, e.seq, prev, f"entry {e.seq} does not match its chain hash")
            prev = e.hash
            expected_seq += 1
            n += 1
        return ChainCheck(True, n, expected_seq - 1, prev)

    # -- retention ----------------------------------------------------------------------------------
    def prune(self, *, instant_before_ms: int, counter_before_ms: int, forwarded_seq: int) -> int:
        """Drop payloads of old readings that every sink has forwarded; keep their seq and hash.

        Energy-register (counter) readings live longer (`counter_before_ms` is older) because monthly
        certification is computed from them. Returns the number of entries pruned.
        """
        cur = self._db.execute(
            "UPDATE readings SET ts_ms = NULL, device = NULL, quantity = NULL, value = NULL, unit = NULL,"
            " quality = NULL, pruned = 1 WHERE pruned = 0 AND seq <= ? AND"
            " ((counter = 0 AND ts_ms < ?) OR (counter = 1 AND ts_ms < ?))",
            (forwarded_seq, instant_before_ms, counter_before_ms),
        )
        return cur.rowcount

    def prune_instant_now(self, *, forwarded_seq: int, keep_after_ms: int) -> int:
        """Disk-pressure relief: prune forwarded instant readings older than `keep_after_ms` now."""
        cur = self._db.execute(
            "UPDATE readings SET ts_ms = NULL, device = NULL, quantity = NULL, value = NULL, unit = NULL,"
            " quality = NULL, pruned = 1 WHERE pruned = 0 AND counter = 0 AND seq <= ? AND ts_ms < ?",
            (forwarded_seq, keep_after_ms),
        )
        return cur.rowcount

    def checkpoint(self) -> None:
        """Move the WAL into the database and truncate it: gives its disk space back."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def backup(self, dest: Path | str) -> None:
        """A consistent copy while the agent writes (SQLite online backup API)."""
        dest = Path(dest)
        tmp = dest.with_suffix(dest.suffix + ".tmp")
        target = sqlite3.connect(tmp)
        try:
            self._db.backup(target)
        finally:
            target.close()
        shutil.move(tmp, dest)
