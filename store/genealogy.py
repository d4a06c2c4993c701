"""Unit genealogy and search: everything the store knows about a unit, across collectors.

:func:`unit_genealogy` gives every pass of the unit through an operation (station, slot,
attempt, verdict, failure code, cycle time, characteristics with their limits) and every
reading taken while the unit was at a station, in time order. It finds the readings through
``contexts`` (the unit's serial) and ``context_spans`` (the seq ranges of each stream that
hold them), so it reads a few short ranges of the readings' primary key and needs no index
of its own on that table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from store.record import deviations as record_deviations
from store.record.schema import dispositions as record_dispositions
from store.record.units import unit_record
from store.schema import (
    KIND_BOOL,
    KIND_INT,
    KIND_TEXT,
    QUALITY_NAMES,
    characteristics,
    context_spans,
    contexts,
    from_micros,
    readings,
    series,
    streams,
    units,
)

UNIT_FIELDS = (
    "collector", "outbox", "seq", "serial", "station", "slot", "operation", "attempt",
    "start_ts", "end_ts", "cycle_time_s", "takt_s", "verdict", "failure_code", "ended_by",
    "readings", "golden", "work_order", "resources",
)  # fmt: skip
CHAR_FIELDS = ("name", "last", "min", "max", "lsl", "usl", "target", "critical", "in_spec")
READING_FIELDS = (
    "ts", "collector", "outbox", "seq", "device", "tag", "value", "unit", "quality", "error",
    "station", "slot", "operation", "attempt", "phase", "golden",
)  # fmt: skip


def _value(flags: int, num: float | None, text: str | None) -> object:
    kind = flags // 4
    if kind == KIND_TEXT:
        return text
    if kind == KIND_INT:
        return int(text) if text is not None else None if num is None else int(num)
    if kind == KIND_BOOL:
        return None if num is None else bool(num)
    return num


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _unit_dict(row: sa.Row[Any]) -> dict[str, Any]:
    out = dict(zip(UNIT_FIELDS, row, strict=True))
    out["start_ts"], out["end_ts"] = _iso(out["start_ts"]), _iso(out["end_ts"])
    out["golden"] = bool(out["golden"])
    # Which resources made it (JSON text in the column): an object, {} for none.
    out["resources"] = orjson.loads(out["resources"]) if out["resources"] else {}
    return out


def unit_genealogy(engine: sa.Engine, serial: str) -> dict[str, Any] | None:
    """The unit's records and readings, or None when the store has never seen the serial."""
    unit_cols = [units.c[name] for name in UNIT_FIELDS]
    with engine.connect() as conn:
        records = [
            _unit_dict(row)
            for row in conn.execute(
                sa.select(*unit_cols)
                .where(units.c.serial == serial)
                .order_by(units.c.start_ts, units.c.collector, units.c.seq)
            )
        ]
        chars: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        if records:
            query = (
                sa.select(
                    characteristics.c.collector,
                    characteristics.c.outbox,
                    characteristics.c.unit_seq,
                    *[characteristics.c[name] for name in CHAR_FIELDS],
                )
                .where(characteristics.c.serial == serial)
                .order_by(characteristics.c.name)
            )
            for row in conn.execute(query):
                item = dict(zip(CHAR_FIELDS, row[3:], strict=True))
                item["critical"] = bool(item["critical"])
                item["in_spec"] = None if item["in_spec"] is None else bool(item["in_spec"])
                chars.setdefault((row[0], row[1], row[2]), []).append(item)
        for record in records:
            record["characteristics"] = chars.get(
                (record["collector"], record["outbox"], record["seq"]), []
            )
        found = _readings(conn, serial)
    if not records and not found:
        return None
    return {"serial": serial, "operations": records, "readings": found,
            **unit_record(engine, serial, records)}  # fmt: skip


def _readings(conn: sa.Connection, serial: str) -> list[dict[str, Any]]:
    """The unit's readings: one primary-key range scan per (context, stream) span, joined to
    their series and streams in Python (both small, read once), in time order."""
    c, sp, r = contexts, context_spans, readings
    spans = conn.execute(
        sa.select(
            c.c.id, c.c.station, c.c.slot, c.c.operation, c.c.attempt, c.c.phase, c.c.golden,
            sp.c.stream, sp.c.first_seq, sp.c.last_seq,
        )
        .join(sp, sp.c.context == c.c.id)
        .where(c.c.unit_serial == serial)
    ).all()  # fmt: skip
    if not spans:
        return []
    # The raw column value (microseconds on SQLite, a datetime on PostgreSQL), formatted
    # once per distinct time below: the readings of a poll share theirs.
    ts_raw = sa.type_coerce(r.c.ts, sa.BigInteger)
    found: list[tuple[Any, ...]] = []
    for ctx, station, slot, operation, attempt, phase, golden, stream, first, last in spans:
        context = (station, slot, operation, attempt, phase, bool(golden))
        rows = conn.execute(
            sa.select(ts_raw, r.c.seq, r.c.series, r.c.flags, r.c.num, r.c.text, r.c.error).where(
                r.c.stream == stream, r.c.seq.between(first, last), r.c.context == ctx
            )
        ).all()
        found.extend((*row, stream, context) for row in rows)
    series_ids = {row[2] for row in found}
    names = {
        sid: (device, tag, unit)
        for sid, device, tag, unit in conn.execute(
            sa.select(series.c.id, series.c.device, series.c.tag, series.c.unit).where(
                series.c.id.in_(series_ids)
            )
        )
    }
    stream_ids = {row[7] for row in found}
    stream_names = {
        sid: (collector, outbox)
        for sid, collector, outbox in conn.execute(
            sa.select(streams.c.id, streams.c.collector, streams.c.outbox).where(
                streams.c.id.in_(stream_ids)
            )
        )
    }
    texts: dict[Any, str] = {}
    out = []
    for raw, seq, sid, flags, num, text, error, stream, context in found:
        ts = texts.get(raw)
        if ts is None:
            when = from_micros(raw) if isinstance(raw, int) else raw.astimezone(UTC)
            ts = texts[raw] = _iso(when)
        collector, outbox = stream_names[stream]
        device, tag, unit = names[sid]
        station, slot, operation, attempt, phase, golden = context
        out.append(
            {
                "ts": ts, "collector": collector, "outbox": outbox, "seq": seq,
                "device": device, "tag": tag, "value": _value(flags, num, text), "unit": unit,
                "quality": QUALITY_NAMES[flags % 4], "error": error, "station": station,
                "slot": slot, "operation": operation, "attempt": attempt, "phase": phase,
                "golden": golden,
            }
        )  # fmt: skip
    out.sort(key=lambda item: (item["ts"], item["collector"], item["seq"]))
    return out


@dataclass(frozen=True, slots=True)
class UnitQuery:
    """A search over unit records; ``serial`` may hold ``*`` wildcards."""

    serial: str | None = None
    operation: str | None = None
    verdict: str | None = None
    work_order: str | None = None
    golden: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 1000
    attempt: int | None = None
    #: The unit's current disposition (docs/pilot-record.md), or "none" for a unit without one.
    disposition: str | None = None
    #: "any", or a severity: units a deviation of that severity concerns (names them, or its
    #: window holds one of their records at its operation and station).
    deviation: str | None = None
    #: "any", or a characteristic's name: records whose characteristic was outside its limits.
    out_of_spec: str | None = None


def search_units(engine: sa.Engine, q: UnitQuery) -> list[dict[str, Any]]:
    """Unit records matching every given filter, newest first (at most ``q.limit``)."""
    query = sa.select(*[units.c[name] for name in UNIT_FIELDS])
    if q.serial:
        if "*" in q.serial:
            pattern = q.serial.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(units.c.serial.like(pattern.replace("*", "%"), escape="\\"))
        else:
            query = query.where(units.c.serial == q.serial)
    for name in ("operation", "verdict", "work_order"):
        value = getattr(q, name)
        if value is not None:
            query = query.where(units.c[name] == value)
    if q.golden is not None:
        query = query.where(units.c.golden == q.golden)
    if q.attempt is not None:
        query = query.where(units.c.attempt == q.attempt)
    if q.out_of_spec:
        c = characteristics.c
        bad = sa.select(c.unit_seq).where(
            c.collector == units.c.collector, c.outbox == units.c.outbox,
            c.unit_seq == units.c.seq, c.in_spec.is_(False),
        )  # fmt: skip
        if q.out_of_spec != "any":
            bad = bad.where(c.name == q.out_of_spec)
        query = query.where(bad.exists())
    if q.disposition:
        query = _by_disposition(query, q.disposition)
    if q.since is not None:
        query = query.where(units.c.end_ts >= q.since)
    if q.until is not None:
        query = query.where(units.c.start_ts < q.until)
    query = query.order_by(units.c.end_ts.desc(), units.c.collector, units.c.seq).limit(q.limit)
    with engine.connect() as conn:
        if q.deviation:
            query = query.where(units.c.serial.in_(_deviated(conn, q.deviation)))
        return [_unit_dict(row) for row in conn.execute(query)]


def _by_disposition(query: sa.Select[Any], disposition: str) -> sa.Select[Any]:
    """Records of units whose current (latest) disposition is ``disposition`` ("none": units
    without any)."""
    d = record_dispositions.c
    if disposition == "none":
        return query.where(~sa.select(d.audit_id).where(d.serial == units.c.serial).exists())
    current = (
        sa.select(d.disposition)
        .where(d.serial == units.c.serial)
        .order_by(d.audit_id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return query.where(current == disposition)


def _deviated(conn: sa.Connection, severity: str) -> set[str]:
    """The serials the deviations of ``severity`` ("any": all) concern, as the genealogy's
    deviations section counts them (record/deviations.for_unit): those named, and those with
    a record ending in a deviation's window at its operation and station."""
    found: set[str] = set()
    for d in record_deviations.of_run(conn):
        if severity not in ("any", d["severity"]):
            continue
        found.update(d["serials"])
        window = d["window"]
        if window is None:
            continue
        start, end = (datetime.fromisoformat(window[k].replace("Z", "+00:00"))
                      for k in ("start", "end"))  # fmt: skip
        inside = sa.select(units.c.serial).where(units.c.end_ts >= start, units.c.end_ts < end)
        for name in ("operation", "station"):
            if d[name] is not None:
                inside = inside.where(units.c[name] == d[name])
        found.update(conn.execute(inside.distinct()).scalars())
    return found


def write_csv(genealogy: dict[str, Any], folder: Path) -> list[Path]:
    """The genealogy as three CSV files (operations, characteristics, readings) in ``folder``,
    for a certification lab's tools."""
    folder.mkdir(parents=True, exist_ok=True)
    serial = genealogy["serial"]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in serial)
    paths = []
    operations = [
        {k: v for k, v in op.items() if k != "characteristics"} for op in genealogy["operations"]
    ]
    chars = [
        {"serial": serial, "collector": op["collector"], "outbox": op["outbox"],
         "unit_seq": op["seq"], "operation": op["operation"], "attempt": op["attempt"], **char}
        for op in genealogy["operations"]
        for char in op["characteristics"]
    ]  # fmt: skip
    for name, fields, rows in (
        ("operations", UNIT_FIELDS, operations),
        ("characteristics", ("serial", "collector", "outbox", "unit_seq", "operation",
                             "attempt", *CHAR_FIELDS), chars),
        ("readings", READING_FIELDS, genealogy["readings"]),
    ):  # fmt: skip
        path = folder / f"{safe}-{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.DictWriter(out, fieldnames=list(fields))
            writer.writeheader()
            writer.writerows(rows)
        paths.append(path)
    return paths
