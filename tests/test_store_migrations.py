"""The store's schema migrations (store/migrate.py, store/migrations/) on a SQLite file and a
real PostgreSQL: a new database, one made before migrations (with its rows), the revisions
against store/schema.py, concurrent starts, and the refusals."""

from __future__ import annotations

import importlib
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from contract.encode import (
    PollEncoder,
    ReadingEncoder,
    build_message,
    encode_unit,
    envelope,
    with_seq,
)
from contract.records import Context, Reading, UnitRecord
from store.db import connect
from store.ingest import Incoming, Writer
from store.migrate import (
    LOCK_KEY,
    SQLITE_BEGIN,
    SchemaRefused,
    alembic_config,
    head_revision,
    migrate,
    schema_state,
)
from store.schema import metadata
from tests.helpers import REPO, free_port
from tests.postgres import PostgresServer

T0 = 1_795_000_000.25
R_TOPIC = "collector/site/line1/pc1/readings"
U_TOPIC = "collector/site/line1/pc1/units"
STORE_TABLES = set(metadata.tables)


def _readings(first_seq: int, count: int) -> bytes:
    ctx = Context("ft-1", "PILOT-1", "functional-test", 1)
    polls = [Reading(T0 + first_seq, f"t{i}", float(i) + 0.25, "V") for i in range(count)]
    items = ReadingEncoder().encode(first_seq, "tester-1", polls, [ctx] * count)
    return build_message("pc1", items)


def _unit(seq: int) -> bytes:
    record = UnitRecord(
        serial="PILOT-1", station="ft-1", operation="functional-test", attempt=1,
        start_ts=T0, end_ts=T0 + 39.5, ended_by="verdict", verdict="pass",
        failure_code=None, readings=5, characteristics={"leakage": (12.1, 11.7, 12.4)},
    )  # fmt: skip
    return build_message("pc1", with_seq([(seq, encode_unit(record))]), b"units")


def _rows(engine: sa.Engine) -> dict[str, list[Any]]:
    """Every row of every store table the database has, in a stable order."""
    found = {}
    present = set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        for name, table in metadata.tables.items():
            if name not in present:
                continue
            order = list(table.primary_key.columns) or list(table.columns)
            found[name] = [tuple(r) for r in conn.execute(sa.select(table).order_by(*order))]
    return found


def _catalog(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """The database's own description of the store's tables: SQLite's CREATE statements, or
    PostgreSQL's columns, constraints and index definitions."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = (
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE tbl_name <> 'alembic_version' ORDER BY name"
            )
            # Whitespace aside: ADD COLUMN (revision 0007) appends to the stored CREATE text
            # without create_all's line break; the columns, their order and types must agree.
            return [
                (*r[:3], None if r[3] is None else " ".join(r[3].split()))
                for r in conn.exec_driver_sql(query)
            ]
        columns = conn.exec_driver_sql(
            "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, "
            "column_default FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name <> 'alembic_version' ORDER BY 1, 3"
        )
        constraints = conn.exec_driver_sql(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
            "AND conrelid::regclass::text <> 'alembic_version' ORDER BY 1, 2"
        )
        indexes = conn.exec_driver_sql(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version' ORDER BY 1, 2"
        )
        return [tuple(r) for q in (columns, constraints, indexes) for r in q]


def _version_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _diff(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))


def test_a_new_database_is_created_at_the_head_once(db_url: str) -> None:
    engine = connect(db_url)
    before = schema_state(engine)
    assert (before.current, before.legacy, before.at_head) == (None, False, False)
    assert "no schema yet" in before.describe()
    assert migrate(engine).current is None
    assert _tables(engine) == STORE_TABLES | {"alembic_version"}
    assert _version_rows(engine) == [head_revision()]
    again = migrate(engine)  # the next start: nothing to do
    assert again.at_head
    assert _version_rows(engine) == [head_revision()]
    assert schema_state(engine).describe() == f"schema revision {head_revision()} (head)"


def create_as_before_migrations(engine: sa.Engine) -> None:
    """The tables as the store made them before migrations: create_all of the schema of that
    time, which is the baseline revision's (later revisions added tables to the metadata)."""
    baseline = importlib.import_module("store.migrations.versions.0001_baseline")
    before = set(baseline._tables().tables)
    metadata.create_all(engine, tables=[t for t in metadata.sorted_tables if t.name in before])


@pytest.mark.parametrize("before_parked", [False, True])
def test_a_database_made_before_migrations_is_upgraded_in_place(
    db_url: str, before_parked: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The tables as today's main makes them (create_all at start; one made before ``parked``
    existed lacks that table), rows written by the store's writer, then the migration."""
    engine = connect(db_url)
    create_as_before_migrations(engine)
    writer = Writer(engine)
    # The writer of that time swept no parked messages waiting for a unit-context version
    # (a table of revision 0004): today's would at its first batch, on a migrated database.
    writer._swept = True
    writer.write([Incoming(R_TOPIC, _readings(1, 4)), Incoming(U_TOPIC, _unit(1))])
    writer.write([Incoming(R_TOPIC, _readings(9, 2))])  # seq 5-8 missing: a gap row
    writer.close()
    rows = _rows(engine)
    counted = {n: len(rows[n]) for n in ("readings", "units", "streams", "gaps", "contexts")}
    assert counted == {"readings": 6, "units": 1, "streams": 2, "gaps": 1, "contexts": 1}
    if before_parked:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE parked")

    state = schema_state(engine)
    assert (state.current, state.legacy, state.known) == (None, True, True)
    assert "made before migrations" in state.describe()
    with caplog.at_level(logging.INFO, logger="store.migrate"):
        assert migrate(engine).legacy
    assert _version_rows(engine) == [head_revision()]
    assert _tables(engine) == STORE_TABLES | {"alembic_version"}
    after = _rows(engine)
    assert {name: after[name] for name in rows} == rows
    assert all(after[name] == [] for name in set(after) - set(rows))  # tables added later
    assert _diff(engine) == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "a database made before migrations: stamped as the baseline",
        f"schema migrated from none to {head_revision()}",
    ]
    # And the store keeps writing into it, dedupe included.
    writer = Writer(engine)
    result = writer.write([Incoming(R_TOPIC, _readings(9, 2)), Incoming(R_TOPIC, _readings(5, 4))])
    writer.close()
    assert (result.readings, result.readings_inserted) == (6, 4)


def test_the_head_is_exactly_store_schema(db_url: str, tmp_path: Path) -> None:
    """Every schema change needs a revision: the head, upgraded from nothing, is what
    store/schema.py declares (no autogenerate difference; the same tables, columns, keys and
    indexes in the database's own catalog as create_all makes); downgraded to nothing and up
    again, the same."""
    engine = connect(db_url)
    migrate(engine)
    assert _diff(engine) == []
    if engine.dialect.name == "sqlite":
        reference = connect(f"sqlite:///{tmp_path / 'create_all.db'}")
    else:
        server_url = sa.engine.make_url(db_url)
        reference = connect(server_url.set(database=f"{server_url.database}_reference"))
        with connect(server_url.set(database="postgres")).connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                f"CREATE DATABASE {server_url.database}_reference"
            )
    metadata.create_all(reference)
    assert _catalog(engine) == _catalog(reference)
    assert len(_catalog(engine)) > 20

    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert _tables(engine) == {"alembic_version"}
    assert _version_rows(engine) == []
    script = ScriptDirectory.from_config(config)
    revisions = [s.revision for s in script.walk_revisions()]
    for revision in reversed(revisions):  # each revision's upgrade, one at a time
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
        assert _version_rows(engine) == [revision]
    assert _diff(engine) == []
    assert _catalog(engine) == _catalog(reference)


#: The ``contexts.key`` the store wrote before the work order was in the unit context
#: (revision 0007) for the context of :func:`_readings`: the JSON of (station, slot,
#: unit_serial, operation, attempt, phase, golden).
KEY_0007 = '["ft-1",null,"PILOT-1","functional-test",1,null,false]'


def test_a_context_row_stored_before_the_work_order_keeps_its_key_and_its_readings(
    db_url: str,
) -> None:
    """A database at revision 0007 holding a context row: migrated to the head (0008 adds
    ``contexts.work_order``), the same context without a work order maps to that row and its
    key, not to a new one; a context with a work order gets a row of its own whose key
    names it."""
    engine = connect(db_url)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0007")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO contexts (key, station, slot, unit_serial, operation, attempt, "
                "phase, golden) VALUES (:key, 'ft-1', NULL, 'PILOT-1', 'functional-test', 1, "
                "NULL, :golden)"
            ),
            {"key": KEY_0007, "golden": False},
        )
    migrate(engine)
    assert _version_rows(engine) == [head_revision()] == ["0008"]
    assert _diff(engine) == []
    writer = Writer(engine)
    writer.write([Incoming(R_TOPIC, _readings(1, 4))])  # schema 1: no work order
    # Schema 3: the same context without a work order (its version's members are the
    # 7-field key), then with one, as two versions on context/ft-1.
    plain = Context("ft-1", "PILOT-1", "functional-test", 1)
    contexts = [plain, plain._replace(work_order="WO-1001")]
    polls = [Reading(T0 + 5, "t0", 1.5, "V"), Reading(T0 + 5, "t1", 2.5, "V")]
    encoder = PollEncoder()
    body = encoder.encode(1, "tester-1", polls, contexts)
    versions = [encoder.version(c) for c in contexts]
    writer.write(
        [Incoming(f"{R_TOPIC[:-9]}/context/ft-1", v.message("pc1")) for v in versions if v]
        + [Incoming(R_TOPIC, envelope("pc1", "0123456789abcdef", body))]
    )
    writer.close()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, key, unit_serial, work_order FROM contexts ORDER BY id")
        ).all()
        used = conn.execute(
            sa.text("SELECT context, count(*) FROM readings GROUP BY context ORDER BY context")
        ).all()
    (old_id, old_key, _, old_wo), (new_id, new_key, serial, wo) = rows
    assert (old_key, old_wo) == (KEY_0007, None)
    assert new_key == KEY_0007[:-1] + ',"WO-1001"]'
    assert (serial, wo) == ("PILOT-1", "WO-1001")
    assert [tuple(u) for u in used] == [(old_id, 5), (new_id, 1)]


#: One store process's start-up migration: says "ready" once its imports are done, begins when
#: the file ``argv[2]`` appears (so that all begin together), logs as the store does.
STARTER = """
import logging, sys, time
from pathlib import Path
from store.db import connect
from store.migrate import migrate
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
engine = connect(sys.argv[1])
print("ready", flush=True)
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
print("from", migrate(engine).current)
"""


def test_concurrent_starts_migrate_once_without_an_error(
    db_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Four store processes start at once on one new database: one creates the schema, the
    others wait for the lock and find it done; no error, in the processes or the server."""
    server: PostgresServer | None = (
        request.getfixturevalue("postgres") if db_url.startswith("postgresql") else None
    )
    server_log = server.root / "log" if server is not None else None
    log_offset = server_log.stat().st_size if server_log is not None else 0
    go = tmp_path / "go"
    argv = [sys.executable, "-c", STARTER, db_url, str(go)]
    starters = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(4)
    ]
    for starter in starters:  # each line waits for one process (the test's timeout bounds it)
        assert starter.stdout is not None
        assert starter.stdout.readline() == "ready\n"
    go.touch()
    outputs = [p.communicate(timeout=60) for p in starters]
    assert [p.returncode for p in starters] == [0] * 4, "\n".join(err for _, err in outputs)
    assert sorted(out for out, _ in outputs) == sorted(
        ["from None\n", *[f"from {head_revision()}\n"] * 3]
    )
    logged = [line for _, err in outputs for line in err.splitlines()]
    assert logged == [f"INFO store.migrate schema migrated from none to {head_revision()}"]
    engine = connect(db_url)
    assert _version_rows(engine) == [head_revision()]
    assert _tables(engine) == STORE_TABLES | {"alembic_version"}
    if server_log is not None:
        with server_log.open("rb") as log:
            log.seek(log_offset)
            assert b"ERROR" not in log.read()


def test_a_newer_schema_is_refused_naming_both_revisions(db_url: str) -> None:
    engine = connect(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0999_future'")
    state = schema_state(engine)
    assert (state.known, state.at_head) == (False, False)
    for mode in ("auto", "off"):
        with pytest.raises(SchemaRefused) as refused:
            migrate(engine, mode)
        assert str(refused.value) == (
            f"database schema revision 0999_future is newer than this store's "
            f"{head_revision()}: run the store version that migrated it (or newer)"
        )
    assert _version_rows(engine) == ["0999_future"]  # untouched


def test_migrate_off_refuses_a_database_not_at_the_head(db_url: str) -> None:
    engine = connect(db_url)
    with pytest.raises(SchemaRefused, match=r"no schema yet .* database\.migrate is off: run "):
        migrate(engine, "off")
    assert _tables(engine) == set()  # nothing created
    migrate(engine)
    assert migrate(engine, "off").at_head


def _store(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "store", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
    )  # fmt: skip


def test_the_migrate_and_check_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    head = head_revision()
    checked = _store("check", "--db", url, cwd=tmp_path)
    assert (checked.returncode, checked.stdout.splitlines()[1]) == (
        0, "schema: no database file yet (run or migrate creates it)",
    )  # fmt: skip
    create_as_before_migrations(connect(url))
    checked = _store("check", "--db", url, cwd=tmp_path)
    assert checked.stdout.splitlines()[1] == (
        f"schema: schema made before migrations (no revision): upgrade to {head}"
    )
    done = _store("migrate", "--db", url, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (
        0, f"schema: migrated from none (made before migrations) to {head}\n",
    )  # fmt: skip
    assert done.stderr.splitlines()[-1].endswith(f"schema migrated from none to {head}")
    done = _store("migrate", "--db", url, cwd=tmp_path)
    assert done.stdout == f"schema: {head}, the head already; nothing to do\n"
    checked = _store("check", "--db", url, cwd=tmp_path)
    assert (checked.returncode, checked.stdout.splitlines()[1]) == (
        0, f"schema: schema revision {head} (head)",
    )  # fmt: skip
    with connect(url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0999_future'")
    checked = _store("check", "--db", url, cwd=tmp_path)
    assert checked.returncode == 2
    assert "revision 0999_future is unknown to this store (its newest is" in checked.stdout
    down = _store("check", "--db", f"postgresql://u@127.0.0.1:{free_port()}/x", cwd=tmp_path)
    assert down.returncode == 1
    assert down.stderr.startswith("schema: cannot read the database: connection failed")
    assert len(down.stderr.splitlines()) == 1, down.stderr
    for command_ in ("migrate", "gaps"):
        refused = _store(command_, "--db", url, cwd=tmp_path)
        assert (refused.returncode, refused.stdout, refused.stderr) == (
            2, "", f"database schema revision 0999_future is newer than this store's {head}: "
            "run the store version that migrated it (or newer)\n",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("migrate_option", "future", "expected"),
    [
        ("off", False, "no schema yet (new database): upgrade to {head}, and database.migrate "
         "is off: run `collector store migrate` first (or set database.migrate: auto)"),
        ("auto", True, "database schema revision 0999_future is newer than this store's {head}: "
         "run the store version that migrated it (or newer)"),
    ],
)  # fmt: skip
def test_run_refuses_a_schema_in_one_line_with_exit_2(
    tmp_path: Path, migrate_option: str, future: bool, expected: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    if future:
        engine = connect(url)
        migrate(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0999_future'")
    config = tmp_path / "store.yaml"
    config.write_text(
        f"database: {{url: '{url}', migrate: {migrate_option}}}\n"
        f"http: {{enabled: false}}\nmqtt: {{port: 9}}\n"  # never reached: refused before
    )
    ran = _store("run", "--config", str(config), cwd=tmp_path)
    assert ran.returncode == 2, ran.stderr
    assert "Traceback" not in ran.stderr
    errors = [line for line in ran.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, ran.stderr
    assert errors[0].endswith(expected.format(head=head_revision())), errors
    checked = _store("check", "--config", str(config), cwd=tmp_path)
    assert checked.returncode == 2


def test_a_database_at_the_head_is_only_read(db_url: str) -> None:
    """At the head nothing is locked or written: a start or a query command beside a writer
    in the middle of a transaction does not queue behind it."""
    engine = connect(db_url)
    migrate(engine, timescaledb=False)
    other = connect(db_url)
    with other.connect() as writer:
        if other.dialect.name == "sqlite":
            writer.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        with writer.begin():
            if other.dialect.name == "postgresql":
                writer.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            writer.exec_driver_sql("DELETE FROM units")  # holds the write lock (SQLite)
            started = time.monotonic()
            assert migrate(engine, timescaledb=False).at_head
            assert time.monotonic() - started < 5  # the lock's wait is 30 s (SQLite) or forever


def test_a_new_sqlite_file_locked_by_another_process_is_switched_to_wal_once_free(
    tmp_path: Path,
) -> None:
    """Store processes starting together on a new SQLite file: while one holds the write lock
    (the migration's BEGIN IMMEDIATE), another's switch to WAL fails at once with "database
    is locked" (SQLite does not wait on the busy timeout for it). It is retried until the
    lock is free, so the second store starts instead of dying with a traceback."""
    path = tmp_path / "store.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE held (x)")  # a rollback-journal file, as a first start makes
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO held VALUES (1)")
    result: dict[str, object] = {}

    def open_store() -> None:
        try:
            with connect(f"sqlite:///{path}").connect() as conn:
                result["mode"] = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        except Exception as exc:  # the test reports it
            result["error"] = repr(exc)

    opener = threading.Thread(target=open_store)
    opener.start()
    opener.join(0.5)  # it fails at once without the retry; with it, it waits
    assert opener.is_alive(), result
    holder.execute("COMMIT")
    holder.close()
    opener.join(15)
    assert result == {"mode": "wal"}
