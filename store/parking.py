"""Bounds on parking: readings messages waiting for a meta version the store has not seen.

A parked message is kept whole in ``quarantine`` with a ``parked`` row (store.metabook). Left
alone, a publisher that names a new unknown version in every message (a broken collector, a
hostile one) parks without end: the database grows and every version waited for gets its log
line. So parking is bounded by count, bytes and age (``ingest.parked_max_*`` in store.yaml);
past a bound the **oldest** parked messages are dropped first: the ``parked`` row goes, the
quarantine row stays (kind ``parked_dropped``, the payload whole, the bound in its reason), so
nothing is lost silently and an operator can still publish it again once its metadata is
known. Drops are counted (/health, /metrics) and the log says it at most once per collector
per minute (:class:`ParkLog`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from store.episodes import Episodes
from store.metabook import BY_META, MetaKey
from store.sql import read_time

log = logging.getLogger("store.ingest")

#: The quarantine kind of a parked message dropped at a bound.
DROPPED = "parked_dropped"
#: Distinct versions remembered per collector between two log lines (the count goes on).
_VERSIONS_NOTED = 1000
#: Parked messages dropped per look at most (one transaction's work); the rest at the next.
DROPS_A_LOOK = 5_000


@dataclass(frozen=True, slots=True)
class ParkingLimits:
    max_messages: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 86_400.0

    @property
    def check_interval_s(self) -> float:
        """How often the age bound is looked at when nothing parks."""
        return min(60.0, self.max_age_s / 2)


@dataclass(frozen=True, slots=True)
class Dropped:
    quarantine_id: int
    key: MetaKey
    reason: str
    #: Its payload's size: what the quarantine it stays in holds more now (store.quarantine).
    bytes: int = 0


@dataclass(slots=True)
class Parked:
    """What is parked now, in total (the database's count and sum)."""

    messages: int
    bytes: int


def over_bounds(
    total: Parked, oldest: Iterable[Sequence[Any]], limits: ParkingLimits, now: datetime
) -> tuple[list[Dropped], bool]:
    """The parked messages to drop, oldest first, from ``oldest``: parked rows in the order
    they were parked, as (quarantine id, collector, device, meta, payload bytes, received
    at). Drops until what is left is within every bound; ``total`` is updated as it goes.
    Returns the drops and whether ``oldest`` ran out before that (then more rows are needed).
    A message larger than ``max_bytes`` by itself is dropped beforehand (:data:`GIANT`)."""
    cutoff = now - timedelta(seconds=limits.max_age_s)
    out: list[Dropped] = []
    for qid, collector, device, meta, nbytes, received in oldest:
        if read_time(received) < cutoff:
            why = f"parked longer than ingest.parked_max_age_s = {limits.max_age_s:g}"
        elif total.messages > limits.max_messages:
            why = f"over ingest.parked_max_messages = {limits.max_messages}"
        elif total.bytes > limits.max_bytes:
            why = f"over ingest.parked_max_bytes = {limits.max_bytes}"
        else:
            return out, False
        out.append(
            Dropped(
                int(qid),
                (collector, device, meta),
                dropped_reason(meta, collector, device, why),
                int(nbytes),
            )
        )
        total.messages -= 1
        total.bytes -= nbytes
    return out, True


def giants(rows: Iterable[Sequence[Any]], limits: ParkingLimits) -> list[Dropped]:
    """Parked messages larger than ``max_bytes`` by themselves: they can never fit, and must
    not push every older one out on their way."""
    why = f"over ingest.parked_max_bytes = {limits.max_bytes} by itself"
    return [
        Dropped(
            int(qid),
            (collector, device, meta),
            dropped_reason(meta, collector, device, why),
            int(nbytes),
        )
        for qid, collector, device, meta, nbytes, _ in rows
    ]


def bound_parking(
    cur: Any, sql: dict[str, str], limits: ParkingLimits, now: datetime, max_drops: int
) -> tuple[list[Dropped], bool]:
    """Drop the oldest parked messages past a parking bound into quarantine, through ``cur``
    (in the transaction of a batch when it parks: a message it parked may be one of them),
    at most ``max_drops`` of them (bounded work for the idle tick). Returns the drops and
    whether more are past a bound (dropped at the next look)."""
    cur.execute(sql["parked_totals"])
    count, size, oldest = cur.fetchone()
    total = Parked(int(count), int(size))
    if (
        total.messages <= limits.max_messages
        and total.bytes <= limits.max_bytes
        and (oldest is None or read_time(oldest) >= now - timedelta(seconds=limits.max_age_s))
    ):
        return [], False  # the usual case: one aggregate over a bounded table
    dropped: list[Dropped] = []
    if total.bytes > limits.max_bytes:
        cur.execute(sql["parked_giants"], (limits.max_bytes,))
        rows = cur.fetchall()
        dropped += giants(rows, limits)
        total.messages -= len(rows)
        total.bytes -= sum(int(r[4]) for r in rows)
    gone = {d.quarantine_id for d in dropped}
    after, more = 0, True
    while more and len(dropped) < max_drops:
        # The oldest first, a chunk at a time: just past the count bound, usually.
        chunk = max(100, total.messages - limits.max_messages + 1)
        cur.execute(sql["parked_oldest"], (after, min(chunk, max_drops)))
        fetched = cur.fetchall()
        if not fetched:
            more = False
            break
        after = int(fetched[-1][0])
        rows = [r for r in fetched if int(r[0]) not in gone]
        some, more = over_bounds(total, rows, limits, now)
        dropped += some
    if len(dropped) > max_drops:
        dropped, more = dropped[:max_drops], True
    if dropped:
        cur.executemany(sql["park_drop"], [(d.reason, d.quarantine_id) for d in dropped])
        cur.executemany(sql["release_p"], [(d.quarantine_id,) for d in dropped])
    return dropped, more


def dropped_reason(meta: str, collector: str, device: str, why: str) -> str:
    # A poll by position names its device by its meta version only (BY_META).
    of = collector if device == BY_META else f"{collector}/{device}"
    return f"meta version {meta} of {of} not received: dropped from parking, oldest first ({why})"


@dataclass(slots=True)
class _Pending:
    parked: int = 0
    versions: set[MetaKey] = field(default_factory=set)
    dropped: int = 0
    why: str = ""


class ParkLog:
    """What parking did, logged at most once per collector per ``interval_s``
    (store.episodes): a line when a collector first parks or drops, then one a minute at most
    with the counts since the last line (the counters on /health and /metrics have every
    message)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._episodes: Episodes[str, _Pending] = Episodes(_Pending, interval_s, clock)

    def note(self, parked: Iterable[MetaKey], dropped: Iterable[Dropped]) -> list[str]:
        """Take a batch's parked and dropped messages; returns the lines logged now."""
        for key in parked:
            p = self._episodes.pending(key[0])
            p.parked += 1
            if len(p.versions) < _VERSIONS_NOTED:
                p.versions.add(key)
        for d in dropped:
            p = self._episodes.pending(d.key[0])
            p.dropped += 1
            p.why = d.reason
        lines = [_line(due.key, due.pending, due.elapsed_s) for due in self._episodes.due()]
        for line in lines:
            log.warning("%s", line)
        return lines

    def flush(self) -> list[str]:
        """The lines of counts gathered a minute after the last line (the idle tick's)."""
        return self.note((), ())


def _line(collector: str, p: _Pending, elapsed_s: float | None) -> str:
    since = "since start" if elapsed_s is None else f"in the {elapsed_s:.0f} s since the last line"
    parts = [f"collector {collector}:"]
    if p.parked:
        versions = len(p.versions)
        shown = ", ".join(m if d == BY_META else f"{d}/{m}" for _, d, m in sorted(p.versions)[:3])
        more = f" (at least {versions})" if versions >= _VERSIONS_NOTED else ""
        parts.append(
            f"{p.parked} readings message(s) parked {since}, waiting for {versions}{more} "
            f"meta version(s) not received yet (e.g. {shown});"
        )
    if p.dropped:
        parts.append(
            f"{p.dropped} parked message(s) dropped into quarantine (kind {DROPPED}); "
            f"the last: {p.why};"
        )
    parts.append("logged at most once a minute per collector")
    return " ".join(parts)
