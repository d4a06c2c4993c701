"""quality/sampling.py against the published MIL-STD-105E tables, transcribed here as literal
rows (independently of the implementation's own encoding), and success-run sample sizes."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from quality.sampling import (
    AQLS,
    SAMPLE_SIZES,
    code_letter,
    single_plan,
    success_run,
    table_cell,
)

# MIL-STD-105E (1989), Table I "Sample size code letters": lot size range, then the letters
# for S-1, S-2, S-3, S-4, I, II, III.
TABLE_I = [
    ((2, 8), "A A A A A A B"),
    ((9, 15), "A A A A A B C"),
    ((16, 25), "A A B B B C D"),
    ((26, 50), "A B B C C D E"),
    ((51, 90), "B B C C C E F"),
    ((91, 150), "B B C D D F G"),
    ((151, 280), "B C D E E G H"),
    ((281, 500), "B C D E F H J"),
    ((501, 1200), "C C E F G J K"),
    ((1201, 3200), "C D E G H K L"),
    ((3201, 10000), "C D F G J L M"),
    ((10001, 35000), "C D F H K M N"),
    ((35001, 150000), "D E G J L N P"),
    ((150001, 500000), "D E G J M P Q"),
    ((500001, 10**9), "D E H K N Q R"),
]
LEVELS = ["S-1", "S-2", "S-3", "S-4", "I", "II", "III"]

# MIL-STD-105E, Table II-A "Single sampling plans for normal inspection (master table)", the
# columns AQL 0.010 ... 6.5; each cell "Ac/Re", "v" (use the first plan below the arrow) or
# "^" (the first plan above).
COLUMNS = "0.010 0.015 0.025 0.040 0.065 0.10 0.15 0.25 0.40 0.65 1.0 1.5 2.5 4.0 6.5"
TABLE_II_A = {
    # letter: (sample size, cells)
    "A": (2, "v v v v v v v v v v v v v v 0/1"),
    "B": (3, "v v v v v v v v v v v v v 0/1 ^"),
    "C": (5, "v v v v v v v v v v v v 0/1 ^ v"),
    "D": (8, "v v v v v v v v v v v 0/1 ^ v 1/2"),
    "E": (13, "v v v v v v v v v v 0/1 ^ v 1/2 2/3"),
    "F": (20, "v v v v v v v v v 0/1 ^ v 1/2 2/3 3/4"),
    "G": (32, "v v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6"),
    "H": (50, "v v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8"),
    "J": (80, "v v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11"),
    "K": (125, "v v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15"),
    "L": (200, "v v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22"),
    "M": (315, "v v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^"),
    "N": (500, "v v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^"),
    "P": (800, "v 0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^"),
    "Q": (1250, "0/1 ^ v 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^"),
    # R, 0.015: "^" (the row has no plan below; copies of the table are unclear in this corner,
    # this is the only reading that leads to a plan; R needs a lot over 500 000 at level III).
    "R": (2000, "^ ^ 1/2 2/3 3/4 5/6 7/8 10/11 14/15 21/22 ^ ^ ^ ^ ^"),
}
ORDER = list(TABLE_II_A)


def published_cell(letter: str, column: int) -> str:
    return TABLE_II_A[letter][1].split()[column]


def published_plan(letter: str, column: int) -> tuple[str, int, int, int]:
    """Follow the printed arrows: (plan letter, n, Ac, Re)."""
    row = ORDER.index(letter)
    cell = published_cell(letter, column)
    while cell in ("v", "^"):
        row += 1 if cell == "v" else -1
        cell = published_cell(ORDER[row], column)
    accept, reject = (int(x) for x in cell.split("/"))
    return ORDER[row], TABLE_II_A[ORDER[row]][0], accept, reject


def test_the_columns_and_sample_sizes_are_the_published_ones() -> None:
    assert [float(c) for c in COLUMNS.split()] == list(AQLS)
    assert {k: n for k, (n, _) in TABLE_II_A.items()} == SAMPLE_SIZES


@pytest.mark.parametrize("level", LEVELS)
def test_every_cell_of_table_i(level: str) -> None:
    column = LEVELS.index(level)
    for (low, high), letters in TABLE_I:
        expected = letters.split()[column]
        for lot in {low, (low + high) // 2, high}:
            assert code_letter(lot, level) == expected, (lot, level)


def test_every_cell_of_table_ii_a_as_printed() -> None:
    for letter in ORDER:
        for column, aql in enumerate(AQLS):
            printed = published_cell(letter, column)
            cell = table_cell(letter, aql)
            if printed == "v":
                assert cell == "down", (letter, aql)
            elif printed == "^":
                assert cell == "up", (letter, aql)
            else:
                assert cell == tuple(int(x) for x in printed.split("/")), (letter, aql)


def test_every_plan_of_table_ii_a_with_the_arrows_followed() -> None:
    # One lot size per code letter, large enough that no plan reaches 100 % inspection.
    big = {"A": 2, "B": 9, "C": 16, "D": 26, "E": 51, "F": 91, "G": 151, "H": 281, "J": 501}
    big |= {"K": 1201, "L": 3201, "M": 10001, "N": 35001, "P": 150001, "Q": 500001}
    for letter in ORDER:
        level = "III" if letter == "R" else "II"
        lot = 500001 if letter == "R" else big[letter]
        assert code_letter(lot, level) == letter
        for column, aql in enumerate(AQLS):
            plan_letter, n, accept, reject = published_plan(letter, column)
            plan = single_plan(lot, level, aql)
            want_n = min(n, lot)
            got = (plan.plan_letter, plan.sample_size, plan.accept, plan.reject)
            assert got == (plan_letter, want_n, accept, reject), (letter, aql)
            assert plan.full_inspection is (n >= lot)


def test_worked_examples() -> None:
    # Lot of 100, level II, AQL 1.0: letter F; its cell is an up arrow -> E: n 13, Ac 0, Re 1.
    plan = single_plan(100, "II", 1.0)
    assert (plan.code_letter, plan.plan_letter, plan.sample_size, plan.accept, plan.reject) == (
        "F",
        "E",
        13,
        0,
        1,
    )
    # Lot of 1000, level II, AQL 0.65: letter J, n 80, Ac 1, Re 2.
    plan = single_plan(1000, "II", 0.65)
    assert (plan.code_letter, plan.sample_size, plan.accept, plan.reject) == ("J", 80, 1, 2)
    # Lot of 10, level II, AQL 0.10: B, down to K (n 125) >= lot: inspect all 10, Ac 0.
    plan = single_plan(10, "II", 0.10)
    assert (plan.plan_letter, plan.sample_size, plan.accept, plan.full_inspection) == (
        "K",
        10,
        0,
        True,
    )


def test_operating_characteristic_half_acceptance() -> None:
    # Ac 0: P(accept) = (1 - p)^n = 0.5 -> p = 1 - 0.5^(1/n), closed form.
    plan = single_plan(100, "II", 1.0)
    assert plan.p50 == pytest.approx(1 - 0.5 ** (1 / 13), rel=1e-12)
    # Ac > 0: at p50 the binomial CDF is 0.5 (checked with scipy's binomial directly).
    for lot, aql in [(1000, 0.65), (5000, 2.5), (200000, 6.5)]:
        plan = single_plan(lot, "II", aql)
        assert stats.binom.cdf(plan.accept, plan.sample_size, plan.p50) == pytest.approx(0.5)
    assert single_plan(1000, "II", 0.65).p50 == pytest.approx(0.020891, abs=5e-7)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"AQL 0\.3"):
        single_plan(100, "II", 0.3)
    with pytest.raises(ValueError, match="level"):
        code_letter(100, "IV")
    with pytest.raises(ValueError, match="lot size"):
        code_letter(1, "II")


@pytest.mark.parametrize(
    ("reliability", "confidence", "n"),
    [
        # Published success-run table values (e.g. Guidance on the success run theorem in
        # medical device design verification; the table is n = ceil(ln(1 - C) / ln R)).
        (0.90, 0.90, 22),
        (0.90, 0.95, 29),
        (0.95, 0.90, 45),
        (0.95, 0.95, 59),
        (0.99, 0.90, 230),
        (0.99, 0.95, 299),
        (0.50, 0.75, 2),  # exactly 2 in theory: rounding must not give 3
    ],
)
def test_success_run(reliability: float, confidence: float, n: int) -> None:
    run = success_run(reliability, confidence)
    assert run.sample_size == n
    assert run.achieved_confidence >= confidence - 1e-12
    assert 1 - reliability ** (n - 1) < confidence - 1e-12 or n == 1
    assert math.isclose(run.achieved_confidence, 1 - reliability**n)


def test_success_run_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="reliability"):
        success_run(1.0, 0.9)
    with pytest.raises(ValueError, match="confidence"):
        success_run(0.9, 0.0)
