"""The asynchronous hand-over: the outbox driven from asyncio.

Every write runs on one dedicated thread, so an fsync never stalls the event loop that polls
devices; reads for the forwarder run on the event loop through a WAL reader connection of
their own. Deletes of delivered readings wait here to ride along with the writer's next
commit (one transaction, one fsync for both).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from collector.buffer.recovery import open_outbox
from collector.buffer.schema import Batch, BufferStats, ContextRow, MetaUpdate
from collector.buffer.store import Outbox, stored_contexts, stored_metas, take_batches
from collector.config import Synchronous
from common.errors import StartupError
from contract.records import ContextChanges

log = logging.getLogger(__package__)

#: Rows :meth:`AsyncOutbox.held_ranges` reads at most.
HELD_LIMIT = 10_000
#: The forwarder's reader connection's page cache, KiB.
READER_CACHE_KB = 256


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
        self.deviations_appended = asyncio.Event()
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
            # It reads the few newest rows (or walks the backlog once): SQLite's default 2 MB
            # page cache would only be resident memory (issue 28 item 3).
            self._reader.exec_driver_sql(f"PRAGMA cache_size=-{READER_CACHE_KB}")
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

    async def append(
        self,
        batches: Sequence[Batch],
        changes: ContextChanges | None = None,
        metas: MetaUpdate | None = None,
        rekey: Sequence[tuple[str, str]] = (),
        contexts: Sequence[ContextRow] = (),
    ) -> int:
        """Append (see :meth:`Outbox.append`); the deletes of the ranges delivered so far go
        in the same transaction (one fsync for both)."""
        async with self._acking:
            acks = self._ack_ranges()
            dropped: int = await self._call(
                functools.partial(self.outbox.append, contexts=contexts),
                batches, changes, acks, metas, rekey,
            )  # fmt: skip
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
        return await self._delete(self.outbox.ack_units, "unit records", first_seq, last_seq)

    async def _delete(self, delete: Any, what: str, first_seq: int, last_seq: int) -> bool:
        try:
            await self._call(delete, first_seq, last_seq)
        except sa.exc.OperationalError as exc:
            log.error("buffer: cannot delete delivered %s (%s)", what, exc.orig)  # noqa: TRY400
            return False
        return True

    async def add_deviation(self, ts: float, body: bytes) -> int:
        """Commit a deviation (see :meth:`Outbox.add_deviation`); its seq once committed."""
        seq: int = await self._call(self.outbox.add_deviation, ts, body)
        self.deviations_appended.set()
        return seq

    async def take_deviations(self, after_seq: int, max_rows: int) -> list[tuple[int, bytes]]:
        rows: list[tuple[int, bytes]] = await self._call(
            self.outbox.take_deviations, after_seq, max_rows
        )
        return rows

    async def ack_deviations(self, first_seq: int, last_seq: int) -> bool:
        """Delete delivered deviations; False if that failed (like :meth:`ack_units`)."""
        return await self._delete(self.outbox.ack_deviations, "deviations", first_seq, last_seq)

    async def take(
        self,
        after_seq: int,
        max_readings: int,
        max_bytes: int,
        up_to: int | None = None,
        skip: Callable[[int], bool] | None = None,
    ) -> list[Batch]:
        """The oldest batches (see :func:`take_batches`), without those whose delete is
        pending, nor those ``skip`` says (by last seq: sent, waiting for the store's
        acknowledgement); a contiguous run of them."""
        assert self._reader is not None, "open() first"
        if after_seq >= self.outbox.last_seq:
            # Nothing committed after it (the forwarder looks after every acknowledgement):
            # no read. last_seq changes only once a commit is done.
            return []
        while True:
            batches = take_batches(self._reader, after_seq, max_readings, max_bytes, up_to)
            if not self._pending_acks and skip is None:
                return batches
            kept: list[Batch] = []
            for b in batches:
                held = any(lo <= b.last_seq <= hi for lo, hi, _ in self._pending_acks)
                if held or (skip is not None and skip(b.last_seq)):
                    if kept:
                        break  # one message holds one run: the rest is taken next time
                    continue
                kept.append(b)
            if kept or not batches:
                return kept
            after_seq = batches[-1].last_seq  # all held: look further

    def held_ranges(self, stream: str, first: int, last: int) -> list[tuple[int, int]]:
        """The seq ranges within [first, last] the buffer still holds, of ``stream``
        (readings, units or deviations); read on the event loop like :meth:`take` (bounded: past
        :data:`HELD_LIMIT` rows the rest of the range counts as held)."""
        assert self._reader is not None, "open() first"
        if stream == "readings":
            sql = (
                "SELECT first_seq, last_seq FROM batches WHERE last_seq >= ? AND first_seq <= ? "
                "ORDER BY last_seq LIMIT ?"
            )
        else:
            table = "deviations" if stream == "deviations" else "units"
            sql = f"SELECT seq, seq FROM {table} WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?"  # noqa: S608
        try:
            rows = self._reader.exec_driver_sql(sql, (first, last, HELD_LIMIT)).all()
            self._reader.commit()
        except sa.exc.SQLAlchemyError as exc:
            log.error("buffer: cannot read what it holds (%s)", exc)  # noqa: TRY400
            return [(first, last)]  # unknown: claim nothing is unavailable
        held = [(int(a), int(b)) for a, b in rows]
        if len(held) == HELD_LIMIT:
            held.append((held[-1][1] + 1, last))
        return held

    def stored_metas(self) -> list[tuple[str, str, bytes]]:
        """Every tag-metadata version kept in the buffer, (device, meta, body), read on the
        event loop like :meth:`take` (a few small rows); none when the file cannot be read
        (logged: the buffer's other operations say so too)."""
        assert self._reader is not None, "open() first"
        try:
            return stored_metas(self._reader)
        except sa.exc.SQLAlchemyError as exc:
            log.error("buffer: cannot read the kept tag metadata (%s)", exc)  # noqa: TRY400
            return []

    def stored_contexts(self, after: int = -1, through: int | None = None) -> list[ContextRow]:
        """The kept unit-context versions changed after ``after`` (through ``through``),
        oldest change first, read on the event loop like :meth:`stored_metas`; none when the
        file cannot be read (logged)."""
        assert self._reader is not None, "open() first"
        try:
            return stored_contexts(self._reader, after, through)
        except sa.exc.SQLAlchemyError as exc:
            log.error("buffer: cannot read the kept unit contexts (%s)", exc)  # noqa: TRY400
            return []

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
