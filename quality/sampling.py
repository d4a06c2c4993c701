"""Acceptance sampling by attributes: MIL-STD-105E single sampling plans for normal inspection
(Table I, sample size code letters; Table II-A, the master table), the operating
characteristic of a plan in one figure, and zero-failure success-run sample sizes.

Pure functions, no I/O. MIL-STD-105E (10 May 1989) is a public-domain U.S. Department of
Defense standard (distribution statement A); ISO 2859-1 and ANSI/ASQ Z1.4 carry the same plans.
docs/statistics.md gives the sources; tests/test_sampling.py checks every cell against a literal
transcription of the published tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Level(StrEnum):
    """Inspection levels of Table I: special S-1..S-4 (small samples, large risks) and
    general I, II (the usual one), III."""

    S1 = "S-1"
    S2 = "S-2"
    S3 = "S-3"
    S4 = "S-4"
    I = "I"  # noqa: E741 (the standard's name)
    II = "II"
    III = "III"


# Table I: the upper end of each lot size range (the last range is open) and its code letter
# per level, in the order S-1, S-2, S-3, S-4, I, II, III.
_LEVEL_ORDER = (Level.S1, Level.S2, Level.S3, Level.S4, Level.I, Level.II, Level.III)
_TABLE_I: tuple[tuple[int | None, str], ...] = (
    (8, "AAAAAAB"),
    (15, "AAAAABC"),
    (25, "AABBBCD"),
    (50, "ABBCCDE"),
    (90, "BBCCCEF"),
    (150, "BBCDDFG"),
    (280, "BCDEEGH"),
    (500, "BCDEFHJ"),
    (1200, "CCEFGJK"),
    (3200, "CDEGHKL"),
    (10000, "CDFGJLM"),
    (35000, "CDFHKMN"),
    (150000, "DEGJLNP"),
    (500000, "DEGJMPQ"),
    (None, "DEHKNQR"),
)

# Table II-A: the sample size of each code letter (I and O are not used as letters).
SAMPLE_SIZES: dict[str, int] = {
    "A": 2, "B": 3, "C": 5, "D": 8, "E": 13, "F": 20, "G": 32, "H": 50,
    "J": 80, "K": 125, "L": 200, "M": 315, "N": 500, "P": 800, "Q": 1250, "R": 2000,
}  # fmt: skip
LETTERS = tuple(SAMPLE_SIZES)

# The AQL columns supported: 0.010 to 10, in percent nonconforming. The columns above 10 of the
# master table are nonconformities per hundred units only (MIL-STD-105E 4.2), while our defects
# are nonconforming units (failed first attempts); and in the 10 column the cell of code letter A
# points up to no plan. So the supported columns stop at 6.5.
AQLS: tuple[float, ...] = (
    0.010, 0.015, 0.025, 0.040, 0.065, 0.10, 0.15, 0.25, 0.40, 0.65, 1.0, 1.5, 2.5, 4.0, 6.5,
)  # fmt: skip

# How the master table is laid out, which is how it is stored here: in each row (code letter)
# the plan Ac 0 / Re 1 stands in one column; the next column holds an up arrow, the one after a
# down arrow, and from the third column on the acceptance numbers climb the preferred series
# below (Re = Ac + 1), up to 21, after which the row holds up arrows; left of the Ac 0 plan the
# row holds down arrows. The column of the Ac 0 plan moves one column left per code letter:
# A at 6.5, B at 4.0, ..., Q at 0.010, R one column further left (outside the table), so R
# starts with two up arrows (0.010 to Q's Ac 0 plan, 0.015 to Q's up arrow, i.e. P's plan).
_ZERO_COLUMN_OF_A = AQLS.index(6.5)
_ACCEPTANCE_SERIES = (1, 2, 3, 5, 7, 10, 14, 21)
UP = "up"
DOWN = "down"


@dataclass(frozen=True, slots=True)
class Plan:
    """A single sampling plan: inspect ``sample_size`` units of the lot, accept the lot with at
    most ``accept`` defectives, reject it with ``reject`` or more."""

    code_letter: str  # from Table I for the lot size and level
    plan_letter: str  # the row the plan comes from after following the table's arrows
    sample_size: int  # n; the lot size when the plan's n is not smaller (100 % inspection)
    accept: int  # Ac
    reject: int  # Re
    full_inspection: bool  # the plan's n reached the lot size: every unit is inspected
    p50: float  # the defect rate accepted with probability 0.5 (binomial)


def _level(level: Level | str) -> Level:
    try:
        return Level(level)
    except ValueError:
        raise ValueError(
            f"unknown inspection level {level!r}; one of {', '.join(_LEVEL_ORDER)}"
        ) from None


def code_letter(lot_size: int, level: Level | str = Level.II) -> str:
    """The sample size code letter of Table I for a lot size and inspection level."""
    if lot_size < 2:
        raise ValueError(f"lot size {lot_size}: Table I starts at 2")
    column = _LEVEL_ORDER.index(_level(level))
    for upper, letters in _TABLE_I:
        if upper is None or lot_size <= upper:
            return letters[column]
    raise AssertionError("unreachable: the last range is open")


def _aql_column(aql: float) -> int:
    for index, value in enumerate(AQLS):
        if math.isclose(aql, value, rel_tol=1e-9):
            return index
    raise ValueError(f"AQL {aql} is not a column of Table II-A; one of {', '.join(map(str, AQLS))}")


def table_cell(letter: str, aql: float) -> tuple[int, int] | str:
    """The cell of the master table as printed: (Ac, Re), or UP / DOWN for an arrow."""
    if letter not in SAMPLE_SIZES:
        raise ValueError(f"unknown code letter {letter!r}")
    column = _aql_column(aql)
    step = column - (_ZERO_COLUMN_OF_A - LETTERS.index(letter))
    if step < 0:
        return DOWN
    if step == 0:
        return (0, 1)
    if step == 1:
        return UP
    if step == 2:
        # The last row has no plan below: its cell right after the up arrow points up too (the
        # only reading that leads to a plan; copies of the table are unclear in this corner).
        return DOWN if letter != LETTERS[-1] else UP
    if step - 3 < len(_ACCEPTANCE_SERIES):
        accept = _ACCEPTANCE_SERIES[step - 3]
        return (accept, accept + 1)
    return UP


def accepted_with_half_probability(sample_size: int, accept: int) -> float:
    """The defect rate p at which the plan accepts a lot with probability 0.5: the solution of
    P(X <= Ac) = 0.5 for X ~ Binomial(n, p). Through the identity
    P(X <= c) = 1 - I_p(c + 1, n - c) (regularized incomplete beta), p is the median of
    Beta(c + 1, n - c). Ac >= n accepts every lot: 1.0."""
    if accept >= sample_size:
        return 1.0
    # scipy (about 1.5 s to import) only when an OC figure is asked for: the protocol model
    # imports this module, and every store command and start reads a protocol.
    from scipy import stats  # noqa: PLC0415

    return float(stats.beta.median(accept + 1, sample_size - accept))


def single_plan(lot_size: int, level: Level | str, aql: float) -> Plan:
    """The single sampling plan for normal inspection (MIL-STD-105E Tables I and II-A).

    An arrow means: use the first plan below (or above) it in the same column, with that plan's
    sample size (MIL-STD-105E 4.9.4 and the table's footnotes). When that sample size equals or
    exceeds the lot size, every unit is inspected: n becomes the lot size, Ac and Re stay.
    """
    letter = code_letter(lot_size, level)
    row = LETTERS.index(letter)
    cell = table_cell(letter, aql)
    while not isinstance(cell, tuple):
        row += 1 if cell == DOWN else -1
        if not 0 <= row < len(LETTERS):
            raise AssertionError(f"an arrow leaves the table at {letter}, AQL {aql}")
        cell = table_cell(LETTERS[row], aql)
    accept, reject = cell
    plan_letter = LETTERS[row]
    n = SAMPLE_SIZES[plan_letter]
    full = n >= lot_size
    n = min(n, lot_size)
    return Plan(
        code_letter=letter,
        plan_letter=plan_letter,
        sample_size=n,
        accept=accept,
        reject=reject,
        full_inspection=full,
        p50=accepted_with_half_probability(n, accept),
    )


@dataclass(frozen=True, slots=True)
class SuccessRun:
    reliability: float
    confidence: float
    sample_size: int  # units to test with zero failures
    achieved_confidence: float  # 1 - R^n, at least the confidence asked


def success_run(reliability: float, confidence: float) -> SuccessRun:
    """Zero-failure (success-run) sample size: the smallest n with 1 - R^n >= C, i.e.
    n = ceil(ln(1 - C) / ln(R)). n units tested without a failure demonstrate reliability R
    with confidence C (binomial with zero failures)."""
    if not 0.0 < reliability < 1.0:
        raise ValueError(f"reliability {reliability} must be between 0 and 1 (exclusive)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} must be between 0 and 1 (exclusive)")
    exact = math.log(1.0 - confidence) / math.log(reliability)
    # A ratio that is an integer up to rounding (R = 0.5, C = 0.75: 2.0000000000000004) is that
    # integer, not the next one.
    n = max(1, math.ceil(exact - 1e-9))
    return SuccessRun(reliability, confidence, n, 1.0 - reliability**n)
