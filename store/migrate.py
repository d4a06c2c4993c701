"""Bringing a store database to the schema this code needs: Alembic revisions in
``store/migrations/versions``, run under a lock so that store processes starting together
migrate once (docs/store.md, "Schema migrations").

The lock and the migration share one transaction: on PostgreSQL ``pg_advisory_xact_lock``
(DDL is transactional there, and the lock goes with the commit), on SQLite ``BEGIN
IMMEDIATE`` (the write lock; the others wait on the busy timeout). A process that waited reads
the revision after the winner committed, finds the head, and does nothing. A database at the
head is only read (no lock), unless the TimescaleDB step is on (PostgreSQL).

A database made before migrations (the store's tables, no ``alembic_version``) needs nothing
special: the baseline creates only the tables it misses, so it is recognised, keeps its rows
and is stamped at the baseline on the way to the head.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

# Alembic's INFO lines (its plugins as it is imported, "Context impl SQLiteImpl") say nothing
# to an operator; what was migrated is logged here, once.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402 - after its loggers' level
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

log = logging.getLogger("store.migrate")

#: The folder of env.py and versions/: beside this module in the package (a wheel too).
MIGRATIONS = Path(__file__).with_name("migrations")
#: PostgreSQL advisory lock key of the store's migrations ("store-db" in ASCII).
LOCK_KEY = 0x73746F72652D6462
#: A connection execution option that store.db's begin hook reads: how SQLite begins.
SQLITE_BEGIN = "store_sqlite_begin"
MODES = ("auto", "off")
#: Alembic's ``op`` and ``context`` are module globals: one migration at a time per process.
_ALEMBIC = threading.Lock()


class SchemaRefused(Exception):
    """The database's schema is not one this store may run on (and it will not change it)."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None  #: the revision in alembic_version; None without one
    head: str  #: the newest revision this code knows
    known: bool  #: ``current`` is one of this code's revisions (or None)
    legacy: bool  #: the store's tables without alembic_version: made before migrations

    @property
    def at_head(self) -> bool:
        return self.current == self.head

    def describe(self) -> str:
        if self.at_head:
            return f"schema revision {self.head} (head)"
        if not self.known:
            return (
                f"schema revision {self.current} is unknown to this store (its newest is "
                f"{self.head}): a newer store migrated this database"
            )
        if self.legacy:
            return f"schema made before migrations (no revision): upgrade to {self.head}"
        if self.current is None:
            return f"no schema yet (new database): upgrade to {self.head}"
        return f"schema revision {self.current}: upgrade to {self.head}"


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration without an alembic.ini: the package's migrations folder, and
    ``sqlalchemy.url`` for a developer's autogenerate (store.migrate passes a connection)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "store/migrations/versions holds no revision"
    return head


def _state(conn: sa.Connection) -> SchemaState:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    names = set(sa.inspect(conn).get_table_names())
    current = MigrationContext.configure(conn).get_current_revision()
    known = current is None or current in {s.revision for s in script.walk_revisions()}
    legacy = current is None and "readings" in names
    return SchemaState(current, head, known, legacy)


def schema_state(engine: sa.Engine) -> SchemaState:
    """Where the database stands (reads only)."""
    with engine.connect() as conn:
        return _state(conn)


@contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that holds the store's migration lock."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            yield conn


def migrate(engine: sa.Engine, mode: str = "auto", timescaledb: bool = True) -> SchemaState:
    """Upgrade the database to the head (``mode`` auto), or check that it is there (off).

    Returns the state found before; raises :class:`SchemaRefused` for a revision this code
    does not know, or (mode off) for a database not at the head. ``timescaledb``: on
    PostgreSQL with the extension installed, readings is (made) a hypertable, also for a
    database migrated before the extension was installed.
    """
    if mode not in MODES:
        raise ValueError(f"migrate mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "off":  # changes nothing: no lock to wait for
        state = schema_state(engine)
        _refuse_unknown(state)
        if not state.at_head:
            raise SchemaRefused(
                f"database {state.describe()}, and database.migrate is off: "
                "run `collector store migrate` first (or set database.migrate: auto)"
            )
        return state
    hypertable = timescaledb and engine.dialect.name == "postgresql"
    if not hypertable:
        # The usual start: at the head already. Read without the lock, so that a start (or a
        # query command) never queues behind a writer's transaction, nor writes anything.
        state = schema_state(engine)
        _refuse_unknown(state)
        if state.at_head:
            return state
    with _locked(engine) as conn:
        before = _state(conn)
        _refuse_unknown(before)
        if not before.at_head:
            config = alembic_config()
            config.attributes["connection"] = conn
            config.attributes["timescaledb"] = timescaledb
            with _ALEMBIC:
                command.upgrade(config, "head")
            if before.legacy:
                log.info("a database made before migrations: stamped as the baseline")
            log.info("schema migrated from %s to %s", before.current or "none", before.head)
        if hypertable:
            _hypertable(conn)
    return before


def _refuse_unknown(state: SchemaState) -> None:
    if not state.known:
        raise SchemaRefused(
            f"database schema revision {state.current} is newer than this store's "
            f"{state.head}: run the store version that migrated it (or newer)"
        )


def _hypertable(conn: sa.Connection) -> None:
    """Make readings a hypertable if the timescaledb extension is installed (idempotent)."""
    if conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").first():
        conn.exec_driver_sql(
            "SELECT create_hypertable('readings', 'ts', if_not_exists => TRUE, "
            "migrate_data => TRUE, chunk_time_interval => INTERVAL '1 day')"
        )
        log.info("readings is a TimescaleDB hypertable (1-day chunks)")
