"""A bounded quarantine, and its log: at most a line per collector and kind a minute.

Every message that breaks the contract is kept in the ``quarantine`` table (store.ingest) so
that an operator can see what came and why. Left alone, a flood (a broken or hostile
publisher: forged metadata, or readings naming unknown metadata versions, dropped from
parking into quarantine) grows the table without end. So the quarantine is bounded by rows,
payload bytes and age (``ingest.quarantine_max_rows``, ``quarantine_max_total_bytes``,
``quarantine_max_age_days`` in store.yaml); past a bound the **oldest** rows are pruned,
counted per kind, and shown on /health (a warning naming how many and since when) and
/metrics. Parked messages (kind ``unknown_meta``) are not counted here: store.parking bounds
them, and what it drops comes here.

The bounds are enforced cheaply: :class:`QuarantineBook` keeps a running figure of what the
writer adds (committed transactions only), and reads the table's totals (one aggregate) only
when that figure goes over a bound, once a minute (the age bound, and what other store
processes added), or after a restart. Past a bound it prunes down to 95 % of it, so a flood
costs one aggregate and one range delete per twentieth of the bound, not per message.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from store.episodes import Due, Episodes
from store.parking import Dropped
from store.schema import quarantine
from store.sql import read_time

log = logging.getLogger("store.ingest")

#: The kinds of a parked message's quarantine row, waiting for its tag metadata or its unit
#: context (store.parking bounds those; pruning one would lose the message it holds).
PARKED_KINDS = ("unknown_meta", "unknown_context")
#: Rows pruned per look at most (one transaction's work); the rest at the next look.
PRUNES_A_LOOK = 10_000
#: Past a bound, rows are pruned down to this share of it (a look per twentieth of the bound).
LOW_WATER = 0.95

_SETTLED = "kind NOT IN (" + ", ".join(f"'{kind}'" for kind in PARKED_KINDS) + ")"


@dataclass(frozen=True, slots=True)
class QuarantineLimits:
    max_rows: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_days: float = 90.0

    @property
    def check_interval_s(self) -> float:
        """How often the table's totals are read even when the running figure is within
        bounds (the age bound, and what other store processes added)."""
        return min(60.0, self.max_age_days * 86_400 / 2)


@dataclass(frozen=True, slots=True)
class Kept:
    """A message quarantined (committed), for the log."""

    #: The collector level of its topic: the identity the broker checked.
    collector: str
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one look pruned."""

    #: Rows pruned, by kind.
    kinds: dict[str, int]
    #: Their payload bytes.
    bytes: int
    #: The bound(s) that made it prune.
    why: str


@dataclass(slots=True)
class _Txn:
    """What the open transaction changes: made definite by its commit."""

    #: The table's totals read in it (its own rows included), or None.
    totals: tuple[int, int] | None = None
    rows: int = 0
    bytes: int = 0
    kept: list[Kept] = field(default_factory=list)
    pruned: list[Pruned] = field(default_factory=list)
    looked: float | None = None
    more: bool = False


def _statements(sqlite: bool) -> dict[str, str]:
    sql = {
        "totals": "SELECT count(*), coalesce(sum(length(payload)), 0), min(received_at) "  # noqa: S608 - constants
        f"FROM quarantine WHERE {_SETTLED}",
        "oldest": "SELECT id, length(payload), received_at FROM quarantine "  # noqa: S608 - constants
        f"WHERE {_SETTLED} AND id > ? ORDER BY id LIMIT ?",
        "prune": f"DELETE FROM quarantine WHERE {_SETTLED} AND id <= ? "  # noqa: S608 - constants
        "RETURNING kind, length(payload)",
    }
    return sql if sqlite else {k: v.replace("?", "%s") for k, v in sql.items()}


class QuarantineBook:
    """The writer's side of the bound: a running figure of the quarantine (rows and payload
    bytes, parked messages aside), what each transaction quarantined and pruned, and the
    prune itself. Told of every transaction's end (:meth:`begin`, :meth:`commit`,
    :meth:`rollback`), so only committed rows count and are logged."""

    def __init__(
        self, limits: QuarantineLimits, sqlite: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits
        self._sql = _statements(sqlite)
        self._clock = clock
        #: The committed figure; None: unknown (read at the next look).
        self.rows: int | None = None
        self.bytes = 0
        self._looked = -math.inf
        self._more = False
        self._txn = _Txn()
        self._kept: list[Kept] = []
        self._pruned: list[Pruned] = []

    # --- the transaction ----------------------------------------------------------------

    def begin(self) -> None:
        self._txn = _Txn()

    def added(self, topic: str, kind: str, reason: str, stored_bytes: int) -> None:
        """A row inserted in the open transaction (a parked one is not counted here)."""
        if kind in PARKED_KINDS:
            return
        self._txn.rows += 1
        self._txn.bytes += stored_bytes
        self._txn.kept.append(Kept(collector_of(topic), kind, reason))

    def from_parking(self, dropped: Sequence[Dropped]) -> None:
        """Parked messages dropped into quarantine in the open transaction: rows of it now."""
        self._txn.rows += len(dropped)
        self._txn.bytes += sum(d.bytes for d in dropped)

    def commit(self) -> None:
        txn, self._txn = self._txn, _Txn()
        if txn.totals is not None:
            self.rows, self.bytes = txn.totals
        if self.rows is not None:
            self.rows += txn.rows
            self.bytes += txn.bytes
        if txn.looked is not None:
            self._looked, self._more = txn.looked, txn.more
        self._kept += txn.kept
        self._pruned += txn.pruned

    def rollback(self) -> None:
        self._txn = _Txn()

    def forget(self) -> None:
        """After a database error: the figure is read again at the next look."""
        self._txn = _Txn()
        self.rows = None

    def take(self) -> tuple[list[Kept], list[Pruned]]:
        """What committed transactions quarantined and pruned since the last take."""
        kept, pruned = self._kept, self._pruned
        self._kept, self._pruned = [], []
        return kept, pruned

    # --- the bound ----------------------------------------------------------------------

    def due(self) -> bool:
        """Whether the open transaction should look at the bounds (no database work)."""
        if (
            self.rows is None
            or self._more
            or self._clock() - self._looked >= (self.limits.check_interval_s)
        ):
            return True
        rows, size = self.rows + self._txn.rows, self.bytes + self._txn.bytes
        return rows > self.limits.max_rows or size > self.limits.max_bytes

    def prune(self, cur: Any, now: datetime) -> None:
        """Read the totals and prune the oldest rows past a bound, in the open transaction
        (what it pruned is taken after the commit)."""
        limits, txn = self.limits, self._txn
        txn.looked = self._clock()
        txn.rows = txn.bytes = 0  # the totals read now hold the transaction's own rows
        cur.execute(self._sql["totals"])
        rows, size, oldest = cur.fetchone()
        rows, size = int(rows), int(size)
        txn.totals = (rows, size)
        cutoff = now - timedelta(days=limits.max_age_days)
        too_old = oldest is not None and read_time(oldest) < cutoff
        keep_rows = math.floor(limits.max_rows * LOW_WATER) if rows > limits.max_rows else rows
        keep_bytes = math.floor(limits.max_bytes * LOW_WATER) if size > limits.max_bytes else size
        if not too_old and rows <= keep_rows and size <= keep_bytes:
            return
        why = []
        if too_old:
            why.append(f"older than ingest.quarantine_max_age_days = {limits.max_age_days:g}")
        if rows > limits.max_rows:
            why.append(f"over ingest.quarantine_max_rows = {limits.max_rows}")
        if size > limits.max_bytes:
            why.append(f"over ingest.quarantine_max_total_bytes = {limits.max_bytes}")
        last, more = self._last_to_prune(cur, (rows, size), (keep_rows, keep_bytes), cutoff)
        txn.more = more
        if last is None:
            return
        cur.execute(self._sql["prune"], (last,))
        kinds: Counter[str] = Counter()
        pruned_bytes = 0
        for kind, nbytes in cur.fetchall():
            kinds[kind] += 1
            pruned_bytes += int(nbytes or 0)
        txn.rows -= sum(kinds.values())
        txn.bytes -= pruned_bytes
        txn.pruned.append(Pruned(dict(kinds), pruned_bytes, "; ".join(why)))

    def _last_to_prune(
        self, cur: Any, totals: tuple[int, int], keep: tuple[int, int], cutoff: datetime
    ) -> tuple[int | None, bool]:
        """The id of the newest row to prune (the oldest rows up to it go) for the totals to
        be within ``keep`` (rows, bytes) and no row older than ``cutoff``; and whether more
        are past a bound than one look prunes."""
        (rows, size), (keep_rows, keep_bytes) = totals, keep
        last: int | None = None
        count = after = 0
        while count < PRUNES_A_LOOK:
            chunk = min(PRUNES_A_LOOK - count, max(100, rows - keep_rows))
            cur.execute(self._sql["oldest"], (after, chunk))
            fetched = cur.fetchall()
            if not fetched:
                return last, False
            for qid, nbytes, received in fetched:
                if rows <= keep_rows and size <= keep_bytes and read_time(received) >= cutoff:
                    return last, False
                last, count = int(qid), count + 1
                rows, size = rows - 1, size - int(nbytes or 0)
            after = int(fetched[-1][0])
        return last, True


def collector_of(topic: str) -> str:
    """The collector level of a topic (``.../{id}/{kind}``, ``.../{id}/meta/{device}``),
    printable and cut to 64 characters (it goes into a log line)."""
    levels = topic.split("/")
    at = -3 if len(levels) >= 3 and levels[-2] == "meta" else -2
    name = levels[at] if len(levels) >= -at else "?"
    return "".join(c if c.isprintable() else "?" for c in name[:64]) or "?"


def quarantine_size(engine: sa.Engine) -> tuple[int, int]:
    """Quarantined messages now and their payload bytes, parked ones aside (every process)."""
    with engine.connect() as conn:
        rows, size = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.func.length(quarantine.c.payload)), 0),
            ).where(quarantine.c.kind.not_in(PARKED_KINDS))
        ).one()
    return int(rows), int(size)


# --- the log ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Gathered:
    count: int = 0
    reason: str = ""


class QuarantineLog:
    """Quarantined messages, logged at most once per (collector, kind) per ``interval_s``
    (store.episodes): the first at once, with its reason; then one line a minute at most,
    with the last reason and how many more came since when."""

    def __init__(
        self,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._episodes: Episodes[tuple[str, str], _Gathered] = Episodes(
            _Gathered, interval_s, clock, wall
        )

    def note(self, kept: Iterable[Kept]) -> list[str]:
        """Take committed quarantines; returns the lines logged now."""
        for k in kept:
            gathered = self._episodes.pending((k.collector, k.kind))
            gathered.count += 1
            gathered.reason = k.reason
        lines = [_line(due) for due in self._episodes.due()]
        for line in lines:
            log.warning("%s", line)
        return lines

    def flush(self) -> list[str]:
        """The lines of counts gathered a minute after the last line (the idle tick's)."""
        return self.note(())


def _line(due: Due[tuple[str, str], _Gathered]) -> str:
    (collector, kind), gathered = due.key, due.pending
    line = f"collector {collector}: quarantined a message ({kind}): {gathered.reason}"
    if gathered.count > 1:
        since = time.strftime("%H:%M:%S", time.gmtime(due.since))
        line += (
            f"; and {gathered.count - 1:,} more since {since} UTC "
            "(at most one line a minute per collector and kind)"
        )
    return line
