"""Writing a batch of MQTT messages into the database in one transaction.

:meth:`Writer.write` decodes each message (readings: store.decode, which keeps the reference
decoder's checks and wording; unit records and tag metadata: contract.decode),
quarantines the ones that break the contract, parks the ones whose meta version has not
arrived (store.metabook), and writes every reading, unit record and characteristic of the
rest with insert-or-ignore on their (collector, outbox, seq) keys, plus the gap audit of
each stream touched, in ONE transaction. The caller acknowledges the messages to the broker
only after :meth:`write` returned; when it raises, nothing of the batch is committed and
nothing may be acknowledged. A meta version that arrives releases the messages parked for
it, in transactions of their own after the batch's.

This is the one loop that runs per reading, so it works on the driver's own connection
(sqlite3 ``executemany``; psycopg ``COPY`` into a temporary table, then one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``) instead of SQLAlchemy statements.
Dimension rows (streams, series, contexts) are resolved first in their own short transaction:
they are idempotent, and a rolled-back batch must not leave ids in the caches that the
database does not have.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import sqlalchemy as sa

from contract.decode import ContractError, FlatUnit, decode_context, decode_units
from store.announce import Note, parse_gaps
from store.decode import (
    CTX_KEY_FIELDS,
    CtxKey,
    Decoded,
    Decoder,
    ctx_parse,
    ctx_text,
    unexpected,
)
from store.episodes import Episodes
from store.gaps import StreamState
from store.metabook import (
    BY_META,
    MetaKey,
    MetaVersion,
    conflict_reason,
    from_row,
    names_device,
    parked_reason,
    parse_meta,
    run_problem,
    same_content,
)
from store.parking import DROPS_A_LOOK, Dropped, ParkingLimits, bound_parking
from store.quarantine import Kept, Pruned, QuarantineBook, QuarantineLimits
from store.replays import defer_overlaps, defer_unit_overlaps, unit_difference
from store.rows import READINGS, UNITS, BatchRows, Ids, build, ctx_columns, ctx_key
from store.schema import to_micros
from store.sql import audit, db_time, insert_readings, insert_units, statements

log = logging.getLogger("store.ingest")

META = "meta"
GAPS = "gaps"
CONTEXT = "context"
_CACHE_LIMIT = 100_000

#: (collector, outbox, kind): one stream of the gap audit.
StreamKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One MQTT message as received."""

    topic: str
    payload: bytes


@dataclass(slots=True)
class BatchResult:
    messages: int = 0
    readings: int = 0
    readings_inserted: int = 0
    units: int = 0
    units_inserted: int = 0
    #: (kind, reason) of each quarantined message.
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    #: The reason of each message parked until its meta version arrives.
    parked: list[str] = field(default_factory=list)
    #: The meta version each of those waits for.
    parked_keys: list[MetaKey] = field(default_factory=list)
    #: Parked messages dropped into quarantine at a parking bound (store.parking).
    dropped: list[Dropped] = field(default_factory=list)
    #: Parked messages ingested (their meta version arrived).
    unparked: int = 0
    #: Every message quarantined and committed, with its topic's collector (for the log).
    kept: list[Kept] = field(default_factory=list)
    #: What the quarantine's bounds pruned (store.quarantine).
    pruned: list[Pruned] = field(default_factory=list)
    #: Each stream the batch touched: (its collector's topic base, its gap state after the
    #: commit); what the store acknowledges to the collector (store.acks).
    streams: dict[StreamKey, tuple[str, StreamState]] = field(default_factory=dict)
    #: What collectors said about seqs they will never send (store.announce), committed.
    notes: list[Note] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.readings - self.readings_inserted + self.units - self.units_inserted

    def add(self, other: BatchResult) -> None:
        self.messages += other.messages
        self.readings += other.readings
        self.readings_inserted += other.readings_inserted
        self.units += other.units
        self.units_inserted += other.units_inserted
        self.quarantined.extend(other.quarantined)
        self.parked.extend(other.parked)
        self.parked_keys.extend(other.parked_keys)
        self.dropped.extend(other.dropped)
        self.unparked += other.unparked
        self.kept.extend(other.kept)
        self.pruned.extend(other.pruned)
        self.streams.update(other.streams)
        self.notes.extend(other.notes)


def _add_meta(batch: _Batch, meta: MetaVersion, message: Incoming) -> None:
    """A batch's meta version; another content under the same id in the batch is refused
    (the first one received stays, as in the database)."""
    first = batch.metas.setdefault(meta.key, meta)
    batch.meta_messages.setdefault(meta.key, message)
    if not same_content(first, meta):
        raise ContractError("", conflict_reason(meta.key), "meta_conflict")


def topic_kind(topic: str) -> str | None:
    """readings, units, gaps, meta (``.../meta/{device}``) or context
    (``.../context/{station}``, ``.../context/{station}/{slot}``), from the topic's last
    levels."""
    levels = topic.split("/")
    if len(levels) >= 2 and levels[-2] == META:
        return META
    if _context_level(levels):
        return CONTEXT
    return levels[-1] if levels[-1] in (READINGS, UNITS, GAPS) else None


def _context_level(levels: list[str]) -> int:
    """The index (from the end) of the collector's level in a context topic; 0: not one."""
    if len(levels) >= 3 and levels[-2] == CONTEXT:
        return -3
    if len(levels) >= 4 and levels[-3] == CONTEXT:
        return -4
    return 0


@dataclass(slots=True)
class _Batch:
    """A batch, decoded and sorted: what goes into its one transaction."""

    readings: list[tuple[Incoming, Decoded]] = field(default_factory=list)
    units: list[list[FlatUnit]] = field(default_factory=list)
    #: The message that brought each of ``units``.
    unit_messages: list[Incoming] = field(default_factory=list)
    metas: dict[MetaKey, MetaVersion] = field(default_factory=dict)
    #: The message that brought each of ``metas``.
    meta_messages: dict[MetaKey, Incoming] = field(default_factory=dict)
    #: (message, kind, reason) of each message quarantined.
    bad: list[tuple[Incoming, str, str]] = field(default_factory=list)
    #: (message, the meta version it waits for) of each message parked; one waiting for a
    #: unit-context version waits for (collector, "", ctx).
    parked: list[tuple[Incoming, MetaKey]] = field(default_factory=list)
    #: (collector, ctx) -> the context, of each unit-context version in the batch.
    contexts: dict[tuple[str, str], CtxKey] = field(default_factory=dict)
    #: The topic base (topic minus its last level) each stream came in under.
    bases: dict[StreamKey, str] = field(default_factory=dict)
    #: A collector's word about seqs it will never send (store.announce).
    notes: list[Note] = field(default_factory=list)


class Writer:
    """Owns one database connection and writes batches through it (one thread at a time)."""

    def __init__(
        self,
        engine: sa.Engine,
        quarantine_max_bytes: int = 65_536,
        parking: ParkingLimits | None = None,
        quarantine: QuarantineLimits | None = None,
    ) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self.quarantine_max_bytes = quarantine_max_bytes
        self.parking = parking or ParkingLimits()
        # When the parking bounds were last looked at (monotonic): the age bound needs a look
        # now and then even while nothing parks; and whether more were past a bound then.
        self._parking_checked = -math.inf
        self._parking_more = False
        #: The quarantine's bounds: told of every transaction's end (store.quarantine).
        self.quarantine = QuarantineBook(quarantine or QuarantineLimits(), self.sqlite)
        self._split_log: Episodes[str, list[str]] = Episodes(list)
        self._raw: Any = None
        self._ids = Ids()
        #: Meta versions as the database holds them (filled from it only: what a poll is
        #: resolved through never differs between this process and the database).
        self._metas: dict[MetaKey, MetaVersion] = {}
        #: (collector, meta) -> the device a schema-3 version in the database names.
        self._devices: dict[tuple[str, str], str] = {}
        #: Unit-context versions known to be in the database: (collector, ctx) -> context.
        self._contexts: dict[tuple[str, str], CtxKey] = {}
        self._decoder = Decoder()
        self._ts_memo: dict[str, Any] = {}
        self._swept = False
        self._sql = statements(self.sqlite)

    # --- connection ---------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._raw is None:
            self._raw = self.engine.raw_connection()
            if not self.sqlite:
                with self._raw.driver_connection.cursor() as cur:
                    cur.execute(
                        "CREATE TEMP TABLE IF NOT EXISTS readings_in "
                        "(LIKE readings) ON COMMIT DELETE ROWS"
                    )
                self._raw.driver_connection.commit()
        return self._raw.driver_connection

    def reset(self) -> None:
        """Drop the connection and the caches (after a database error)."""
        if self._raw is not None:
            try:
                self._raw.invalidate()
            except Exception:  # the connection is being thrown away anyway
                log.debug("invalidating a broken connection failed", exc_info=True)
            self._raw = None
        self._ids.clear()
        self._metas.clear()
        self._devices.clear()
        self.quarantine.forget()
        self._contexts.clear()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _begin(self, conn: Any) -> Any:
        self.quarantine.begin()
        cur = conn.cursor()
        if self.sqlite:
            cur.execute("BEGIN IMMEDIATE")
        return cur

    def _commit(self, conn: Any, cur: Any) -> None:
        if self.sqlite:
            cur.execute("COMMIT")
        else:
            conn.commit()
        self.quarantine.commit()
        cur.close()

    def _rollback(self, conn: Any) -> None:
        self.quarantine.rollback()
        try:
            if self.sqlite:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.rollback()
        except Exception:  # the caller re-raises the original error
            log.debug("rollback failed", exc_info=True)

    @contextmanager
    def _rolled_back_on_error(
        self, conn: Any, then: Callable[[], None] | None = None
    ) -> Iterator[None]:
        """Any error in the block (an interrupt too: nothing half-written may stay open) rolls
        the connection back, calls ``then`` and is raised again."""
        try:
            yield
        except BaseException:
            self._rollback(conn)
            if then is not None:
                then()
            raise

    @contextmanager
    def _transaction(self, conn: Any, then: Callable[[], None] | None = None) -> Iterator[Any]:
        """BEGIN, the block with the cursor, COMMIT; rolled back on any error
        (:meth:`_rolled_back_on_error`)."""
        cur = self._begin(conn)
        with self._rolled_back_on_error(conn, then):
            yield cur
            self._commit(conn, cur)

    def _time(self, value: datetime) -> Any:
        return db_time(self.sqlite, value)

    # --- the batch ----------------------------------------------------------------------

    def write(self, batch: Sequence[Incoming]) -> BatchResult:
        """Write a batch in one transaction; raises (with nothing committed) on a DB error.
        Then ingest the messages parked for a meta version the batch brought (each chunk in
        a transaction of its own: the batch's rows are committed by then)."""
        result, arrived = self._write(batch)
        if not self._swept:  # at start: versions stored while no store ran, or a crash
            arrived |= set(self._select(self._sql["parked_ready"], ()))
            self._swept = True
        if arrived:
            result.add(self._unpark(arrived))
        result.kept, result.pruned = self.quarantine.take()
        return result

    def _write(
        self, batch: Sequence[Incoming], release: Sequence[int] = ()
    ) -> tuple[BatchResult, set[MetaKey]]:
        """One transaction; ``release``: quarantine rows of parked messages in ``batch``,
        deleted in it. Returns the result and the meta versions whose parked messages may
        be ingested now."""
        result = BatchResult(messages=len(batch))
        sorted_ = self._decode(batch, result)
        conn = self._connection()
        with self._rolled_back_on_error(conn):
            self._check_metas(conn, sorted_, result)
            self._check_positional(conn, sorted_, result)
            self._check_contexts(conn, sorted_, result)
            # Seqs two messages of this batch both carry: the later message is written
            # after this transaction, where it is judged as any replay (store.replays).
            deferred = self._defer_overlaps(sorted_)
            later_release: list[int] = []
            if deferred and release:
                qids = dict(zip(map(id, batch), release, strict=True))
                later_release = [qids[id(m)] for m in deferred]
                held = set(later_release)
                release = [q for q in release if q not in held]
            now = datetime.now(UTC)
            try:
                rows = self._rows(sorted_)
            except KeyError:  # a stream, series or context the caches do not know yet
                self._resolve(conn, sorted_)
                rows = self._rows(sorted_)
            if any(
                (n.collector, n.outbox, n.stream) not in self._ids.streams for n in sorted_.notes
            ):
                self._resolve(conn, sorted_)
            cur = self._begin(conn)
            # The gap audit first: on PostgreSQL it locks the batch's streams (in id order),
            # which serialises two store processes per stream before any other row.
            replayed: dict[int, list[tuple[int, int]]] = {}
            states = audit(cur, self._sql, self.sqlite, rows.ranges, now, replayed=replayed)
            # Seqs the stream already had (rare: a redelivery): what is stored for them now,
            # so that a replay with another time (a second row: ts is in the key) is seen.
            stored = self._stored(cur, replayed, sorted_) if replayed else {}
            result.readings = rows.count
            result.readings_inserted = insert_readings(
                cur,
                self._sql,
                self.sqlite,
                rows,
                self.engine.dialect.dbapi.IntegrityError,  # type: ignore[union-attr]
            )
            if stored:
                result.readings_inserted -= self._conflicts(
                    cur, stored, sorted_, result, now, incoming=incoming_values(rows, stored)
                )
            if rows.spans:
                cur.executemany(
                    self._sql["span"], [(*key, *span) for key, span in sorted(rows.spans.items())]
                )
            units_replayed = self._unit_replays(
                cur, replayed, sorted_, rows, result=result, now=now
            )
            result.units, result.units_inserted = insert_units(
                cur, self._sql, rows.units, rows.chars
            )
            result.units += units_replayed
            for meta in sorted_.metas.values():
                self._meta(cur, meta, now)
            for (collector, ctx), members in sorted_.contexts.items():
                cur.execute(
                    self._sql["ctxv_add"],
                    (collector, ctx, ctx_text(members), self._time(now)),
                )
            for message, kind, reason in sorted_.bad:
                self._quarantine(cur, message, kind, reason, now)
            for message, key in sorted_.parked:
                kind, reason = (
                    ("unknown_context", _context_reason(key)) if not key[1]
                    else ("unknown_meta", parked_reason(key))
                )  # fmt: skip
                qid = self._quarantine(cur, message, kind, reason, now, whole=True)
                cur.execute(self._sql["park"], (qid, *key))
            if sorted_.parked or self._parking_due():
                result.dropped = self._bound_parking(cur, now)
            if self.quarantine.due():
                self.quarantine.prune(cur, now)
            for qid in release:
                cur.execute(self._sql["release_q"], (qid,))
                cur.execute(self._sql["release_p"], (qid,))
            for note in sorted_.notes:
                stream = self._ids.streams[(note.collector, note.outbox, note.stream)]
                cur.execute(
                    self._sql["note_add"],
                    (stream, note.first, note.last, note.kind, self._time(now)),
                )
            self._commit(conn, cur)
        for skey, base in sorted_.bases.items():
            sid = self._ids.streams.get(skey)
            if sid is not None and sid in states:
                result.streams[skey] = (base, states[sid])
        result.notes.extend(sorted_.notes)
        if len(self._metas) > _CACHE_LIMIT:
            self._metas.clear()
            self._devices.clear()
        for key in sorted_.metas:
            # Insert-or-ignore: what the database holds now (this batch's or one stored
            # before) is read back when next needed, never assumed.
            self._metas.pop(key, None)
        if len(self._contexts) > _CACHE_LIMIT:
            self._contexts.clear()
        self._contexts.update(sorted_.contexts)
        arrived = set(sorted_.metas) | {(c, "", ctx) for c, ctx in sorted_.contexts}
        # Messages whose polls name their device by a version that came now.
        arrived |= {(c, BY_META, m) for (c, _, m), v in sorted_.metas.items() if names_device(v)}
        for key in {key for _, key in sorted_.parked}:
            # Stored by another store process meanwhile? Then its unpark may have run
            # before this park was committed: look again now that it is.
            found: object = (
                self._context(conn, (key[0], key[2]), {}) if not key[1]
                else self._device(conn, key[0], key[2], {})[1] or None if key[1] == BY_META
                else self._version(conn, key, {})
            )  # fmt: skip
            if found is not None:
                arrived.add(key)
        if deferred:
            later, more = self._write(deferred, later_release)
            later.messages = 0  # counted in this batch
            result.add(later)
            arrived |= more
        return result, arrived

    def _defer_overlaps(self, batch: _Batch) -> list[Incoming]:
        """Take out of the batch each readings or units message carrying a seq that an
        earlier one of the batch carries (not the same bytes); those messages."""
        batch.readings, deferred = defer_overlaps(batch.readings, _payload)
        if len(batch.units) > 1:
            batch.units, batch.unit_messages, more = defer_unit_overlaps(
                batch.units, batch.unit_messages, _payload
            )
            deferred += more
        return deferred

    def _unit_replays(
        self,
        cur: Any,
        replayed: dict[int, list[tuple[int, int]]],
        batch: _Batch,
        rows: BatchRows,
        *,
        result: BatchResult,
        now: datetime,
    ) -> int:
        """Unit records whose seq the stream already had: one with other content (another
        ``end_ts`` would be a second row: it is in the key) is not inserted, and its message
        is kept in quarantine (``conflict``) with both versions; a redelivery goes on to
        insert-or-ignore. The number of records taken out of ``rows``."""
        if not replayed or not rows.units:
            return 0
        streams = self._ids.streams
        lines: dict[int, tuple[Incoming, list[str]]] = {}
        out: set[tuple[str, str, int]] = set()
        records = (
            (message, u) for units, message in zip(batch.units, batch.unit_messages, strict=True)
            for u in units
        )  # fmt: skip
        for (message, u), row in zip(records, rows.units, strict=True):
            spans = replayed.get(streams[(u.collector, u.outbox, UNITS)], ())
            if not any(a <= u.seq <= b for a, b in spans):
                continue
            cur.execute(self._sql["unit_get"], (u.collector, u.outbox, u.seq))
            stored = cur.fetchall()
            diffs = [unit_difference(tuple(s), row) for s in stored]
            if not stored or None in diffs:
                continue  # a redelivery: insert-or-ignore
            out.add((u.collector, u.outbox, u.seq))
            lines.setdefault(id(message), (message, []))[1].append(cast(str, diffs[0]))
        if not out:
            return 0
        rows.units = [r for r in rows.units if (r[0], r[1], r[2]) not in out]
        rows.chars = [r for r in rows.chars if (r[0], r[1], r[2]) not in out]
        for message, found in lines.values():
            self._keep_conflict(cur, message, found, result, now)
        return len(out)

    def _keep_conflict(
        self, cur: Any, message: Incoming, lines: list[str], result: BatchResult, now: datetime
    ) -> None:
        """Keep a replay with other content in quarantine (``conflict``), both versions in
        its reason (the first 20 seqs)."""
        reason = "conflicting replay (kept: the stored version): " + "; ".join(lines[:20])
        if len(lines) > 20:
            reason += f"; ... ({len(lines)} seqs)"
        self._quarantine(cur, message, "conflict", reason, now, whole=True)
        result.quarantined.append(("conflict", reason))

    def _stored(
        self, cur: Any, replayed: dict[int, list[tuple[int, int]]], batch: _Batch
    ) -> dict[tuple[int, int], list[tuple[Any, Any, Any]]]:
        """(stream, seq) -> [(ts, num, text)] stored, for the replayed seqs of readings
        streams (one range query each: replays are rare, the fast path has none)."""
        out: dict[tuple[int, int], list[tuple[Any, Any, Any]]] = {}
        readings_streams = {
            self._ids.streams.get((d.collector, d.outbox, READINGS)) for _, d in batch.readings
        }
        for stream, spans in replayed.items():
            if stream not in readings_streams:
                continue
            for first, last in spans:
                cur.execute(self._sql["replay_get"], (stream, first, last))
                for seq, ts, num, text in cur.fetchall():
                    out.setdefault((stream, seq), []).append((ts, num, text))
        return out

    def _conflicts(
        self,
        cur: Any,
        stored: dict[tuple[int, int], list[tuple[Any, Any, Any]]],
        batch: _Batch,
        result: BatchResult,
        now: datetime,
        *,
        incoming: dict[tuple[int, int], tuple[Any, Any]],
    ) -> int:
        """A replayed seq with another time became a second row: delete it, and keep the
        message in quarantine (kind ``conflict``) with the stored version in its reason;
        the number of rows deleted. One seq, one row: the first version stays."""
        streams = {stream for stream, _ in stored}
        seqs_by_stream: dict[int, list[int]] = {}
        for stream, seq in stored:
            seqs_by_stream.setdefault(stream, []).append(seq)
        deleted = 0
        bad: dict[int, tuple[Incoming, list[str]]] = {}
        for stream in sorted(streams):
            seqs = sorted(seqs_by_stream[stream])
            cur.execute(self._sql["replay_get"], (stream, seqs[0], seqs[-1]))
            now_rows: dict[int, list[tuple[Any, Any, Any]]] = {}
            for seq, ts, num, text in cur.fetchall():
                now_rows.setdefault(seq, []).append((ts, num, text))
            for seq in seqs:
                before = stored[(stream, seq)]
                old_ts = {row[0] for row in before}
                new_value = incoming.get((stream, seq))
                if new_value is not None and not _same_value(before[0][1:], new_value):
                    # The same time, other content: insert-or-ignore kept the stored one.
                    message = self._message_of(batch, stream, seq)
                    if message is not None:
                        entry = bad.setdefault(id(message), (message, []))
                        was = before[0][1] if before[0][2] is None else before[0][2]
                        new = new_value[0] if new_value[1] is None else new_value[1]
                        entry[1].append(
                            f"seq {seq}: stored value {was!r}, replayed with value {new!r}"
                        )
                for ts, num, text in now_rows.get(seq, []):
                    if ts in old_ts:
                        continue
                    cur.execute(self._sql["replay_del"], (stream, seq, ts))
                    deleted += 1
                    message = self._message_of(batch, stream, seq)
                    if message is not None:
                        entry = bad.setdefault(id(message), (message, []))
                        old_ts_, old_num, old_text = before[0]
                        was = old_num if old_text is None else old_text
                        new = num if text is None else text
                        entry[1].append(
                            f"seq {seq}: stored ts {old_ts_} value {was!r}, "
                            f"replayed with ts {ts} value {new!r}"
                        )
        for message, lines in bad.values():
            self._keep_conflict(cur, message, lines, result, now)
        return deleted

    def _message_of(self, batch: _Batch, stream: int, seq: int) -> Incoming | None:
        for message, decoded in batch.readings:
            if self._ids.streams.get((decoded.collector, decoded.outbox, READINGS)) != stream:
                continue
            for run in decoded.runs:
                if run.seq <= seq < run.seq + len(run.values):
                    return message
            for poll in decoded.polls:
                if poll.seq <= seq < poll.seq + len(poll.values):
                    return message
        return None

    def _decode(self, batch: Sequence[Incoming], result: BatchResult) -> _Batch:
        out = _Batch()
        for message in batch:
            kind = topic_kind(message.topic)
            try:
                base = message.topic.rsplit("/", 1)[0]
                if kind == READINGS:
                    decoded = self._decoder.decode(message.payload)
                    _same_collector(message.topic, kind, decoded.collector)
                    out.readings.append((message, decoded))
                    out.bases[(decoded.collector, decoded.outbox, READINGS)] = base
                elif kind == UNITS:
                    units = decode_units(message.payload)
                    for u in units:
                        _same_collector(message.topic, kind, u.collector)
                    out.units.append(units)
                    out.unit_messages.append(message)
                    for u in units:
                        out.bases[(u.collector, u.outbox, UNITS)] = base
                elif kind == META:
                    meta = parse_meta(message.payload)
                    _same_collector(message.topic, kind, meta.collector)
                    _add_meta(out, meta, message)
                elif kind == CONTEXT:
                    if not message.payload:
                        continue  # a retained context cleared: nothing to keep
                    version = decode_context(message.payload)
                    _same_collector(message.topic, kind, version["collector"])
                    out.contexts[(version["collector"], version["ctx"])] = tuple(
                        version[name] for name in CTX_KEY_FIELDS
                    )
                elif kind == GAPS:
                    notes = parse_gaps(message.payload)
                    for note in notes:
                        _same_collector(message.topic, kind, note.collector)
                    out.notes.extend(notes)
                else:
                    raise _bad_topic(message.topic)
            except ContractError as exc:
                out.bad.append((message, exc.kind, str(exc)))
                result.quarantined.append((exc.kind, str(exc)))
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                # The reference decoder failing on a shape it does not expect: bad input
                # all the same, never a reason to retry the batch.
                problem = unexpected(exc)
                out.bad.append((message, problem.kind, str(problem)))
                result.quarantined.append((problem.kind, str(problem)))
        return out

    def _check_metas(self, conn: Any, batch: _Batch, result: BatchResult) -> None:
        """A meta version already stored with other content stays as stored: the message
        bringing the other content is quarantined (``meta_conflict``), and this batch's
        polls are resolved through the stored one."""
        for key, meta in list(batch.metas.items()):
            stored = self._version(conn, key, {})
            if stored is not None and not same_content(stored, meta):
                del batch.metas[key]
                reason = conflict_reason(key)
                batch.bad.append((batch.meta_messages[key], "meta_conflict", reason))
                result.quarantined.append(("meta_conflict", reason))

    def _parking_due(self) -> bool:
        return self._parking_more or (
            time.monotonic() - self._parking_checked >= self.parking.check_interval_s
        )

    def _bound_parking(self, cur: Any, now: datetime) -> list[Dropped]:
        """Drop the oldest parked messages past a parking bound into quarantine
        (store.parking), in the open transaction."""
        self._parking_checked = time.monotonic()
        dropped, self._parking_more = bound_parking(cur, self._sql, self.parking, now, DROPS_A_LOOK)
        self.quarantine.from_parking(dropped)
        return dropped

    def maintenance_due(self) -> bool:
        """Whether :meth:`maintain` has database work to do (itself none)."""
        return self._parking_due() or self.quarantine.due()

    def maintain(self) -> BatchResult:
        """The bounds' look that no batch brought (the service's idle tick): the parking
        bounds (their age bound on a store with no traffic) and the quarantine's, when due;
        a transaction of bounded work (store.parking.DROPS_A_LOOK,
        store.quarantine.PRUNES_A_LOOK). Raises on a database error."""
        result = BatchResult()
        parking = self._parking_due()
        if self.maintenance_due():
            with self._transaction(self._connection()) as cur:
                now = datetime.now(UTC)
                if parking:
                    result.dropped = self._bound_parking(cur, now)
                if self.quarantine.due():
                    self.quarantine.prune(cur, now)
        result.kept, result.pruned = self.quarantine.take()
        return result

    def _check_positional(self, conn: Any, batch: _Batch, result: BatchResult) -> None:
        """Resolve the meta version of each positional poll: a message naming a version not
        received yet is parked; one whose values run past the version's tags is bad."""
        kept: list[tuple[Incoming, Decoded]] = []
        for message, decoded in batch.readings:
            missing = None
            devices: dict[str, str] = {}
            bad = None
            for device, meta in sorted(decoded.needs):
                if not device:  # schema 3 by position: the version names the device
                    named, known = self._device(conn, decoded.collector, meta, batch.metas)
                    if named is not None:
                        devices[meta] = named
                        continue
                    if known:
                        bad = (
                            f"meta: version {meta} of {decoded.collector} names no one device "
                            "(a tag-metadata version of schema 2): a poll by position that "
                            "leaves out its device needs a version of schema 3"
                        )
                    else:
                        missing = (decoded.collector, BY_META, meta)
                    break
                key = (decoded.collector, device, meta)
                if self._version(conn, key, batch.metas) is None:
                    missing = key
                    break
            if bad is not None:
                batch.bad.append((message, "field", bad))
                result.quarantined.append(("field", bad))
                continue
            if devices and missing is None:  # (a parked message is named when it comes back)
                decoded.named(devices)
            if missing is not None:
                batch.parked.append((message, missing))
                result.parked.append(parked_reason(missing))
                result.parked_keys.append(missing)
                continue
            why = self._run_problem(conn, decoded, batch.metas) if decoded.needs else None
            if why is not None:
                batch.bad.append((message, "field", why))
                result.quarantined.append(("field", why))
                continue
            kept.append((message, decoded))
        batch.readings = kept

    def _check_contexts(self, conn: Any, batch: _Batch, result: BatchResult) -> None:
        """Resolve the unit-context versions schema-3 polls name: a message naming one not
        received yet is parked (like an unknown meta version, waiting for
        (collector, "", ctx)); the others have their runs' contexts filled in."""
        kept: list[tuple[Incoming, Decoded]] = []
        for message, decoded in batch.readings:
            if not decoded.contexts_needed:
                kept.append((message, decoded))
                continue
            found: dict[str, CtxKey] = {}
            missing = None
            for ctx in sorted(decoded.contexts_needed):
                context = self._context(conn, (decoded.collector, ctx), batch.contexts)
                if context is None:
                    missing = (decoded.collector, "", ctx)
                    break
                found[ctx] = context
            if missing is not None:
                batch.parked.append((message, missing))
                result.parked.append(_context_reason(missing))
                continue
            decoded.resolved(found)
            kept.append((message, decoded))
        batch.readings = kept

    def _context(
        self, conn: Any, key: tuple[str, str], batch: dict[tuple[str, str], CtxKey]
    ) -> CtxKey | None:
        """A unit-context version: this batch's, the cache's, or the database's."""
        context = batch.get(key) or self._contexts.get(key)
        if context is None:
            rows = self._select(self._sql["ctxv_get"], key, conn)
            if rows:
                context = self._contexts[key] = ctx_parse(rows[0][0])
        return context

    def _run_problem(
        self, conn: Any, decoded: Decoded, metas: dict[MetaKey, MetaVersion]
    ) -> str | None:
        for i, run in enumerate(decoded.runs):
            if run.tags is None and run.meta is not None:
                version = self._version(conn, (decoded.collector, run.device, run.meta), metas)
                assert version is not None  # every version the message needs was found
                why = run_problem(version, run.tag_index, len(run.values), f"polls[{i}].")
                if why is not None:
                    return why
        return None

    def _device(
        self, conn: Any, collector: str, meta: str, batch: dict[MetaKey, MetaVersion]
    ) -> tuple[str | None, bool]:
        """The device a schema-3 meta version of the collector names (this batch's, the
        cache's or the database's), and whether any version of that id is known (one of
        schema 2 names no one device: several may share its id)."""
        device = self._devices.get((collector, meta))
        if device is not None:
            return device, True
        known = False
        for (c, _, m), version in batch.items():
            if c == collector and m == meta:
                known = True
                if names_device(version):
                    return version.device, True
        for device, order, tags in self._select(self._sql["meta_devices"], (collector, meta), conn):
            known = True
            version = from_row((collector, device, meta), order, tags)
            if names_device(version):
                if len(self._devices) > _CACHE_LIMIT:
                    self._devices.clear()
                self._devices[(collector, meta)] = device
                return device, True
        return None, known

    def _version(
        self, conn: Any, key: MetaKey, batch: dict[MetaKey, MetaVersion]
    ) -> MetaVersion | None:
        """A meta version: this batch's, the cache's, or the database's (None: unknown)."""
        version = batch.get(key) or self._metas.get(key)
        if version is None:
            rows = self._select(self._sql["meta_get"], key, conn)
            if rows:
                version = self._metas[key] = from_row(key, *rows[0])
        return version

    def _select(self, sql: str, params: tuple[Any, ...], conn: Any = None) -> list[Any]:
        """Rows of a query. On PostgreSQL a query outside a transaction opens one (psycopg
        is not in autocommit): it is ended here, so the connection never idles in a
        transaction between batches."""
        conn = conn or self._connection()
        opened = not self.sqlite and conn.info.transaction_status.name == "IDLE"
        cur = conn.cursor()
        try:
            cur.execute(sql, params)
            return list(cur.fetchall())
        finally:
            cur.close()
            if opened:
                conn.rollback()

    def _unpark(self, keys: set[MetaKey]) -> BatchResult:
        """Ingest the messages parked for these meta versions, a chunk a transaction."""
        total = BatchResult()
        for key in sorted(keys):
            seen: set[int] = set()
            while True:
                rows = [r for r in self._select(self._sql["parked_get"], key) if r[0] not in seen]
                if not rows:
                    break
                seen.update(r[0] for r in rows)
                messages = [Incoming(topic, bytes(payload)) for _, topic, payload in rows]
                ids = [qid for qid, _, _ in rows]
                try:
                    done, _ = self._write(messages, ids)
                except Exception as exc:
                    if not self.is_data_error(exc):
                        raise
                    done = self._unpark_one_by_one(messages, ids)
                done.messages = 0  # acknowledged when they were parked
                done.unparked = len(ids) - len(done.parked)
                total.add(done)
        if total.unparked:
            log.info("ingested %d parked message(s): their meta version arrived", total.unparked)
        return total

    def _unpark_one_by_one(self, messages: list[Incoming], ids: list[int]) -> BatchResult:
        total = BatchResult()
        for message, qid in zip(messages, ids, strict=True):
            try:
                total.add(self._write([message], [qid])[0])
            except Exception as exc:
                if not self.is_data_error(exc):
                    raise
                reason = f"refused by the database: {str(exc).strip().splitlines()[0][:300]}"
                conn = self._connection()
                with self._transaction(conn) as cur:
                    cur.execute(self._sql["refused"], (reason, qid))
                    cur.execute(self._sql["release_p"], (qid,))
                    self.quarantine.added(message.topic, "database", reason, len(message.payload))
                total.quarantined.append(("database", reason))
        return total

    def _quarantine(
        self,
        cur: Any,
        message: Incoming,
        kind: str,
        reason: str,
        now: datetime,
        *,
        whole: bool = False,
    ) -> int:
        """Keep a message (its payload cut to ``quarantine_max_bytes``, unless ``whole``: a
        parked message is ingested later); its row id."""
        payload = message.payload if whole else message.payload[: self.quarantine_max_bytes]
        cur.execute(
            self._sql["quarantine"],
            (self._time(now), message.topic, kind, reason, payload, len(message.payload)),
        )
        self.quarantine.added(message.topic, kind, reason, len(payload))
        return int(cur.fetchone()[0])

    def _meta(self, cur: Any, meta: MetaVersion, now: datetime) -> None:
        """A meta version: kept (positional polls are resolved through it), and the
        engineering unit of each of its series (a new series row when the metadata comes
        before the first reading)."""
        order = None if meta.order is None else orjson.dumps(meta.order).decode()
        cur.execute(
            self._sql["meta_add"],
            (*meta.key, order, orjson.dumps(meta.tags).decode(), self._time(now)),
        )
        collector, device = meta.collector, meta.device
        # New series in the order's order: their ids are then consecutive, and a run of
        # plain numbers is written by SQLite's JSON expansion (store.rows).
        for tag in dict.fromkeys([*(meta.order or ()), *meta.tags]):
            unit = meta.unit(tag)
            cur.execute(self._sql["series_add"], (collector, device, tag, unit))
            cur.execute(self._sql["series_unit"], (unit, collector, device, tag))

    def write_isolating(self, batch: Sequence[Incoming]) -> BatchResult:
        """:meth:`write`; when the database refuses the batch for its data (a value it cannot
        store, such as a NUL character in a PostgreSQL text), write the messages one by one
        and quarantine each one it refuses (kind ``database``), so one message cannot block
        the stream. Other database errors are raised as by :meth:`write`."""
        try:
            return self.write(batch)
        except Exception as exc:
            if not self.is_data_error(exc):
                raise
            # Once a minute at most: a publisher sending what the database refuses in every
            # message would otherwise give a line per batch (each refused message is logged
            # as a quarantine, once per collector a minute too).
            self._split_log.pending("split").append(str(exc).strip().splitlines()[0][:300])
            for due in self._split_log.due():
                log.warning(
                    "the database refused %d batch(es) (the last: %s); writing their messages "
                    "one by one (at most one line a minute)",
                    len(due.pending),
                    due.pending[-1],
                )
        total = BatchResult()
        for message in batch:
            try:
                total.add(self.write([message]))
            except Exception as exc:
                if not self.is_data_error(exc):
                    raise
                reason = f"refused by the database: {str(exc).strip().splitlines()[0][:300]}"
                total.add(self._quarantine_alone(message, reason))
        return total

    def is_data_error(self, exc: BaseException) -> bool:
        """The database (or the driver, before it) refuses a value of the batch: an integer
        beyond 64 bits is an OverflowError in sqlite3 and a struct.error in the binary
        COPY, where PostgreSQL's own check would be a DataError."""
        if isinstance(exc, OverflowError | struct.error):
            return True
        dbapi = self.engine.dialect.dbapi
        return dbapi is not None and isinstance(exc, dbapi.DataError | dbapi.IntegrityError)

    def _quarantine_alone(self, message: Incoming, reason: str) -> BatchResult:
        conn = self._connection()
        with self._transaction(conn) as cur:
            self._quarantine(cur, message, "database", reason, datetime.now(UTC))
        kept, pruned = self.quarantine.take()
        return BatchResult(messages=1, quarantined=[("database", reason)], kept=kept, pruned=pruned)

    def _rows(self, batch: _Batch) -> BatchRows:
        """Every row of the batch from the cached ids; KeyError when one is not cached."""
        return build(
            self._ids,
            (d for _, d in batch.readings),
            batch.units,
            self._ts_value,
            self._time,
            runs="json" if self.sqlite else "copy",
        )

    def _resolve(self, conn: Any, batch: _Batch) -> None:
        """Make sure every stream, series and context of the batch has its id cached."""
        ids = self._ids
        streams: set[tuple[str, str, str]] = set()
        series: dict[tuple[str, str, str], str | None] = {}
        contexts: dict[CtxKey, None] = {}
        orders: dict[MetaKey, MetaVersion] = {}
        for _, msg in batch.readings:
            streams.add((msg.collector, msg.outbox, READINGS))
            for run in msg.runs:
                context = cast(CtxKey, run.context)  # resolved (_check_contexts)
                if context not in ids.contexts:
                    contexts[context] = None
                if run.tags is None:
                    key = (msg.collector, run.device, run.meta or "")
                    version = None if key in ids.orders else self._version(conn, key, batch.metas)
                    if version is not None:
                        orders[key] = version
                    continue
                tags = ids.series.get((msg.collector, run.device), {})
                for tag in run.tags:
                    if tag not in tags:
                        series.setdefault((msg.collector, run.device, tag), None)
            for p in msg.polls:
                key_ = ctx_key(p)
                if key_ not in ids.contexts:
                    contexts[key_] = None
                tags = ids.series.get((msg.collector, p.device), {})
                for tag, _v, _q, _e, unit in p.values:
                    if tag not in tags:
                        series.setdefault((msg.collector, p.device, tag), unit)
        for version in orders.values():
            tags = ids.series.get((version.collector, version.device), {})
            for tag in version.order or ():
                if tag not in tags:
                    series.setdefault((version.collector, version.device, tag), version.unit(tag))
        for units in batch.units:
            for u in units:
                streams.add((u.collector, u.outbox, UNITS))
        for note in batch.notes:
            streams.add((note.collector, note.outbox, note.stream))
        streams -= ids.streams.keys()
        if not (streams or series or contexts or orders):
            return
        for cache in (ids.streams, ids.series, ids.contexts, ids.orders):
            if len(cache) > _CACHE_LIMIT:
                cache.clear()
        # Ids cached before a failure may belong to rows that were rolled back: cleared then.
        with self._transaction(conn, then=ids.clear) as cur:
            for skey in sorted(streams):
                cur.execute(self._sql["stream_add"], skey)
                cur.execute(self._sql["stream_id"], skey)
                ids.streams[skey] = cur.fetchone()[0]
            for sskey, unit in series.items():
                cur.execute(self._sql["series_add"], (*sskey, unit))
                cur.execute(self._sql["series_id"], sskey)
                ids.series.setdefault(sskey[:2], {})[sskey[2]] = cur.fetchone()[0]
            for ckey in contexts:
                # Without a work order, the 7-field key of the rows stored before it existed.
                text = ctx_text(ckey)
                cur.execute(self._sql["ctx_add"], (text, *ctx_columns(ckey)))
                cur.execute(self._sql["ctx_id"], (text,))
                ids.contexts[ckey] = cur.fetchone()[0]
            for okey, version in orders.items():
                tags = ids.series[okey[:2]]
                ids.orders[okey] = [tags[tag] for tag in version.order or ()]

    def _ts_value(self, text: str) -> Any:
        """A poll's time as the readings.ts column takes it: microseconds on SQLite, the
        RFC 3339 text itself for PostgreSQL's COPY."""
        if not self.sqlite:
            return text
        # The decoder has just checked the time (and made most from epoch milliseconds): it
        # knows the microseconds; parsed here only when it has forgotten them.
        value = self._decoder.micros(text)
        if value is None:
            memo = self._ts_memo
            value = memo.get(text)
            if value is None:
                if len(memo) > 10_000:
                    memo.clear()
                value = memo[text] = to_micros(datetime.fromisoformat(text))
        return value


def incoming_values(
    rows: BatchRows, wanted: dict[tuple[int, int], Any]
) -> dict[tuple[int, int], tuple[Any, Any]]:
    """(stream, seq) -> (num, text) the batch brings, for the ``wanted`` seqs only (the
    replayed ones: rare)."""
    out: dict[tuple[int, int], tuple[Any, Any]] = {}
    for row in rows.simple:
        if (row[0], row[1]) in wanted:
            out[(row[0], row[1])] = (row[6], None)
    for row in rows.full:
        if (row[0], row[1]) in wanted:
            out[(row[0], row[1])] = (row[6], row[7])
    for stream, seq0, _ts, _series, _ctx, values in rows.runs or ():
        for i, value in enumerate(orjson.loads(values)):
            if (stream, seq0 + i) in wanted:
                out[(stream, seq0 + i)] = (value, None)
    for seq0, (stream, _ts, _ctx), _series_ids, run_values in rows.copy_runs or ():
        for i, value in enumerate(run_values):
            if (stream, seq0 + i) in wanted:
                out[(stream, seq0 + i)] = (value, None)
    return out


def _payload(message: Incoming) -> bytes:
    return message.payload


def _same_value(stored: tuple[Any, Any], incoming: tuple[Any, Any]) -> bool:
    """Whether a stored (num, text) and an incoming one are the same reading's value
    (numbers compared as the REAL/double column holds them; NaN equals NaN)."""
    (num_a, text_a), (num_b, text_b) = stored, incoming
    if text_a != text_b or (num_a is None) != (num_b is None):
        return False
    if num_a is None:
        return True
    a, b = float(num_a), float(num_b)
    return a == b or (math.isnan(a) and math.isnan(b))


def _same_collector(topic: str, kind: str, collector: str) -> None:
    """The payload's collector id must be the topic's collector level
    (``{prefix}/{site}/{line}/{id}/{kind}``, ``.../{id}/meta/{device}``): broker ACLs let a
    line PC publish only under its own topic, so the topic is the identity the broker
    checked and a payload naming another collector is forged (issue 23: another client's
    values won under the victim's id)."""
    levels = topic.split("/")
    at = -3 if kind == META else _context_level(levels) if kind == CONTEXT else -2
    topic_id = levels[at] if len(levels) >= -at else ""
    if topic_id != collector:
        raise ContractError(
            "collector",
            f"{collector[:64]!r} published under the topic of collector {topic_id[:64]!r}",
            "identity",
        )


def _context_reason(key: MetaKey) -> str:
    return f"unit context version {key[2]} of {key[0]} not received yet: parked until it arrives"


def _bad_topic(topic: str) -> ContractError:
    return ContractError("", f"not a readings or units topic: {topic}", "topic")
