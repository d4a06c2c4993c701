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

All SQLite work runs on one dedicated thread (:class:`AsyncOutbox`), so an fsync never stalls
the event loop that polls devices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from collector.config import Synchronous
from collector.errors import StartupError
from collector.reading import Record

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
meta_table = sa.Table(
    "meta",
    _metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)

DROPPED_KEY = "dropped_total"
QUARANTINED_KEY = "quarantined_total"


def encode_record(record: Record) -> bytes:
    """The JSON object of one reading, without ``seq`` (see docs/messages.md)."""
    r = record.reading
    return orjson.dumps(
        {
            "ts": datetime.fromtimestamp(r.ts, UTC),
            "station": record.station,
            "device": record.device,
            "tag": r.tag,
            "value": r.value,
            "unit": r.unit,
            "quality": r.quality.value,
            "error": None if r.error is None else r.error.value,
            "unit_serial": record.unit_serial,
            "operation": record.operation,
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


class Outbox:
    """Synchronous outbox on one SQLite connection. Use it from one thread only."""

    def __init__(
        self, path: Path, max_readings: int, synchronous: Synchronous = Synchronous.FULL
    ) -> None:
        self.path = path
        self.max_readings = max_readings
        self._engine: Engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
        self._conn: Connection = self._engine.connect()
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
        self.depth = self._conn.execute(
            sa.select(sa.func.count()).select_from(readings_table)
        ).scalar_one()
        self.dropped_total = self._meta(DROPPED_KEY)
        self.quarantined_total = self._meta(QUARANTINED_KEY)
        self._conn.commit()

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
        self._conn.close()
        self._engine.dispose()

    def append(self, records: Sequence[Record]) -> int:
        """Append in one transaction; drop the oldest if over the cap. Returns how many dropped."""
        if not records:
            return 0
        rows = [{"ts": r.reading.ts, "body": encode_record(r)} for r in records]
        over = self.depth + len(rows) - self.max_readings
        dropped = 0
        with self._conn.begin():
            if over > 0:
                oldest = sa.select(readings_table.c.seq).order_by(readings_table.c.seq).limit(over)
                dropped = self._conn.execute(
                    readings_table.delete().where(
                        readings_table.c.seq.in_(oldest.scalar_subquery())
                    )
                ).rowcount
                self._add_meta(DROPPED_KEY, dropped)
            self._conn.execute(readings_table.insert(), rows)
        self.depth += len(rows) - dropped
        self.dropped_total += dropped
        return dropped

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
            size += len(body) + 24  # + the spliced seq and separators
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
        last_seq = self._conn.execute(
            sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'readings'")
        ).scalar_one_or_none()
        self._conn.commit()
        return BufferStats(
            self.depth,
            self.max_readings,
            oldest,
            self.dropped_total,
            self.quarantined_total,
            last_seq or 0,
        )


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

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        path = self._args[0]
        try:
            self._outbox = await self._call(Outbox, *self._args)
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

    async def append(self, records: Sequence[Record]) -> int:
        dropped: int = await self._call(self.outbox.append, records)
        self.appended.set()
        return dropped

    async def take(
        self, after_seq: int, max_rows: int, max_bytes: int, up_to: int | None = None
    ) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = await self._call(
            self.outbox.take, after_seq, max_rows, max_bytes, up_to
        )
        return rows

    async def quarantine(self, seq: int, reason: str) -> int:
        moved: int = await self._call(self.outbox.quarantine, seq, reason)
        return moved

    async def ack(self, first_seq: int, last_seq: int) -> int:
        deleted: int = await self._call(self.outbox.ack, first_seq, last_seq)
        return deleted

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

    def __init__(self, outbox: AsyncOutbox, max_pending_polls: int = 10_000) -> None:
        self._outbox = outbox
        self._queue: asyncio.Queue[Sequence[Record]] = asyncio.Queue(max_pending_polls)
        self.overflow_dropped = 0
        self.last_error: str | None = None
        self.committed = 0

    def submit(self, records: Sequence[Record]) -> None:
        if not records:
            return
        try:
            self._queue.put_nowait(records)
        except asyncio.QueueFull:
            self.overflow_dropped += len(records)

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
        """Commit everything queued so far."""
        while not self._queue.empty():
            await self._commit(self._drain([]))

    def _drain(self, batch: list[Sequence[Record]]) -> list[Record]:
        records = [r for poll in batch for r in poll]
        while not self._queue.empty() and len(records) < self.MAX_RECORDS_PER_COMMIT:
            records.extend(self._queue.get_nowait())
        return records

    async def _commit(self, records: list[Record]) -> None:
        delay = 0.1
        while True:
            try:
                await self._outbox.append(records)
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
            self.committed += len(records)
            return


def age_seconds(ts: float | None, now: float | None = None) -> float | None:
    if ts is None:
        return None
    return max(0.0, (time.time() if now is None else now) - ts)
