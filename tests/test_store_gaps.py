"""Gap audit arithmetic (pure): holes appear only beyond what was received, and shrink,
split and close as late seqs arrive, keeping the time they were first seen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from store.gaps import Hole, StreamState, merge, ranges

T = datetime(2026, 11, 21, tzinfo=UTC)


def test_ranges_sort_and_join_adjacent() -> None:
    assert ranges([(5, 6), (1, 2), (3, 3), (10, 12), (11, 11), (4, 4)]) == [(1, 6), (10, 12)]


def test_merge_from_nothing_and_below_low() -> None:
    state = merge(StreamState(None, None), [(100, 109)], T)
    assert (state.low, state.high, state.holes, state.high_water) == (100, 109, (), 109)
    later = T + timedelta(seconds=5)
    state = merge(state, [(1, 10)], later)  # an old message below low: the hole between
    assert state.holes == (Hole(11, 99, later),)
    assert (state.low, state.high_water, state.missing) == (1, 10, 89)


def test_holes_keep_their_age_when_split_and_close() -> None:
    state = merge(StreamState(None, None), [(1, 10), (21, 30)], T)
    assert state.holes == (Hole(11, 20, T),)
    state = merge(state, [(15, 15), (40, 40)], T + timedelta(seconds=9))
    assert state.holes == (
        Hole(11, 14, T), Hole(16, 20, T), Hole(31, 39, T + timedelta(seconds=9)),
    )  # fmt: skip
    state = merge(state, [(11, 14), (16, 20), (31, 39), (5, 8)], T)  # duplicates change nothing
    assert (state.holes, state.high_water, state.high) == ((), 40, 40)
