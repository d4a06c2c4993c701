"""Results by resource: per operation and resource kind (operator, fixture, cavity, program),
each value's units, first-pass yield with its 95 % Wilson interval and each critical
characteristic's mean and Cpk; a test for a difference between the values (Fisher's exact
test for two, Pearson's chi-square for more; Welch's ANOVA for the means) and a sentence
naming a resource that differs at the 1 % level after Holm's adjustment for every test of
the report (quality.compare.holm_adjusted).

Pure: works on loaded :class:`~store.report.load.RunData`. Each unit counts once per
operation, by its first attempt there (the process before rework), golden samples left out;
a unit whose record names no value of a kind is counted apart (``without``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from quality.capability import indices, sd_within
from quality.compare import (
    Interval,
    chi_square_independence,
    fisher_exact,
    holm_adjusted,
    welch_anova,
    wilson_interval,
)
from quality.yields import INCOMPLETE, PASS
from store.report.load import RunData

#: The significance level the report names a differing resource at, for the Holm-adjusted p
#: of each test: the chance of naming any resource by chance in a run stays at most 1 %.
ALPHA = 0.01
#: The order kinds are shown in; a kind a record names beyond these follows, by name.
KINDS = ("operator", "fixture", "cavity", "program")


@dataclass(frozen=True, slots=True)
class GroupCharacteristic:
    name: str
    n: int
    mean: float | None
    cpk: float | None  # with the within (moving-range) sigma, as the run's Cpk


@dataclass(frozen=True, slots=True)
class ResourceGroup:
    value: str
    units: int  # units whose first attempt at the operation was made with it (with a verdict)
    first_passes: int
    first_pass_yield: Interval | None  # estimate and its 95 % Wilson interval
    characteristics: tuple[GroupCharacteristic, ...]


@dataclass(frozen=True, slots=True)
class Test:
    name: str  # "fisher_exact", "chi_square" or "welch_anova"
    statistic: float
    p_value: float
    df: float | None = None
    df_denominator: float | None = None
    #: Holm's adjusted p over every test of the report (set once all are made).
    p_adjusted: float | None = None


@dataclass(frozen=True, slots=True)
class MeanComparison:
    characteristic: str
    test: Test | None
    note: str = ""  # why no test


@dataclass(frozen=True, slots=True)
class ResourceSplit:
    operation: str
    kind: str
    groups: tuple[ResourceGroup, ...]  # in the order the values first appear
    without: int  # units at the operation whose record names no value of the kind
    yield_test: Test | None
    yield_note: str  # why no test, or what it assumed
    means: tuple[MeanComparison, ...]
    findings: tuple[str, ...]  # the sentences naming a resource that differs at ALPHA
    #: Per compared characteristic, the values' measurements (for the finding's sentence).
    usable: dict[str, dict[str, list[float]]] = field(default_factory=dict, compare=False)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _yield_test(groups: Sequence[ResourceGroup]) -> tuple[Test | None, str]:
    table = [[g.first_passes, g.units - g.first_passes] for g in groups]
    fails = sum(row[1] for row in table)
    passes = sum(row[0] for row in table)
    if len(groups) < 2:
        return None, "one value only: nothing to compare"
    if fails == 0 or passes == 0:
        return None, "every first attempt " + ("passed" if fails == 0 else "failed")
    if len(groups) == 2:
        result = fisher_exact(table)
        return Test("fisher_exact", result.statistic, result.p_value), ""
    result = chi_square_independence(table)
    total = passes + fails
    small = sum(
        1
        for row in table
        for column, count in enumerate(row)
        if sum(row) * (passes if column == 0 else fails) / total < 5
    )
    note = f"{small} expected count(s) below 5: the p-value is approximate" if small else ""
    return Test("chi_square", result.statistic, result.p_value, result.df), note


def _adjusted(test: Test) -> str:
    return f"p = {_p(test.p_value)}, Holm-adjusted {_p(test.p_adjusted or test.p_value)}"


def _yield_finding(
    operation: str, kind: str, groups: Sequence[ResourceGroup], test: Test
) -> str | None:
    if test.p_adjusted is None or test.p_adjusted >= ALPHA:
        return None
    worst = min(groups, key=lambda g: g.first_passes / g.units)
    others_units = sum(g.units for g in groups if g is not worst)
    others_passes = sum(g.first_passes for g in groups if g is not worst)
    assert worst.first_pass_yield is not None
    fpy = worst.first_pass_yield
    how = "Fisher's exact test" if test.name == "fisher_exact" else "chi-square test"
    return (
        f"{kind.capitalize()} {worst.value} at {operation} differs at the 1 % level: first-pass "
        f"yield {_pct(fpy.estimate)} (95 % CI {_pct(fpy.lower)} to {_pct(fpy.upper)}, "
        f"{worst.units} units) against {_pct(others_passes / others_units)} for the other "
        f"{kind} values ({how}, {_adjusted(test)})."
    )


def _means(
    kind: str, values_of: dict[str, dict[str, list[float]]], names: Sequence[str]
) -> tuple[list[MeanComparison], dict[str, dict[str, list[float]]]]:
    """Welch's ANOVA of each characteristic over the values, and the measurements compared."""
    comparisons, compared = [], {}
    for name in names:
        groups = {value: found[name] for value, found in values_of.items() if found.get(name)}
        usable = {v: xs for v, xs in groups.items() if len(xs) >= 2 and _spread(xs)}
        if len(usable) < 2:
            why = "fewer than two values with two measurements and a spread"
            comparisons.append(MeanComparison(name, None, why))
            continue
        left_out = len(groups) - len(usable)
        result = welch_anova(list(usable.values()))
        test = Test(
            "welch_anova", result.statistic, result.p_value, result.df, result.df_denominator
        )
        note = (
            f"{left_out} value(s) with fewer than two measurements or no spread left out"
            if left_out
            else ""
        )
        comparisons.append(MeanComparison(name, test, note))
        compared[name] = usable
    return comparisons, compared


def _mean_finding(
    operation: str, kind: str, name: str, usable: dict[str, list[float]], test: Test
) -> str | None:
    if test.p_adjusted is None or test.p_adjusted >= ALPHA:
        return None
    everything = [x for xs in usable.values() for x in xs]
    grand = math.fsum(everything) / len(everything)
    means = {v: math.fsum(xs) / len(xs) for v, xs in usable.items()}
    far = max(means, key=lambda v: abs(means[v] - grand))
    rest = [x for v, xs in usable.items() if v != far for x in xs]
    return (
        f"{kind.capitalize()} {far} at {operation} differs at the 1 % level in the mean "
        f"of {name}: {means[far]:.4g} against {math.fsum(rest) / len(rest):.4g} for the "
        f"other {kind} values (Welch's ANOVA, F = {test.statistic:.3g}, {_adjusted(test)})."
    )


def _with_findings(splits: Sequence[ResourceSplit]) -> tuple[ResourceSplit, ...]:
    """Every test's Holm-adjusted p over all the report's tests, then the findings."""
    made = [s.yield_test for s in splits if s.yield_test is not None] + [
        m.test for s in splits for m in s.means if m.test is not None
    ]
    adjusted = iter(holm_adjusted([t.p_value for t in made]))
    yields = [
        None if s.yield_test is None else replace(s.yield_test, p_adjusted=next(adjusted))
        for s in splits
    ]
    out = []
    for split, yield_test in zip(splits, yields, strict=True):
        means = tuple(
            m if m.test is None else replace(m, test=replace(m.test, p_adjusted=next(adjusted)))
            for m in split.means
        )
        findings = (
            []
            if yield_test is None
            else [_yield_finding(split.operation, split.kind, split.groups, yield_test)]
        )
        findings += [
            _mean_finding(
                split.operation,
                split.kind,
                m.characteristic,
                split.usable[m.characteristic],
                m.test,
            )
            for m in means
            if m.test is not None
        ]
        out.append(
            replace(
                split,
                yield_test=yield_test,
                means=means,
                findings=tuple(f for f in findings if f is not None),
            )
        )
    return tuple(out)


def _spread(values: Sequence[float]) -> bool:
    return max(values) > min(values)


def resource_splits(data: RunData, operations: Sequence[str]) -> tuple[ResourceSplit, ...]:
    """Every (operation, kind) whose unit records name at least one value of the kind."""
    first: dict[tuple[str, str], tuple[bool, dict[str, str]]] = {}
    for record in data.units:
        a = record.attempt
        if a.golden or a.attempt != 1 or a.verdict == INCOMPLETE:
            continue
        first[(a.operation, a.serial)] = (a.verdict == PASS, dict(record.resources))
    values: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    limits: dict[tuple[str, str], tuple[float | None, float | None]] = {}
    critical: dict[str, list[str]] = defaultdict(list)
    for v in data.characteristics:
        if v.golden or v.attempt != 1:
            continue
        if v.critical and v.name not in critical[v.operation]:
            critical[v.operation].append(v.name)
        limits[(v.operation, v.name)] = (v.lsl, v.usl)  # the latest record's limits
        if v.value is not None and math.isfinite(v.value):
            values[(v.operation, v.serial)][v.name] = v.value
    splits = []
    for operation in operations:
        units = [(serial, ok, res) for (op, serial), (ok, res) in first.items() if op == operation]
        kinds = {kind for _, _, res in units for kind in res}
        ordered = [k for k in KINDS if k in kinds] + sorted(kinds - set(KINDS))
        names = sorted(critical.get(operation, []))
        for kind in ordered:
            tally: dict[str, list[int]] = {}
            values_of: dict[str, dict[str, list[float]]] = {}
            without = 0
            for serial, ok, res in units:
                value = res.get(kind)
                if value is None:
                    without += 1
                    continue
                counts = tally.setdefault(value, [0, 0])
                counts[0] += 1
                counts[1] += ok
                found = values_of.setdefault(value, {})
                for name, x in values.get((operation, serial), {}).items():
                    found.setdefault(name, []).append(x)
            groups = []
            for value, (n, passes) in tally.items():  # n >= 1: a value is counted when seen
                chars = []
                for name in names:
                    xs = values_of[value].get(name, [])
                    lsl, usl = limits.get((operation, name), (None, None))
                    mean = math.fsum(xs) / len(xs) if xs else None
                    cpk = None if mean is None else indices(mean, sd_within(xs), lsl, usl).k
                    chars.append(GroupCharacteristic(name, len(xs), mean, cpk))
                groups.append(
                    ResourceGroup(value, n, passes, wilson_interval(passes, n), tuple(chars))
                )
            test, note = _yield_test(groups)
            means, compared = _means(kind, values_of, names)
            split = ResourceSplit(
                operation, kind, tuple(groups), without, test, note, tuple(means), (), compared
            )
            splits.append(split)
    return _with_findings(splits)
