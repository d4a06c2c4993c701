"""quality/line.py on small hand-made runs: the figures below are worked out by hand in the
comments (percentiles: Hyndman & Fan type 7, h = q (n - 1)), and docs/statistics.md repeats
the first example."""

from __future__ import annotations

import random

import pytest

from quality.line import (
    Visit,
    constraint,
    line_figures,
    operation_flow,
    positions,
    wip_between,
)


def timed(operation: str, cycles: list[float | None], station: str | None = "s1") -> list[Visit]:
    """Visits of distinct units with the given cycle times (no times between operations)."""
    return [
        Visit(f"{operation}{i}", operation, None, None, cycle, station)
        for i, cycle in enumerate(cycles)
    ]


def three_operations() -> list[Visit]:
    a = timed("a", [10, 20, 30, 40])
    # b: two stations, so two units in parallel
    b = timed("b", [60, 80, 100]) + timed("b", [70, 90], station="s2")
    c = timed("c", [30, 30, 36])
    return (
        a
        + [Visit(f"x{v.serial}", v.operation, None, None, v.cycle_time_s, v.station) for v in b]
        + c
    )


def test_the_middle_operation_limits_the_line() -> None:
    line = line_figures(three_operations(), ["a", "b", "c"], {"a": 35.0, "b": 35.0, "c": 40.0})
    a, b, c = line.operations
    # a: 10 20 30 40 -> p50 h = 1.5: 25; p95 h = 2.85: 30 + 0.85 * 10 = 38.5
    assert (a.n, a.stations, a.p50_s, a.p95_s) == pytest.approx((4, 1, 25.0, 38.5))
    # b: 60 70 80 90 100 -> p50 80, p95 h = 3.8: 90 + 8 = 98; two stations: 40 and 49 per unit
    assert (b.n, b.stations, b.p50_s, b.p95_s) == pytest.approx((5, 2, 80.0, 98.0))
    assert (b.effective_p50_s, b.effective_p95_s) == pytest.approx((40.0, 49.0))
    # c: 30 30 36 -> p50 30, p95 h = 1.9: 30 + 0.9 * 6 = 35.4
    assert (c.p50_s, c.p95_s, c.effective_p50_s) == pytest.approx((30.0, 35.4, 30.0))
    assert line.constraint == "b"
    assert line.throughput_per_hour == 90.0  # 3600 / 40
    assert line.takt_s == 35.0  # the shortest takt
    assert [(f.over_takt_p50, f.over_takt_p95) for f in line.operations] == [
        (False, True),  # 25 <= 35 < 38.5
        (True, True),  # 35 < 40 (effective)
        (False, False),  # c's own takt is 40: 35.4 <= 40
    ]
    assert line.reason is None


def test_a_tie_on_p50_goes_to_the_higher_p95_then_to_the_earlier_operation() -> None:
    visits = timed("a", [10, 20, 30]) + timed("b", [10, 20, 90])  # both p50 20
    # p95 h = 1.9: a 20 + 0.9 * 10 = 29, b 20 + 0.9 * 70 = 83
    assert line_figures(visits, ["a", "b"], {}).constraint == "b"
    same = timed("a", [10, 20, 30]) + timed("b", [10, 20, 30])
    assert line_figures(same, ["a", "b"], {}).constraint == "a"
    assert line_figures(same, ["b", "a"], {}).constraint == "b"


def test_a_single_operation_is_its_own_constraint_and_has_no_wip() -> None:
    line = line_figures(timed("ft", [40, 50]), ["ft"], {"ft": 45.0})
    assert line.constraint == "ft"
    assert line.throughput_per_hour == 80.0  # 3600 / 45 (p50 of 40, 50)
    assert line.wip == ()
    (ft,) = line.operations
    assert (ft.over_takt_p50, ft.over_takt_p95) == (False, True)  # p95 49.5 > 45


def test_missing_cycle_times() -> None:
    visits = timed("a", [None, None]) + timed("b", [None, 12.0])
    line = line_figures(visits, ["a", "b", "c"], {"a": 10.0})
    a, b, c = line.operations
    assert (a.n, a.p50_s, a.effective_p50_s, a.over_takt_p50, a.over_takt_p95) == (
        0, None, None, None, None
    )  # fmt: skip
    assert (b.n, b.p50_s, b.over_takt_p50) == (1, 12.0, None)  # b has no takt
    assert (c.n, c.stations) == (0, 1)
    assert line.constraint == "b"  # operations without cycle time take no part
    nothing = line_figures(timed("a", [None]), ["a"], {})
    assert (nothing.constraint, nothing.throughput_per_hour) == (None, None)
    assert nothing.reason == "no operation has a cycle time"
    assert constraint(()) is None


def test_parallel_positions_are_stations_and_slots() -> None:
    rack = [Visit(f"u{i}", "burn-in", None, None, 3600.0, "rack-a", i % 4 + 1) for i in range(8)]
    assert positions(rack) == 4
    flow = operation_flow("burn-in", rack, takt_s=1000.0)
    assert (flow.effective_p50_s, flow.over_takt_p50) == (900.0, False)
    assert positions(timed("a", [1.0, 2.0], station=None)) == 1  # none known: one assumed


def test_wip_between_two_operations_by_hand() -> None:
    visits = [
        Visit("1", "a", -5, 0, 5), Visit("1", "b", 10, 12, 2),
        Visit("2", "a", 0, 5, 5), Visit("2", "b", 20, 22, 2),
        Visit("3", "a", 15, 20, 5), Visit("3", "b", 20, 25, 5),  # starts the moment it ended
        Visit("4", "a", 21, 26, 5),  # never reached b: left out
    ]  # fmt: skip
    wip = wip_between(visits, "a", "b")
    # waiting: 1 on [0, 10), 2 on [5, 20), 3 never -> steps 1, 2, 1, 0
    assert wip.series == ((0, 1), (5, 2), (10, 1), (20, 0))
    assert (wip.units, wip.skipped, wip.max, wip.span_s) == (3, 0, 2, 20)
    # area 1 * 5 + 2 * 5 + 1 * 10 = 25 over 20 s; waits 10 + 15 + 0 = 25 over 3 units
    assert wip.mean == 1.25
    assert wip.mean_wait_s == pytest.approx(25 / 3)
    # Little's law: L = lambda W = 3 / 20 * 25 / 3
    assert wip.span_s is not None
    assert wip.mean_wait_s is not None
    assert wip.mean == pytest.approx(wip.units / wip.span_s * wip.mean_wait_s)


def test_a_retest_keeps_the_unit_at_the_first_operation() -> None:
    visits = [
        Visit("R", "a", 0, 10, 10), Visit("R", "a", 12, 20, 8),  # failed, retested
        Visit("R", "b", 25, 30, 5),
        Visit("R", "a", 40, 50, 10), Visit("R", "b", 55, 60, 5),  # back again: first start counts
        Visit("X", "a", 0, 30, 30), Visit("X", "b", 20, 40, 20),  # b before a ended: times disagree
    ]  # fmt: skip
    wip = wip_between(visits, "a", "b")
    assert (wip.units, wip.skipped, wip.mean_wait_s, wip.series) == (1, 1, 5, ((20, 1), (25, 0)))
    empty = wip_between(visits, "b", "c")
    assert (empty.units, empty.mean, empty.max, empty.mean_wait_s) == (0, None, None, None)
    assert empty.reason == "no unit ended b and then started c"


def test_littles_law_on_a_synthetic_run() -> None:
    """Mean WIP, integrated second by second independently of wip_between's step function,
    equals throughput x mean wait (Little 1961)."""
    rng = random.Random(7)
    visits = []
    t = 0
    for i in range(300):
        t += rng.randint(0, 40)  # units leave a at random
        wait = rng.choice([0, 0, rng.randint(1, 200)])
        visits.append(Visit(f"u{i}", "a", t - 30, t, 30))
        visits.append(Visit(f"u{i}", "b", t + wait, t + wait + 25, 25))
    wip = wip_between(visits, "a", "b")
    assert wip.span_s is not None
    assert wip.mean_wait_s is not None
    assert wip.mean is not None
    intervals = [
        (float(v.end_s or 0), float(w.start_s or 0))
        for v, w in zip(visits[::2], visits[1::2], strict=True)
    ]
    first, last = wip.series[0][0], wip.series[-1][0]
    by_second = [
        sum(1 for left, right in intervals if left <= s < right)
        for s in range(int(first), int(last))
    ]
    assert wip.mean == pytest.approx(sum(by_second) / (last - first), rel=1e-12)
    throughput = wip.units / wip.span_s
    assert wip.mean == pytest.approx(throughput * wip.mean_wait_s, rel=1e-12)
    assert wip.max == max(by_second)
