"""Replays inside one batch, and replayed unit records (issue 23: one seq, one row).

A seq the stream already had is judged by the writer (store.ingest) against what the
database holds: a redelivery is a duplicate, other content a ``conflict``. Two messages of
ONE batch carrying the same seqs of a stream would escape that (the gap audit only sees what
was committed before): :func:`defer_overlaps` takes the later one out of the batch, to be
written right after the batch committed, where it is such a replay. A message whose bytes
are those of one kept in the batch stays: insert-or-ignore makes it the duplicate it is.

Unit records have no seq in their key's uniqueness alone (``end_ts`` is in it):
:func:`unit_difference` compares a replayed unit record with the stored one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from contract.decode import FlatUnit
from store.decode import Decoded
from store.sql import read_time

#: The units row's columns as store.sql inserts them, for the reason of a conflict.
UNIT_COLUMNS = (
    "collector", "outbox", "seq", "serial", "station", "slot", "operation", "attempt",
    "start_ts", "end_ts", "cycle_time_s", "takt_s", "verdict", "failure_code", "ended_by",
    "readings", "golden", "work_order", "resources",
)  # fmt: skip
M = TypeVar("M")
_TIMES = (UNIT_COLUMNS.index("start_ts"), UNIT_COLUMNS.index("end_ts"))


class _Seen:
    """The seq intervals of one stream kept in the batch: sorted, not overlapping."""

    __slots__ = ("ends", "high", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.high = -1

    def overlaps(self, first: int, last: int) -> bool:
        i = bisect_right(self.starts, last) - 1
        return i >= 0 and self.ends[i] >= first

    def add(self, first: int, last: int) -> None:
        if first > self.high:  # the usual order: after everything seen
            self.starts.append(first)
            self.ends.append(last)
        else:
            i = bisect_right(self.starts, first)
            self.starts.insert(i, first)
            self.ends.insert(i, last)
        self.high = max(self.high, last)


def _intervals(decoded: Decoded) -> list[tuple[int, int]]:
    """The message's seq intervals, sorted, those that touch or overlap joined: the same
    seqs in fewer intervals (a message's polls usually follow each other without a gap:
    one interval for the message)."""
    spans = [(r.seq, r.seq + len(r.values) - 1) for r in decoded.runs if r.values]
    spans.extend((p.seq, p.seq + len(p.values) - 1) for p in decoded.polls if p.values)
    spans.sort()
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a <= out[-1][1] + 1:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def defer_overlaps(
    readings: list[tuple[M, Decoded]],
    payload: Callable[[M], bytes],
) -> tuple[list[tuple[M, Decoded]], list[M]]:
    """(the readings messages kept, those deferred): a message carrying a seq that an
    earlier message of the batch carries for the same stream is deferred, unless its bytes
    (``payload(message)``) are that message's. One comparison per message when the seqs
    of a stream rise through the batch (the usual case)."""
    seen: dict[tuple[str, str], _Seen] = {}
    kept: list[tuple[M, Decoded]] = []
    deferred: list[M] = []
    for message, decoded in readings:
        intervals = _intervals(decoded)
        if not intervals:
            kept.append((message, decoded))
            continue
        stream = seen.setdefault((decoded.collector, decoded.outbox), _Seen())
        first = intervals[0][0]
        if first <= stream.high and any(stream.overlaps(a, b) for a, b in intervals):
            same = any(
                payload(m) == payload(message)
                for m, d in kept
                if (d.collector, d.outbox) == (decoded.collector, decoded.outbox)
            )
            if same:  # a redelivery within the batch: a duplicate, seqs already noted
                kept.append((message, decoded))
            else:
                deferred.append(message)
            continue
        for a, b in intervals:
            stream.add(a, b)
        kept.append((message, decoded))
    return kept, deferred


def defer_unit_overlaps(
    units: list[list[FlatUnit]], messages: list[M], payload: Callable[[M], bytes]
) -> tuple[list[list[FlatUnit]], list[M], list[M]]:
    """(the unit lists kept, their messages, the messages deferred): as
    :func:`defer_overlaps`, for unit records (a seq each)."""
    seen: dict[tuple[str, str], set[int]] = {}
    kept: list[list[FlatUnit]] = []
    kept_messages: list[M] = []
    deferred: list[M] = []
    for records, message in zip(units, messages, strict=True):
        if any(u.seq in seen.get((u.collector, u.outbox), ()) for u in records):
            if any(payload(m) == payload(message) for m in kept_messages):
                kept.append(records)
                kept_messages.append(message)
            else:
                deferred.append(message)
            continue
        for u in records:
            seen.setdefault((u.collector, u.outbox), set()).add(u.seq)
        kept.append(records)
        kept_messages.append(message)
    return kept, kept_messages, deferred


def _normal(row: Iterable[Any]) -> tuple[Any, ...]:
    """A units row as compared: its times as aware datetimes (SQLite keeps text)."""
    out = list(row)
    for i in _TIMES:
        out[i] = read_time(out[i])
    return tuple(out)


def unit_difference(stored: tuple[Any, ...], incoming: tuple[Any, ...]) -> str | None:
    """None when two units rows hold the same record; else both versions of the columns
    that differ, for the quarantine's reason."""
    a, b = _normal(stored), _normal(incoming)
    names = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if not names:
        return None
    was = ", ".join(f"{UNIT_COLUMNS[i]} {a[i]!r}" for i in names)
    new = ", ".join(f"{UNIT_COLUMNS[i]} {b[i]!r}" for i in names)
    return f"seq {b[2]}: stored {was}, replayed with {new}"
