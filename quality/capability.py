"""Capability of one characteristic: spread within and overall, Cp/Cpk/Pp/Ppk, the lower 95 %
confidence bound of Cpk, the fraction out of spec, and the individuals / moving-range chart.

Pure functions, no I/O. ``None`` wherever a figure is undefined: fewer than two values, zero
spread, or an index that needs a limit the characteristic does not have. Formulas and sources:
docs/statistics.md.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quality.charts import (
    ChartLimits,
    RuleViolation,
    chart_limits,
    moving_ranges,
    western_electric,
)

D2 = 1.128  # d2 for moving ranges of two consecutive values (ASTM E2587, Montgomery App. VI)
Z_95_ONE_SIDED = statistics.NormalDist().inv_cdf(0.95)  # 1.6449; a one-sided 95 % bound


@dataclass(frozen=True, slots=True)
class Measurement:
    """One piece's value of a characteristic, in production order."""

    serial: str
    value: float | None  # None: the record had no value (counted as missing)
    group: str = ""  # the rational subgroup it belongs to (an hour, a work order, ...)
    golden: bool = False


@dataclass(frozen=True, slots=True)
class Indices:
    """Capability (``sigma`` within) or performance (``sigma`` overall) indices."""

    upper: float | None  # (USL - mean) / 3 sigma
    lower: float | None  # (mean - LSL) / 3 sigma
    potential: float | None  # Cp or Pp: (USL - LSL) / 6 sigma, both limits only
    k: float | None  # Cpk or Ppk: the smaller of the defined one-sided indices


@dataclass(frozen=True, slots=True)
class Capability:
    n: int
    missing: int
    subgroups: int
    mean: float | None
    sd_within: float | None
    sd_overall: float | None
    lsl: float | None
    usl: float | None
    cp: float | None
    cpk: float | None
    pp: float | None
    ppk: float | None
    cpk_lower_95: float | None
    ppk_lower_95: float | None
    out_of_spec: float | None  # fraction of the n values outside [LSL, USL]
    out_of_spec_count: int
    chart: ChartLimits | None
    violations: tuple[RuleViolation, ...]
    values: tuple[float, ...]  # the n values, in order (for the chart)
    serials: tuple[str, ...]  # the piece of each value


def sd_within(values: Sequence[float]) -> float | None:
    """Short-term standard deviation of individual values: average moving range / d2."""
    if len(values) < 2:
        return None
    ranges = moving_ranges(values)
    return math.fsum(ranges) / len(ranges) / D2


def sd_overall(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1 in the denominator)."""
    if len(values) < 2:
        return None
    # Two passes in floats (statistics.stdev computes in exact fractions: 50x slower); the
    # tests check it against statistics.stdev.
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def indices(mean: float, sigma: float | None, lsl: float | None, usl: float | None) -> Indices:
    """Cp/Cpk (or Pp/Ppk, given sigma overall). With one limit only, Cp is undefined and Cpk
    is the one-sided index; with no spread (sigma 0 or None) every index is undefined."""
    if sigma is None or sigma <= 0.0 or not math.isfinite(sigma):
        return Indices(None, None, None, None)
    upper = (usl - mean) / (3.0 * sigma) if usl is not None else None
    lower = (mean - lsl) / (3.0 * sigma) if lsl is not None else None
    potential = (usl - lsl) / (6.0 * sigma) if usl is not None and lsl is not None else None
    sides = [side for side in (upper, lower) if side is not None]
    return Indices(upper, lower, potential, min(sides) if sides else None)


def lower_bound_95(index: float | None, n: int) -> float | None:
    """Bissell's (1990) approximate one-sided 95 % lower confidence bound of Cpk (or Ppk):
    index - z * sqrt(1/(9n) + index^2 / (2(n-1))), z = 1.645. An approximation, normal
    theory; close to exact from n of about 30 up."""
    if index is None or n < 2:
        return None
    return index - Z_95_ONE_SIDED * math.sqrt(1.0 / (9.0 * n) + index * index / (2.0 * (n - 1)))


def fraction_out_of_spec(
    values: Sequence[float], lsl: float | None, usl: float | None
) -> tuple[int, float | None]:
    """How many values lie outside the limits (a value on a limit is in spec), and the share."""
    count = sum(1 for v in values if (lsl is not None and v < lsl) or (usl is not None and v > usl))
    return count, (count / len(values) if values else None)


def capability(
    measurements: Iterable[Measurement], lsl: float | None, usl: float | None
) -> Capability:
    """Every capability figure of one characteristic from its measurements in production order.

    Golden samples are left out (see :func:`golden_checks`); missing values are counted in
    ``missing`` and skipped: the moving range then spans the gap, as a chart of the pieces
    that were measured.
    """
    if lsl is not None and usl is not None and lsl > usl:
        raise ValueError(f"LSL {lsl} is above USL {usl}")
    kept = [m for m in measurements if not m.golden]
    present = [m for m in kept if m.value is not None and math.isfinite(m.value)]
    values = tuple(float(m.value) for m in present if m.value is not None)
    n = len(values)
    mean = math.fsum(values) / n if n else None
    within = sd_within(values)
    overall = sd_overall(values)
    count_out, out = fraction_out_of_spec(values, lsl, usl)
    if mean is None:
        cap = perf = Indices(None, None, None, None)
    else:
        cap = indices(mean, within, lsl, usl)
        perf = indices(mean, overall, lsl, usl)
    chart = chart_limits(values, within) if mean is not None else None
    serials = tuple(m.serial for m in present)
    violations = western_electric(values, serials, chart) if chart is not None else ()
    return Capability(
        n=n,
        missing=len(kept) - n,
        subgroups=len({m.group for m in present}),
        mean=mean,
        sd_within=within,
        sd_overall=overall,
        lsl=lsl,
        usl=usl,
        cp=cap.potential,
        cpk=cap.k,
        pp=perf.potential,
        ppk=perf.k,
        cpk_lower_95=lower_bound_95(cap.k, n),
        ppk_lower_95=lower_bound_95(perf.k, n),
        out_of_spec=out,
        out_of_spec_count=count_out,
        chart=chart,
        violations=violations,
        values=values,
        serials=serials,
    )


@dataclass(frozen=True, slots=True)
class GoldenCheck:
    """A golden sample's measurements of one characteristic: a drift check of the tester."""

    serial: str
    n: int
    first: float
    last: float
    minimum: float
    maximum: float
    drift: float  # last - first
    out_of_spec: int


def golden_checks(
    measurements: Iterable[Measurement], lsl: float | None, usl: float | None
) -> tuple[GoldenCheck, ...]:
    """Per golden serial, in order of first appearance: how its measured value moved."""
    by_serial: dict[str, list[float]] = {}
    for m in measurements:
        if m.golden and m.value is not None and math.isfinite(m.value):
            by_serial.setdefault(m.serial, []).append(float(m.value))
    checks = []
    for serial, values in by_serial.items():
        count_out, _ = fraction_out_of_spec(values, lsl, usl)
        checks.append(
            GoldenCheck(
                serial=serial,
                n=len(values),
                first=values[0],
                last=values[-1],
                minimum=min(values),
                maximum=max(values),
                drift=values[-1] - values[0],
                out_of_spec=count_out,
            )
        )
    return tuple(checks)
