"""The writer's SQL (store.ingest): every statement, for SQLite or PostgreSQL, and the
statements that run per batch: the readings (SQLite: ``executemany``; PostgreSQL: ``COPY``),
the unit records, and the gap audit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from store.decode import CTX_KEY_FIELDS
from store.gaps import Hole, StreamState, merge
from store.rows import BINARY_HEADER, BINARY_TRAILER, BatchRows, copy_binary
from store.schema import KIND_FLOAT, KIND_INT

#: Runs of plain numbers formatted and sent to PostgreSQL's COPY at a time (about 25 kB).
_RUNS_A_WRITE = 10
#: Parked messages released per transaction when their meta version arrives.
UNPARK_CHUNK = 100

_READING_COLUMNS = "stream, seq, ts, series, context, flags, num, text, error"
_COPY_INSERT = (
    f"INSERT INTO readings ({_READING_COLUMNS}) SELECT {_READING_COLUMNS} "  # noqa: S608 - constants
    "FROM readings_in ON CONFLICT DO NOTHING"
)
_STREAM_GET = "SELECT low_seq, high_seq FROM streams WHERE id = ?"
_SIMPLE_COLUMNS = "stream, seq, ts, series, context, flags, num"
_UNIT_COLUMNS = (
    "collector, outbox, seq, serial, station, slot, operation, attempt, start_ts, end_ts, "
    "cycle_time_s, takt_s, verdict, failure_code, ended_by, readings, golden, work_order, "
    "resources"
)
_CHAR_COLUMNS = (
    "collector, outbox, unit_seq, serial, operation, name, last, min, max, lsl, usl, target, "
    "critical, in_spec, end_ts"
)


_PARKED_ROWS = (
    "SELECT p.quarantine_id, p.collector, p.device, p.meta, q.payload_bytes, q.received_at "
    "FROM parked p JOIN quarantine q ON q.id = p.quarantine_id"
)


def statements(sqlite: bool) -> dict[str, str]:
    """Every statement of the writer, with the driver's parameter style."""
    ignore = "INSERT OR IGNORE INTO" if sqlite else "INSERT INTO"
    tail = "" if sqlite else " ON CONFLICT DO NOTHING"
    sql = {
        "units": f"{ignore} units ({_UNIT_COLUMNS}) VALUES ({_marks(19)}){tail}",
        "chars": f"{ignore} characteristics ({_CHAR_COLUMNS}) VALUES ({_marks(15)}){tail}",
        "readings": f"{ignore} readings ({_READING_COLUMNS}) VALUES ({_marks(9)}){tail}",
        "readings_simple": f"{ignore} readings ({_SIMPLE_COLUMNS}) VALUES ({_marks(7)}){tail}",
        # SQLite only: a run of plain numbers expanded by SQLite's json_each (one statement
        # per poll instead of a bound statement per reading: half the cost a reading).
        "readings_runs": f"{ignore} readings ({_SIMPLE_COLUMNS}) "  # noqa: S608 - constants
        "SELECT ?1, ?2 + key, ?3, ?4 + key, ?5, "
        f"CASE type WHEN 'integer' THEN {KIND_INT * 4} ELSE {KIND_FLOAT * 4} END, value "
        "FROM json_each(?6)",
        "span": "INSERT INTO context_spans (context, stream, first_seq, last_seq) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (context, stream) DO UPDATE SET "
        + (
            "first_seq = min(first_seq, excluded.first_seq), "
            "last_seq = max(last_seq, excluded.last_seq)"
            if sqlite
            else "first_seq = LEAST(context_spans.first_seq, excluded.first_seq), "
            "last_seq = GREATEST(context_spans.last_seq, excluded.last_seq)"
        ),
        "stream_add": f"{ignore} streams (collector, outbox, kind, received) "
        f"VALUES (?, ?, ?, 0){tail}",
        "stream_id": "SELECT id FROM streams WHERE collector = ? AND outbox = ? AND kind = ?",
        "series_add": f"{ignore} series (collector, device, tag, unit) VALUES (?, ?, ?, ?){tail}",
        "series_id": "SELECT id FROM series WHERE collector = ? AND device = ? AND tag = ?",
        "series_unit": "UPDATE series SET unit = ? WHERE collector = ? AND device = ? AND tag = ?",
        "ctx_add": f"{ignore} contexts (key, {', '.join(CTX_KEY_FIELDS)}) "
        f"VALUES ({', '.join('?' * (1 + len(CTX_KEY_FIELDS)))}){tail}",
        "ctx_id": "SELECT id FROM contexts WHERE key = ?",
        "quarantine": "INSERT INTO quarantine (received_at, topic, kind, reason, payload, "
        "payload_bytes) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        "stream_get": _STREAM_GET if sqlite else _STREAM_GET + " FOR UPDATE",
        "gaps_get": "SELECT first_seq, last_seq, opened_at FROM gaps WHERE stream = ? "
        "ORDER BY first_seq",
        "stream_set": "UPDATE streams SET low_seq = ?, high_seq = ?, received = received + ?, "
        "last_at = ? WHERE id = ?",
        "gaps_del": "DELETE FROM gaps WHERE stream = ?",
        "gaps_add": "INSERT INTO gaps (stream, first_seq, last_seq, opened_at) VALUES (?, ?, ?, ?)",
        "meta_add": f"{ignore} metas (collector, device, meta, tag_order, tags, received_at) "
        f"VALUES (?, ?, ?, ?, ?, ?){tail}",
        "meta_get": "SELECT tag_order, tags FROM metas "
        "WHERE collector = ? AND device = ? AND meta = ?",
        # The versions of an id (schema 3: one, its id covers the device).
        "meta_devices": "SELECT device, tag_order, tags FROM metas "
        "WHERE collector = ? AND meta = ?",
        "park": "INSERT INTO parked (quarantine_id, collector, device, meta) VALUES (?, ?, ?, ?)",
        "parked_get": "SELECT q.id, q.topic, q.payload FROM parked p "  # noqa: S608 - constants
        "JOIN quarantine q ON q.id = p.quarantine_id "
        "WHERE p.collector = ? AND p.device = ? AND p.meta = ? ORDER BY q.id "
        f"LIMIT {UNPARK_CHUNK}",
        "parked_ready": "SELECT DISTINCT p.collector, p.device, p.meta FROM parked p "
        "JOIN metas m ON m.collector = p.collector AND m.device = p.device "
        "AND m.meta = p.meta UNION SELECT DISTINCT p.collector, p.device, p.meta FROM parked p "
        "JOIN context_versions c ON p.device = '' AND c.collector = p.collector "
        "AND c.ctx = p.meta UNION SELECT DISTINCT p.collector, p.device, p.meta FROM parked p "
        "JOIN metas m ON p.device = '/' AND m.collector = p.collector AND m.meta = p.meta",
        # Unit-context versions (schema 3); parked messages waiting for one have device ''.
        # Messages whose polls name their device by a version not received have device '/'
        # (store.metabook.BY_META).
        "ctxv_add": f"{ignore} context_versions (collector, ctx, members, received_at) "
        f"VALUES (?, ?, ?, ?){tail}",
        "ctxv_get": "SELECT members FROM context_versions WHERE collector = ? AND ctx = ?",
        # The parking bounds (store.parking): the totals, then the oldest rows past a bound.
        "parked_totals": "SELECT count(*), coalesce(sum(q.payload_bytes), 0), "
        "min(q.received_at) FROM parked p JOIN quarantine q ON q.id = p.quarantine_id",
        "parked_oldest": f"{_PARKED_ROWS} WHERE p.quarantine_id > ? "
        "ORDER BY p.quarantine_id LIMIT ?",
        "parked_giants": f"{_PARKED_ROWS} WHERE q.payload_bytes > ?",
        "park_drop": "UPDATE quarantine SET kind = 'parked_dropped', reason = ? WHERE id = ?",
        "release_q": "DELETE FROM quarantine WHERE id = ?",
        "release_p": "DELETE FROM parked WHERE quarantine_id = ?",
        "replay_get": "SELECT seq, ts, num, text FROM readings WHERE stream = ? "
        "AND seq BETWEEN ? AND ?",
        "unit_get": f"SELECT {_UNIT_COLUMNS} FROM units "  # noqa: S608 - constants
        "WHERE collector = ? AND outbox = ? AND seq = ?",
        "replay_del": "DELETE FROM readings WHERE stream = ? AND seq = ? AND ts = ?",
        "refused": "UPDATE quarantine SET kind = 'database', reason = ? WHERE id = ?",
        # A collector's word about seqs it will never send (store.announce): the widest
        # range said for a (stream, first seq, kind) is kept.
        "note_add": "INSERT INTO seq_notes (stream, first_seq, last_seq, kind, noted_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream, first_seq, kind) DO UPDATE SET "
        + (
            "last_seq = max(last_seq, excluded.last_seq)"
            if sqlite
            else "last_seq = GREATEST(seq_notes.last_seq, excluded.last_seq)"
        ),
    }
    if not sqlite:
        sql = {k: v.replace("?", "%s") for k, v in sql.items()}
    return sql


def db_time(sqlite: bool, value: datetime) -> Any:
    """A UtcDateTime column value as the driver takes it (see store.schema)."""
    if sqlite:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def read_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def insert_readings(
    cur: Any, sql: dict[str, str], sqlite: bool, rows: BatchRows, duplicate: type[Exception]
) -> int:
    """Insert-or-ignore the batch's readings; the number actually inserted (not duplicates).
    ``duplicate``: the driver's IntegrityError."""
    simple, full = rows.simple, rows.full
    inserted = 0
    if sqlite:
        for name, some in (("readings_runs", rows.runs), ("readings_simple", simple),
                           ("readings", full)):  # fmt: skip
            if some:
                cur.executemany(sql[name], some)
                inserted += cur.rowcount
        return inserted
    if not rows.count:
        return 0
    # Optimistic: most batches hold no reading the table has (a redelivery is the
    # exception), and COPY straight into readings is the cheapest insert PostgreSQL has.
    # A duplicate key aborts it; then the batch goes through the temporary table and
    # INSERT ... ON CONFLICT DO NOTHING.
    cur.execute("SAVEPOINT direct")
    try:
        _copy(cur, "readings", rows)
    except duplicate:
        cur.execute("ROLLBACK TO SAVEPOINT direct")
    else:
        cur.execute("RELEASE SAVEPOINT direct")
        return rows.count
    _copy(cur, "readings_in", rows)
    cur.execute(_COPY_INSERT)
    # readings_in empties itself at the commit (ON COMMIT DELETE ROWS).
    return int(cur.rowcount)


def _copy(cur: Any, table: str, rows: BatchRows) -> None:
    """Runs of plain numbers through a binary COPY, the other rows through a text COPY
    (psycopg formats those: strings, errors, booleans; few)."""
    runs = rows.copy_runs or ()
    if runs:
        with cur.copy(f"COPY {table} ({_READING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(BINARY_HEADER)
            for i in range(0, len(runs), _RUNS_A_WRITE):
                copy.write(b"".join([copy_binary(*run) for run in runs[i : i + _RUNS_A_WRITE]]))
            copy.write(BINARY_TRAILER)
    if rows.simple or rows.full:
        with cur.copy(f"COPY {table} ({_READING_COLUMNS}) FROM STDIN") as copy:
            for row in rows.simple:
                copy.write_row((*row, None, None))
            for row in rows.full:
                copy.write_row(row)


def insert_units(
    cur: Any,
    sql: dict[str, str],
    unit_rows: list[tuple[Any, ...]],
    char_rows: list[tuple[Any, ...]],
) -> tuple[int, int]:
    inserted = 0
    for row in unit_rows:  # few: one at a time gives the inserted count on both drivers
        cur.execute(sql["units"], row)
        inserted += max(cur.rowcount, 0)
    if char_rows:
        cur.executemany(sql["chars"], char_rows)
    return len(unit_rows), inserted


def audit(
    cur: Any,
    sql: dict[str, str],
    sqlite: bool,
    ranges: dict[int, list[tuple[int, int]]],
    now: datetime,
    *,
    replayed: dict[int, list[tuple[int, int]]] | None = None,
) -> dict[int, StreamState]:
    """Merge each stream's received seqs into its gap state (rows locked on PostgreSQL,
    in id order so two store processes cannot deadlock); each stream's state after.
    ``replayed`` is filled with the received seqs the stream already had (a redelivery, or
    a conflicting replay: store.ingest looks at those only)."""
    states: dict[int, StreamState] = {}
    for stream in sorted(ranges):
        received = ranges[stream]
        cur.execute(sql["stream_get"], (stream,))
        low, high = cur.fetchone()
        holes: tuple[Hole, ...] = ()
        if low is not None:
            cur.execute(sql["gaps_get"], (stream,))
            holes = tuple(Hole(a, b, read_time(t)) for a, b, t in cur.fetchall())
        before = StreamState(low, high, holes)
        after = merge(before, received, now)
        if replayed is not None and low is not None and high is not None:
            had = _covered(before)
            again = [
                (max(a, c), min(b, d)) for a, b in received for c, d in had if c <= b and a <= d
            ]
            if again:
                replayed[stream] = again
        count = sum(b - a + 1 for a, b in received)
        cur.execute(sql["stream_set"], (after.low, after.high, count, db_time(sqlite, now), stream))
        if after.holes != before.holes:
            cur.execute(sql["gaps_del"], (stream,))
        if after.holes != before.holes and after.holes:
            cur.executemany(
                sql["gaps_add"],
                [(stream, h.first, h.last, db_time(sqlite, h.opened_at)) for h in after.holes],
            )
        states[stream] = after
    return states


def _covered(state: StreamState) -> list[tuple[int, int]]:
    """[low, high] minus the holes: the seqs a stream has."""
    assert state.low is not None
    assert state.high is not None
    out, start = [], state.low
    for hole in state.holes:
        if hole.first > start:
            out.append((start, hole.first - 1))
        start = hole.last + 1
    if start <= state.high:
        out.append((start, state.high))
    return out


def _marks(n: int) -> str:
    return ", ".join(["?"] * n)
