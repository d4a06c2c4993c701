"""quality/compare.py and quality/gauge.py against published values."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from scipy import stats

from quality import Measurement
from quality.compare import (
    chi_square_independence,
    fisher_exact,
    group_capability,
    holm_adjusted,
    welch_anova,
    wilson_interval,
)
from quality.gauge import type1_study


@pytest.mark.parametrize(
    ("successes", "n", "lower", "upper"),
    [
        # Newcombe (1998), Statistics in Medicine 17, 857-872, Table II, method 3 (Wilson score
        # interval without continuity correction), examples (a) to (d).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_newcombe(successes: int, n: int, lower: float, upper: float) -> None:
    interval = wilson_interval(successes, n)
    assert round(interval.lower, 4) == lower
    assert round(interval.upper, 4) == upper
    assert interval.estimate == successes / n


def test_wilson_interval_edges() -> None:
    assert wilson_interval(29, 29).upper == 1.0
    assert wilson_interval(0, 29).lower == 0.0
    with pytest.raises(ValueError, match="trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_fisher_lady_tasting_tea() -> None:
    # Fisher, The Design of Experiments (1935), ch. II: 8 cups, 4 of each kind, 3 right of each:
    # P(3 or 4 right) = (16 + 1) / 70 one-sided; two-sided 34 / 70 = 0.4857.
    one_sided = fisher_exact([[3, 1], [1, 3]], alternative="greater")
    two_sided = fisher_exact([[3, 1], [1, 3]])
    assert one_sided.p_value == pytest.approx(float(Fraction(17, 70)), rel=1e-12)
    assert two_sided.p_value == pytest.approx(float(Fraction(34, 70)), rel=1e-12)
    assert two_sided.statistic == 9.0  # odds ratio 3*3 / (1*1)
    with pytest.raises(ValueError, match="2x2"):
        fisher_exact([[1, 2, 3], [4, 5, 6]])


def test_chi_square_agresti_party_identification() -> None:
    # Agresti, An Introduction to Categorical Data Analysis, 2nd ed. (2007), Table 2.5 / 2.4.4:
    # party identification by gender, X^2 = 30.07, df = 2, P < 0.001.
    result = chi_square_independence([[762, 327, 468], [484, 239, 477]])
    assert round(result.statistic, 2) == 30.07
    assert result.df == 2
    assert result.p_value < 0.001
    # 1st ed. (1996), Table 2.5 (1991 GSS): X^2 = 7.01, df 2, P = 0.03.
    result = chi_square_independence([[279, 73, 225], [165, 47, 191]])
    assert round(result.statistic, 2) == 7.01
    assert round(result.p_value, 2) == 0.03
    with pytest.raises(ValueError, match="r x c"):
        chi_square_independence([[1, 2]])


SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_welch_anova_r_sleep_example() -> None:
    # R, ?oneway.test / ?t.test on Student's (1908) sleep data: oneway.test(extra ~ group):
    # F = 3.4626, num df = 1, denom df = 17.776, p-value = 0.07939 (= Welch's t = -1.8608).
    result = welch_anova([SLEEP_1, SLEEP_2])
    assert round(result.statistic, 4) == 3.4626
    assert result.df == 1.0
    assert result.df_denominator is not None
    assert round(result.df_denominator, 3) == 17.776
    assert round(result.p_value, 5) == 0.07939


def test_welch_anova_two_groups_is_welch_t_squared_and_three_groups() -> None:
    a, b = [1.0, 2.0, 4.0, 3.5, 2.2], [5.0, 9.0, 7.5, 6.0, 8.8, 7.7, 6.1]
    welch_t = stats.ttest_ind(a, b, equal_var=False)
    result = welch_anova([a, b])
    assert result.statistic == pytest.approx(float(welch_t.statistic) ** 2, rel=1e-12)
    assert result.p_value == pytest.approx(float(welch_t.pvalue), rel=1e-9)
    # Three groups of 5 with equal variances (shifted copies): every w_i = 5 / s^2, so by the
    # formula by hand L = 3 (2/3)^2 / 4 = 1/3, F = [w sum (m_i - m)^2 / 2] / (1 + 2 L / 8),
    # df2 = 8 / (3 L) = 8; and F stays below the classic one-way F of the same data.
    groups = [a, [x + 0.5 for x in a], [x + 1.0 for x in a]]
    three = welch_anova(groups)
    w = 5 / statistics_var(a)
    by_hand = w * (0.5**2 + 0.0 + 0.5**2) / 2 / (1 + 2 * (1 / 3) / 8)
    assert three.statistic == pytest.approx(by_hand, rel=1e-12)
    assert three.df_denominator == pytest.approx(8.0, rel=1e-12)
    assert three.statistic < float(stats.f_oneway(*groups).statistic)
    with pytest.raises(ValueError, match="spread"):
        welch_anova([[1.0, 1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="two groups"):
        welch_anova([[1.0, 2.0]])


def statistics_var(values: list[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.fsum((x - mean) ** 2 for x in values) / (len(values) - 1)


def test_holm_adjusted_worked_examples() -> None:
    # The four hypotheses of the textbook example (alpha 0.05: H4 and H1 rejected, H3 and H2
    # not): adjusted p = min(1, (m - i + 1) p_(i)), made non-decreasing, as R's
    # p.adjust(p, "holm").
    adjusted = holm_adjusted([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [a < 0.05 for a in adjusted] == [True, False, False, True]
    # Six tests (R p.adjust(c(0.01, 0.04, 0.20, 0.03, 0.005, 0.07), "holm")): the step-down
    # keeps 0.04's adjusted p at 0.12, not 3 x 0.04, and caps nothing above 1 here.
    assert holm_adjusted([0.01, 0.04, 0.20, 0.03, 0.005, 0.07]) == pytest.approx(
        [0.05, 0.12, 0.20, 0.12, 0.03, 0.14]
    )
    assert holm_adjusted([0.5, 0.6]) == [1.0, 1.0]
    assert holm_adjusted([0.004]) == [0.004]  # one test: unchanged
    assert holm_adjusted([]) == []
    with pytest.raises(ValueError, match="a p-value must be in"):
        holm_adjusted([0.1, 1.5])


def test_group_capability_reuses_capability() -> None:
    groups = {
        "op-A": [Measurement(f"S{i}", v) for i, v in enumerate([10.0, 10.2, 9.9, 10.1, 10.0])],
        "op-B": [Measurement(f"T{i}", v) for i, v in enumerate([11.0, 11.4, 10.8, 11.1, 11.2])],
    }
    result = group_capability(groups, 9.0, 12.0)
    assert list(result) == ["op-A", "op-B"]
    assert result["op-A"].mean == pytest.approx(10.04)
    assert result["op-B"].mean == pytest.approx(11.1)
    assert result["op-B"].cpk is not None
    assert result["op-A"].cpk is not None
    assert result["op-B"].cpk < result["op-A"].cpk


def test_type1_gauge_study_worked_example() -> None:
    # docs/statistics.md, "Gauge type-1 study": 10 measurements of a 10.000 reference part,
    # tolerance 0.1: mean 10.0005, s = sqrt(22.5e-6 / 9) = 0.0015811, bias 0.0005,
    # Cg = 0.02 / (6 s) = 2.1082, Cgk = (0.01 - 0.0005) / (3 s) = 2.0028, t = 1.000 (df 9),
    # two-sided p = 0.3434 (t table: P(|t_9| > 1) = 0.3434).
    values = [10.002, 9.998, 10.001, 10.003, 9.999, 10.000, 10.002, 9.999, 10.001, 10.000]
    study = type1_study(values, reference=10.0, tolerance=0.1)
    assert study.n == 10
    assert study.mean == pytest.approx(10.0005, abs=1e-12)
    assert study.sd == pytest.approx(math.sqrt(2.5e-6), rel=1e-9)
    assert study.bias == pytest.approx(0.0005, abs=1e-12)
    assert study.cg is not None
    assert study.cgk is not None
    assert study.t is not None
    assert study.p_value is not None
    assert round(study.cg, 4) == 2.1082
    assert round(study.cgk, 4) == 2.0028
    assert study.t == pytest.approx(1.0, rel=1e-9)
    assert round(study.p_value, 4) == 0.3434
    # scipy's own one-sample t-test agrees.
    assert study.p_value == pytest.approx(float(stats.ttest_1samp(values, 10.0).pvalue))


def test_type1_gauge_study_without_spread_and_bad_inputs() -> None:
    study = type1_study([5.0, 5.0, 5.0], reference=5.1, tolerance=1.0)
    assert (study.cg, study.cgk, study.t, study.p_value) == (None, None, None, None)
    assert study.bias == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="two measurements"):
        type1_study([1.0], 1.0, 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        type1_study([1.0, 2.0], 1.0, 0.0)
