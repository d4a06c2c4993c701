"""Sent marks: the seq ranges a stream published (the broker took them) that the central store
has not acknowledged yet (``mqtt.delivery: store``; docs/guarantees.md).

A marked range is still in the buffer and is never taken again while marked; the store's
acknowledgement deletes it, a ``resend`` from the store or a tail the store never saw unmarks
it, so the forwarder takes it again the normal way (oldest first). The marks live in memory
only: after a restart the rows are simply sent again and the store dedupes them.

Each mark is one published message: (first seq, last seq) with its item count and the time
it was sent, kept sorted by first seq (messages of one stream never overlap).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mark:
    first: int
    last: int
    items: int
    sent_at: float


class SentMarks:
    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._marks: list[Mark] = []
        #: Items (readings or unit records) marked: what /status calls waiting for the store.
        self.items = 0

    def __len__(self) -> int:
        return len(self._marks)

    def add(self, first: int, last: int, items: int, sent_at: float) -> None:
        i = bisect.bisect_left(self._firsts, first)
        if i < len(self._firsts) and self._firsts[i] == first:
            self.items -= self._marks[i].items
            self._marks[i] = Mark(first, last, items, sent_at)
        else:
            self._firsts.insert(i, first)
            self._marks.insert(i, Mark(first, last, items, sent_at))
        self.items += items

    def holds(self, seq: int) -> bool:
        """Whether ``seq`` is inside a marked range."""
        i = bisect.bisect_right(self._firsts, seq) - 1
        return i >= 0 and self._marks[i].last >= seq

    def oldest_sent_at(self) -> float | None:
        return min((m.sent_at for m in self._marks), default=None)

    def remove(self, ranges: Iterable[tuple[int, int]], older_than: float | None = None) -> int:
        """Unmark every mark lying inside one of ``ranges`` (a mark is one message: the store
        has all of it or none), only those sent before ``older_than`` when given; the
        number of marks removed."""
        removed = 0
        for first, last in ranges:
            i = bisect.bisect_left(self._firsts, first)
            while i < len(self._marks) and self._marks[i].first <= last:
                mark = self._marks[i]
                if mark.last <= last and (older_than is None or mark.sent_at < older_than):
                    del self._marks[i]
                    del self._firsts[i]
                    self.items -= mark.items
                    removed += 1
                else:
                    i += 1
        return removed

    def discard(self, marks: Iterable[Mark]) -> None:
        """Unmark these marks (from :meth:`overlapping` or :meth:`uncovered`)."""
        for mark in marks:
            i = bisect.bisect_left(self._firsts, mark.first)
            if i < len(self._marks) and self._marks[i] == mark:
                del self._marks[i]
                del self._firsts[i]
                self.items -= mark.items

    def overlapping(self, first: int, last: int) -> list[Mark]:
        i = max(0, bisect.bisect_right(self._firsts, first) - 1)
        out = []
        while i < len(self._marks) and self._marks[i].first <= last:
            if self._marks[i].last >= first:
                out.append(self._marks[i])
            i += 1
        return out

    def uncovered(self, covered: list[tuple[int, int]], older_than: float) -> list[Mark]:
        """Marks sent before ``older_than`` that no range of ``covered`` holds whole: what
        the store has not got although it acknowledges other things (a lost tail)."""
        out = []
        for mark in self._marks:
            if mark.sent_at >= older_than:
                continue
            if not any(a <= mark.first and mark.last <= b for a, b in covered):
                out.append(mark)
        return out

    def clear(self) -> None:
        self._firsts.clear()
        self._marks.clear()
        self.items = 0
