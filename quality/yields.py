"""Per-operation figures from unit attempts: yields, scrap and rework, retests, failure Pareto,
cycle time against takt, and the rolled throughput yield across operations.

Pure functions over plain values: no I/O, no clock. The store's report and the collector's live
per-station figures call the same code. Formulas and their sources: docs/statistics.md.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PASS = "pass"  # noqa: S105 (a verdict, not a secret)
FAIL = "fail"
REWORK = "rework"
SCRAP = "scrap"
INCOMPLETE = "incomplete"
VERDICTS = (PASS, FAIL, REWORK, SCRAP, INCOMPLETE)
NO_CODE = "(none)"  # a failed attempt that carried no failure code


@dataclass(frozen=True, slots=True)
class Attempt:
    """One unit record: one attempt of one unit at one operation."""

    serial: str
    operation: str
    attempt: int
    verdict: str
    cycle_time_s: float | None = None
    takt_s: float | None = None
    failure_code: str | None = None
    golden: bool = False


@dataclass(frozen=True, slots=True)
class CycleTime:
    n: int
    mean: float | None
    p50: float | None
    p95: float | None
    within_takt: float | None  # share of attempts with cycle time <= takt


@dataclass(frozen=True, slots=True)
class ParetoBar:
    code: str
    count: int
    share: float  # of all failed attempts
    cumulative: float


@dataclass(frozen=True, slots=True)
class OperationFigures:
    operation: str
    units: int  # distinct serials attempted (golden samples left out)
    attempts: int
    first_pass: int  # units whose first attempt passed
    final_pass: int  # units whose last attempt passed
    scrapped: int
    reworked: int
    retests: int  # attempts after a unit's first
    retests_passed: int
    first_pass_yield: float | None
    final_yield: float | None
    scrap_rate: float | None
    rework_rate: float | None
    retest_pass_rate: float | None
    pareto: tuple[ParetoBar, ...]
    cycle_time: CycleTime
    takt_s: float | None
    golden_units: int  # shown apart, never in the figures above


def ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None when there is nothing to divide by."""
    return numerator / denominator if denominator else None


def first_pass_yield(first_passes: int, first_attempts: int) -> float | None:
    """Units whose first attempt passed / units attempted (each has one first attempt)."""
    return ratio(first_passes, first_attempts)


@dataclass(slots=True)
class FirstPassTally:
    """First-pass yield counted record by record, for live figures that keep no attempts (the
    collector's per-station figures). A station numbers a unit's attempts as they happen, so
    its first attempt is the record with attempt 1, and the tally needs no per-unit state;
    :func:`operation_figures` gives the same figure from a whole run's records."""

    first_attempts: int = 0
    first_passes: int = 0

    def add(self, attempt: int, verdict: str) -> None:
        if attempt > 1:
            return  # a retest: its unit's first attempt was counted already
        self.first_attempts += 1
        if attempt == 1 and verdict == PASS:
            self.first_passes += 1

    @property
    def value(self) -> float | None:
        return first_pass_yield(self.first_passes, self.first_attempts)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation between order statistics (Hyndman & Fan
    type 7: numpy's default, Python's ``statistics.quantiles(method="inclusive")``)."""
    if not sorted_values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside 0..1")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def cycle_time(values: Iterable[float | None], takt_s: float | None) -> CycleTime:
    """Mean, median and 95th percentile of the cycle times given; missing values are skipped."""
    clean = sorted(v for v in values if v is not None and math.isfinite(v))
    if not clean:
        return CycleTime(0, None, None, None, None)
    within = None
    if takt_s is not None:
        within = sum(1 for v in clean if v <= takt_s) / len(clean)
    return CycleTime(
        n=len(clean),
        mean=math.fsum(clean) / len(clean),
        p50=percentile(clean, 0.50),
        p95=percentile(clean, 0.95),
        within_takt=within,
    )


def pareto(codes: Iterable[str | None]) -> tuple[ParetoBar, ...]:
    """Failure codes by count, most frequent first (ties by code), with cumulative shares."""
    counts = Counter(NO_CODE if code is None or code == "" else str(code) for code in codes)
    total = sum(counts.values())
    bars: list[ParetoBar] = []
    running = 0
    for code, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        running += count
        bars.append(ParetoBar(code, count, count / total, running / total))
    return tuple(bars)


def _common_takt(attempts: Sequence[Attempt]) -> float | None:
    takts = Counter(a.takt_s for a in attempts if a.takt_s is not None)
    if not takts:
        return None
    # The most frequent takt; a tie goes to the shorter (stricter) one.
    return min(takts, key=lambda takt: (-takts[takt], takt))


def operation_figures(
    operation: str, attempts: Iterable[Attempt], takt_s: float | None = None
) -> OperationFigures:
    """The figures of one operation from its attempts (any order; other operations ignored).

    ``takt_s`` overrides the takt the records carry (the most frequent one is used otherwise).
    A unit counts once: its lowest attempt number decides first pass, its highest the final
    verdict. Incomplete attempts count as attempted and not passed; they give no cycle time
    (a timed-out attempt's duration is the timeout, not the operation).
    """
    mine = [a for a in attempts if a.operation == operation]
    golden = {a.serial for a in mine if a.golden}
    counted = [a for a in mine if not a.golden]
    by_unit: dict[str, list[Attempt]] = defaultdict(list)
    for a in counted:
        by_unit[a.serial].append(a)
    first_pass = final_pass = scrapped = reworked = retests = retests_passed = 0
    failure_codes: list[str | None] = []
    for unit_attempts in by_unit.values():
        unit_attempts.sort(key=lambda a: a.attempt)
        first_pass += unit_attempts[0].verdict == PASS
        final_pass += unit_attempts[-1].verdict == PASS
        verdicts = {a.verdict for a in unit_attempts}
        scrapped += SCRAP in verdicts
        reworked += REWORK in verdicts
        for later in unit_attempts[1:]:
            retests += 1
            retests_passed += later.verdict == PASS
        failure_codes.extend(
            a.failure_code for a in unit_attempts if a.verdict in (FAIL, REWORK, SCRAP)
        )
    units = len(by_unit)
    takt = takt_s if takt_s is not None else _common_takt(counted)
    return OperationFigures(
        operation=operation,
        units=units,
        attempts=len(counted),
        first_pass=first_pass,
        final_pass=final_pass,
        scrapped=scrapped,
        reworked=reworked,
        retests=retests,
        retests_passed=retests_passed,
        first_pass_yield=first_pass_yield(first_pass, units),
        final_yield=ratio(final_pass, units),
        scrap_rate=ratio(scrapped, units),
        rework_rate=ratio(reworked, units),
        retest_pass_rate=ratio(retests_passed, retests),
        pareto=pareto(failure_codes),
        cycle_time=cycle_time((a.cycle_time_s for a in counted if a.verdict != INCOMPLETE), takt),
        takt_s=takt,
        golden_units=len(golden),
    )


def rolled_throughput_yield(first_pass_yields: Iterable[float | None]) -> float | None:
    """The product of the operations' first-pass yields; None if any is undefined or none given."""
    product = 1.0
    seen = False
    for fpy in first_pass_yields:
        if fpy is None:
            return None
        product *= fpy
        seen = True
    return product if seen else None
