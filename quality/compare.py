"""Comparisons between groups (operators, fixtures, cavities, stations): the Wilson score
interval of a proportion, Fisher's exact test of a 2x2 table, the chi-square test of
independence of an r x c table, Welch's heteroscedastic one-way ANOVA, Holm's adjustment of
the p-values of several tests, and capability per group.

Pure functions, no I/O; distributions from scipy.stats, imported when a test is computed (it
takes about 1.5 s: the report's modules load at every store start). Formulas and sources:
docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from quality.capability import Capability, Measurement, capability

Z_95_TWO_SIDED = NormalDist().inv_cdf(0.975)  # 1.959964


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    lower: float
    upper: float


def wilson_interval(successes: int, n: int, z: float = Z_95_TWO_SIDED) -> Interval:
    """Wilson's score interval for a binomial proportion (no continuity correction): unlike the
    Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1, where yields of a
    good process live."""
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} trials")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    # At 0 or n successes one end is exactly 0 or 1; clamp the rounding of centre -/+ half.
    return Interval(p, max(0.0, float(centre - half)), min(1.0, float(centre + half)))


@dataclass(frozen=True, slots=True)
class TestResult:
    statistic: float
    p_value: float
    df: float | None = None  # degrees of freedom (chi-square); None for an exact test
    df_denominator: float | None = None  # the second one of an F test


Alternative = Literal["two-sided", "greater", "less"]


def fisher_exact(
    table: Sequence[Sequence[int]], alternative: Alternative = "two-sided"
) -> TestResult:
    """Fisher's exact test of a 2x2 table [[a, b], [c, d]] (rows: groups; columns: pass, fail).
    The statistic is the sample odds ratio ad / bc; the p-value is exact (hypergeometric)."""
    if len(table) != 2 or any(len(row) != 2 for row in table):
        raise ValueError("Fisher's exact test takes a 2x2 table")
    from scipy import stats  # noqa: PLC0415 - about 1.5 s to import: only when computed

    result = stats.fisher_exact([list(row) for row in table], alternative=alternative)
    return TestResult(float(result.statistic), float(result.pvalue))


def chi_square_independence(table: Sequence[Sequence[int]]) -> TestResult:
    """Pearson's chi-square test of independence of an r x c table of counts (rows: groups,
    columns: outcomes), without Yates' correction; df = (r - 1)(c - 1). The approximation wants
    expected counts of about 5 or more; for a 2x2 table with small counts use Fisher's test."""
    rows = [list(row) for row in table]
    if len(rows) < 2 or len(rows[0]) < 2 or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("a chi-square test of independence takes an r x c table, r, c >= 2")
    from scipy import stats  # noqa: PLC0415

    result = stats.chi2_contingency(rows, correction=False)
    return TestResult(float(result.statistic), float(result.pvalue), float(result.dof))


def welch_anova(groups: Sequence[Sequence[float]]) -> TestResult:
    """Welch's (1951) one-way ANOVA for means with unequal variances.

    With n_i, mean m_i and variance s_i^2 per group, w_i = n_i / s_i^2, W = sum w_i,
    m = sum w_i m_i / W, k groups, L = sum (1 - w_i / W)^2 / (n_i - 1):
    F = [sum w_i (m_i - m)^2 / (k - 1)] / [1 + 2 (k - 2) L / (k^2 - 1)],
    df1 = k - 1, df2 = (k^2 - 1) / (3 L). With two groups F is the square of Welch's t.
    scipy.stats has f_oneway (equal variances) but no Welch ANOVA, hence this.
    """
    k = len(groups)
    if k < 2:
        raise ValueError("Welch's ANOVA compares at least two groups")
    sizes, means, weights = [], [], []
    for group in groups:
        n = len(group)
        if n < 2:
            raise ValueError("every group needs at least two values")
        mean = math.fsum(group) / n
        variance = math.fsum((x - mean) ** 2 for x in group) / (n - 1)
        if variance <= 0.0:
            raise ValueError("a group without spread: Welch's weights n / s^2 are undefined")
        sizes.append(n)
        means.append(mean)
        weights.append(n / variance)
    total = math.fsum(weights)
    grand = math.fsum(w * m for w, m in zip(weights, means, strict=True)) / total
    between = math.fsum(w * (m - grand) ** 2 for w, m in zip(weights, means, strict=True))
    lam = math.fsum((1 - w / total) ** 2 / (n - 1) for w, n in zip(weights, sizes, strict=True))
    f = (between / (k - 1)) / (1 + 2 * (k - 2) * lam / (k * k - 1))
    df1 = float(k - 1)
    df2 = (k * k - 1) / (3 * lam)
    from scipy import stats  # noqa: PLC0415

    return TestResult(f, float(stats.f.sf(f, df1, df2)), df1, df2)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: sorted ascending,
    the i-th smallest (from 0) times ``m - i``, made non-decreasing, capped at 1. Calling a
    test significant when its adjusted p is below alpha keeps the chance of any false call
    among the ``m`` tests at most alpha, whatever their dependence: a report that runs twenty
    tests at 1 % would otherwise name a resource by chance in about one run of five."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        if not 0.0 <= p_values[i] <= 1.0:
            raise ValueError(f"a p-value must be in [0, 1], got {p_values[i]}")
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def group_capability(
    groups: Mapping[str, Iterable[Measurement]], lsl: float | None, usl: float | None
) -> dict[str, Capability]:
    """Mean, spread, Cpk and the rest (quality/capability.py) of each group, in the mapping's
    order."""
    return {name: capability(values, lsl, usl) for name, values in groups.items()}
