"""Conversions of buffers written by older versions, run at start-up inside the transaction
that opens the file (:class:`collector.buffer.store.Outbox`): all or nothing, nothing lost."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from collector.buffer.schema import BODY_SCHEMA_KEY, QUARANTINED_KEY
from contract.decode import ContractError, decode_polls
from contract.encode import SCHEMA_VERSION, build_message

log = logging.getLogger(__package__)


def migrate(conn: Connection) -> None:
    """Every conversion, oldest format first."""
    _migrate_reading_rows(conn)
    _migrate_bodies_to_polls(conn)


def _migrate_bodies_to_polls(conn: Connection) -> None:
    """Rewrite stored bodies of schema 1 (one object per reading) as the poll objects of
    schema 2, in the caller's transaction: same readings, same seqs. The engineering unit each
    reading carried moves to the tag metadata (docs/messages.md), which a buffer does not
    hold: converted polls refer to no ``meta``. A new file is marked as schema 2 at once."""
    row = conn.exec_driver_sql("SELECT value FROM meta WHERE key = ?", (BODY_SCHEMA_KEY,)).first()
    if row is not None and row[0] >= SCHEMA_VERSION:
        return
    converted = 0
    for table, key in (("batches", "last_seq"), ("quarantine", "seq")):
        rows = conn.exec_driver_sql(f"SELECT {key}, body FROM {table}").all()  # noqa: S608
        for rowid, body in rows:
            try:
                polls = polls_from_schema_1(bytes(body))
            except ContractError as exc:
                if table == "batches":
                    _set_aside(conn, rowid, f"not convertible to schema 2: {exc}")
                continue  # a quarantined body stays as it was: kept for inspection
            conn.exec_driver_sql(
                f"UPDATE {table} SET body = ? WHERE {key} = ?",  # noqa: S608 - constants
                (polls, rowid),
            )
        converted += len(rows)
    if row is None:
        conn.exec_driver_sql(
            # OR IGNORE: another process (`buffer stats`, a test) may be creating the same new
            # file at the same moment, and its insert may come first.
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
            (BODY_SCHEMA_KEY, SCHEMA_VERSION),
        )
    else:
        conn.exec_driver_sql(
            "UPDATE meta SET value = ? WHERE key = ?", (SCHEMA_VERSION, BODY_SCHEMA_KEY)
        )
    if converted:
        log.warning("buffer: converted %d stored batch(es) to message schema 2", converted)


def _set_aside(conn: Connection, last_seq: int, reason: str) -> None:
    """A batch that cannot be converted goes to the quarantine (kept, counted), never lost."""
    log.error("buffer: batch ending at seq %d %s: moved to quarantine", last_seq, reason)
    count = conn.exec_driver_sql(
        "SELECT last_seq - first_seq + 1 FROM batches WHERE last_seq = ?", (last_seq,)
    ).scalar_one()
    conn.exec_driver_sql(
        "INSERT INTO quarantine (seq, ts, body, reason, moved_ts) "
        "SELECT last_seq, ts, body, ?, ? FROM batches WHERE last_seq = ?",
        (reason, time.time(), last_seq),
    )
    conn.exec_driver_sql("DELETE FROM batches WHERE last_seq = ?", (last_seq,))
    if not conn.exec_driver_sql(
        "UPDATE meta SET value = value + ? WHERE key = ?", (count, QUARANTINED_KEY)
    ).rowcount:
        conn.exec_driver_sql("INSERT INTO meta VALUES (?, ?)", (QUARANTINED_KEY, count))


def polls_from_schema_1(body: bytes) -> bytes:
    """Schema-1 reading objects (comma-separated, with seq) as schema-2 poll objects, read
    with the reference decoder (contract.decode)."""
    out = []
    for poll in decode_polls(build_message("buffer", body)).polls:
        obj: dict[str, Any] = {"seq": poll.seq, "ts": poll.ts, "device": poll.device}
        for name in ("station", "unit_serial", "operation", "attempt"):
            value = getattr(poll, name)
            if value is not None:
                obj[name] = value
        obj["values"] = {
            tag: value
            if quality == "good"
            else {"value": value, "quality": quality, "error": error}
            for tag, value, quality, error, _unit in poll.values
        }
        out.append(orjson.dumps(obj))
    return b",".join(out)


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
