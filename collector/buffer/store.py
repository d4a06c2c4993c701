"""The outbox itself (SQLAlchemy Core on one SQLite connection): append -> take -> ack.

- Readings are stored a poll at a time: one row (a *batch*) holds a poll's readings (or a part
  of one: collector.buffer.writer cuts polls larger than a message), numbered
  ``first_seq..last_seq``, as the comma-separated JSON objects that a message carries
  (contract.encode), ``seq`` included. One row per poll, not per reading, is what lets one
  core carry 100,000 readings a second (docs/performance.md): SQLite's cost is per row.
- The batch's key is its ``last_seq``, an ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite keeps
  the highest key ever inserted in ``sqlite_sequence``, even after the row is deleted, in the
  same transaction as the row. So ``seq`` strictly increases and never repeats, across
  restarts and crashes, with no counter of our own to keep in step; seqs of a transaction that
  never committed were never published.
- The station context's state (open units, attempts) and the unit records are written in the
  same transaction as the readings they go with (:meth:`Outbox.append`).
- When the cap is reached, the oldest batches are deleted in the same transaction that appends
  the new ones, and their readings counted (persistently, in ``meta``).
- The tag-metadata versions the stored polls refer to are kept beside them (table ``metas``,
  written with the first readings of a version); one no longer current is deleted once every
  batch that may refer to it (up to the last seq stored when it stopped being current) is
  gone. (Not "when the buffer is empty": on a busy line the deletes of delivered rows ride
  with commits of new ones, so the buffer is hardly ever empty at a commit.)
- A batch that cannot go out whole (larger than the broker takes) is split into smaller
  batches in place (:meth:`Outbox.split`); a single reading that can never be delivered is
  moved to the quarantine table.

Use an :class:`Outbox` from one thread only (collector.buffer.handover runs it on its own).
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from collector.buffer.migrations import migrate
from collector.buffer.schema import (
    COUNT_SQL,
    DROPPED_KEY,
    HINT_RESERVE,
    HINT_RESERVE_UNITS,
    INSERT_BATCHES,
    MAX_JUMPS,
    OUTBOX_KEY,
    QUARANTINED_KEY,
    Batch,
    BufferReset,
    BufferStats,
    ContextRow,
    MetaUpdate,
    SeqHint,
    attempts_table,
    batches_table,
    deviations_table,
    jumps_table,
    meta_table,
    metadata,
    quarantine_table,
    stations_table,
    units_table,
)
from collector.config import Synchronous
from contract.encode import encode_unit, keyed_polls, split_polls
from contract.records import ContextChanges

#: The writer connection's page cache, KiB (issue 28 item 3: 512 KiB commits as fast as 2 MB).
WRITER_CACHE_KB = 512


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
        self.hint = SeqHint(path)
        self._durable = synchronous is Synchronous.FULL
        self._synchronous = synchronous.value.upper()
        # Seqs reserved in the hint (not durable commits only): (readings, units).
        self._reserved = (0, 0)
        self.max_readings = max_readings
        # Kept metadata versions that are not current -> the highest seq that can refer to
        # them: deleted once every batch up to it is gone. Filled when the writer says which
        # versions are current (its first commit, each reload).
        self._retired: dict[tuple[str, str], int] = {}
        self._engine: Engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
        self._conn: Connection = self._engine.connect()
        # The same connection without SQLAlchemy, for the statements of every commit
        # (:func:`run_sql`); statements run on it belong to the transaction ``_conn`` began.
        self._dbapi = dbapi_of(self._conn)
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
        # Inserts at one end of the table, deletes at the other: a few pages each. SQLite's
        # default 2 MB cache would fill with pages never read again (resident memory).
        self._conn.exec_driver_sql(f"PRAGMA cache_size=-{WRITER_CACHE_KB}")
        self._conn.commit()
        with self._conn.begin():
            # IF NOT EXISTS, not create_all's check-then-create: another process (a
            # `buffer stats` reader, say) may be opening the same new file at the same moment.
            for table in metadata.sorted_tables:
                self._conn.execute(CreateTable(table, if_not_exists=True))
            migrate(self._conn)
            # Above every seq ever handed out, even by commits this file lost (the hint).
            hinted = self.hint.read()
            for stream, floor in zip(("batches", "units"), hinted, strict=True):
                before = self._last_seq(stream)
                self._raise_seq(stream, max(seq_floor, floor))
                if floor > before and not seq_floor:
                    # A reservation the lost commits did not use up: seqs never given to a
                    # reading this file holds (a reset's jump is noted by recovery).
                    self._note_jump(stream, before + 1, floor)
            if not self._meta(OUTBOX_KEY):
                outbox_id = int.from_bytes(secrets.token_bytes(8), "big", signed=True) or 1
                # OR IGNORE: a process opening the same new file at the same moment may have
                # made it first; the id read back below is the one stored.
                self._conn.execute(
                    sqlite_insert(meta_table)
                    .values(key=OUTBOX_KEY, value=outbox_id)
                    .on_conflict_do_nothing()
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
        self.deviations_depth = self._conn.execute(
            sa.select(sa.func.count()).select_from(deviations_table)
        ).scalar_one()
        self.last_deviation_seq = self._last_seq("deviations")
        #: The highest ``changed_seq`` of the kept context versions: the forwarder publishes
        #: the versions above what it published last (collector.delivery.forwarder).
        self.context_changed_seq = int(
            self._conn.exec_driver_sql("SELECT max(changed_seq) FROM contexts").scalar() or 0
        )
        #: 16 hex digits, the same for the file's whole life (docs/messages.md).
        self.outbox_id = (self._meta(OUTBOX_KEY) & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big").hex()
        self._conn.commit()
        #: Seq ranges skipped, per stream (announced to the store as never assigned).
        self.jumps = self._jumps()
        self._write_hint()

    def _raise_seq(self, table: str, floor: int) -> None:
        """The next seq of ``table`` is above ``floor``."""
        if floor <= self._last_seq(table):
            return
        params = {"t": table, "s": floor}
        updated = self._conn.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :s WHERE name = :t"), params
        ).rowcount
        if not updated:
            self._conn.execute(
                sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"), params
            )

    def _note_jump(self, table: str, first: int, last: int) -> None:
        stream = "readings" if table == "batches" else "units"
        self._conn.execute(
            sqlite_insert(jumps_table)
            .values(stream=stream, first_seq=first, last_seq=last, noted_ts=time.time())
            .on_conflict_do_nothing()
        )
        old = sa.select(jumps_table.c.first_seq).where(jumps_table.c.stream == stream)
        keep = old.order_by(jumps_table.c.first_seq.desc()).limit(MAX_JUMPS)
        self._conn.execute(
            jumps_table.delete().where(
                jumps_table.c.stream == stream, jumps_table.c.first_seq.not_in(keep)
            )
        )

    def note_jump(self, stream: str, first: int, last: int) -> None:
        """Note seqs this outbox skipped (recovery: a reset buffer's jump)."""
        with self._conn.begin():
            self._note_jump("batches" if stream == "readings" else "units", first, last)
        self.jumps = self._jumps()

    def _jumps(self) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {"readings": [], "units": []}
        for stream, first, last in self._conn.execute(
            sa.select(
                jumps_table.c.stream, jumps_table.c.first_seq, jumps_table.c.last_seq
            ).order_by(jumps_table.c.first_seq)
        ):
            out.setdefault(stream, []).append((first, last))
        self._conn.commit()
        return out

    def _count_readings(self, where: str = "", **params: int) -> int:
        return int(
            self._conn.execute(
                sa.text(f"SELECT coalesce(sum({COUNT_SQL}), 0) FROM batches {where}"),  # noqa: S608
                params,
            ).scalar_one()
        )

    def _sql(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """See :func:`run_sql`: in the caller's transaction."""
        return run_sql(self._dbapi, sql, params)

    def _sql_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """:meth:`_sql` with many rows (the driver's executemany)."""
        try:
            self._dbapi.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise sa.exc.DBAPIError.instance(sql, rows, exc, sqlite3.Error) from exc

    def _last_seq(self, table: str) -> int:
        value = self._conn.execute(
            sa.text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}
        ).scalar_one_or_none()
        return int(value or 0)

    def _write_hint(self, force: bool = True) -> None:
        readings, units = self._reserved
        self.hint.write(max(self.last_seq, readings), max(self.last_unit_seq, units), force)

    def _reserve(self, last_seq: int, last_unit_seq: int) -> None:
        """Without fsynced commits (buffer.synchronous normal/off), seqs are reserved in the
        fsynced hint before they are committed: a power cut that loses published commits
        cannot make them be handed out again."""
        readings, units = self._reserved
        if last_seq <= readings and last_unit_seq <= units:
            return
        self._reserved = (last_seq + HINT_RESERVE, last_unit_seq + HINT_RESERVE_UNITS)
        self.hint.write(*self._reserved, sync=True)

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
            # Everything is committed: the exact values, so a clean restart leaves no gap.
            self._reserved = (0, 0)
            self.hint.write(self.last_seq, self.last_unit_seq, sync=not self._durable)
        self._conn.close()
        self._engine.dispose()

    def append(
        self,
        batches: Sequence[Batch],
        changes: ContextChanges | None = None,
        acks: Sequence[tuple[int, int]] = (),
        metas: MetaUpdate | None = None,
        rekey: Sequence[tuple[str, str]] = (),
        *,
        contexts: Sequence[ContextRow] = (),
    ) -> int:
        """Append in one transaction, with the station context's changes that go with these
        batches, the unit-context versions they name (``contexts``), the tag-metadata
        versions they were encoded with (``metas``), the versions
        whose stored positional polls are to be keyed by tag from now on (``rekey``: device,
        meta; see :meth:`key_by_name`) and the deletes of delivered ranges (``acks``, see
        :meth:`ack_ranges`); drop the oldest readings if over the cap. Returns how many were
        dropped."""
        if not (batches or changes or acks or metas is not None or rekey or contexts):
            return 0
        dropped = 0
        count = sum(b.count for b in batches)
        if not self._durable:
            units = len(changes.units) if changes else 0
            self._reserve(batches[-1].last_seq if batches else 0, self.last_unit_seq + units)
        with self._conn.begin():
            # The deletes first: the room they make counts against the cap.
            deleted = self._delete_ranges(acks)
            over = self.depth - deleted + count - self.max_readings
            if changes:
                self._store_changes(changes)
            if metas is not None:
                self._conn.exec_driver_sql(
                    "INSERT OR IGNORE INTO metas (device, meta, body) VALUES (?, ?, ?)",
                    list(metas.rows),
                )
            if contexts:
                self._sql_many(UPSERT_CONTEXTS, contexts)
            if batches:
                # The driver's own executemany: SQLAlchemy's per-row parameter processing costs
                # more than the insert (bench/, docs/performance.md).
                self._sql_many(
                    INSERT_BATCHES, [(b.last_seq, b.first_seq, b.ts, b.body) for b in batches]
                )
            if over > 0:
                # After the insert: a batch larger than the room left drops its own oldest
                # readings too, so the cap holds whatever the batch size. Whole batches go:
                # the oldest ones that hold at least ``over`` readings.
                dropped = self._drop_oldest(over)
                self._add_meta(DROPPED_KEY, dropped)
            for device, meta in rekey:
                self._key_by_name(device, meta)
            newest = max([self.last_seq, *(b.last_seq for b in batches)])
            pruned = self._prune_metas(self._retire_metas(metas, newest))
            if deleted or dropped:
                self._prune_contexts(bool(contexts))
        self._retired = pruned
        if contexts:
            self.context_changed_seq = max(self.context_changed_seq, *(c[3] for c in contexts))
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

    def _retire_metas(self, update: MetaUpdate | None, last_seq: int) -> dict[tuple[str, str], int]:
        """The retired versions after this commit: with a new current set, every other kept
        version is retired at ``last_seq`` (the polls encoded with it are all stored by now:
        collector.buffer.writer commits a change after them), unless it already was; a
        version current again (a reload back) is not."""
        if update is None:
            return self._retired
        stored = self._conn.exec_driver_sql("SELECT device, meta FROM metas").all()
        return {
            (device, meta): self._retired.get((device, meta), last_seq)
            for device, meta in stored
            if (device, meta) not in update.current
        }

    def _prune_metas(self, retired: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """In the caller's transaction: delete the retired versions no pending batch can
        refer to any more (every batch up to their seq is delivered or dropped). Returns the
        ones left."""
        if not retired:
            return retired
        oldest = self._conn.exec_driver_sql("SELECT min(last_seq) FROM batches").scalar()
        done = [key for key, seq in retired.items() if oldest is None or oldest > seq]
        if done:
            self._conn.exec_driver_sql("DELETE FROM metas WHERE device = ? AND meta = ?", done)
        return {key: seq for key, seq in retired.items() if key not in done}

    def _key_by_name(self, device: str, meta: str) -> int:
        """In the caller's transaction: the pending positional polls of that version rewritten
        keyed by tag (the broker refused its metadata, so consumers could never read them).
        Returns how many batches changed."""
        row = self._conn.exec_driver_sql(
            "SELECT body FROM metas WHERE device = ? AND meta = ?", (device, meta)
        ).first()
        if row is None:
            return 0
        order = orjson.loads(row[0])["order"]
        # A positional poll of schema 3 has no device (its version names it); one buffered
        # by schema 2 has it just before: keyed_polls tells them apart.
        needle = b'"meta":"%b","' % meta.encode()
        rows = self._conn.exec_driver_sql(
            "SELECT last_seq, body FROM batches WHERE instr(body, ?) > 0", (needle,)
        ).all()
        changed = 0
        for last_seq, body in rows:
            keyed = keyed_polls(bytes(body), device, meta, order)
            if keyed is not None:
                self._conn.exec_driver_sql(
                    "UPDATE batches SET body = ? WHERE last_seq = ?", (keyed, last_seq)
                )
                changed += 1
        return changed

    def stored_metas(self) -> list[tuple[str, str, bytes]]:
        """Every kept metadata version: (device, meta, body)."""
        return stored_metas(self._conn)

    def _prune_contexts(self, stored_now: bool = False) -> None:
        """In the caller's transaction: delete the context versions no pending batch can
        name any more, except each station's latest. Nothing to do in a buffer that never
        kept one (no stations: ``context_changed_seq`` is the highest kept, 0 for none) and
        stores none in this transaction (``stored_now``)."""
        if self.context_changed_seq or stored_now:
            self._sql(PRUNE_CONTEXTS)

    def stored_contexts(self, after: int = -1, through: int | None = None) -> list[ContextRow]:
        """See :func:`stored_contexts`."""
        return stored_contexts(self._conn, after, through)

    def _drop_oldest(self, at_least: int) -> int:
        dropped, through = 0, None
        rows = self._conn.exec_driver_sql(
            f"SELECT last_seq, {COUNT_SQL} FROM batches ORDER BY last_seq"  # noqa: S608 - constants
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
        return self._take_rows(units_table, after_seq, max_rows)

    def ack_units(self, first_seq: int, last_seq: int) -> int:
        deleted = self._delete_rows(units_table, first_seq, last_seq)
        self.units_depth -= deleted
        return deleted

    def add_deviation(self, ts: float, body: bytes) -> int:
        """Commit one deviation (contract.deviations.encode_deviation) and return its seq.
        Fsynced whatever ``buffer.synchronous`` says: the 201 that follows tells a person
        their deviation is kept, and a commit lost to a power cut could hand its seq out
        again. (A person writes a few a shift: the fsync costs nothing that matters.)"""
        if not self._durable:
            self._conn.exec_driver_sql("PRAGMA synchronous=FULL")
            self._conn.commit()
        try:
            with self._conn.begin():
                seq = self._conn.execute(
                    deviations_table.insert().values(ts=ts, body=body)
                ).inserted_primary_key
        finally:
            if not self._durable:
                self._conn.exec_driver_sql(f"PRAGMA synchronous={self._synchronous}")
                self._conn.commit()
        assert seq is not None
        self.deviations_depth += 1
        self.last_deviation_seq = max(self.last_deviation_seq, int(seq[0]))
        return int(seq[0])

    def take_deviations(self, after_seq: int, max_rows: int) -> list[tuple[int, bytes]]:
        return self._take_rows(deviations_table, after_seq, max_rows)

    def ack_deviations(self, first_seq: int, last_seq: int) -> int:
        deleted = self._delete_rows(deviations_table, first_seq, last_seq)
        self.deviations_depth -= deleted
        return deleted

    def _take_rows(self, table: sa.Table, after_seq: int, max_rows: int) -> list[tuple[int, bytes]]:
        rows = self._conn.execute(
            sa.select(table.c.seq, table.c.body)
            .where(table.c.seq > after_seq)
            .order_by(table.c.seq)
            .limit(max_rows)
        ).all()
        self._conn.commit()
        return [(seq, body) for seq, body in rows]

    def _delete_rows(self, table: sa.Table, first_seq: int, last_seq: int) -> int:
        with self._conn.begin():
            deleted: int = self._conn.execute(
                table.delete().where(table.c.seq.between(first_seq, last_seq))
            ).rowcount
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
            left = self._prune_metas(self._retired)
            if deleted:
                self._prune_contexts()
        self.depth -= deleted
        self._retired = left
        return deleted

    def _delete_ranges(self, ranges: Sequence[tuple[int, int]]) -> int:
        """In the caller's transaction: delete the batches of the ranges; how many readings
        they held. Adjacent ranges (the messages of one commit, acknowledged in turn) are
        deleted as one."""
        deleted = 0
        for first_seq, last_seq in adjacent_merged(ranges):
            bounds = (first_seq, last_seq)
            deleted += int(self._sql(COUNT_RANGE, bounds).fetchone()[0])
            self._sql(DELETE_RANGE, bounds)
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
                f"WHERE last_seq BETWEEN ? AND ? AND {COUNT_SQL} > ? ORDER BY last_seq",
                (first_seq, last_seq, per_batch),
            ).all()
            for row in rows:
                batch = Batch(*row)
                parts = [Batch(*part) for part in split_polls(batch.body, per_batch)]
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
            self.deviations_depth,
        )


_IN_RANGE = "FROM batches WHERE last_seq BETWEEN ? AND ?"
COUNT_RANGE = f"SELECT coalesce(sum({COUNT_SQL}), 0) {_IN_RANGE}"
DELETE_RANGE = f"DELETE {_IN_RANGE}"


def adjacent_merged(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges in order, those that touch end to start joined: ``[(1, 5), (6, 9)]`` is
    ``[(1, 9)]``; overlapping or apart ones stay as they are."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and out[-1][1] + 1 == first:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


#: Keep a context version; one named again keeps its highest seqs.
UPSERT_CONTEXTS = (
    "INSERT INTO contexts (ctx, station, body, changed_seq, last_seq) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (ctx) DO UPDATE SET changed_seq = max(changed_seq, excluded.changed_seq), "
    "last_seq = max(last_seq, excluded.last_seq)"
)
PRUNE_CONTEXTS = (
    "DELETE FROM contexts WHERE last_seq < coalesce((SELECT min(first_seq) FROM batches), "
    "9223372036854775807) AND changed_seq < (SELECT max(c.changed_seq) FROM contexts c "
    "WHERE c.station = contexts.station)"
)


def stored_contexts(
    conn: Connection, after: int = -1, through: int | None = None
) -> list[ContextRow]:
    """The kept context versions whose ``changed_seq`` is above ``after`` (and at most
    ``through``), oldest change first: (ctx, station key, body, changed_seq, last_seq)."""
    sql = "SELECT ctx, station, body, changed_seq, last_seq FROM contexts WHERE changed_seq > ?"
    params: tuple[int, ...] = (after,)
    if through is not None:
        sql += " AND changed_seq <= ?"
        params = (after, through)
    rows = conn.exec_driver_sql(sql + " ORDER BY changed_seq", params).all()
    conn.commit()
    return [
        (ctx, station, bytes(body), changed, last) for ctx, station, body, changed, last in rows
    ]


def stored_metas(conn: Connection) -> list[tuple[str, str, bytes]]:
    """See :meth:`Outbox.stored_metas`."""
    rows = conn.exec_driver_sql("SELECT device, meta, body FROM metas ORDER BY device").all()
    conn.commit()
    return [(device, meta, bytes(body)) for device, meta, body in rows]


def take_batches(
    conn: Connection, after_seq: int, max_readings: int, max_bytes: int, up_to: int | None
) -> list[Batch]:
    """See :meth:`Outbox.take`."""
    sql = "SELECT first_seq, last_seq, ts, body FROM batches WHERE last_seq > ?"
    params: tuple[int, ...] = (after_seq,)
    if up_to is not None:
        sql += " AND last_seq <= ?"
        params = (after_seq, up_to)
    # On the DBAPI connection (the forwarder reads before every message, on the event loop):
    # SQLAlchemy's result machinery cost more than the read. Outside a transaction a SELECT
    # holds its read snapshot only until the cursor is closed, so WAL checkpoints proceed.
    cursor = run_sql(dbapi_of(conn), sql + " ORDER BY last_seq", params)
    out: list[Batch] = []
    readings = size = 0
    try:
        for row in cursor:
            batch = Batch(*row)
            readings += batch.count
            size += len(batch.body) + 1
            if out and (readings > max_readings or size > max_bytes):
                break
            out.append(batch)
    finally:
        cursor.close()
    conn.commit()  # a read transaction SQLAlchemy began earlier on it ends too
    return out


def dbapi_of(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under a SQLAlchemy one."""
    dbapi = conn.connection.driver_connection
    assert isinstance(dbapi, sqlite3.Connection)
    return dbapi


def run_sql(dbapi: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
    """One statement straight on the DBAPI connection (in the transaction its SQLAlchemy
    connection began, if any), for the statements of every commit and every message:
    SQLAlchemy's execution machinery costs them several times SQLite's own work
    (docs/performance.md, issue 28). Errors are raised as SQLAlchemy's, which is what callers
    catch (a full disk is an OperationalError)."""
    try:
        return dbapi.execute(sql, params)
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
