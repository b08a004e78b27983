"""The hub's database: one SQLAlchemy Core schema for SQLite (embedded default) and PostgreSQL.

Why SQLAlchemy Core (not an ORM, not raw drivers): the same table definitions and statements run on both
engines, with their types, unique constraints and connection pooling handled by a well-kept library;
what differs (the write lock) is in one function here.

Migrations: an ordered list of steps and a `hub_meta.schema_version`, as the site ledger does, not
Alembic. The schema ships inside the package and must be brought up to date by `gia hub run` itself on
a Pi-sized SQLite file as on a managed PostgreSQL, with several replicas starting at once: each step
runs in one transaction under the same database lock the log uses, so two replicas never migrate
together. Alembic would add its script directory, an env.py and a second way to connect for the same
handful of steps. A new release appends a function to `MIGRATIONS`; steps are never edited.

One writer at a time (`write_lock`): on PostgreSQL a transaction-scoped advisory lock
(`pg_advisory_xact_lock`), released by COMMIT/ROLLBACK, also when a replica dies mid-transaction; on
SQLite every transaction starts with `BEGIN IMMEDIATE`, which takes the file's write lock up front
(concurrent writers wait on `busy_timeout`). Both serialise appends to the log across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.sql import Select
from sqlalchemy.types import BigInteger

from gateway.hub.config import DatabaseConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
#: The advisory lock key (any 64-bit constant): "GIAHUB\0\1".
LOCK_KEY: Final = 0x4749414855420001

# BIGINT on PostgreSQL, INTEGER (the rowid alias, so autoincrementing) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")
Ms = BigInteger  # UTC milliseconds since the epoch

metadata = MetaData()

hub_meta = Table(
    "hub_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

areas = Table(
    "areas",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("name", Text, nullable=False, default=""),
    Column("policy", Text, nullable=False),  # canonical JSON of the grading policy in force
    Column("updated_ms", Ms, nullable=False),
    # schema 2: canonical JSON of the area definition (shared generators, criteria, deadline)
    Column("definition", Text, nullable=False, server_default="{}"),
)

sites = Table(
    "sites",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("area", String(63), ForeignKey("areas.id"), nullable=False),
    Column("status", String(16), nullable=False),  # enrolled | revoked
    Column("token_sha256", String(64), nullable=True),  # per-site push token, stored hashed
    Column("enrolled_ms", Ms, nullable=False),
    Column("revoked_ms", Ms, nullable=True),
    Column("revoke_reason", Text, nullable=True),
)

# The pinned key chain of a site: position 0 is the key enrolled out of band; later positions come from
# key-transition statements valid against the key before them.
site_keys = Table(
    "site_keys",
    metadata,
    Column("site", String(63), ForeignKey("sites.id"), primary_key=True),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("key_id", String(64), nullable=False),
    Column("public_pem", Text, nullable=False),
    Column("pinned_ms", Ms, nullable=False),
    Column("via", String(16), nullable=False),  # enroll | transition
    Column("statement", LargeBinary, nullable=True),  # the transition statement as received
    Column("log_index", BigInteger, nullable=True),
    UniqueConstraint("site", "key_id", name="site_keys_site_key_id"),
)

log_leaves = Table(
    "log_leaves",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),  # 0-based leaf index
    Column("kind", String(32), nullable=False),  # site_report | key_transition | area_report
    Column("leaf_input", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
    Column("created_ms", Ms, nullable=False),
)

reports = Table(
    "reports",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site", String(63), ForeignKey("sites.id"), nullable=False),
    Column("month", String(7), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("raw", LargeBinary, nullable=False),  # the exact bytes received (what the signature covers)
    Column("received_ms", Ms, nullable=False),
    Column("via", String(8), nullable=False),  # mqtt | http
    Column("status", String(16), nullable=False),  # accepted | rejected | conflict
    Column("reasons", Text, nullable=False),  # JSON list of strings
    Column("key_id", String(64), nullable=True),
    Column("grade", String(16), nullable=True),  # the grade under the area's policy
    Column("reissue_of", String(64), nullable=True),
    Column("log_index", BigInteger, ForeignKey("log_leaves.idx"), nullable=True),
    UniqueConstraint("site", "month", "sha256", name="reports_site_month_sha"),
    Index("reports_site_month_status", "site", "month", "status"),
)

conflicts = Table(
    "conflicts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site", String(63), nullable=False),
    Column("month", String(7), nullable=False),
    Column("stored_sha256", String(64), nullable=False),  # the report that counts
    Column("other_sha256", String(64), nullable=False),  # the different one refused
    Column("detected_ms", Ms, nullable=False),
    Column("detail", Text, nullable=False),
    UniqueConstraint("site", "month", "other_sha256", name="conflicts_site_month_other"),
)

# Submissions that cannot be attributed to an enrolled site's pinned key: kept, listed, never counted.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("claimed_site", String(255), nullable=False),
    Column("month", String(16), nullable=True),
    Column("sha256", String(64), nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("received_ms", Ms, nullable=False),
    Column("via", String(8), nullable=False),
    Column("kind", String(32), nullable=False),  # unknown_site | unpinned_key | revoked_site | malformed | ...
    Column("reason", Text, nullable=False),
    UniqueConstraint("claimed_site", "sha256", name="quarantine_site_sha"),
)

tree_heads = Table(
    "tree_heads",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", String(64), nullable=False),
    Column("head", LargeBinary, nullable=False),  # the signed tree head, canonical JSON
    Column("created_ms", Ms, nullable=False),
)

receipts = Table(
    "receipts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site", String(63), nullable=False),
    Column("month", String(7), nullable=False),
    Column("report_sha256", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("body", LargeBinary, nullable=False),  # the signed receipt, canonical JSON
    Column("created_ms", Ms, nullable=False),
    # Retained on MQTT unless the month already has an accepted report: the retained receipt of a month
    # stays the one of the report that counts; a refused replacement is announced without displacing it.
    Column("retain", Boolean, nullable=False),
    Column("published_ms", Ms, nullable=True),  # MQTT outbox: NULL until published
    UniqueConstraint("site", "month", "report_sha256", name="receipts_site_month_sha"),
    Index("receipts_unpublished", "published_ms"),
)


# -- schema 2 --------------------------------------------------------------------------------------
# Key transitions the hub followed (the site's events chain event ids): a report whose events head lies
# after one must be signed by its new key.
key_transitions = Table(
    "key_transitions",
    metadata,
    Column("site", String(63), ForeignKey("sites.id"), primary_key=True),
    Column("event_id", BigInteger, primary_key=True, autoincrement=False),
    Column("new_key_id", String(64), nullable=False),
    Column("old_key_id", String(64), nullable=True),
    Column("sha256", String(64), nullable=False),  # of the canonical {event_id, statement, signatures}
    Column("detail", LargeBinary, nullable=False),
    Column("log_index", BigInteger, ForeignKey("log_leaves.idx"), nullable=True),
    Column("received_ms", Ms, nullable=False),
)

# Every metering channel belongs to one site: the first accepted report claiming a meter (normalised
# serial + register) makes its site the owner; another site's report claiming it is rejected.
channel_owners = Table(
    "channel_owners",
    metadata,
    Column("channel_key", String(255), primary_key=True),
    Column("site", String(63), ForeignKey("sites.id"), nullable=False),
    Column("channel", String(255), nullable=False),
    Column("first_month", String(7), nullable=False),
    Column("report_sha256", String(64), nullable=False),
)

# Signed area reports: monthly (`period` YYYY-MM) and yearly roll-ups (`period` YYYY); a newer version of
# the same period names the one it replaces (`reissue_of`).
area_reports = Table(
    "area_reports",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("area", String(63), ForeignKey("areas.id"), nullable=False),
    Column("period", String(7), nullable=False),
    Column("version", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("complete", Boolean, nullable=False),  # every enrolled site was in (else built at the deadline)
    Column("reissue_of", String(64), nullable=True),
    Column("log_index", BigInteger, ForeignKey("log_leaves.idx"), nullable=False),
    Column("created_ms", Ms, nullable=False),
    UniqueConstraint("area", "period", "version", name="area_reports_area_period_version"),
)

# Evidence bundles pushed with a report (zip), checked on arrival.
evidence = Table(
    "evidence",
    metadata,
    Column("site", String(63), ForeignKey("sites.id"), primary_key=True),
    Column("report_sha256", String(64), primary_key=True),
    Column("month", String(7), nullable=False),
    Column("zip", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),  # verified | failed
    Column("reasons", Text, nullable=False),
    Column("received_ms", Ms, nullable=False),
)

# What the hub refused without a decision of its own to show (replays, oversize payloads): counted per
# (site, kind, sha256) so a retained message re-read on every reconnect is one row, not thousands.
incidents = Table(
    "incidents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("site", String(255), nullable=False),
    Column("month", String(16), nullable=True),
    Column("kind", String(32), nullable=False),  # replay | too_large
    Column("sha256", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("first_ms", Ms, nullable=False),
    Column("last_ms", Ms, nullable=False),
    UniqueConstraint("site", "kind", "sha256", name="incidents_site_kind_sha"),
)

V1_TABLES: Final = (hub_meta, areas, sites, site_keys, log_leaves, reports, conflicts, quarantine, tree_heads, receipts)
V2_TABLES: Final = (key_transitions, channel_owners, area_reports, evidence, incidents)


class DatabaseError(Exception):
    """The database is unusable (newer schema, unreachable at start): the message names the fix."""


# -- engine ------------------------------------------------------------------------------------------
def database_url(cfg: DatabaseConfig) -> URL:
    """The URL with the driver chosen (psycopg 3) and the password from its file/env, never from the URL."""
    url = make_url(cfg.url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
        password = cfg.password_value()
        if password is not None:
            url = url.set(password=password)
    return url


def create_hub_engine(cfg: DatabaseConfig) -> Engine:
    url = database_url(cfg)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30.0})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi: Any, _record: Any) -> None:
            # The driver's own transaction handling would defer BEGIN; we issue BEGIN IMMEDIATE ourselves.
            dbapi.isolation_level = None
            cur = dbapi.cursor()
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA busy_timeout = 30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Writers take the write lock up front (no upgrade deadlock); readers read a WAL snapshot.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("hub_write") else "BEGIN")

        return engine
    # pre_ping: after a PostgreSQL restart the pooled connections are dead; each is tested on checkout.
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=cfg.pool_size,
        max_overflow=2,
        connect_args={"connect_timeout": max(1, round(cfg.connect_timeout_s))},
    )

    @event.listens_for(engine, "connect")
    def _pg_connect(dbapi: Any, _record: Any) -> None:
        # Reports and evidence are tens of KiB of JSON each: lz4 compression of their stored values
        # (PostgreSQL 14+) costs less than the default pglz (storing a 31 KiB report 0.61 -> 0.36 ms,
        # bench/hub_reports.py). A server without lz4 keeps pglz; the setting changes nothing else.
        import psycopg

        try:
            with dbapi.cursor() as cur:
                cur.execute("SET default_toast_compression = 'lz4'")
            dbapi.commit()
        except psycopg.Error as exc:
            dbapi.rollback()
            log.info("PostgreSQL keeps its default compression for stored reports (%s)", exc)

    return engine


class BatchedReads:
    """Read statements with named bind parameters, compiled once per dialect, run several at a time.

    On PostgreSQL the reads of one call go out together in psycopg's pipeline mode and their results
    come back in order: one round trip instead of one per statement. Ingesting a report makes six to
    ten small reads before it can decide; one by one they cost 1.1 ms per report on a local server
    (more to a managed one), together 0.4 ms. The SQL of each statement is compiled once: compiling it
    per call cost more than the round trips saved. Elsewhere (SQLite runs in-process, no round trip to
    save) the statements are executed one after another. Rows come back with their columns as
    attributes, like SQLAlchemy's.
    """

    def __init__(self) -> None:
        self._compiled: dict[int, tuple[Select[Any], str, dict[str, Any]]] = {}

    def _sql(self, conn: Connection, stmt: Select[Any]) -> tuple[str, dict[str, Any]]:
        hit = self._compiled.get(id(stmt))
        if hit is None or hit[0] is not stmt:
            c = stmt.compile(dialect=conn.dialect)
            hit = (stmt, str(c), dict(c.params))
            self._compiled[id(stmt)] = hit
        return hit[1], hit[2]

    def run(self, conn: Connection, reads: Sequence[tuple[Select[Any], Mapping[str, Any]]]) -> list[list[Any]]:
        """The rows of each (statement, parameters), in order."""
        if not is_postgres(conn):
            return [list(conn.execute(stmt, dict(params)).all()) for stmt, params in reads]
        raw = conn.connection.driver_connection
        assert raw is not None
        out: list[list[Any]] = []
        with raw.pipeline():
            cursors = []
            for stmt, params in reads:
                sql, defaults = self._sql(conn, stmt)
                cur = raw.cursor()
                cur.execute(sql, {**defaults, **params})
                cursors.append(cur)
            for cur in cursors:
                rows = cur.fetchall()  # first: in pipeline mode a cursor knows its columns once its result is in
                names = [d.name for d in cur.description or ()]
                out.append([SimpleNamespace(**dict(zip(names, r, strict=True))) for r in rows])
                cur.close()
        return out


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the hub's write lock (see the module doc): commit on exit, else roll back."""
    with engine.connect() as conn:
        conn.execution_options(hub_write=True)
        with conn.begin():
            if is_postgres(conn):
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            yield conn


# -- migrations --------------------------------------------------------------------------------------
def _v1(conn: Connection) -> None:
    """The first schema: the tables of release 1 (`areas` as defined now; `_v2` adds its later column)."""
    metadata.create_all(conn, tables=list(V1_TABLES))


def _v2(conn: Connection) -> None:
    """Key transitions followed, channel owners, area reports, evidence, incidents; areas.definition."""
    from sqlalchemy import inspect

    if "definition" not in {c["name"] for c in inspect(conn).get_columns("areas")}:
        conn.execute(text("ALTER TABLE areas ADD COLUMN definition TEXT NOT NULL DEFAULT '{}'"))
    metadata.create_all(conn, tables=list(V2_TABLES))


#: MIGRATIONS[n] brings schema n to n + 1 (index 0: from nothing). Append, never edit.
MIGRATIONS: Final[list[Callable[[Connection], None]]] = [_v1, _v2]


def schema_version(conn: Connection) -> int:
    from sqlalchemy import inspect

    if not inspect(conn).has_table("hub_meta"):
        return 0
    row = conn.execute(select(hub_meta.c.value).where(hub_meta.c.key == "schema_version")).first()
    return int(row[0]) if row is not None else 0


def migrate(engine: Engine) -> int:
    """Bring the database to this release's schema, one step per transaction; returns the version."""
    assert len(MIGRATIONS) == SCHEMA_VERSION
    while True:
        with write_transaction(engine) as conn:
            version = schema_version(conn)
            if version > SCHEMA_VERSION:
                raise DatabaseError(
                    f"hub database schema {version} is newer than this release ({SCHEMA_VERSION}); upgrade gia"
                )
            if version == SCHEMA_VERSION:
                return version
            MIGRATIONS[version](conn)
            if version == 0:
                conn.execute(hub_meta.insert().values(key="schema_version", value="1"))
            else:
                conn.execute(hub_meta.update().where(hub_meta.c.key == "schema_version").values(value=str(version + 1)))
            log.info("hub database migrated to schema %d", version + 1)
