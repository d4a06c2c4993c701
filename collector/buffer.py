"""The SQLite outbox (SQLAlchemy Core): append -> take -> ack. Nothing leaves before the ack.

- Readings are stored a poll at a time: one row (a *batch*) holds a poll's readings, numbered
  ``first_seq..last_seq``, as the comma-separated JSON objects that a message carries
  (collector.message), ``seq`` included. One row per poll, not per reading, is what lets one
  core carry 100,000 readings a second (docs/performance.md): SQLite's cost is per row.
- ``seq`` is handed out by :class:`BufferWriter`, the only writer, counting on from the
  highest seq ever stored. The batch's key is its ``last_seq``, an ``INTEGER PRIMARY KEY
  AUTOINCREMENT``: SQLite keeps the highest key ever inserted in ``sqlite_sequence``, even
  after the row is deleted, in the same transaction as the row. So ``seq`` strictly increases
  and never repeats, across restarts and crashes, with no counter of our own to keep in step;
  seqs of a transaction that never committed were never published.
- :class:`BufferWriter` groups whatever the pollers produced since the last commit into one
  transaction.
- When the cap is reached, the oldest batches are deleted in the same transaction that appends
  the new ones, and their readings counted (persistently, in ``meta``).
- A batch that cannot go out whole (larger than the broker takes) is split into smaller
  batches in place (:meth:`Outbox.split`); a single reading that can never be delivered is
  moved to the quarantine table.
- A file that is not a database, or whose pages are malformed, is moved aside at start-up
  (:func:`open_outbox`) and a fresh one is started, its ``seq`` continuing above the highest one
  ever handed out: read from the old file if it still can be, else from ``<path>.seq``, a hint
  rewritten about once a second, plus :data:`SEQ_JUMP_AFTER_RESET` for what the hint may have
  missed. A seq is never reused: consumers that dedupe on it would drop new readings.
- A buffer written by a version that stored one row per reading is converted at start-up, in
  one transaction, nothing lost (:func:`_migrate_reading_rows`).

Every write runs on one dedicated thread (:class:`AsyncOutbox`), so an fsync never stalls the
event loop that polls devices; reads for the forwarder run on the event loop through a WAL
reader connection of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from collector.config import Synchronous
from collector.errors import StartupError
from collector.message import ReadingEncoder, encode_unit, ts_text, with_seq
from collector.reading import Context, ContextChanges, Reading

log = logging.getLogger(__name__)

T = TypeVar("T")

_metadata = sa.MetaData()
# One row per poll (or part of one): readings first_seq..last_seq, oldest ts, their JSON.
batches_table = sa.Table(
    "batches",
    _metadata,
    sa.Column("last_seq", sa.Integer, primary_key=True),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
# Readings the broker can never accept (e.g. larger than its packet limit), moved aside so they
# do not block the rows behind them; kept for inspection, counted, never silently deleted.
# ``seq`` is the last seq of the moved batch (one reading, as batches are split first); the
# body holds the reading objects with their seq.
quarantine_table = sa.Table(
    "quarantine",
    _metadata,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("moved_ts", sa.Float, nullable=False),
)
# Unit records (see collector.context): a stream of their own, with their own seq, delivered
# like readings. Few (one per unit per operation), so not counted against max_readings.
units_table = sa.Table(
    "units",
    _metadata,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
# The station context's state, stored in the same transaction as the readings it tagged: each
# station's open and ending units, and how often each serial went through each operation.
stations_table = sa.Table(
    "stations",
    _metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("state", sa.LargeBinary, nullable=False),
)
attempts_table = sa.Table(
    "attempts",
    _metadata,
    sa.Column("operation", sa.String, primary_key=True),
    sa.Column("serial", sa.String, primary_key=True),
    sa.Column("attempts", sa.Integer, nullable=False),
)
meta_table = sa.Table(
    "meta",
    _metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)

INSERT_BATCHES = "INSERT INTO batches (last_seq, first_seq, ts, body) VALUES (?, ?, ?, ?)"
SEQ_JUMP_AFTER_RESET = 1_000_000
HINT_INTERVAL_S = 1.0
DROPPED_KEY = "dropped_total"
QUARANTINED_KEY = "quarantined_total"
# How many readings a batch holds, in SQL.
_COUNT = "last_seq - first_seq + 1"


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings ``first_seq..last_seq`` (consecutive), the oldest one read at ``ts``, as
    comma-separated JSON objects (collector.message)."""

    first_seq: int
    last_seq: int
    ts: float
    body: bytes

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


def make_batch(
    encoder: ReadingEncoder,
    first_seq: int,
    device: str,
    readings: Sequence[Reading],
    contexts: Sequence[Context],
) -> Batch:
    """One poll's readings, numbered from ``first_seq``, as the batch the outbox stores."""
    return Batch(
        first_seq,
        first_seq + len(readings) - 1,
        min(r.ts for r in readings),
        encoder.encode(first_seq, device, readings, contexts),
    )


@dataclass(frozen=True, slots=True)
class BufferStats:
    depth: int
    max_readings: int
    oldest_ts: float | None
    dropped_total: int
    quarantined_total: int
    last_seq: int
    units_depth: int = 0
    last_unit_seq: int = 0


@dataclass(frozen=True, slots=True)
class BufferReset:
    """A corrupt buffer file was moved aside at start-up."""

    moved_to: Path
    error: str
    first_seq: int


class Outbox:
    """Synchronous outbox on one SQLite connection. Use it from one thread only."""

    def __init__(
        self,
        path: Path,
        max_readings: int,
        synchronous: Synchronous = Synchronous.FULL,
        seq_floor: int = 0,
    ) -> None:
        self.path = path
        self.reset: BufferReset | None = None
        self._hint = Path(f"{path}.seq")
        self._hint_written = 0.0
        self.max_readings = max_readings
        self._engine: Engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
        self._conn: Connection = self._engine.connect()
        try:
            self._open(synchronous, seq_floor)
        except BaseException:
            self.close()
            raise

    def _open(self, synchronous: Synchronous, seq_floor: int) -> None:
        # WAL lets a reader (status) run beside the writer; synchronous=FULL fsyncs every commit
        # so a committed reading survives a power cut (NORMAL risks the last commits, not the file).
        self._conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        self._conn.exec_driver_sql(f"PRAGMA synchronous={synchronous.value.upper()}")
        self._conn.commit()
        with self._conn.begin():
            # IF NOT EXISTS, not create_all's check-then-create: another process (a
            # `buffer stats` reader, say) may be opening the same new file at the same moment.
            for table in _metadata.sorted_tables:
                self._conn.execute(CreateTable(table, if_not_exists=True))
            _migrate_reading_rows(self._conn)
            if seq_floor:
                for stream in ("batches", "units"):
                    self._conn.execute(
                        sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"),
                        {"t": stream, "s": seq_floor},
                    )
        # Counting the rows reads every page of the table: a malformed page shows up here, at
        # start-up, not in the middle of a shift.
        self.depth = self._count_readings()
        self.dropped_total = self._meta(DROPPED_KEY)
        self.quarantined_total = self._meta(QUARANTINED_KEY)
        self.units_depth = self._conn.execute(
            sa.select(sa.func.count()).select_from(units_table)
        ).scalar_one()
        self.last_seq = self._last_seq("batches")
        self.last_unit_seq = self._last_seq("units")
        self._conn.commit()
        self._write_hint()

    def _count_readings(self, where: str = "", **params: int) -> int:
        return int(
            self._conn.execute(
                sa.text(f"SELECT coalesce(sum({_COUNT}), 0) FROM batches {where}"),  # noqa: S608
                params,
            ).scalar_one()
        )

    def _last_seq(self, table: str) -> int:
        value = self._conn.execute(
            sa.text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}
        ).scalar_one_or_none()
        return int(value or 0)

    def _write_hint(self, force: bool = True) -> None:
        # No fsync: the hint only has to survive a process crash (the page cache does); after a
        # power cut SEQ_JUMP_AFTER_RESET covers what it missed. One number covers both streams:
        # after a reset, both continue above it. Rewritten at most once a second while
        # appending: far fewer seqs than SEQ_JUMP_AFTER_RESET are handed out in a second.
        now = time.monotonic()
        if not force and now - self._hint_written < HINT_INTERVAL_S:
            return
        self._hint_written = now
        with contextlib.suppress(OSError):
            self._hint.write_text(f"{max(self.last_seq, self.last_unit_seq)}\n")

    def _meta(self, key: str) -> int:
        value = self._conn.execute(
            sa.select(meta_table.c.value).where(meta_table.c.key == key)
        ).scalar_one_or_none()
        return value or 0

    def _add_meta(self, key: str, count: int) -> None:
        updated = self._conn.execute(
            meta_table.update()
            .where(meta_table.c.key == key)
            .values(value=meta_table.c.value + count)
        ).rowcount
        if not updated:
            self._conn.execute(meta_table.insert().values(key=key, value=count))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._write_hint()
        self._conn.close()
        self._engine.dispose()

    def append(
        self,
        batches: Sequence[Batch],
        changes: ContextChanges | None = None,
        acks: Sequence[tuple[int, int]] = (),
    ) -> int:
        """Append in one transaction, with the station context's changes that go with these
        batches and the deletes of delivered ranges (``acks``, see :meth:`ack_ranges`); drop
        the oldest readings if over the cap. Returns how many were dropped."""
        if not batches and not changes and not acks:
            return 0
        dropped = 0
        count = sum(b.count for b in batches)
        with self._conn.begin():
            # The deletes first: the room they make counts against the cap.
            deleted = self._delete_ranges(acks)
            over = self.depth - deleted + count - self.max_readings
            if changes:
                self._store_changes(changes)
            if batches:
                # The driver's own executemany: SQLAlchemy's per-row parameter processing costs
                # more than the insert (bench/, docs/performance.md).
                self._conn.exec_driver_sql(
                    INSERT_BATCHES, [(b.last_seq, b.first_seq, b.ts, b.body) for b in batches]
                )
            if over > 0:
                # After the insert: a batch larger than the room left drops its own oldest
                # readings too, so the cap holds whatever the batch size. Whole batches go:
                # the oldest ones that hold at least ``over`` readings.
                dropped = self._drop_oldest(over)
                self._add_meta(DROPPED_KEY, dropped)
        if changes and changes.units:
            self.units_depth += len(changes.units)
            self.last_unit_seq += len(changes.units)
        # Only now: a transaction that failed changed nothing.
        self.depth += count - dropped - deleted
        if batches:
            self.last_seq = max(self.last_seq, batches[-1].last_seq)
        self._write_hint(force=False)
        self.dropped_total += dropped
        return dropped

    def _drop_oldest(self, at_least: int) -> int:
        dropped, through = 0, None
        rows = self._conn.exec_driver_sql(
            f"SELECT last_seq, {_COUNT} FROM batches ORDER BY last_seq"  # noqa: S608 - constants
        )
        for last_seq, count in rows:
            dropped += count
            through = last_seq
            if dropped >= at_least:
                break
        rows.close()
        if through is not None:
            self._conn.exec_driver_sql("DELETE FROM batches WHERE last_seq <= ?", (through,))
        return dropped

    def _store_changes(self, changes: ContextChanges) -> None:
        if changes.units:
            self._conn.execute(
                units_table.insert(),
                [{"ts": u.end_ts, "body": encode_unit(u)} for u in changes.units],
            )
        for (operation, serial), attempts in changes.attempts.items():
            self._conn.execute(
                sqlite_insert(attempts_table)
                .values(operation=operation, serial=serial, attempts=attempts)
                .on_conflict_do_update(
                    index_elements=["operation", "serial"], set_={"attempts": attempts}
                )
            )
        for name, state in changes.stations.items():
            self._conn.execute(
                sqlite_insert(stations_table)
                .values(name=name, state=state)
                .on_conflict_do_update(index_elements=["name"], set_={"state": state})
            )

    def load_context(self) -> tuple[dict[str, bytes], dict[tuple[str, str], int]]:
        """The station context's stored state: (station -> state, (operation, serial) ->
        attempts)."""
        stations = {row.name: row.state for row in self._conn.execute(sa.select(stations_table))}
        attempts = {
            (row.operation, row.serial): row.attempts
            for row in self._conn.execute(sa.select(attempts_table))
        }
        self._conn.commit()
        return stations, attempts

    def take_units(self, after_seq: int, max_rows: int) -> list[tuple[int, bytes]]:
        rows = self._conn.execute(
            sa.select(units_table.c.seq, units_table.c.body)
            .where(units_table.c.seq > after_seq)
            .order_by(units_table.c.seq)
            .limit(max_rows)
        ).all()
        self._conn.commit()
        return [(seq, body) for seq, body in rows]

    def ack_units(self, first_seq: int, last_seq: int) -> int:
        with self._conn.begin():
            deleted = self._conn.execute(
                units_table.delete().where(units_table.c.seq.between(first_seq, last_seq))
            ).rowcount
        self.units_depth -= deleted
        return deleted

    def take(
        self, after_seq: int, max_readings: int, max_bytes: int, up_to: int | None = None
    ) -> list[Batch]:
        """The oldest batches with after_seq < last_seq (<= up_to), holding at most
        max_readings readings and max_bytes of body (always at least one batch, whatever its
        size: the caller splits one that is too large)."""
        return take_batches(self._conn, after_seq, max_readings, max_bytes, up_to)

    def ack(self, first_seq: int, last_seq: int) -> int:
        """Delete the delivered batches in a range. Those dropped meanwhile are simply gone."""
        return self.ack_ranges([(first_seq, last_seq)])

    def ack_ranges(self, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete the delivered batches of several ranges in one transaction (one fsync for
        all the messages the broker acknowledged since the last time)."""
        with self._conn.begin():
            deleted = self._delete_ranges(ranges)
        self.depth -= deleted
        return deleted

    def _delete_ranges(self, ranges: Sequence[tuple[int, int]]) -> int:
        where = "WHERE last_seq BETWEEN :first AND :last"
        deleted = 0
        for first_seq, last_seq in ranges:
            bounds = {"first": first_seq, "last": last_seq}
            deleted += self._count_readings(where, **bounds)
            self._conn.execute(sa.text(f"DELETE FROM batches {where}"), bounds)  # noqa: S608
        return deleted

    def split(self, first_seq: int, last_seq: int, per_batch: int) -> int:
        """Rewrite the batches in a range that hold more than ``per_batch`` readings as
        batches of at most that many (same seqs, same bytes in the end). Returns how many
        batches were split. For a message the broker will not take whole; rare, so it may
        decode."""
        split = 0
        with self._conn.begin():
            rows = self._conn.exec_driver_sql(
                f"SELECT first_seq, last_seq, ts, body FROM batches "  # noqa: S608 - constants
                f"WHERE last_seq BETWEEN ? AND ? AND {_COUNT} > ? ORDER BY last_seq",
                (first_seq, last_seq, per_batch),
            ).all()
            for row in rows:
                batch = Batch(*row)
                items = _objects(batch.body)
                parts = []
                for i in range(0, len(items), per_batch):
                    chunk = items[i : i + per_batch]
                    parts.append(
                        Batch(
                            batch.first_seq + i,
                            batch.first_seq + i + len(chunk) - 1,
                            min(_epoch(item["ts"]) for item in chunk),
                            b",".join(orjson.dumps(item) for item in chunk),
                        )
                    )
                self._conn.exec_driver_sql(
                    "DELETE FROM batches WHERE last_seq = ?", (batch.last_seq,)
                )
                self._conn.exec_driver_sql(
                    INSERT_BATCHES, [(b.last_seq, b.first_seq, b.ts, b.body) for b in parts]
                )
                split += 1
        return split

    def quarantine(self, last_seq: int, reason: str) -> int:
        """Move one batch aside (it can never be delivered). Returns how many readings moved
        (0 if it was no longer there)."""
        with self._conn.begin():
            row = self._conn.execute(
                sa.select(batches_table).where(batches_table.c.last_seq == last_seq)
            ).one_or_none()
            if row is None:
                return 0
            count = Batch(row.first_seq, row.last_seq, row.ts, row.body).count
            self._conn.execute(
                quarantine_table.insert().values(
                    seq=last_seq, ts=row.ts, body=row.body, reason=reason, moved_ts=time.time()
                )
            )
            self._conn.execute(batches_table.delete().where(batches_table.c.last_seq == last_seq))
            self._add_meta(QUARANTINED_KEY, count)
        self.depth -= count
        self.quarantined_total += count
        return count

    def stats(self) -> BufferStats:
        oldest = self._conn.execute(
            sa.select(batches_table.c.ts).order_by(batches_table.c.last_seq).limit(1)
        ).scalar_one_or_none()
        self._conn.commit()
        return BufferStats(
            self.depth,
            self.max_readings,
            oldest,
            self.dropped_total,
            self.quarantined_total,
            self.last_seq,
            self.units_depth,
            self.last_unit_seq,
        )


def take_batches(
    conn: Connection, after_seq: int, max_readings: int, max_bytes: int, up_to: int | None
) -> list[Batch]:
    """See :meth:`Outbox.take`."""
    sql = "SELECT first_seq, last_seq, ts, body FROM batches WHERE last_seq > ?"
    params: tuple[int, ...] = (after_seq,)
    if up_to is not None:
        sql += " AND last_seq <= ?"
        params = (after_seq, up_to)
    result = conn.exec_driver_sql(sql + " ORDER BY last_seq", params)
    out: list[Batch] = []
    readings = size = 0
    for row in result:
        batch = Batch(*row)
        readings += batch.count
        size += len(batch.body) + 1
        if out and (readings > max_readings or size > max_bytes):
            break
        out.append(batch)
    result.close()
    conn.commit()  # end the read transaction so WAL checkpoints can proceed
    return out


def _migrate_reading_rows(conn: Connection) -> None:
    """Convert a buffer of the one-row-per-reading format (a ``readings`` table of bodies
    without ``seq``) into batches of one reading each, in the caller's transaction: nothing
    undelivered is lost and the seq high-water mark carries over."""
    old = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'readings'"
    ).first()
    if old is None:
        return
    with_seq = "CAST('{\"seq\":' || seq || ',' || substr(CAST(body AS TEXT), 2) AS BLOB)"
    conn.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) "
        "SELECT 'batches', seq FROM sqlite_sequence WHERE name = 'readings'"
    )
    moved = conn.exec_driver_sql(
        f"INSERT INTO batches (last_seq, first_seq, ts, body) "  # noqa: S608 - constants
        f"SELECT seq, seq, ts, {with_seq} FROM readings ORDER BY seq"
    ).rowcount
    conn.exec_driver_sql(f"UPDATE quarantine SET body = {with_seq}")  # noqa: S608 - constants
    conn.exec_driver_sql("DROP TABLE readings")
    log.warning("buffer: converted %d undelivered reading(s) to the batch format", moved)


def open_outbox(
    path: Path, max_readings: int, synchronous: Synchronous = Synchronous.FULL
) -> Outbox:
    """Open the outbox; a corrupt file is moved aside and a fresh one started (never a stop).

    Raises ``sqlalchemy.exc.OperationalError`` when the file cannot be opened at all (a
    missing folder, permissions): that is a configuration problem, not corruption.
    """
    try:
        return Outbox(path, max_readings, synchronous)
    except sa.exc.DatabaseError as exc:
        if isinstance(exc, sa.exc.OperationalError) or not isinstance(
            exc.orig, sqlite3.DatabaseError
        ):
            raise
        error = str(exc.orig)
    floor = max(_salvage_last_seq(path), _read_hint(path)) + SEQ_JUMP_AFTER_RESET
    moved = path.with_name(f"{path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{moved}{suffix}"))
    log.critical(
        "buffer %s is corrupt (%s): moved aside to %s; starting a fresh buffer whose seq "
        "continues at %d. Readings in the old file were not delivered; inspect it with sqlite3.",
        path,
        error,
        moved,
        floor + 1,
    )
    outbox = Outbox(path, max_readings, synchronous, seq_floor=floor)
    outbox.reset = BufferReset(moved, error, floor + 1)
    return outbox


def _salvage_last_seq(path: Path) -> int:
    """The highest seq recorded in a corrupt file, if that part of it can still be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT max(seq) FROM sqlite_sequence").fetchone()
            return int(row[0]) if row and row[0] is not None else 0
    except (sqlite3.Error, ValueError, TypeError):
        return 0


def _read_hint(path: Path) -> int:
    try:
        return int(Path(f"{path}.seq").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


class AsyncOutbox:
    """The outbox driven from asyncio: every write runs on one dedicated worker thread (an
    fsync never stalls the event loop). :meth:`take` reads on the event loop itself, through a
    connection of its own: a WAL reader never waits for the writer, and a read of a few rows
    is cheaper than the hand-over to a thread and back.
    """

    def __init__(
        self, path: Path, max_readings: int, synchronous: Synchronous = Synchronous.FULL
    ) -> None:
        self._args = (path, max_readings, synchronous)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._outbox: Outbox | None = None
        self._reader: Connection | None = None
        #: Set whenever rows were appended; the forwarder waits on it.
        self.appended = asyncio.Event()
        self.units_appended = asyncio.Event()
        # Delivered ranges not deleted yet, (first seq, last seq, when noted): they go with the
        # next commit, or alone (and are retried if that fails, e.g. on a full disk); never
        # taken again meanwhile, so a delivered reading is not sent twice.
        self._pending_acks: deque[tuple[int, int, float]] = deque()
        self._acking = asyncio.Lock()
        self.ack_error: str | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        path = self._args[0]
        try:
            self._outbox = await self._call(open_outbox, *self._args)
            engine = sa.create_engine(
                f"sqlite:///{path}",
                poolclass=sa.pool.NullPool,
                connect_args={"timeout": 5},  # a reader waits only while the WAL is reset
            )
            self._reader = engine.connect()
            self._reader.exec_driver_sql("PRAGMA query_only=1")
            self._reader.commit()
        except sa.exc.SQLAlchemyError as exc:
            cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
            raise StartupError(f"buffer {path}: cannot open: {cause}") from exc

    @property
    def outbox(self) -> Outbox:
        assert self._outbox is not None, "open() first"
        return self._outbox

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader.engine.dispose()
            self._reader = None
        if self._outbox is not None:
            await self._call(self._outbox.close)
            self._outbox = None
        self._executor.shutdown(wait=True)

    async def append(self, batches: Sequence[Batch], changes: ContextChanges | None = None) -> int:
        """Append (see :meth:`Outbox.append`); the deletes of the ranges delivered so far go
        in the same transaction (one fsync for both)."""
        async with self._acking:
            acks = self._ack_ranges()
            dropped: int = await self._call(self.outbox.append, batches, changes, acks)
            self._forget_acks(len(acks))
        if batches:
            self.appended.set()
        if changes and changes.units:
            self.units_appended.set()
        return dropped

    async def load_context(self) -> tuple[dict[str, bytes], dict[tuple[str, str], int]]:
        loaded: tuple[dict[str, bytes], dict[tuple[str, str], int]] = await self._call(
            self.outbox.load_context
        )
        return loaded

    async def take_units(self, after_seq: int, max_rows: int) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = await self._call(
            self.outbox.take_units, after_seq, max_rows
        )
        return rows

    async def ack_units(self, first_seq: int, last_seq: int) -> bool:
        """Delete delivered unit records; False if that failed (they are taken again later
        only by a restart: the forwarder's cursor moves past them)."""
        try:
            await self._call(self.outbox.ack_units, first_seq, last_seq)
        except sa.exc.OperationalError as exc:
            log.error("buffer: cannot delete delivered unit records (%s)", exc.orig)  # noqa: TRY400
            return False
        return True

    async def take(
        self, after_seq: int, max_readings: int, max_bytes: int, up_to: int | None = None
    ) -> list[Batch]:
        assert self._reader is not None, "open() first"
        while True:
            batches = take_batches(self._reader, after_seq, max_readings, max_bytes, up_to)
            if not self._pending_acks:
                return batches
            kept = [
                b
                for b in batches
                if not any(lo <= b.last_seq <= hi for lo, hi, _ in self._pending_acks)
            ]
            if kept or not batches:
                return kept
            after_seq = batches[-1].last_seq  # all delivered, awaiting their delete: look further

    async def split(self, first_seq: int, last_seq: int, per_batch: int) -> bool:
        """Split the batches of a range into batches of at most ``per_batch`` readings; False
        if that failed (they stay as they are and will be tried again)."""
        try:
            await self._call(self.outbox.split, first_seq, last_seq, per_batch)
        except sa.exc.OperationalError as exc:
            log.error("buffer: cannot split seq %d-%d (%s)", first_seq, last_seq, exc.orig)  # noqa: TRY400
            return False
        return True

    async def ack(self, first_seq: int, last_seq: int) -> None:
        """Delete a delivered range; if the delete fails it is kept and retried. Never raises."""
        self.delivered(first_seq, last_seq)
        await self.flush_acks()

    def delivered(self, first_seq: int, last_seq: int) -> None:
        """Note a delivered range, deleted with the next append or :meth:`flush_acks` (never
        taken again meanwhile)."""
        self._pending_acks.append((first_seq, last_seq, time.monotonic()))

    @property
    def acks_waiting_s(self) -> float | None:
        """How long the oldest delivered range has waited for its delete (None: none)."""
        return time.monotonic() - self._pending_acks[0][2] if self._pending_acks else None

    def _ack_ranges(self) -> list[tuple[int, int]]:
        return [(first, last) for first, last, _ in self._pending_acks]

    def _forget_acks(self, deleted: int) -> None:
        """The first ``deleted`` ranges are gone from the buffer."""
        for _ in range(deleted):
            self._pending_acks.popleft()
        if deleted:
            self.ack_error = None

    async def flush_acks(self) -> None:
        """Delete every delivered range noted so far, in one transaction; if that fails they
        are kept and retried at the next call. Never raises."""
        async with self._acking:
            if not self._pending_acks:
                return
            ranges = self._ack_ranges()
            try:
                await self._call(self.outbox.ack_ranges, ranges)
            except sa.exc.OperationalError as exc:
                message = str(exc.orig if exc.orig is not None else exc)
                if self.ack_error != message:
                    log.error(  # noqa: TRY400 - one line; retried, nothing lost
                        "buffer: cannot delete delivered readings (%s); retrying", message
                    )
                self.ack_error = message
                return
            self._forget_acks(len(ranges))

    async def quarantine(self, last_seq: int, reason: str) -> int:
        """Move a batch aside; 0 if it could not be (it stays and will be tried again)."""
        try:
            moved: int = await self._call(self.outbox.quarantine, last_seq, reason)
        except sa.exc.OperationalError as exc:
            log.error("buffer: cannot quarantine seq %d (%s)", last_seq, exc.orig)  # noqa: TRY400
            return 0
        return moved

    async def stats(self) -> BufferStats:
        stats: BufferStats = await self._call(self.outbox.stats)
        return stats


class BufferWriter:
    """Moves the pollers' readings into the outbox, many polls per transaction.

    The only writer: it numbers the readings (``seq``) and encodes each poll into one
    :class:`Batch` as it is submitted, on the event loop, so the outbox thread only inserts
    rows. Commits are at least ``commit_interval_s`` apart: each one is an fsync, and pollers
    on spread phases would otherwise each get their own; a poll after a quiet spell is
    committed at once. Pollers call :meth:`submit` (never blocks). The queue is bounded in
    bytes; if the outbox cannot keep up for long (e.g. the disk is full) and the queue
    overflows, the overflowing poll is dropped and counted in ``overflow_dropped`` rather than
    growing memory without bound. Its seqs are used up, so consumers see the drop as a gap.
    Pollers ask :meth:`can_take` first and skip a poll while the queue is at its bound, so under
    sustained overload readings are not read rather than read and dropped; the polls already
    under way then are still taken, up to twice the bound.
    """

    MAX_READINGS_PER_COMMIT = 50_000

    def __init__(
        self,
        outbox: AsyncOutbox,
        max_pending_bytes: int = 16 << 20,
        changes: Callable[[], ContextChanges] | None = None,
        commit_interval_s: float = 0.02,  # buffer.commit_interval_ms
    ) -> None:
        self._outbox = outbox
        self._commit_interval = commit_interval_s
        self._queue: deque[Batch | None] = deque()
        self._queued = 0  # bytes in the queue
        self._max_pending = max_pending_bytes
        self._held_back = False
        self._ready = asyncio.Event()
        self._encoder = ReadingEncoder()
        self._next_seq: int | None = None
        # What the station context wants stored along with the readings it tagged.
        self._changes = changes
        self.overflow_dropped = 0
        #: Readings handed to the writer since start (for /metrics).
        self.collected = 0
        self.last_error: str | None = None

    def submit(self, device: str, readings: Sequence[Reading], contexts: Sequence[Context]) -> None:
        """Number and encode one poll's readings (``contexts[i]`` is that of ``readings[i]``)
        and queue them for the next commit."""
        count = len(readings)
        if not count:
            return
        self.collected += count
        if self._next_seq is None:
            self._next_seq = self._outbox.outbox.last_seq + 1
        first = self._next_seq
        self._next_seq += count
        if self._queued > 2 * self._max_pending:
            # Pollers stop at the bound (can_take); past twice that, polls that were already
            # under way when it was reached have come in too, and something is stuck.
            self.overflow_dropped += count
            return
        batch = make_batch(self._encoder, first, device, readings, contexts)
        self._queue.append(batch)
        self._queued += len(batch.body)
        self._ready.set()

    @property
    def keeping_up(self) -> bool:
        """False while pollers are held back because the queue is at its bound."""
        return not self._held_back

    def can_take(self) -> bool:
        """Whether the queue has room for another poll."""
        room = self._queued <= self._max_pending
        if room is self._held_back:  # a change of state: say it once
            self._held_back = not room
            if room:
                log.info("buffer: keeping up again; polling resumed")
            else:
                log.warning(
                    "buffer: more offered than it can store; polls are skipped until it "
                    "catches up (skipped_polls on /status)"
                )
        return room

    def set_changes(self, changes: Callable[[], ContextChanges]) -> None:
        """Take the context's changes from here on (a new context after a reload)."""
        self._changes = changes

    def poke(self) -> None:
        """Commit soon even without new readings (the context has changes to store)."""
        self._queue.append(None)
        self._ready.set()

    @property
    def pending(self) -> int:
        """Polls waiting for their commit."""
        return len(self._queue)

    async def run(self) -> None:
        """Commit until cancelled; on cancel, what is already queued is committed first."""
        loop = asyncio.get_running_loop()
        last_commit = -self._commit_interval
        try:
            while True:
                await self._ready.wait()
                wait = last_commit + self._commit_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # more polls join this commit meanwhile
                self._ready.clear()
                while self._queue:
                    await self._commit(self._drain())
                last_commit = loop.time()
        except asyncio.CancelledError:
            await self.flush()
            raise

    async def flush(self) -> None:
        """Commit everything queued so far, and the context's changes."""
        while True:
            batches = self._drain()
            changes = self._changes() if self._changes is not None else None
            if not batches and not changes:
                return
            await self._commit(batches, changes)

    def _drain(self) -> list[Batch]:
        batches: list[Batch] = []
        readings = 0
        while self._queue and readings < self.MAX_READINGS_PER_COMMIT:
            batch = self._queue.popleft()
            if batch is not None:
                batches.append(batch)
                readings += batch.count
                self._queued -= len(batch.body)
        return batches

    async def _commit(self, batches: list[Batch], changes: ContextChanges | None = None) -> None:
        if changes is None and self._changes is not None and not self._queue:
            # Taken only once every queued poll is in this commit: the stored state then
            # describes exactly the readings stored with it.
            changes = self._changes()
        delay = 0.1
        while True:
            try:
                await self._outbox.append(batches, changes)
            except sa.exc.OperationalError as exc:
                # e.g. "database or disk is full": keep the batches, retry, say so once.
                message = str(exc.orig) if exc.orig is not None else str(exc)
                if self.last_error != message:
                    log.error(  # noqa: TRY400 - one clear line; the cause is in the message
                        "buffer: cannot write (%s); retrying, readings kept in memory", message
                    )
                self.last_error = message
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.last_error is not None:
                log.warning("buffer: writing again after: %s", self.last_error)
                self.last_error = None
            return


def age_seconds(ts: float | None, now: float | None = None) -> float | None:
    if ts is None:
        return None
    return max(0.0, (time.time() if now is None else now) - ts)


# --------------------------------------------------------------------------- inspection
# `collector buffer stats | export`: read-only, through sqlite3 directly (a WAL reader next to
# the running service never blocks it), never creating or changing anything.

EXPORT_TABLES = ("readings", "units", "quarantine")


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise StartupError(f"buffer {path}: no such file")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        if "batches" not in tables and "readings" in tables:
            raise StartupError(
                f"buffer {path}: written by an older collector (one row per reading); the "
                "collector converts it when it next starts"
            )
        db.execute("SELECT 1 FROM batches LIMIT 1")
    except sqlite3.Error as exc:
        raise StartupError(f"buffer {path}: cannot read: {exc}") from exc
    return db


def inspect_stats(path: Path) -> dict[str, Any]:
    """What is in a buffer file: counts, seq and time ranges, drops, size on disk."""
    with contextlib.closing(_open_read_only(path)) as db:

        def one(sql: str) -> Any:
            return db.execute(sql).fetchone()

        def meta(key: str) -> int:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return int(row[0]) if row else 0

        count, first, last, oldest, newest = one(
            f"SELECT coalesce(sum({_COUNT}), 0), min(first_seq), max(last_seq), min(ts), "  # noqa: S608
            "max(ts) FROM batches"
        )
        sequence = dict(db.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        size = sum(
            Path(f"{path}{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if Path(f"{path}{suffix}").exists()
        )
        return {
            "path": str(path),
            "bytes_on_disk": size,
            "readings": {
                "unsent": count,
                "first_seq": first,
                "last_seq": last,
                "oldest_ts": None if oldest is None else ts_text(oldest),
                "newest_ts": None if newest is None else ts_text(newest),
                "last_seq_ever": sequence.get("batches", 0),
            },
            "units": {
                "unsent": one("SELECT count(*) FROM units")[0],
                "last_seq_ever": sequence.get("units", 0),
            },
            "quarantine": one("SELECT count(*) FROM quarantine")[0],
            "dropped_total": meta(DROPPED_KEY),
            "quarantined_total": meta(QUARANTINED_KEY),
            "stations_with_state": one("SELECT count(*) FROM stations")[0],
        }


# A batch's readings were read within one poll: a batch older than ``since`` by more than this
# holds none read at or after it.
_BATCH_SPAN_S = 3600.0


def export_rows(path: Path, table: str, since: float | None = None) -> Iterator[bytes]:
    """Each reading, unit record or quarantined reading of ``table`` (oldest first) as one
    JSON object with its ``seq`` (and, for the quarantine, why), read at or after ``since``
    (epoch seconds)."""
    if table not in EXPORT_TABLES:
        raise ValueError(f"table must be one of {', '.join(EXPORT_TABLES)}")
    floor = since if since is not None else float("-inf")
    with contextlib.closing(_open_read_only(path)) as db:
        if table == "units":
            for seq, body in db.execute(
                "SELECT seq, body FROM units WHERE ts >= ? ORDER BY seq", (floor,)
            ):
                yield with_seq([(seq, bytes(body))])
            return
        if table == "quarantine":
            query = "SELECT ts, body, reason FROM quarantine WHERE ts >= ? ORDER BY seq"
        else:
            query = "SELECT ts, body, NULL FROM batches WHERE ts >= ? ORDER BY last_seq"
        for ts, body, reason in db.execute(query, (floor - _BATCH_SPAN_S,)):
            for item in _objects(bytes(body)):
                if ts < floor and _epoch(item["ts"]) < floor:
                    continue
                if reason is not None:
                    item["quarantine_reason"] = reason
                yield orjson.dumps(item)


def _objects(body: bytes) -> list[dict[str, Any]]:
    """The reading objects of a stored body, decoded (the rare paths: split, export)."""
    items: list[dict[str, Any]] = orjson.loads(b"[" + body + b"]")
    return items


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()
