"""Readings: what a driver returns, the context they were taken in, and unit records.

How they become the JSON that the buffer stores and the broker receives: contract.encode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

from contract.codes import ErrorCode

Value = bool | int | float | str | None


class Quality(StrEnum):
    GOOD = "good"
    #: The device says the value may be inaccurate (OPC-UA Uncertain); the value is kept.
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Reading(NamedTuple):
    """One value of one tag, as a driver read it. ``ts`` is UTC epoch seconds at read time.

    A named tuple rather than a dataclass: a busy line makes 100,000 of these a second, and a
    tuple is the cheapest Python object that still has names (bench/, docs/performance.md).
    """

    ts: float
    tag: str
    value: Value
    unit: str | None = None
    quality: Quality = Quality.GOOD
    error: ErrorCode | None = None

    @classmethod
    def bad(cls, ts: float, tag: str, error: ErrorCode, unit: str | None = None) -> Reading:
        return cls(ts, tag, None, unit, Quality.BAD, error)


class Context(NamedTuple):
    """Where and for which unit and operation a reading was taken (collector.context.tagging
    decides).

    The readings of one poll share one Context object (or a few, if a unit changed within
    the poll), so tagging costs a reference per reading, not an object.
    """

    station: str | None
    unit_serial: str | None
    operation: str | None
    #: The attempt of this unit at this operation (1 = first pass); None without a unit.
    attempt: int | None = None
    #: The rack slot of the station (None: not a rack).
    slot: int | None = None
    #: "test" while the unit's test runs, "after" while the unit is still present after its
    #: verdict or timeout, None without a unit.
    phase: str | None = None
    #: The unit is a golden sample (a reference part, left out of yield and capability).
    golden: bool = False
    #: The work order the unit is made under (its record's ``work_order``); None until one
    #: is known: readings tagged before it arrived during the unit do not carry it.
    work_order: str | None = None


#: The unit context's fields, by the names the messages give them, in the order a schema-2 poll
#: writes them: the one list a new field (a work order, a resource) is added to, as a field
#: of Context. contract.encode writes them from it; the reference decoder's Poll and
#: FlatReading, its field checks and the store's context key must follow (tests/
#: test_context_fields.py finds the place that does not, mypy then each constructor).
CONTEXT_FIELDS: Final[tuple[str, ...]] = Context._fields


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """One unit's pass through one operation at one station, published when the unit ends.
    docs/traceability.md documents its fields."""

    serial: str
    station: str
    operation: str
    attempt: int
    start_ts: float
    end_ts: float
    ended_by: str
    verdict: str
    failure_code: Value
    readings: int
    #: Key characteristic tag -> (last, minimum, maximum) of its good numeric values.
    characteristics: dict[str, tuple[float, float, float]]
    slot: int | None = None
    takt_s: float | None = None
    golden: bool = False
    work_order: str | None = None
    #: Key characteristic tag -> its specification and whether the unit's values met it
    #: (only characteristics that have values).
    specs: dict[str, Spec] = field(default_factory=dict)
    #: Which resources made the unit: kind (operator, fixture, cavity, program) -> its value
    #: at the unit's start (docs/traceability.md); only kinds the station declares and read.
    resources: dict[str, str] = field(default_factory=dict)


class Spec(NamedTuple):
    """A key characteristic's specification as a unit record carries it."""

    lsl: float | None
    usl: float | None
    target: float | None
    critical: bool
    #: Whether every value (minimum and maximum) was within the limits; None without limits.
    in_spec: bool | None


@dataclass(frozen=True, slots=True)
class ContextChanges:
    """What the station context wants stored in the same transaction as the readings it
    tagged: finished unit records, attempt counters, and each station's state (for restarts)."""

    units: list[UnitRecord]
    attempts: dict[tuple[str, str], int]
    stations: dict[str, bytes]

    def __bool__(self) -> bool:
        return bool(self.units or self.attempts or self.stations)
