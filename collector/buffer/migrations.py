"""Conversions of buffers written by older versions, run at start-up inside the transaction
that opens the file (:class:`collector.buffer.store.Outbox`): all or nothing, nothing lost."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

log = logging.getLogger(__package__)


def migrate(conn: Connection) -> None:
    """Every conversion, oldest format first."""
    _migrate_reading_rows(conn)


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
