"""What a buffer is on disk: the tables, the batch a row holds, and the seq hint beside the file.

Shared by every other part of the package; knows nothing of how rows are written or read.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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
# Unit records (see collector.context.tagging): a stream of their own, with their own seq, delivered
# like readings. Few (one per unit per operation), so not counted against max_readings.
units_table = sa.Table(
    "units",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
# Deviations recorded on the line PC (POST /deviations, contract.deviations): a third stream,
# with its own seq, delivered like unit records on ``.../deviations``. Rare (people write them),
# so each is committed alone and fsynced (Outbox.add_deviation).
deviations_table = sa.Table(
    "deviations",
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
# Every tag-metadata version readings were encoded with (contract.encode.DeviceMeta.body:
# the canonical {"order", "tags"}): a positional poll can only be read with its version, so the
# forwarder republishes the versions still needed on every connect. Inserted (or ignored) in
# the commit that stores the first readings of a version; versions no longer current are
# deleted once no pending reading can refer to them (collector.buffer.store).
metas_table = sa.Table(
    "metas",
    metadata,
    sa.Column("device", sa.String, primary_key=True),
    sa.Column("meta", sa.String, primary_key=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
)
# Every unit-context version readings were encoded with (contract.encode.ContextVersion: a poll
# names it by ``ctx``), for the forwarder to publish before the readings that name it: those
# that changed (``changed_seq``: the seq of the first value read under it since it last became
# its station's context) after the last ones it published, and all of them on every connect.
# ``last_seq``: the last seq of a poll that named it; deleted once every batch up to it is
# gone, unless it is its station's latest (the one a consumer that joins later gets retained).
contexts_table = sa.Table(
    "contexts",
    metadata,
    sa.Column("ctx", sa.String, primary_key=True),
    sa.Column("station", sa.String, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("changed_seq", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
)
meta_table = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)

# Seq ranges this outbox skipped: a reservation jump after a power cut (buffer.synchronous
# normal/off: the hint reserved seqs the lost commits may or may not have used) or a reset
# buffer. Never assigned to a reading this file holds; announced to the store at every
# connect (``{base}/gaps``, docs/guarantees.md) so its gap report calls them never assigned,
# not missing. ``stream``: readings or units.
jumps_table = sa.Table(
    "jumps",
    metadata,
    sa.Column("stream", sa.String, nullable=False),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Column("noted_ts", sa.Float, nullable=False),
    sa.PrimaryKeyConstraint("stream", "first_seq"),
)
#: Jumps kept (and announced) per stream, newest first.
MAX_JUMPS = 100

INSERT_BATCHES = "INSERT INTO batches (last_seq, first_seq, ts, body) VALUES (?, ?, ?, ?)"
DROPPED_KEY = "dropped_total"
#: The outbox id (docs/messages.md): random, made when the file is created, stored as a signed
#: 64-bit integer, published as 16 hex digits.
OUTBOX_KEY = "outbox_id"
#: The format of the stored bodies: the message schema they are encoded in.
BODY_SCHEMA_KEY = "body_schema"
QUARANTINED_KEY = "quarantined_total"
# How many readings a batch holds, in SQL.
COUNT_SQL = "last_seq - first_seq + 1"


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings ``first_seq..last_seq`` (consecutive), the oldest one read at ``ts``, as
    comma-separated JSON objects (contract.encode)."""

    first_seq: int
    last_seq: int
    ts: float
    body: bytes

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


#: A context version to keep (collector.buffer.writer): ctx, station key, body, the seq it
#: (last) became its station's context at, the last seq of a poll that named it.
ContextRow = tuple[str, str, bytes, int, int]


@dataclass(frozen=True, slots=True)
class MetaUpdate:
    """Tag-metadata versions to keep (``rows``: device, meta, body; inserted or ignored) and
    the versions current from this commit on (``current``: device, meta)."""

    rows: tuple[tuple[str, str, bytes], ...]
    current: frozenset[tuple[str, str]]


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
    deviations_depth: int = 0


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


def epoch(text: str) -> float:
    """Epoch seconds of a reading's ``ts`` text."""
    return datetime.fromisoformat(text).timestamp()


HINT_INTERVAL_S = 1.0
# Seqs reserved ahead in the hint when commits are not fsynced (one fsync per this many).
HINT_RESERVE = 100_000
HINT_RESERVE_UNITS = 1_000


class SeqHint:
    """``<buffer>.seq``: the highest seq handed out in each stream (``<readings> <units>``),
    read at every open so that a seq is never handed out twice, whatever the file lost
    (collector.buffer.store, collector.buffer.recovery).

    With ``buffer.synchronous: full`` the file never loses a commit, and the hint only has to
    survive a process crash for a corrupt file's successor: rewritten at most once a second, no
    fsync (after a power cut SEQ_JUMP_AFTER_RESET covers what it missed). With ``normal`` or
    ``off`` a power cut can lose commits whose readings were published: the hint then holds a
    reservation ahead of the seqs in use, fsynced before a seq beyond it is committed, and the
    exact values on a clean close.
    """

    def __init__(self, buffer: Path) -> None:
        self.path = Path(f"{buffer}.seq")
        self._written = 0.0

    def write(self, readings: int, units: int, force: bool = True, sync: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < HINT_INTERVAL_S:
            return
        self._written = now
        with contextlib.suppress(OSError), self.path.open("w") as file:
            file.write(f"{readings} {units}\n")
            if sync:
                file.flush()
                os.fsync(file.fileno())

    def read(self) -> tuple[int, int]:
        """(readings, units); (0, 0) when there is none. An older one-number hint counts for
        both streams."""
        try:
            numbers = [int(n) for n in self.path.read_text().split()]
        except (OSError, ValueError):
            return 0, 0
        if len(numbers) == 1:
            return numbers[0], numbers[0]
        if len(numbers) == 2:
            return numbers[0], numbers[1]
        return 0, 0
