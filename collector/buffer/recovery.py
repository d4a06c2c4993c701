"""Recovery at start-up: a buffer file that is not a database, or whose pages are malformed, is
moved aside and a fresh one started (never a stop), its ``seq`` continuing above the highest
one ever handed out: read from the old file if it still can be, else from ``<path>.seq`` (the
hint, collector.buffer.schema.SeqHint), plus :data:`SEQ_JUMP_AFTER_RESET` for what the hint
may have missed. A seq is never reused: consumers that dedupe on it would drop new readings.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from collector.buffer.schema import BufferReset, SeqHint
from collector.buffer.store import Outbox
from collector.config import Synchronous

log = logging.getLogger(__package__)

SEQ_JUMP_AFTER_RESET = 1_000_000


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
    floor = max(_salvage_last_seq(path), *SeqHint(path).read()) + SEQ_JUMP_AFTER_RESET
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
    hinted = SeqHint(path).read()
    known = max(_salvage_last_seq(path.with_name(moved.name)), *hinted)
    outbox = Outbox(path, max_readings, synchronous, seq_floor=floor)
    outbox.reset = BufferReset(moved, error, floor + 1)
    # The jump past what may have been handed out: never assigned (the old file's own seqs
    # are not: they are in the file moved aside, undelivered).
    outbox.note_jump("readings", known + 1, floor)
    outbox.note_jump("units", hinted[1] + 1, floor)
    return outbox


def _salvage_last_seq(path: Path) -> int:
    """The highest seq recorded in a corrupt file, if that part of it can still be read."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT max(seq) FROM sqlite_sequence").fetchone()
            return int(row[0]) if row and row[0] is not None else 0
    except (sqlite3.Error, ValueError, TypeError):
        return 0
