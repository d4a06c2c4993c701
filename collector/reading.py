"""Readings: what a driver returns, and the tagged record that the buffer stores."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from collector.errors import ErrorCode

Value = bool | int | float | str | None


class Quality(StrEnum):
    GOOD = "good"
    #: The device says the value may be inaccurate (OPC-UA Uncertain); the value is kept.
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one tag, as a driver read it. ``ts`` is UTC epoch seconds at read time."""

    ts: float
    tag: str
    value: Value
    unit: str | None = None
    quality: Quality = Quality.GOOD
    error: ErrorCode | None = None

    @classmethod
    def bad(cls, ts: float, tag: str, error: ErrorCode, unit: str | None = None) -> Reading:
        return cls(ts=ts, tag=tag, value=None, unit=unit, quality=Quality.BAD, error=error)


@dataclass(frozen=True, slots=True)
class Record:
    """A reading with the context it was taken in: where, and for which unit and operation.

    This is what the buffer stores and the forwarder publishes (plus the ``seq`` the buffer
    assigns). docs/messages.md documents its fields.
    """

    reading: Reading
    station: str | None
    device: str
    unit_serial: str | None
    operation: str | None
    #: The attempt of this unit at this operation (1 = first pass); None without a unit.
    attempt: int | None = None


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


@dataclass(frozen=True, slots=True)
class ContextChanges:
    """What the station context wants stored in the same transaction as the readings it
    tagged: finished unit records, attempt counters, and each station's state (for restarts)."""

    units: list[UnitRecord]
    attempts: dict[tuple[str, str], int]
    stations: dict[str, bytes]

    def __bool__(self) -> bool:
        return bool(self.units or self.attempts or self.stations)
