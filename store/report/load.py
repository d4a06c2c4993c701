"""Load a run's unit records and characteristic values from the store (SQLAlchemy Core).

Reads the two tables fixed in the store's schema (`units`, `characteristics`; see
docs/report.md) by reflecting them from the database, so the report depends on their column
names only, on SQLite and PostgreSQL alike. The run's time range and work orders are applied
in SQL; the serial pattern (a regular expression, which SQLite lacks) in Python.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from quality import Attempt
from store.report.protocol import RunSelection

UnitKey = tuple[str, str, int]  # (collector, outbox, seq): the store's key of a unit record
NO_OPERATION = "(no operation)"  # a unit record of a station without an operation


@dataclass(frozen=True, slots=True)
class UnitRecord:
    attempt: Attempt  # its attempt number is the order in time (see load_run)
    end: datetime
    work_order: str | None
    station: str | None
    start: datetime | None = None  # the line view's waiting times need when a unit came in
    slot: int | None = None
    #: Which resources made it: kind (operator, fixture, cavity, program) -> value.
    resources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CharacteristicValue:
    serial: str
    operation: str
    name: str
    value: float | None  # the characteristic's `last` value in the unit record
    lsl: float | None
    usl: float | None
    target: float | None
    critical: bool
    attempt: int  # of the unit record, in time order
    end: datetime
    work_order: str | None
    golden: bool


@dataclass(frozen=True, slots=True)
class RunData:
    units: tuple[UnitRecord, ...]  # in time order
    characteristics: tuple[CharacteristicValue, ...]  # in time order


def as_utc(value: Any) -> datetime:
    """A stored timestamp as an aware UTC datetime (SQLite gives it back without a zone)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise TypeError(f"not a timestamp: {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bound(value: datetime, column: sa.Column[Any]) -> datetime:
    # SQLite stores naive UTC text: compare with naive UTC; PostgreSQL takes the aware value.
    if isinstance(column.type, sa.DateTime) and not column.type.timezone:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _resources(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    found = orjson.loads(text)
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def load_run(engine: sa.Engine, run: RunSelection) -> RunData:
    """The unit records and characteristic values of the run, in time order.

    Work orders and the serial pattern select the run's units; golden samples measured in the
    time range are kept whatever their serial and work order (the report shows them apart).

    Attempts of one serial at one operation are numbered by their end time (1, 2, ...), so a
    retest on another station of the same operation (which numbers its own attempts) still
    comes after the first attempt.
    """
    meta = sa.MetaData()
    units = sa.Table("units", meta, autoload_with=engine)
    chars = sa.Table("characteristics", meta, autoload_with=engine)
    where: list[sa.ColumnElement[bool]] = []
    if run.work_orders:
        # Golden samples are references measured during the run, not built for a work order.
        where.append(sa.or_(units.c.work_order.in_(run.work_orders), units.c.golden.is_(True)))
    if run.start is not None:
        where.append(units.c.end_ts >= _bound(run.start, units.c.end_ts))
    if run.end is not None:
        where.append(units.c.end_ts < _bound(run.end, units.c.end_ts))
    pattern = re.compile(run.serial_pattern) if run.serial_pattern else None

    unit_query = sa.select(
        units.c.collector,
        units.c.outbox,
        units.c.seq,
        units.c.serial,
        units.c.station,
        units.c.slot,
        units.c.operation,
        units.c.attempt,
        units.c.start_ts,
        units.c.end_ts,
        units.c.cycle_time_s,
        units.c.takt_s,
        units.c.verdict,
        units.c.failure_code,
        units.c.golden,
        units.c.work_order,
        units.c.resources,
    ).where(*where)
    char_query = (
        sa.select(
            chars.c.collector,
            chars.c.outbox,
            chars.c.unit_seq,
            chars.c.name,
            chars.c["last"],
            chars.c.lsl,
            chars.c.usl,
            chars.c.target,
            chars.c.critical,
        )
        .select_from(
            chars.join(
                units,
                sa.and_(
                    chars.c.collector == units.c.collector,
                    chars.c.outbox == units.c.outbox,
                    chars.c.unit_seq == units.c.seq,
                ),
            )
        )
        .where(*where)
    )
    with engine.connect() as conn:
        unit_rows = conn.execute(unit_query).all()
        char_rows = conn.execute(char_query).all()

    raw: list[tuple[datetime, int, UnitKey, Any]] = []
    for row in unit_rows:
        if pattern is not None and not row.golden and not pattern.fullmatch(row.serial):
            continue
        # A record without an attempt number sorts first among records of the same time.
        key = (row.collector, row.outbox, row.seq)
        raw.append((as_utc(row.end_ts), row.attempt or 0, key, row))
    raw.sort(key=lambda item: (item[0], item[1], item[2]))

    counters: dict[tuple[str, str], int] = defaultdict(int)
    records: list[UnitRecord] = []
    by_key: dict[UnitKey, UnitRecord] = {}
    for end, _, key, row in raw:
        operation = row.operation or NO_OPERATION
        counters[(row.serial, operation)] += 1
        record = UnitRecord(
            attempt=Attempt(
                serial=row.serial,
                operation=operation,
                attempt=counters[(row.serial, operation)],
                verdict=row.verdict,
                cycle_time_s=_float(row.cycle_time_s),
                takt_s=_float(row.takt_s),
                failure_code=None if row.failure_code is None else str(row.failure_code),
                golden=bool(row.golden),
            ),
            end=end,
            work_order=row.work_order,
            station=row.station,
            start=None if row.start_ts is None else as_utc(row.start_ts),
            slot=row.slot,
            resources=_resources(row.resources),
        )
        records.append(record)
        by_key[key] = record

    # Values grouped by their unit record, then emitted in the records' time order: no sort.
    by_unit: dict[UnitKey, list[tuple[Any, ...]]] = defaultdict(list)
    for collector, outbox, unit_seq, *rest in char_rows:
        by_unit[(collector, outbox, unit_seq)].append(tuple(rest))
    values: list[CharacteristicValue] = []
    for _, _, key, _ in raw:
        unit = by_key[key]
        a = unit.attempt
        for name, last, lsl, usl, target, critical in by_unit.get(key, ()):
            values.append(
                CharacteristicValue(
                    a.serial,
                    a.operation,
                    name,
                    None if last is None else float(last),
                    None if lsl is None else float(lsl),
                    None if usl is None else float(usl),
                    None if target is None else float(target),
                    bool(critical),
                    a.attempt,
                    unit.end,
                    unit.work_order,
                    a.golden,
                )
            )
    return RunData(units=tuple(records), characteristics=tuple(values))
