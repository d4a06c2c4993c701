"""Seq ranges, as acknowledgements, resend requests and gap announcements carry them
(``[[first, last], ...]``, both ends included): the arithmetic the collector and the store both
do on them, in one place."""

from __future__ import annotations

from collections.abc import Iterable

#: An inclusive range of seqs.
Span = tuple[int, int]


def intersect(ranges: Iterable[Span], cut: Iterable[Span]) -> list[Span]:
    """The parts of ``ranges`` inside some range of ``cut``."""
    cuts = list(cut)
    return [(max(a, c), min(b, d)) for a, b in ranges for c, d in cuts if c <= b and a <= d]


def subtract(ranges: Iterable[Span], done: Iterable[Span]) -> list[Span]:
    """The parts of ``ranges`` outside every range of ``done``."""
    dones = list(done)
    out: list[Span] = []
    for span in ranges:
        pieces = [span]
        for a, b in dones:
            nxt: list[Span] = []
            for lo, hi in pieces:
                if b < lo or a > hi:
                    nxt.append((lo, hi))
                    continue
                if lo < a:
                    nxt.append((lo, a - 1))
                if b < hi:
                    nxt.append((b + 1, hi))
            pieces = nxt
        out.extend(pieces)
    return out
