"""quality/: against published reference values (NIST/SEMATECH e-Handbook 6.1.6 and 6.3.2.2),
against values computed independently with the standard library, and on the edge cases."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

import pytest

from quality import (
    Attempt,
    Measurement,
    capability,
    chart_limits,
    cycle_time,
    golden_checks,
    indices,
    lower_bound_95,
    operation_figures,
    pareto,
    percentile,
    rolled_throughput_yield,
    sd_within,
    western_electric,
)

# NIST/SEMATECH e-Handbook of Statistical Methods, 6.3.2.2 "Individuals Control Charts":
# flow rate of 10 batches; published x-bar 50.81, MR-bar 1.8778, UCL 55.8041, LCL 45.8159.
NIST_FLOW = [49.6, 47.6, 49.9, 51.3, 47.8, 51.2, 52.6, 52.4, 53.6, 52.1]


def _measurements(values: Sequence[float | None], golden: bool = False) -> list[Measurement]:
    return [
        Measurement(f"U{i:04d}", v, group=str(i // 5), golden=golden) for i, v in enumerate(values)
    ]


# ----------------------------------------------------------------------------- capability


def test_indices_match_nist_6_1_6_example() -> None:
    # NIST 6.1.6: USL 20, LSL 8, mean 16, sigma 2 -> Cp 1.0, Cpu 0.6667, Cpl 1.3333, Cpk 0.6667.
    result = indices(16.0, 2.0, lsl=8.0, usl=20.0)
    assert result.potential == pytest.approx(1.0, abs=1e-4)
    assert result.upper == pytest.approx(0.6667, abs=1e-4)
    assert result.lower == pytest.approx(1.3333, abs=1e-4)
    assert result.k == pytest.approx(0.6667, abs=1e-4)


def test_nist_6_1_6_from_data_with_that_mean_and_sd_gives_pp_and_ppk() -> None:
    # 100 values scaled to mean 16 and sample sd 2 exactly: Pp and Ppk are the NIST figures.
    rng = random.Random(7)
    raw = [rng.gauss(0.0, 1.0) for _ in range(100)]
    m, s = statistics.fmean(raw), statistics.stdev(raw)
    values = [16.0 + 2.0 * (x - m) / s for x in raw]
    result = capability(_measurements(values), lsl=8.0, usl=20.0)
    assert result.mean == pytest.approx(16.0)
    assert result.sd_overall == pytest.approx(2.0)
    assert result.pp == pytest.approx(1.0, abs=1e-4)
    assert result.ppk == pytest.approx(0.6667, abs=1e-4)


def test_individuals_chart_matches_nist_6_3_2_2() -> None:
    limits = chart_limits(NIST_FLOW, sd_within(NIST_FLOW))
    assert limits is not None
    assert limits.center == pytest.approx(50.81, abs=1e-9)
    assert limits.mr_center == pytest.approx(1.8778, abs=1e-4)
    assert limits.ucl == pytest.approx(55.8041, abs=1e-4)
    assert limits.lcl == pytest.approx(45.8159, abs=1e-4)
    assert limits.mr_ucl == pytest.approx(3.267 * 1.877777, abs=1e-4)
    # NIST: the process is in control (no point beyond the limits).
    assert western_electric(NIST_FLOW, [str(i) for i in range(10)], limits) == ()


def test_every_figure_against_an_independent_computation() -> None:
    rng = random.Random(42)
    values = [round(rng.gauss(10.0, 0.5), 3) for _ in range(60)]
    lsl, usl = 8.5, 12.0
    result = capability(_measurements(values), lsl=lsl, usl=usl)
    mean = statistics.fmean(values)
    sd_o = statistics.stdev(values)
    mr_bar = statistics.fmean(abs(values[i] - values[i - 1]) for i in range(1, 60))
    sd_w = mr_bar / 1.128
    cpk = min(usl - mean, mean - lsl) / (3 * sd_w)
    z = statistics.NormalDist().inv_cdf(0.95)
    assert result.n == 60
    assert result.mean == pytest.approx(mean)
    assert result.sd_overall == pytest.approx(sd_o)
    assert result.sd_within == pytest.approx(sd_w)
    assert result.cp == pytest.approx((usl - lsl) / (6 * sd_w))
    assert result.cpk == pytest.approx(cpk)
    assert result.pp == pytest.approx((usl - lsl) / (6 * sd_o))
    assert result.ppk == pytest.approx(min(usl - mean, mean - lsl) / (3 * sd_o))
    assert result.cpk_lower_95 == pytest.approx(cpk - z * math.sqrt(1 / 540 + cpk**2 / 118))
    assert result.out_of_spec == sum(v < lsl or v > usl for v in values) / 60
    assert result.subgroups == 12


def test_bissell_bound_by_hand() -> None:
    # Cpk 1.33 from 100 pieces: 1.33 - 1.6449 * sqrt(1/900 + 1.7689/198) = 1.1651.
    assert lower_bound_95(1.33, 100) == pytest.approx(1.1651, abs=1e-4)
    assert lower_bound_95(1.33, 1) is None
    assert lower_bound_95(None, 100) is None


def test_zero_spread_leaves_every_index_undefined() -> None:
    result = capability(_measurements([5.0] * 20), lsl=4.0, usl=6.0)
    assert result.sd_within == 0.0
    assert result.sd_overall == 0.0
    assert (result.cp, result.cpk, result.pp, result.ppk, result.cpk_lower_95) == (None,) * 5
    assert result.out_of_spec == 0.0
    assert result.violations == ()


def test_one_sided_limits_give_only_the_defined_index() -> None:
    values = [1.0, 1.2, 0.9, 1.1, 1.0, 0.8, 1.3, 1.0]
    upper_only = capability(_measurements(values), lsl=None, usl=2.0)
    assert upper_only.cp is None
    assert upper_only.pp is None
    sd_w = upper_only.sd_within
    assert sd_w is not None
    assert upper_only.cpk == pytest.approx((2.0 - statistics.fmean(values)) / (3 * sd_w))
    assert upper_only.cpk_lower_95 is not None
    lower_only = capability(_measurements(values), lsl=0.5, usl=None)
    assert lower_only.cp is None
    assert lower_only.cpk == pytest.approx((statistics.fmean(values) - 0.5) / (3 * sd_w))
    no_limits = capability(_measurements(values), lsl=None, usl=None)
    assert (no_limits.cp, no_limits.cpk, no_limits.out_of_spec) == (None, None, 0.0)


def test_fewer_than_two_values() -> None:
    one = capability(_measurements([3.0]), lsl=1.0, usl=5.0)
    assert one.n == 1
    assert one.mean == 3.0
    assert (one.sd_within, one.sd_overall, one.cpk, one.cpk_lower_95) == (None,) * 4
    assert one.chart is not None
    assert one.chart.mr_center is None
    none = capability([], lsl=1.0, usl=5.0)
    assert (none.n, none.mean, none.out_of_spec, none.chart) == (0, None, None, None)


def test_missing_values_are_counted_and_skipped() -> None:
    result = capability(_measurements([1.0, None, 2.0, float("nan"), 4.0]), lsl=0.0, usl=5.0)
    assert result.n == 3
    assert result.missing == 2
    assert result.values == (1.0, 2.0, 4.0)
    assert result.serials == ("U0000", "U0002", "U0004")
    assert result.sd_within == pytest.approx(((1.0 + 2.0) / 2) / 1.128)


def test_limits_on_the_value_are_in_spec_and_beyond_are_out() -> None:
    result = capability(_measurements([1.0, 2.0, 3.0, 0.999, 3.001]), lsl=1.0, usl=3.0)
    assert result.out_of_spec_count == 2
    assert result.out_of_spec == pytest.approx(0.4)


def test_lsl_above_usl_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"LSL 3\.0 is above USL 1\.0"):
        capability(_measurements([1.0, 2.0]), lsl=3.0, usl=1.0)


def test_golden_samples_are_left_out_and_shown_apart() -> None:
    run = _measurements([10.0, 10.2, 9.9, 10.1])
    golden = [
        Measurement("G1", 10.0, golden=True),
        Measurement("G1", 10.4, golden=True),
        Measurement("G2", 99.0, golden=True),
    ]
    result = capability(run + golden, lsl=9.0, usl=11.0)
    assert result.n == 4
    assert result.out_of_spec_count == 0
    checks = golden_checks(run + golden, lsl=9.0, usl=11.0)
    assert [(c.serial, c.n, c.first, c.last, c.out_of_spec) for c in checks] == [
        ("G1", 2, 10.0, 10.4, 0),
        ("G2", 1, 99.0, 99.0, 1),
    ]
    assert checks[0].drift == pytest.approx(0.4)


# ----------------------------------------------------------------------------- charts


def _flags(values: list[float], center: float = 0.0, sigma: float = 1.0) -> list[tuple[int, int]]:
    limits = chart_limits(values, sigma)
    assert limits is not None
    # Fixed centre and sigma so that each pattern is exactly what the test writes.
    limits = type(limits)(center, sigma, center + 3 * sigma, center - 3 * sigma, None, None)
    found = western_electric(values, [f"S{i}" for i in range(len(values))], limits)
    return [(v.rule, v.index) for v in found]


def test_rule_1_beyond_three_sigma_either_side() -> None:
    assert _flags([0.1, 3.5, -0.2, -3.1, 0.0]) == [(1, 1), (1, 3)]


def test_rule_2_two_of_three_beyond_two_sigma_on_one_side() -> None:
    assert _flags([0.0, 2.5, 0.1, 2.2, -0.3]) == [(2, 3)]
    assert _flags([0.0, 2.5, -2.2, 0.0]) == []  # opposite sides: no pattern


def test_rule_3_four_of_five_beyond_one_sigma_on_one_side() -> None:
    assert _flags([-0.5, 1.5, 1.2, 0.3, 1.1, 1.4, -0.2]) == [(3, 5)]


def test_rule_4_eight_in_a_row_on_one_side() -> None:
    values = [-0.1] + [0.5] * 9
    assert _flags(values) == [(4, 8), (4, 9)]
    assert _flags([0.5] * 7 + [0.0] + [0.5]) == []  # a point on the centre breaks the run


def test_violations_name_the_unit() -> None:
    values = [9.5, 10.5] * 15 + [14.0]
    result = capability(_measurements(values), lsl=None, usl=None)
    assert [(v.rule, v.serial, v.value) for v in result.violations] == [(1, "U0030", 14.0)]


# ----------------------------------------------------------------------------- yields


def _a(serial: str, attempt: int, verdict: str, **kw: object) -> Attempt:
    return Attempt(serial, kw.pop("operation", "ft"), attempt, verdict, **kw)  # type: ignore[arg-type]


def test_retest_counts_against_first_pass_yield_but_not_final_yield() -> None:
    attempts = [
        _a("A", 1, "pass"),
        _a("B", 1, "fail", failure_code="317"),
        _a("B", 2, "pass"),
        _a("C", 2, "fail", failure_code="12"),  # order of records does not matter
        _a("C", 1, "rework", failure_code="317"),
        _a("D", 1, "scrap", failure_code="99"),
    ]
    f = operation_figures("ft", attempts)
    assert (f.units, f.attempts, f.first_pass, f.final_pass) == (4, 6, 1, 2)
    assert f.first_pass_yield == pytest.approx(0.25)
    assert f.final_yield == pytest.approx(0.5)
    assert f.scrap_rate == pytest.approx(0.25)
    assert f.rework_rate == pytest.approx(0.25)
    assert (f.retests, f.retests_passed, f.retest_pass_rate) == (2, 1, 0.5)
    assert [(b.code, b.count) for b in f.pareto] == [("317", 2), ("12", 1), ("99", 1)]
    assert f.pareto[-1].cumulative == pytest.approx(1.0)


def test_final_yield_takes_the_last_attempt_not_any_passed_attempt() -> None:
    # A unit that passed once and then failed or was scrapped on a later attempt (a re-check
    # after a customer return, a rework loop that broke it) is not a final pass: only the
    # highest attempt number counts, whatever order the records arrive in.
    attempts = [
        _a("P", 1, "pass"),  # passes, stays passed
        _a("Q", 1, "pass"),
        _a("Q", 2, "fail", failure_code="41"),  # passed at 1, failed at 2: not a final pass
        _a("R", 3, "scrap", failure_code="99"),  # records out of order: attempt 3 is last
        _a("R", 1, "pass"),
        _a("R", 2, "pass"),
        _a("S", 1, "fail", failure_code="41"),
        _a("S", 2, "pass"),  # failed at 1, passed at 2: a final pass
    ]
    f = operation_figures("ft", attempts)
    assert (f.units, f.attempts, f.first_pass, f.final_pass) == (4, 8, 3, 2)
    assert f.final_yield == pytest.approx(0.5)
    assert f.first_pass_yield == pytest.approx(0.75)
    assert (f.scrapped, f.retests, f.retests_passed) == (1, 4, 2)


def test_all_pass_and_all_fail() -> None:
    good = operation_figures("ft", [_a(f"U{i}", 1, "pass") for i in range(10)])
    assert (good.first_pass_yield, good.final_yield, good.scrap_rate) == (1.0, 1.0, 0.0)
    assert good.retest_pass_rate is None  # no retest: undefined, not 0
    assert good.pareto == ()
    bad = operation_figures("ft", [_a(f"U{i}", 1, "fail") for i in range(10)])
    assert (bad.first_pass_yield, bad.final_yield) == (0.0, 0.0)
    assert [(b.code, b.count, b.share) for b in bad.pareto] == [("(none)", 10, 1.0)]


def test_no_units_gives_undefined_yields() -> None:
    f = operation_figures("ft", [_a("A", 1, "pass", operation="other")])
    assert (f.units, f.first_pass_yield, f.final_yield, f.scrap_rate) == (0, None, None, None)
    assert f.cycle_time.mean is None


def test_golden_units_are_left_out_of_yields() -> None:
    attempts = [
        _a("A", 1, "pass"),
        _a("G", 1, "fail", golden=True),
        _a("G", 2, "fail", golden=True),
    ]
    f = operation_figures("ft", attempts)
    assert (f.units, f.first_pass_yield, f.golden_units) == (1, 1.0, 1)


def test_cycle_time_against_independent_quantiles() -> None:
    rng = random.Random(3)
    times = [rng.uniform(30.0, 50.0) for _ in range(101)]
    ct = cycle_time([*times, None], takt_s=45.0)
    expected = statistics.quantiles(times, n=20, method="inclusive")
    assert ct.n == 101
    assert ct.mean == pytest.approx(statistics.fmean(times))
    assert ct.p50 == pytest.approx(statistics.median(times))
    assert ct.p95 == pytest.approx(expected[18])
    assert ct.within_takt == pytest.approx(sum(t <= 45.0 for t in times) / 101)


def test_incomplete_attempts_give_no_cycle_time_and_takt_from_records() -> None:
    attempts = [
        _a("A", 1, "pass", cycle_time_s=40.0, takt_s=45.0),
        _a("B", 1, "incomplete", cycle_time_s=3600.0, takt_s=45.0),
        _a("C", 1, "pass", cycle_time_s=44.0, takt_s=60.0),
    ]
    f = operation_figures("ft", attempts)
    assert f.takt_s == 45.0
    assert f.cycle_time.n == 2
    assert f.cycle_time.p95 == pytest.approx(40.0 + 0.95 * 4.0)
    assert operation_figures("ft", attempts, takt_s=30.0).takt_s == 30.0


def test_percentile_edges() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 1.5)


def test_pareto_ties_are_ordered_by_code() -> None:
    assert [b.code for b in pareto(["b", "a", None, "a", "b", ""])] == ["(none)", "a", "b"]


def test_rolled_throughput_yield() -> None:
    assert rolled_throughput_yield([0.9, 0.8, 0.5]) == pytest.approx(0.36)
    assert rolled_throughput_yield([0.9, None]) is None
    assert rolled_throughput_yield([]) is None


def test_quality_imports_nothing_but_the_standard_library() -> None:
    # The collector imports it for its live figures and the store for the report: no I/O or
    # framework may come along.
    import subprocess
    import sys

    code = (
        "import sys, quality; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'pydantic', 'orjson', 'collector', 'store', 'socket', 'sqlite3')]; "
        "print(bad)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
