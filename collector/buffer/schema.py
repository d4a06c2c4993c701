"""What a buffer is on disk: the tables, the batch a row holds, and the seq hint beside the file.

Shared by every other part of the package; knows nothing of how rows are written or read.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

metadata = sa.MetaData()
# One row per poll (or part of one): readings first_seq..last_seq, oldest ts, their JSON.
batches_table = sa.Table(
    "batches",
    metadata,
    sa.Column("last_seq", sa.Integer, primary_key=True),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
# Readings the broker can never accept (e.g. larger than its packet limit), moved aside so they
# do not block the rows behind them; kept for inspection, counted, never silently deleted.
# ``seq`` is the last seq of the moved batch (one reading, as batches are split first); the
# body holds the reading objects with their seq.
quarantine_table = sa.Table(
    "quarantine",
    metadata,
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
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
# The station context's state, stored in the same transaction as the readings it tagged: each
# station's open and ending units, and how often each serial went through each operation.
stations_table = sa.Table(
    "stations",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("state", sa.LargeBinary, nullable=False),
)
attempts_table = sa.Table(
    "attempts",
    metadata,
    sa.Column("operation", sa.String, primary_key=True),
    sa.Column("serial", sa.String, primary_key=True),
    sa.Column("attempts", sa.Integer, nullable=False),
)
meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)

INSERT_BATCHES = "INSERT INTO batches (last_seq, first_seq, ts, body) VALUES (?, ?, ?, ?)"
DROPPED_KEY = "dropped_total"
QUARANTINED_KEY = "quarantined_total"
# How many readings a batch holds, in SQL.
COUNT_SQL = "last_seq - first_seq + 1"


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings ``first_seq..last_seq`` (consecutive), the oldest one read at ``ts``, as
    comma-separated JSON objects (collector.message)."""

    first_seq: int
    last_seq: int
    ts: float
    body: bytes

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


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
    """A corrupt buffer file was moved aside at start-up (collector.buffer.recovery)."""

    moved_to: Path
    error: str
    first_seq: int


def age_seconds(ts: float | None, now: float | None = None) -> float | None:
    """Seconds since ``ts`` (None: nothing buffered)."""
    if ts is None:
        return None
    return max(0.0, (time.time() if now is None else now) - ts)


def decode_body(body: bytes) -> list[dict[str, Any]]:
    """The reading objects of a stored body, decoded (the rare paths: split, export)."""
    items: list[dict[str, Any]] = orjson.loads(b"[" + body + b"]")
    return items


def epoch(text: str) -> float:
    """Epoch seconds of a reading's ``ts`` text."""
    return datetime.fromisoformat(text).timestamp()


HINT_INTERVAL_S = 1.0


class SeqHint:
    """``<buffer>.seq``: the highest seq handed out, for a fresh buffer to continue above when
    the file itself is corrupt (collector.buffer.recovery).

    No fsync: the hint only has to survive a process crash (the page cache does); after a
    power cut SEQ_JUMP_AFTER_RESET covers what it missed. One number covers both streams:
    after a reset, both continue above it. Rewritten at most once a second while appending:
    far fewer seqs than SEQ_JUMP_AFTER_RESET are handed out in a second.
    """

    def __init__(self, buffer: Path) -> None:
        self.path = Path(f"{buffer}.seq")
        self._written = 0.0

    def write(self, seq: int, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._written < HINT_INTERVAL_S:
            return
        self._written = now
        with contextlib.suppress(OSError):
            self.path.write_text(f"{seq}\n")

    def read(self) -> int:
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0
