"""Individuals and moving-range (I-MR) chart limits and the Western Electric rules 1-4.

Pure functions, no I/O. Sources: NIST/SEMATECH e-Handbook 6.3.2.2 (individuals charts);
Western Electric Statistical Quality Control Handbook (1956) for the rules; docs/statistics.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

D4 = 3.267  # D4 for ranges of two values: UCL of the moving-range chart = D4 * MR-bar


@dataclass(frozen=True, slots=True)
class ChartLimits:
    center: float  # the mean of the values
    sigma: float  # sigma within (MR-bar / d2)
    ucl: float  # center + 3 sigma
    lcl: float  # center - 3 sigma
    mr_center: float | None  # MR-bar; None with a single value
    mr_ucl: float | None  # D4 * MR-bar


@dataclass(frozen=True, slots=True)
class RuleViolation:
    """A point that completes a Western Electric pattern.

    rule 1: beyond 3 sigma; 2: two of three consecutive beyond 2 sigma on one side;
    3: four of five consecutive beyond 1 sigma on one side; 4: eight consecutive on one side
    of the centre. The point flagged is the last of the pattern (the one that completes it).
    """

    rule: int
    index: int  # 0-based position in the chart
    serial: str
    value: float


RULES = {
    1: "one point beyond 3 sigma",
    2: "2 of 3 consecutive points beyond 2 sigma on one side",
    3: "4 of 5 consecutive points beyond 1 sigma on one side",
    4: "8 consecutive points on one side of the centre line",
}


def moving_ranges(values: Sequence[float]) -> list[float]:
    """|x_i - x_{i-1}| for i = 1..n-1."""
    return [abs(b - a) for a, b in itertools.pairwise(values)]


def chart_limits(values: Sequence[float], sigma_within: float | None) -> ChartLimits | None:
    """Limits of the individuals chart (centre +/- 3 sigma within) and of the MR chart.

    None without values. A single value has a centre but no spread: sigma 0, no MR chart.
    """
    if not values:
        return None
    center = math.fsum(values) / len(values)
    sigma = sigma_within or 0.0
    mr_center = None
    if len(values) >= 2:
        ranges = moving_ranges(values)
        mr_center = math.fsum(ranges) / len(ranges)
    return ChartLimits(
        center=center,
        sigma=sigma,
        ucl=center + 3.0 * sigma,
        lcl=center - 3.0 * sigma,
        mr_center=mr_center,
        mr_ucl=D4 * mr_center if mr_center is not None else None,
    )


def western_electric(
    values: Sequence[float], serials: Sequence[str], limits: ChartLimits
) -> tuple[RuleViolation, ...]:
    """Every rule 1-4 violation of the individuals chart, in chart order then rule number.

    Without spread (sigma 0) no zone is defined and nothing is flagged. One pass: the point
    that completes a pattern is itself beyond the zone, so rules 2 and 3 only look back when
    it is (most points end the test at the first comparison).
    """
    if limits.sigma <= 0.0:
        return ()
    zs = [(v - limits.center) / limits.sigma for v in values]
    up2 = [z > 2.0 for z in zs]
    down2 = [z < -2.0 for z in zs]
    up1 = [z > 1.0 for z in zs]
    down1 = [z < -1.0 for z in zs]
    found: list[RuleViolation] = []
    run = side = 0
    for i, z in enumerate(zs):
        rules = []
        if z > 3.0 or z < -3.0:
            rules.append(1)
        # Rule 2: this point and at least one of the two before beyond 2 sigma, same side.
        if i >= 2 and (
            (up2[i] and (up2[i - 1] or up2[i - 2])) or (down2[i] and (down2[i - 1] or down2[i - 2]))
        ):
            rules.append(2)
        # Rule 3: this point and at least three of the four before beyond 1 sigma, same side.
        if i >= 4 and (
            (up1[i] and sum(up1[i - 4 : i]) >= 3) or (down1[i] and sum(down1[i - 4 : i]) >= 3)
        ):
            rules.append(3)
        # Rule 4: the eighth (or later) point in a row strictly on one side of the centre.
        this_side = 1 if z > 0.0 else -1 if z < 0.0 else 0
        run = run + 1 if this_side != 0 and this_side == side else int(this_side != 0)
        side = this_side
        if run >= 8:
            rules.append(4)
        found.extend(RuleViolation(rule, i, serials[i], values[i]) for rule in rules)
    return tuple(found)
