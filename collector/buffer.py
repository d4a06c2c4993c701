"""The SQLite outbox (SQLAlchemy Core): append -> take -> ack. Nothing leaves before the ack.

- Each reading is one row. Its ``seq`` is the row's ``INTEGER PRIMARY KEY AUTOINCREMENT``:
  SQLite never hands out an AUTOINCREMENT id twice, even after the row is deleted, and ids of
  a transaction that never committed were never published. So ``seq`` strictly increases and
  never repeats, across restarts and crashes, with no counter of our own to keep in step.
- The row body is the reading encoded as a JSON object *without* ``seq``; the forwarder splices
  ``seq`` in front, so publishing needs no decode.
- :class:`BufferWriter` groups whatever the pollers produced since the last commit into one
  transaction (a poll's readings are never split across transactions).
- When the cap is reached, the oldest rows are deleted in the same transaction that appends
  the new ones, and counted (persistently, in ``meta``).
- A file that is not a database, or whose pages are malformed, is moved aside at start-up
  (:func:`open_outbox`) and a fresh one is started, its ``seq`` continuing above the highest one
  ever handed out: read from the old file if it still can be, else from ``<path>.seq``, a hint
  rewritten after every commit, plus :data:`SEQ_JUMP_AFTER_RESET` for what the hint may have
  missed. A seq is never reused: consumers that dedupe on it would drop new readings.

All SQLite work runs on one dedicated thread (:class:`AsyncOutbox`), so an fsync never stalls
the event loop that polls devices.
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
from collector.reading import ContextChanges, Record, UnitRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

_metadata = sa.MetaData()
readings_table = sa.Table(
    "readings",
    _metadata,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
# Readings the broker can never accept (e.g. larger than its packet limit), moved aside so they
# do not block the rows behind them; kept for inspection, counted, never silently deleted.
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

INSERT_READINGS = "INSERT INTO readings (ts, body) VALUES (?, ?)"
SEQ_JUMP_AFTER_RESET = 1_000_000
HINT_INTERVAL_S = 1.0
# What the forwarder adds to each stored body: '{"seq":' + up to 20 digits + ',' + a comma.
SPLICE_BYTES = 32
DROPPED_KEY = "dropped_total"
QUARANTINED_KEY = "quarantined_total"


# ts -> its RFC 3339 text. The readings of one poll share their ts, so formatting it once per
# poll instead of once per reading saves a datetime and a format per reading.
_ts_text: dict[float, str] = {}


def _ts(ts: float) -> str:
    text = _ts_text.get(ts)
    if text is None:
        if len(_ts_text) >= 4096:
            _ts_text.clear()
        text = _ts_text[ts] = orjson.dumps(_utc(ts), option=orjson.OPT_UTC_Z)[1:-1].decode()
    return text


def encode_record(record: Record) -> bytes:
    """The JSON object of one reading, without ``seq`` (see docs/messages.md)."""
    r = record.reading
    return orjson.dumps(
        {
            "ts": _ts(r.ts),
            "station": record.station,
            "device": record.device,
            "tag": r.tag,
            "value": r.value,
            "unit": r.unit,
            "quality": r.quality.value,
            "error": None if r.error is None else r.error.value,
            "unit_serial": record.unit_serial,
            "operation": record.operation,
            "attempt": record.attempt,
        },
        option=orjson.OPT_UTC_Z,
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def encode_unit(unit: UnitRecord) -> bytes:
    """The JSON object of one unit record, without ``seq`` (see docs/traceability.md)."""
    return orjson.dumps(
        {
            "serial": unit.serial,
            "station": unit.station,
            "operation": unit.operation,
            "attempt": unit.attempt,
            "start": _utc(unit.start_ts),
            "end": _utc(unit.end_ts),
            "cycle_time_s": round(unit.end_ts - unit.start_ts, 3),
            "verdict": unit.verdict,
            "failure_code": unit.failure_code,
            "ended_by": unit.ended_by,
            "readings": unit.readings,
            "characteristics": {
                name: {"last": last, "min": low, "max": high}
                for name, (last, low, high) in unit.characteristics.items()
            },
        },
        option=orjson.OPT_UTC_Z,
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
            if seq_floor:
                for stream in ("readings", "units"):
                    self._conn.execute(
                        sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"),
                        {"t": stream, "s": seq_floor},
                    )
        # Counting the rows reads every page of the table: a malformed page shows up here, at
        # start-up, not in the middle of a shift.
        self.depth = self._conn.execute(
            sa.select(sa.func.count()).select_from(readings_table)
        ).scalar_one()
        self.dropped_total = self._meta(DROPPED_KEY)
        self.quarantined_total = self._meta(QUARANTINED_KEY)
        self.units_depth = self._conn.execute(
            sa.select(sa.func.count()).select_from(units_table)
        ).scalar_one()
        self.last_seq = self._last_seq("readings")
        self.last_unit_seq = self._last_seq("units")
        self._conn.commit()
        self._write_hint()

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

    def append(self, records: Sequence[Record], changes: ContextChanges | None = None) -> int:
        """Append in one transaction, with the station context's changes that go with these
        records; drop the oldest readings if over the cap. Returns how many were dropped."""
        if not records and not changes:
            return 0
        rows = [(r.reading.ts, encode_record(r)) for r in records]
        over = self.depth + len(rows) - self.max_readings
        dropped = 0
        with self._conn.begin():
            if changes:
                self._store_changes(changes)
            if rows:
                # The driver's own executemany: SQLAlchemy's per-row parameter processing was
                # the largest single cost of a commit (bench/, docs/performance.md).
                self._conn.exec_driver_sql(INSERT_READINGS, rows)
            if over > 0:
                # After the insert: a batch larger than the room left drops its own oldest
                # rows too, so the cap holds whatever the batch size.
                oldest = sa.select(readings_table.c.seq).order_by(readings_table.c.seq).limit(over)
                dropped = self._conn.execute(
                    readings_table.delete().where(
                        readings_table.c.seq.in_(oldest.scalar_subquery())
                    )
                ).rowcount
                self._add_meta(DROPPED_KEY, dropped)
        if changes and changes.units:
            self.units_depth += len(changes.units)
            self.last_unit_seq += len(changes.units)
        self.depth += len(rows) - dropped
        # AUTOINCREMENT hands out consecutive ids to the only writer.
        self.last_seq += len(rows)
        self._write_hint(force=False)
        self.dropped_total += dropped
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
        self, after_seq: int, max_rows: int, max_bytes: int, up_to: int | None = None
    ) -> list[tuple[int, bytes]]:
        """The oldest rows with after_seq < seq (<= up_to), at most max_rows and about
        max_bytes of body (always at least one row, whatever its size)."""
        query = (
            sa.select(readings_table.c.seq, readings_table.c.body)
            .where(readings_table.c.seq > after_seq)
            .order_by(readings_table.c.seq)
            .limit(max_rows)
        )
        if up_to is not None:
            query = query.where(readings_table.c.seq <= up_to)
        result = self._conn.execute(query)
        out: list[tuple[int, bytes]] = []
        size = 0
        for seq, body in result:
            size += len(body) + SPLICE_BYTES
            if out and size > max_bytes:
                break
            out.append((seq, body))
        self._conn.commit()  # end the read transaction so WAL checkpoints can proceed
        return out

    def ack(self, first_seq: int, last_seq: int) -> int:
        """Delete a delivered range. Rows in it that were dropped meanwhile are simply gone."""
        with self._conn.begin():
            deleted = self._conn.execute(
                readings_table.delete().where(readings_table.c.seq.between(first_seq, last_seq))
            ).rowcount
        self.depth -= deleted
        return deleted

    def quarantine(self, seq: int, reason: str) -> int:
        """Move one row aside (it can never be delivered). Returns 1 if it was still there."""
        with self._conn.begin():
            row = self._conn.execute(
                sa.select(readings_table.c.ts, readings_table.c.body).where(
                    readings_table.c.seq == seq
                )
            ).one_or_none()
            if row is None:
                return 0
            self._conn.execute(
                quarantine_table.insert().values(
                    seq=seq, ts=row.ts, body=row.body, reason=reason, moved_ts=time.time()
                )
            )
            self._conn.execute(readings_table.delete().where(readings_table.c.seq == seq))
            self._add_meta(QUARANTINED_KEY, 1)
        self.depth -= 1
        self.quarantined_total += 1
        return 1

    def stats(self) -> BufferStats:
        oldest = self._conn.execute(
            sa.select(readings_table.c.ts).order_by(readings_table.c.seq).limit(1)
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
    """The outbox driven from asyncio: every call runs on one dedicated worker thread."""

    def __init__(
        self, path: Path, max_readings: int, synchronous: Synchronous = Synchronous.FULL
    ) -> None:
        self._args = (path, max_readings, synchronous)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._outbox: Outbox | None = None
        #: Set whenever rows were appended; the forwarder waits on it.
        self.appended = asyncio.Event()
        self.units_appended = asyncio.Event()
        # Delivered ranges whose delete failed (e.g. a full disk): retried, and never taken
        # again meanwhile, so a delivered reading is not sent twice.
        self._pending_acks: deque[tuple[int, int]] = deque()
        self.ack_error: str | None = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        path = self._args[0]
        try:
            self._outbox = await self._call(open_outbox, *self._args)
        except sa.exc.SQLAlchemyError as exc:
            cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
            raise StartupError(f"buffer {path}: cannot open: {cause}") from exc

    @property
    def outbox(self) -> Outbox:
        assert self._outbox is not None, "open() first"
        return self._outbox

    async def close(self) -> None:
        if self._outbox is not None:
            await self._call(self._outbox.close)
            self._outbox = None
        self._executor.shutdown(wait=True)

    async def append(self, records: Sequence[Record], changes: ContextChanges | None = None) -> int:
        dropped: int = await self._call(self.outbox.append, records, changes)
        if records:
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
        self, after_seq: int, max_rows: int, max_bytes: int, up_to: int | None = None
    ) -> list[tuple[int, bytes]]:
        await self._retry_acks()
        while True:
            rows: list[tuple[int, bytes]] = await self._call(
                self.outbox.take, after_seq, max_rows, max_bytes, up_to
            )
            if not self._pending_acks:
                return rows
            kept = [
                row for row in rows if not any(lo <= row[0] <= hi for lo, hi in self._pending_acks)
            ]
            if kept or not rows:
                return kept
            after_seq = rows[-1][0]  # all delivered, awaiting their delete: look further

    async def ack(self, first_seq: int, last_seq: int) -> None:
        """Delete a delivered range; if the delete fails it is kept and retried. Never raises."""
        self._pending_acks.append((first_seq, last_seq))
        await self._retry_acks()

    async def _retry_acks(self) -> None:
        while self._pending_acks:
            first_seq, last_seq = self._pending_acks[0]
            try:
                await self._call(self.outbox.ack, first_seq, last_seq)
            except sa.exc.OperationalError as exc:
                message = str(exc.orig if exc.orig is not None else exc)
                if self.ack_error != message:
                    log.error(  # noqa: TRY400 - one line; retried, nothing lost
                        "buffer: cannot delete delivered readings (%s); retrying", message
                    )
                self.ack_error = message
                return
            self._pending_acks.popleft()
        self.ack_error = None

    async def quarantine(self, seq: int, reason: str) -> int:
        """Move a row aside; 0 if it could not be (it stays and will be tried again)."""
        try:
            moved: int = await self._call(self.outbox.quarantine, seq, reason)
        except sa.exc.OperationalError as exc:
            log.error("buffer: cannot quarantine seq %d (%s)", seq, exc.orig)  # noqa: TRY400
            return 0
        return moved

    async def stats(self) -> BufferStats:
        stats: BufferStats = await self._call(self.outbox.stats)
        return stats


class BufferWriter:
    """Moves tagged records from the pollers into the outbox, many polls per transaction.

    Pollers call :meth:`submit` (never blocks). The queue is bounded; if the outbox cannot keep
    up for long (e.g. the disk is full) and the queue overflows, the overflowing poll is dropped
    and counted in ``overflow_dropped`` rather than growing memory without bound.
    """

    MAX_RECORDS_PER_COMMIT = 50_000

    def __init__(
        self,
        outbox: AsyncOutbox,
        max_pending_polls: int = 10_000,
        changes: Callable[[], ContextChanges] | None = None,
    ) -> None:
        self._outbox = outbox
        self._queue: asyncio.Queue[Sequence[Record]] = asyncio.Queue(max_pending_polls)
        # What the station context wants stored along with the records it tagged.
        self._changes = changes
        self.overflow_dropped = 0
        #: Readings handed to the writer since start (for /metrics).
        self.collected = 0
        self.last_error: str | None = None

    def submit(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self.collected += len(records)
        try:
            self._queue.put_nowait(records)
        except asyncio.QueueFull:
            self.overflow_dropped += len(records)

    def set_changes(self, changes: Callable[[], ContextChanges]) -> None:
        """Take the context's changes from here on (a new context after a reload)."""
        self._changes = changes

    def poke(self) -> None:
        """Commit soon even without new records (the context has changes to store)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(())

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Commit until cancelled; on cancel, what is already queued is committed first."""
        try:
            while True:
                first = await self._queue.get()
                await self._commit(self._drain([first]))
        except asyncio.CancelledError:
            await self.flush()
            raise

    async def flush(self) -> None:
        """Commit everything queued so far, and the context's changes."""
        while True:
            records = self._drain([])
            changes = self._changes() if self._changes is not None else None
            if not records and not changes:
                return
            await self._commit(records, changes)

    def _drain(self, batch: list[Sequence[Record]]) -> list[Record]:
        records = [r for poll in batch for r in poll]
        while not self._queue.empty() and len(records) < self.MAX_RECORDS_PER_COMMIT:
            records.extend(self._queue.get_nowait())
        return records

    async def _commit(self, records: list[Record], changes: ContextChanges | None = None) -> None:
        if changes is None and self._changes is not None and self._queue.empty():
            # Taken only once every queued record is in this batch: the stored state then
            # describes exactly the readings stored with it.
            changes = self._changes()
        delay = 0.1
        while True:
            try:
                await self._outbox.append(records, changes)
            except sa.exc.OperationalError as exc:
                # e.g. "database or disk is full": keep the records, retry, say so once.
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
        db.execute("SELECT 1 FROM readings LIMIT 1")
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
            "SELECT count(*), min(seq), max(seq), min(ts), max(ts) FROM readings"
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
                "oldest_ts": None if oldest is None else _ts(oldest),
                "newest_ts": None if newest is None else _ts(newest),
                "last_seq_ever": sequence.get("readings", 0),
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


def export_rows(path: Path, table: str, since: float | None = None) -> Iterator[bytes]:
    """Each row of ``table`` (oldest first) as one JSON object with its ``seq`` (and, for the
    quarantine, why), read at or after ``since`` (epoch seconds)."""
    if table not in EXPORT_TABLES:
        raise ValueError(f"table must be one of {', '.join(EXPORT_TABLES)}")
    extra = ", reason" if table == "quarantine" else ""
    with contextlib.closing(_open_read_only(path)) as db:
        cursor = db.execute(
            f"SELECT seq, body{extra} FROM {table} WHERE ts >= ? ORDER BY seq",  # noqa: S608 - table is from the fixed list above
            (since if since is not None else float("-inf"),),
        )
        for row in cursor:
            seq, body = row[0], bytes(row[1])
            line = b'{"seq":%d,%s' % (seq, body[1:])
            if extra:
                line = line[:-1] + b',"quarantine_reason":' + orjson.dumps(row[2]) + b"}"
            yield line
