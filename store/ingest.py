"""Writing a batch of MQTT messages into the database in one transaction.

:meth:`Writer.write` decodes each message with the reference decoder (collector.contract),
quarantines the ones that break the contract, and writes every reading, unit record and
characteristic of the rest with insert-or-ignore on their (collector, outbox, seq) keys, plus
the gap audit of each stream touched, in ONE transaction. The caller acknowledges the
messages to the broker only after :meth:`write` returned; when it raises, nothing of the
batch is committed and nothing may be acknowledged.

This is the one loop that runs per reading, so it works on the driver's own connection
(sqlite3 ``executemany``; psycopg ``COPY`` into a temporary table, then one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``) instead of SQLAlchemy statements.
Dimension rows (streams, series, contexts) are resolved first in their own short transaction:
they are idempotent, and a rolled-back batch must not leave ids in the caches that the
database does not have.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from collector.contract import (
    ContractError,
    FlatUnit,
    Poll,
    ReadingsMessage,
    decode_meta,
    decode_polls,
    decode_units,
)
from store.gaps import Hole, StreamState, merge
from store.schema import (
    KIND_BOOL,
    KIND_FLOAT,
    KIND_INT,
    KIND_NULL,
    KIND_TEXT,
    QUALITY_CODES,
    to_micros,
)

log = logging.getLogger("store.ingest")

READINGS, UNITS, META = "readings", "units", "meta"
_FLOAT_INT = 2**53  # integers beyond this lose digits as float64: kept as text
_CACHE_LIMIT = 100_000

_READING_COLUMNS = "stream, seq, ts, series, context, flags, num, text, error"
_COPY_INSERT = (
    f"INSERT INTO readings ({_READING_COLUMNS}) SELECT {_READING_COLUMNS} "  # noqa: S608 - constants
    "FROM readings_in ON CONFLICT DO NOTHING"
)
_STREAM_GET = "SELECT low_seq, high_seq FROM streams WHERE id = ?"
_SIMPLE_COLUMNS = "stream, seq, ts, series, context, flags, num"
_UNIT_COLUMNS = (
    "collector, outbox, seq, serial, station, slot, operation, attempt, start_ts, end_ts, "
    "cycle_time_s, takt_s, verdict, failure_code, ended_by, readings, golden, work_order"
)
_CHAR_COLUMNS = (
    "collector, outbox, unit_seq, serial, operation, name, last, min, max, lsl, usl, target, "
    "critical, in_spec, end_ts"
)


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


def topic_kind(topic: str) -> str | None:
    """readings, units or meta (``.../meta/{device}``), from the topic's last levels."""
    levels = topic.rsplit("/", 2)
    if len(levels) == 3 and levels[1] == META:
        return META
    return levels[-1] if levels[-1] in (READINGS, UNITS) else None


_CtxKey = tuple[str | None, int | str | None, str | None, str | None, int | None, str | None, bool]


def _ctx_key(p: Poll) -> _CtxKey:
    return (p.station, p.slot, p.unit_serial, p.operation, p.attempt, p.phase, p.golden)


class Writer:
    """Owns one database connection and writes batches through it (one thread at a time)."""

    def __init__(self, engine: sa.Engine, quarantine_max_bytes: int = 65_536) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self.quarantine_max_bytes = quarantine_max_bytes
        self._raw: Any = None
        self._streams: dict[tuple[str, str, str], int] = {}
        #: (collector, device) -> tag -> series id: one look-up per poll, one per tag.
        self._series: dict[tuple[str, str], dict[str, int]] = {}
        self._contexts: dict[_CtxKey, int] = {}
        self._ts_memo: dict[str, Any] = {}
        ignore = "INSERT OR IGNORE INTO" if self.sqlite else "INSERT INTO"
        tail = "" if self.sqlite else " ON CONFLICT DO NOTHING"
        self._sql = {
            "units": f"{ignore} units ({_UNIT_COLUMNS}) VALUES ({_marks(18)}){tail}",
            "chars": f"{ignore} characteristics ({_CHAR_COLUMNS}) VALUES ({_marks(15)}){tail}",
            "readings": f"{ignore} readings ({_READING_COLUMNS}) VALUES ({_marks(9)}){tail}",
            "readings_simple": f"{ignore} readings ({_SIMPLE_COLUMNS}) VALUES ({_marks(7)}){tail}",
            "span": "INSERT INTO context_spans (context, stream, first_seq, last_seq) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (context, stream) DO UPDATE SET "
            + (
                "first_seq = min(first_seq, excluded.first_seq), "
                "last_seq = max(last_seq, excluded.last_seq)"
                if self.sqlite
                else "first_seq = LEAST(context_spans.first_seq, excluded.first_seq), "
                "last_seq = GREATEST(context_spans.last_seq, excluded.last_seq)"
            ),
            "stream_add": f"{ignore} streams (collector, outbox, kind, received) "
            f"VALUES (?, ?, ?, 0){tail}",
            "stream_id": "SELECT id FROM streams WHERE collector = ? AND outbox = ? AND kind = ?",
            "series_add": f"{ignore} series (collector, device, tag, unit) "
            f"VALUES (?, ?, ?, ?){tail}",
            "series_id": "SELECT id FROM series WHERE collector = ? AND device = ? AND tag = ?",
            "series_unit": "UPDATE series SET unit = ? WHERE collector = ? AND device = ? "
            "AND tag = ?",
            "ctx_add": f"{ignore} contexts (key, station, slot, unit_serial, operation, attempt, "
            f"phase, golden) VALUES (?, ?, ?, ?, ?, ?, ?, ?){tail}",
            "ctx_id": "SELECT id FROM contexts WHERE key = ?",
            "quarantine": "INSERT INTO quarantine (received_at, topic, kind, reason, payload, "
            "payload_bytes) VALUES (?, ?, ?, ?, ?, ?)",
            "stream_get": _STREAM_GET if self.sqlite else _STREAM_GET + " FOR UPDATE",
            "gaps_get": "SELECT first_seq, last_seq, opened_at FROM gaps WHERE stream = ? "
            "ORDER BY first_seq",
            "stream_set": "UPDATE streams SET low_seq = ?, high_seq = ?, received = received + ?, "
            "last_at = ? WHERE id = ?",
            "gaps_del": "DELETE FROM gaps WHERE stream = ?",
            "gaps_add": "INSERT INTO gaps (stream, first_seq, last_seq, opened_at) "
            "VALUES (?, ?, ?, ?)",
        }
        if not self.sqlite:
            self._sql = {k: v.replace("?", "%s") for k, v in self._sql.items()}

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
        self._streams.clear()
        self._series.clear()
        self._contexts.clear()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _begin(self, conn: Any) -> Any:
        cur = conn.cursor()
        if self.sqlite:
            cur.execute("BEGIN IMMEDIATE")
        return cur

    def _commit(self, conn: Any, cur: Any) -> None:
        if self.sqlite:
            cur.execute("COMMIT")
        else:
            conn.commit()
        cur.close()

    def _rollback(self, conn: Any) -> None:
        try:
            if self.sqlite:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.rollback()
        except Exception:  # the caller re-raises the original error
            log.debug("rollback failed", exc_info=True)

    def _time(self, value: datetime) -> Any:
        """A UtcDateTime column value as the driver takes it (see store.schema)."""
        if self.sqlite:
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return value

    def _read_time(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)

    # --- the batch ----------------------------------------------------------------------

    def write(self, batch: Sequence[Incoming]) -> BatchResult:
        """Write a batch in one transaction; raises (with nothing committed) on a DB error."""
        result = BatchResult(messages=len(batch))
        readings_msgs: list[ReadingsMessage] = []
        unit_lists: list[list[FlatUnit]] = []
        metas: list[dict[str, Any]] = []
        bad: list[tuple[Incoming, str, str]] = []
        for message in batch:
            kind = topic_kind(message.topic)
            try:
                if kind == READINGS:
                    readings_msgs.append(decode_polls(message.payload))
                elif kind == UNITS:
                    unit_lists.append(decode_units(message.payload))
                elif kind == META:
                    metas.append(decode_meta(message.payload))
                else:
                    raise _bad_topic(message.topic)
            except ContractError as exc:
                bad.append((message, exc.kind, str(exc)))
                result.quarantined.append((exc.kind, str(exc)))
        conn = self._connection()
        try:
            now = datetime.now(UTC)
            try:
                rows = self._rows(readings_msgs, unit_lists)
            except KeyError:  # a stream, series or context the caches do not know yet
                self._resolve(conn, readings_msgs, unit_lists)
                rows = self._rows(readings_msgs, unit_lists)
            ranges, spans, simple, full, unit_rows, char_rows = rows
            cur = self._begin(conn)
            # The gap audit first: on PostgreSQL it locks the batch's streams (in id order),
            # which serialises two store processes per stream before any other row.
            self._audit(cur, ranges, now)
            result.readings = len(simple) + len(full)
            result.readings_inserted = self._insert_readings(cur, simple, full)
            if spans:
                cur.executemany(
                    self._sql["span"], [(*key, *span) for key, span in sorted(spans.items())]
                )
            result.units, result.units_inserted = self._insert_units(cur, unit_rows, char_rows)
            for meta in metas:
                self._meta(cur, meta)
            for message, kind, reason in bad:
                self._quarantine(cur, message, kind, reason, now)
            self._commit(conn, cur)
        except BaseException:
            self._rollback(conn)
            raise
        return result

    def _quarantine(
        self, cur: Any, message: Incoming, kind: str, reason: str, now: datetime
    ) -> None:
        payload = message.payload[: self.quarantine_max_bytes]
        cur.execute(
            self._sql["quarantine"],
            (self._time(now), message.topic, kind, reason, payload, len(message.payload)),
        )

    def _meta(self, cur: Any, meta: dict[str, Any]) -> None:
        """Tag metadata (schema 2, retained per device): the engineering unit of each series
        (a new series row when the metadata comes before the first reading)."""
        collector, device = meta["collector"], meta["device"]
        for tag, info in meta["tags"].items():
            unit = info.get("unit")
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
            log.warning("the database refused a batch (%s); writing its messages one by one", exc)
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
        dbapi = self.engine.dialect.dbapi
        return dbapi is not None and isinstance(exc, dbapi.DataError | dbapi.IntegrityError)

    def _quarantine_alone(self, message: Incoming, reason: str) -> BatchResult:
        conn = self._connection()
        try:
            cur = self._begin(conn)
            self._quarantine(cur, message, "database", reason, datetime.now(UTC))
            self._commit(conn, cur)
        except BaseException:
            self._rollback(conn)
            raise
        return BatchResult(messages=1, quarantined=[("database", reason)])

    def _rows(
        self, readings_msgs: list[ReadingsMessage], unit_lists: list[list[FlatUnit]]
    ) -> tuple[
        dict[int, list[tuple[int, int]]],
        dict[tuple[int, int], tuple[int, int]],
        list[tuple[Any, ...]],
        list[tuple[Any, ...]],
        list[tuple[Any, ...]],
        list[tuple[Any, ...]],
    ]:
        """Every row of the batch from the cached ids; KeyError when one is not cached."""
        ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
        spans: dict[tuple[int, int], tuple[int, int]] = {}
        simple, full = self._reading_rows(readings_msgs, ranges, spans)
        unit_rows, char_rows = self._unit_rows(unit_lists, ranges)
        return ranges, spans, simple, full, unit_rows, char_rows

    def _resolve(
        self, conn: Any, readings_msgs: list[ReadingsMessage], unit_lists: list[list[FlatUnit]]
    ) -> None:
        """Make sure every stream, series and context of the batch has its id cached."""
        streams: set[tuple[str, str, str]] = set()
        series: dict[tuple[str, str, str], str | None] = {}
        contexts: dict[_CtxKey, None] = {}
        known_series, known_ctx = self._series, self._contexts
        for msg in readings_msgs:
            streams.add((msg.collector, msg.outbox, READINGS))
            for p in msg.polls:
                key = _ctx_key(p)
                if key not in known_ctx:
                    contexts[key] = None
                tags = known_series.get((msg.collector, p.device), {})
                for tag, _v, _q, _e, unit in p.values:
                    if tag not in tags:
                        series.setdefault((msg.collector, p.device, tag), unit)
        for units in unit_lists:
            for u in units:
                streams.add((u.collector, u.outbox, UNITS))
        streams -= self._streams.keys()
        if not (streams or series or contexts):
            return
        for cache in (self._streams, self._series, self._contexts):
            if len(cache) > _CACHE_LIMIT:
                cache.clear()
        cur = self._begin(conn)
        try:
            for skey in sorted(streams):
                cur.execute(self._sql["stream_add"], skey)
                cur.execute(self._sql["stream_id"], skey)
                self._streams[skey] = cur.fetchone()[0]
            for sskey, unit in series.items():
                cur.execute(self._sql["series_add"], (*sskey, unit))
                cur.execute(self._sql["series_id"], sskey)
                self._series.setdefault(sskey[:2], {})[sskey[2]] = cur.fetchone()[0]
            for ckey in contexts:
                text = orjson.dumps(ckey).decode()
                slot = None if ckey[1] is None else str(ckey[1])
                station, _slot, serial, operation, attempt, phase, golden = ckey
                cur.execute(
                    self._sql["ctx_add"],
                    (text, station, slot, serial, operation, attempt, phase, golden),
                )
                cur.execute(self._sql["ctx_id"], (text,))
                self._contexts[ckey] = cur.fetchone()[0]
            self._commit(conn, cur)
        except BaseException:
            self._rollback(conn)
            # Ids cached before the failure may belong to rows that were rolled back.
            self._streams.clear()
            self._series.clear()
            self._contexts.clear()
            raise

    def _ts_value(self, text: str) -> Any:
        """A poll's time as the readings.ts column takes it: microseconds on SQLite, the
        RFC 3339 text itself for PostgreSQL's COPY."""
        if not self.sqlite:
            return text
        memo = self._ts_memo
        value = memo.get(text)
        if value is None:
            if len(memo) > 10_000:
                memo.clear()
            value = memo[text] = to_micros(datetime.fromisoformat(text))
        return value

    def _reading_rows(
        self,
        messages: list[ReadingsMessage],
        ranges: dict[int, list[tuple[int, int]]],
        spans: dict[tuple[int, int], tuple[int, int]],
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The rows of the batch's readings: ``simple`` (a number or boolean, no error: most
        readings, 7 columns) and ``full``; plus each stream's seq ranges and each context's
        seq span per stream."""
        simple: list[tuple[Any, ...]] = []
        full: list[tuple[Any, ...]] = []
        add_simple, add_full = simple.append, full.append
        series, contexts, quality_codes = self._series, self._contexts, QUALITY_CODES
        for msg in messages:
            collector = msg.collector
            stream = self._streams[(collector, msg.outbox, READINGS)]
            stream_ranges = ranges[stream]
            for p in msg.polls:
                ts = self._ts_value(p.ts)
                ctx = contexts[_ctx_key(p)]
                tags = series[(collector, p.device)]
                seq = first = p.seq
                value: Any
                text: Any
                for tag, value, quality, error, _unit in p.values:
                    sid = tags[tag]
                    kind = type(value)
                    if kind is float or (kind is int and -_FLOAT_INT <= value <= _FLOAT_INT):
                        flags = (KIND_FLOAT if kind is float else KIND_INT) * 4
                        num: Any = value
                        text = None
                    elif value is None:
                        flags, num, text = KIND_NULL * 4, None, None
                    elif kind is bool:
                        flags, num, text = KIND_BOOL * 4, 1.0 if value else 0.0, None
                    elif kind is int:
                        flags, num, text = KIND_INT * 4, None, str(value)
                    else:
                        flags, num, text = KIND_TEXT * 4, None, value
                    flags += quality_codes[quality]
                    if text is None and error is None:
                        add_simple((stream, seq, ts, sid, ctx, flags, num))
                    else:
                        add_full((stream, seq, ts, sid, ctx, flags, num, text, error))
                    seq += 1
                if seq > first:
                    stream_ranges.append((first, seq - 1))
                    span = spans.get((ctx, stream))
                    spans[(ctx, stream)] = (
                        (first, seq - 1)
                        if span is None
                        else (min(span[0], first), max(span[1], seq - 1))
                    )
        return simple, full

    def _insert_readings(
        self, cur: Any, simple: list[tuple[Any, ...]], full: list[tuple[Any, ...]]
    ) -> int:
        """Insert-or-ignore the rows; the number actually inserted (not duplicates)."""
        inserted = 0
        if self.sqlite:
            for sql, rows in (("readings_simple", simple), ("readings", full)):
                if rows:
                    cur.executemany(self._sql[sql], rows)
                    inserted += cur.rowcount
            return inserted
        if not (simple or full):
            return 0
        # Optimistic: most batches hold no reading the table has (a redelivery is the
        # exception), and COPY straight into readings is the cheapest insert PostgreSQL has.
        # A duplicate key aborts it; then the batch goes through the temporary table and
        # INSERT ... ON CONFLICT DO NOTHING.
        cur.execute("SAVEPOINT direct")
        try:
            self._copy(cur, "readings", simple, full)
        except self.engine.dialect.dbapi.IntegrityError:  # type: ignore[union-attr]
            cur.execute("ROLLBACK TO SAVEPOINT direct")
        else:
            cur.execute("RELEASE SAVEPOINT direct")
            return len(simple) + len(full)
        self._copy(cur, "readings_in", simple, full)
        cur.execute(_COPY_INSERT)
        # readings_in empties itself at the commit (ON COMMIT DELETE ROWS).
        return int(cur.rowcount)

    @staticmethod
    def _copy(
        cur: Any, table: str, simple: list[tuple[Any, ...]], full: list[tuple[Any, ...]]
    ) -> None:
        with cur.copy(f"COPY {table} ({_READING_COLUMNS}) FROM STDIN") as copy:
            for row in simple:
                copy.write_row((*row, None, None))
            for row in full:
                copy.write_row(row)

    def _unit_rows(
        self, unit_lists: list[list[FlatUnit]], ranges: dict[int, list[tuple[int, int]]]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        unit_rows: list[tuple[Any, ...]] = []
        char_rows: list[tuple[Any, ...]] = []
        for units in unit_lists:
            for u in units:
                ranges[self._streams[(u.collector, u.outbox, UNITS)]].append((u.seq, u.seq))
                end = self._time(datetime.fromisoformat(u.end))
                slot = None if u.slot is None else str(u.slot)
                code = None if u.failure_code is None else str(u.failure_code)
                unit_rows.append(
                    (u.collector, u.outbox, u.seq, u.serial, u.station, slot, u.operation,
                     u.attempt, self._time(datetime.fromisoformat(u.start)), end,
                     u.cycle_time_s, u.takt_s, u.verdict, code, u.ended_by, u.readings,
                     u.golden, u.work_order)
                )  # fmt: skip
                for name, c in u.characteristics.items():
                    char_rows.append(
                        (u.collector, u.outbox, u.seq, u.serial, u.operation, name, c["last"],
                         c["min"], c["max"], c["lsl"], c["usl"], c["target"], c["critical"],
                         c["in_spec"], end)
                    )  # fmt: skip
        return unit_rows, char_rows

    def _insert_units(
        self, cur: Any, unit_rows: list[tuple[Any, ...]], char_rows: list[tuple[Any, ...]]
    ) -> tuple[int, int]:
        inserted = 0
        for row in unit_rows:  # few: one at a time gives the inserted count on both drivers
            cur.execute(self._sql["units"], row)
            inserted += max(cur.rowcount, 0)
        if char_rows:
            cur.executemany(self._sql["chars"], char_rows)
        return len(unit_rows), inserted

    def _audit(self, cur: Any, ranges: dict[int, list[tuple[int, int]]], now: datetime) -> None:
        """Merge each stream's received seqs into its gap state (rows locked on PostgreSQL,
        in id order so two store processes cannot deadlock)."""
        for stream in sorted(ranges):
            received = ranges[stream]
            cur.execute(self._sql["stream_get"], (stream,))
            low, high = cur.fetchone()
            holes: tuple[Hole, ...] = ()
            if low is not None:
                cur.execute(self._sql["gaps_get"], (stream,))
                holes = tuple(Hole(a, b, self._read_time(t)) for a, b, t in cur.fetchall())
            before = StreamState(low, high, holes)
            after = merge(before, received, now)
            count = sum(b - a + 1 for a, b in received)
            cur.execute(
                self._sql["stream_set"], (after.low, after.high, count, self._time(now), stream)
            )
            if after.holes != before.holes:
                cur.execute(self._sql["gaps_del"], (stream,))
            if after.holes != before.holes and after.holes:
                cur.executemany(
                    self._sql["gaps_add"],
                    [(stream, h.first, h.last, self._time(h.opened_at)) for h in after.holes],
                )


def _bad_topic(topic: str) -> ContractError:
    return ContractError("", f"not a readings or units topic: {topic}", "topic")


def _marks(n: int) -> str:
    return ", ".join(["?"] * n)
