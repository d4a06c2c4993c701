"""Gap audit arithmetic (pure): what a stream has received, as [low, high] minus its holes.

A stream is one (collector, outbox, kind). Its state is the lowest and highest seq received
and the missing ranges between them, each with the time it was first seen missing. Merging
the seqs of a batch can only fill: holes shrink, split or close, and new holes appear only
outside the old [low, high] (a jump ahead, or an old message below ``low``). The contiguous
high-water mark is the last seq before the first hole.

Seqs below the lowest one ever received are not called missing: the store cannot know where
a stream began (it may have been deployed after the collector).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise


@dataclass(frozen=True, slots=True)
class Hole:
    first: int
    last: int
    opened_at: datetime

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class StreamState:
    low: int | None
    high: int | None
    holes: tuple[Hole, ...] = ()

    @property
    def high_water(self) -> int | None:
        """The last seq of the contiguous run that starts at ``low``."""
        if self.low is None:
            return None
        return self.holes[0].first - 1 if self.holes else self.high

    @property
    def missing(self) -> int:
        return sum(h.size for h in self.holes)


def ranges(seqs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, coalesced [first, last] ranges (adjacent ones joined)."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(seqs):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def merge(state: StreamState, received: Iterable[tuple[int, int]], now: datetime) -> StreamState:
    """The state after also receiving the seq ranges ``received``."""
    incoming = ranges(received)
    if not incoming:
        return state
    covered: list[tuple[int, int]] = []
    if state.low is not None and state.high is not None:
        start = state.low
        for hole in state.holes:
            if hole.first > start:
                covered.append((start, hole.first - 1))
            start = hole.last + 1
        if start <= state.high:
            covered.append((start, state.high))
    covered = ranges([*covered, *incoming])
    holes: list[Hole] = []
    for (_, last), (first, _) in pairwise(covered):
        gap_first, gap_last = last + 1, first - 1
        holes.append(Hole(gap_first, gap_last, _opened(state.holes, gap_first, gap_last, now)))
    return StreamState(covered[0][0], covered[-1][1], tuple(holes))


def _opened(old: tuple[Hole, ...], first: int, last: int, now: datetime) -> datetime:
    """A hole inside an old hole keeps the old one's age; any other is new."""
    for hole in old:
        if hole.first <= first and last <= hole.last:
            return hole.opened_at
    return now
