"""Opening the database: ``connect(url)`` for SQLite (embedded) or PostgreSQL (psycopg 3).

Also: bringing the schema to the head (store.migrate; the TimescaleDB hypertable when the
extension is installed), and sorting database errors into the few reasons /health shows
(down, full, read-only, other).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

import store.record.schema  # noqa: F401 - the record's tables join the metadata
from store.migrate import SQLITE_BEGIN, migrate

log = logging.getLogger("store.db")

#: How long a connection to a new SQLite file waits for another process's lock to switch it
#: to WAL (the busy timeout, 30 s, does not apply to that switch).
WAL_SWITCH_WAIT_S = 30.0


def connect(url: str | URL, password: str | None = None, synchronous: str = "full") -> sa.Engine:
    """An engine for ``sqlite:///PATH`` or ``postgresql://...`` (driver: psycopg 3).

    SQLite runs in WAL mode (readers never block the writer) with a busy timeout, so the
    HTTP API and a second store process can share the file; ``synchronous`` is full by default
    because a message is acknowledged to the broker as soon as its rows are committed.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if password is not None:
        parsed = parsed.set(password=password)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, connect_args={"timeout": 30})
        _sqlite_setup(engine, synchronous)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported database URL {parsed.drivername}: use sqlite or postgresql")
    return sa.create_engine(parsed, pool_pre_ping=True)


def _journal_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the file to WAL (a no-op once it is). On a new file, store processes starting
    together race here: the switch fails at once with "database is locked" while another
    holds its lock (the migration's BEGIN IMMEDIATE), without waiting on the busy timeout. So
    it is tried again, for at most WAL_SWITCH_WAIT_S."""
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        else:
            return
        time.sleep(0.02)


def _sqlite_setup(engine: Engine, synchronous: str) -> None:
    sync = {"full": "FULL", "normal": "NORMAL"}[synchronous]

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun explicitly (BEGIN IMMEDIATE by the writer, so two writers
        # queue on the lock instead of failing on a read-to-write upgrade).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _journal_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={sync}")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # The migration begins with the write lock (store.migrate): BEGIN IMMEDIATE.
        conn.exec_driver_sql(conn.get_execution_options().get(SQLITE_BEGIN, "BEGIN"))


def create_schema(engine: Engine, timescaledb: bool = True) -> None:
    """Bring the database to the schema this code needs (store.migrate: creates the tables
    of a new database; on PostgreSQL with the timescaledb extension installed, readings is a
    hypertable). Raises store.migrate.SchemaRefused for a schema newer than the code."""
    migrate(engine, "auto", timescaledb)


def is_hypertable(engine: Engine) -> bool:
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        if conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname='timescaledb'").first():
            row = conn.exec_driver_sql(
                "SELECT 1 FROM timescaledb_information.hypertables "
                "WHERE hypertable_name = 'readings'"
            ).first()
            return row is not None
    return False


def error_reason(exc: BaseException) -> str:
    """One of ``down``, ``full``, ``read-only``, ``other`` for a database error (the /health
    and metrics label), from the driver's error class or SQLite's message."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    name = type(getattr(exc, "orig", None) or exc).__name__
    if name == "DiskFull" or "disk is full" in text or "no space left" in text:
        return "full"
    if name == "ReadOnlySqlTransaction" or "readonly" in text or "read-only" in text:
        return "read-only"
    if (
        isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
        or name in ("OperationalError", "InterfaceError", "AdminShutdown")
        or "unable to open" in text
        or "connection" in text
    ):
        return "down"
    return "other"
