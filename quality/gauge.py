"""Type-1 gauge study: repeated measurements of one reference part on one gauge give its
capability Cg, Cgk and its bias, with a one-sample t-test of the bias.

Pure functions, no I/O. The 20 % of the tolerance (Cg) and 10 % (Cgk) with 6 s and 3 s are
the usual type-1 study convention (VDA 5; AIAG MSA 4th ed. treats bias the same way);
docs/statistics.md has the formulas and a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

K_PERCENT = 0.2  # the share of the tolerance the gauge's 6 s may take (Cg >= 1.33 usual)


@dataclass(frozen=True, slots=True)
class GaugeStudy:
    n: int
    reference: float  # the reference part's value (x_ref)
    tolerance: float  # T = USL - LSL of the characteristic
    mean: float
    sd: float  # sample standard deviation of the repeated measurements
    bias: float  # mean - reference
    cg: float | None  # 0.2 T / (6 s); None without spread
    cgk: float | None  # (0.1 T - |bias|) / (3 s)
    t: float | None  # bias / (s / sqrt(n)), n - 1 degrees of freedom
    p_value: float | None  # two-sided: is the bias significant?


def type1_study(values: Sequence[float], reference: float, tolerance: float) -> GaugeStudy:
    """Cg, Cgk, bias and its t-test from repeated measurements of one reference part.

    Cg = 0.2 T / (6 s), Cgk = (0.1 T - |x̄ - x_ref|) / (3 s), t = (x̄ - x_ref) / (s / sqrt n).
    Zero spread (a gauge whose resolution is too coarse) leaves Cg, Cgk and the test undefined.
    """
    n = len(values)
    if n < 2:
        raise ValueError("a type-1 study needs at least two measurements (usually 25 to 50)")
    if tolerance <= 0.0:
        raise ValueError(f"tolerance {tolerance} must be positive")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    bias = mean - reference
    if sd <= 0.0:
        return GaugeStudy(n, reference, tolerance, mean, sd, bias, None, None, None, None)
    t = bias / (sd / math.sqrt(n))
    return GaugeStudy(
        n=n,
        reference=reference,
        tolerance=tolerance,
        mean=mean,
        sd=sd,
        bias=bias,
        cg=K_PERCENT * tolerance / (6.0 * sd),
        cgk=(K_PERCENT / 2 * tolerance - abs(bias)) / (3.0 * sd),
        t=t,
        p_value=float(2.0 * _t_sf(abs(t), n - 1)),
    )


def _t_sf(t: float, df: int) -> float:
    from scipy import stats  # noqa: PLC0415 - about 1.5 s to import: only when computed

    return float(stats.t.sf(t, df))
