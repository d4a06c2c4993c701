"""The line view: which operation limits the line, the throughput it allows, the operations
over takt, and the work in progress between consecutive operations.

Pure functions over plain values (times are seconds on one clock, e.g. the epoch): no I/O, no
clock. Formulas, assumptions and sources: docs/statistics.md ("The line").
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from quality.yields import cycle_time

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Visit:
    """One attempt of one unit at one operation, as the line view needs it.

    The caller leaves golden samples out and gives ``cycle_time_s=None`` for attempts whose
    duration is not the operation's (an incomplete attempt lasted its timeout), as the
    per-operation cycle time does.
    """

    serial: str
    operation: str
    start_s: float | None
    end_s: float | None
    cycle_time_s: float | None
    station: str | None = None
    slot: int | None = None  # a rack's or multi-nest fixture's position at the station


@dataclass(frozen=True, slots=True)
class OperationFlow:
    operation: str
    n: int  # cycle times counted
    stations: int  # parallel positions: distinct (station, slot) seen; 1 if none is known
    p50_s: float | None
    p95_s: float | None
    effective_p50_s: float | None  # p50 / stations: seconds per unit of the operation's output
    effective_p95_s: float | None
    takt_s: float | None
    over_takt_p50: bool | None  # effective p50 > takt; None without takt or cycle time
    over_takt_p95: bool | None


@dataclass(frozen=True, slots=True)
class Wip:
    """Units that had ended operation ``between[0]`` and not yet started ``between[1]``."""

    between: tuple[str, str]
    units: int  # units counted: ended the first, then started the second
    skipped: int  # units at both operations without a usable pair of times
    series: tuple[tuple[float, int], ...]  # (time, units waiting just after it), event times
    mean: float | None  # time-weighted over the span of the series
    max: int | None
    mean_wait_s: float | None
    span_s: float | None  # first to last event
    reason: str | None = None  # why the figures are None


@dataclass(frozen=True, slots=True)
class Line:
    operations: tuple[OperationFlow, ...]  # in line order
    constraint: str | None  # the operation that limits the line
    throughput_per_hour: float | None  # units per hour the constraint allows
    takt_s: float | None  # the line's takt: the shortest of the operations' takts
    wip: tuple[Wip, ...]  # one per pair of consecutive operations
    reason: str | None = None  # why there is no constraint or throughput


def per_hour(seconds: float | None) -> float | None:
    """Units per hour at one unit every ``seconds`` (takt's rate); None for no or 0 seconds."""
    return SECONDS_PER_HOUR / seconds if seconds else None


def positions(visits: Iterable[Visit]) -> int:
    """Parallel positions of an operation: distinct (station, slot) in its records; 1 when no
    record names a station (the data cannot show more than one, so one is assumed)."""
    seen = {(v.station, v.slot) for v in visits if v.station is not None}
    return max(1, len(seen))


def _per_station(value: float | None, stations: int) -> float | None:
    return None if value is None else value / stations


def _over(value: float | None, takt_s: float | None) -> bool | None:
    return None if value is None or takt_s is None else value > takt_s


def operation_flow(
    operation: str, visits: Iterable[Visit], takt_s: float | None = None
) -> OperationFlow:
    """Cycle-time percentiles of one operation, per parallel position, against takt.

    Stations of one operation are assumed to work in parallel for the whole run, each taking
    one unit at a time (a slot of a rack is a station of its own): n positions give n units per
    cycle time, so the operation's output needs cycle time / n per unit.
    """
    mine = [v for v in visits if v.operation == operation]
    stations = positions(mine)
    ct = cycle_time((v.cycle_time_s for v in mine), None)
    effective_p50 = _per_station(ct.p50, stations)
    effective_p95 = _per_station(ct.p95, stations)
    return OperationFlow(
        operation=operation,
        n=ct.n,
        stations=stations,
        p50_s=ct.p50,
        p95_s=ct.p95,
        effective_p50_s=effective_p50,
        effective_p95_s=effective_p95,
        takt_s=takt_s,
        over_takt_p50=_over(effective_p50, takt_s),
        over_takt_p95=_over(effective_p95, takt_s),
    )


def constraint(flows: Sequence[OperationFlow]) -> OperationFlow | None:
    """The operation with the highest effective p50; a tie goes to the higher effective p95,
    then to the earlier operation in line order. Operations without cycle time take no part."""
    best: OperationFlow | None = None
    for flow in flows:
        if flow.effective_p50_s is None:
            continue
        if best is None or _rank(flow) > _rank(best):  # strict: the earlier wins a full tie
            best = flow
    return best


def _rank(flow: OperationFlow) -> tuple[float, float]:
    assert flow.effective_p50_s is not None
    return flow.effective_p50_s, flow.effective_p95_s or 0.0


def wip_between(visits: Iterable[Visit], first: str, second: str) -> Wip:
    """Units waiting between two consecutive operations, from the unit records' times.

    A unit counts from the end of its attempt at ``first`` that came last before its first
    start at ``second`` (a retest at ``first`` keeps it there) until that start. Units that
    never started ``second`` (scrapped, still waiting when the run ends) are left out, so the
    figures describe the units that went through. Events at the same time are applied
    together before the count is sampled: a unit that starts the moment it ended waits 0 s
    and is never counted as waiting.

    Little's law holds by construction over the span: mean WIP = units / span x mean wait.
    """
    ends: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, float] = {}
    present: set[str] = set()
    for v in visits:
        if v.operation == first:
            present.add(v.serial)
            if v.end_s is not None:
                ends[v.serial].append(v.end_s)
        elif v.operation == second and v.start_s is not None:
            known = starts.get(v.serial)
            starts[v.serial] = v.start_s if known is None else min(known, v.start_s)
    intervals: list[tuple[float, float]] = []
    skipped = 0
    for serial in present:
        start = starts.get(serial)
        if start is None:
            continue  # never started the second operation (or without a start time)
        before = [end for end in ends.get(serial, ()) if end <= start]
        if not before:
            skipped += 1  # started the second before ending the first: times disagree
            continue
        intervals.append((max(before), start))
    between = (first, second)
    if not intervals:
        why = f"no unit ended {first} and then started {second}"
        return Wip(between, 0, skipped, (), None, None, None, None, why)
    change: dict[float, int] = defaultdict(int)
    for left, right in intervals:
        change[left] += 1
        change[right] -= 1
    series: list[tuple[float, int]] = []
    waiting = 0
    for time in sorted(change):
        waiting += change[time]
        series.append((time, waiting))
    area = sum(count * (later - time) for (time, count), (later, _) in itertools.pairwise(series))
    span = series[-1][0] - series[0][0]
    total_wait = sum(right - left for left, right in intervals)
    return Wip(
        between=between,
        units=len(intervals),
        skipped=skipped,
        series=tuple(series),
        # A span of 0 means every event at one instant: every wait is 0, and so is the WIP.
        mean=area / span if span > 0 else 0.0,
        max=max(count for _, count in series),
        mean_wait_s=total_wait / len(intervals),
        span_s=span,
    )


def line_figures(
    visits: Iterable[Visit], order: Sequence[str], takts: Mapping[str, float | None]
) -> Line:
    """The line view of a run: operations in ``order`` (the line's), their takts in ``takts``."""
    # Grouped once: each figure then reads only its operations' visits, not the whole run.
    by_operation: dict[str, list[Visit]] = defaultdict(list)
    for v in visits:
        by_operation[v.operation].append(v)
    flows = tuple(operation_flow(op, by_operation[op], takts.get(op)) for op in order)
    known = [t for t in (takts.get(op) for op in order) if t is not None]
    line_takt = min(known) if known else None  # the strictest demand any operation states
    wip = tuple(
        wip_between(by_operation[a] + by_operation[b], a, b) for a, b in itertools.pairwise(order)
    )
    limiting = constraint(flows)
    if limiting is None:
        return Line(flows, None, None, line_takt, wip, "no operation has a cycle time")
    assert limiting.effective_p50_s is not None
    if limiting.effective_p50_s <= 0:
        why = f"the p50 cycle time of {limiting.operation} is 0 s"
        return Line(flows, limiting.operation, None, line_takt, wip, why)
    throughput = SECONDS_PER_HOUR / limiting.effective_p50_s
    return Line(flows, limiting.operation, throughput, line_takt, wip)
