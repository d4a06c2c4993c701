"""Deviations of a run: what went differently from the process, how bad, where, which units
(serials, or every unit recorded in a time window at the operation or station), what was done.
A deviation stays open until a closure row (cause, action) is written for it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from store.record.audit import append, lock, now_text, row_dict
from store.record.bodies import CloseIn, DeviationIn
from store.record.errors import RecordError
from store.record.people import Person
from store.record.runs import acting_function, find_version
from store.record.schema import closures, deviations

SEVERITIES = ("minor", "major", "critical")


def record(engine: sa.Engine, person: Person, run_id: int, body: DeviationIn) -> dict[str, Any]:
    function = acting_function(person, body.function)
    at = now_text()
    window = body.window
    row = {
        "run_id": run_id, "description": body.description, "severity": body.severity,
        "operation": body.operation, "station": body.station, "device": body.device,
        "serials": orjson.dumps(list(dict.fromkeys(body.serials))).decode(),
        "window_start": None if window is None else now_text(window.start),
        "window_end": None if window is None else now_text(window.end),
        "action": body.action, "who": body.who or person.name, "person": person.name, "at": at,
    }  # fmt: skip
    with engine.begin() as conn:
        lock(conn)
        find_version(conn, run_id)  # 404 for an unknown run
        written = append(conn, actor=person.name, function=function, action="deviation.open",
                         table=deviations, row=row, at=at)  # fmt: skip
    return _shown(written.id, row, None)


def close(
    engine: sa.Engine, person: Person, run_id: int, deviation_id: int, body: CloseIn
) -> dict[str, Any]:
    function = acting_function(person, body.function)
    at = now_text()
    with engine.begin() as conn:
        lock(conn)
        find_version(conn, run_id)
        found = conn.execute(
            sa.select(deviations).where(
                deviations.c.audit_id == deviation_id, deviations.c.run_id == run_id
            )
        ).first()
        if found is None:
            raise RecordError(404, f"run {run_id} has no deviation {deviation_id}")
        closed = conn.execute(
            sa.select(closures).where(closures.c.deviation_id == deviation_id)
        ).first()
        if closed is not None:
            raise RecordError(409, f"deviation {deviation_id} was closed at {closed.at} by "
                              f"{closed.person}")  # fmt: skip
        row = {"deviation_id": deviation_id, "cause": body.cause, "action": body.action,
               "person": person.name, "at": at}  # fmt: skip
        append(conn, actor=person.name, function=function, action="deviation.close",
               table=closures, row=row, at=at)  # fmt: skip
        opened = row_dict(found)
    return _shown(deviation_id, opened, row)


def _shown(key: int, row: dict[str, Any], closure: dict[str, Any] | None) -> dict[str, Any]:
    out = {**row, "id": key, "serials": orjson.loads(row["serials"])}
    out["window"] = (
        None if row["window_start"] is None
        else {"start": out.pop("window_start"), "end": out.pop("window_end")}
    )  # fmt: skip
    out.pop("window_start", None)
    out.pop("window_end", None)
    out["open"] = closure is None
    out["closed"] = None if closure is None else {
        k: closure[k] for k in ("cause", "action", "person", "at")
    }  # fmt: skip
    return out


def of_run(conn: sa.Connection, run_id: int | None = None) -> list[dict[str, Any]]:
    """The deviations (of one run, or all), each with its closure, in entry order."""
    query = sa.select(deviations).order_by(deviations.c.audit_id)
    if run_id is not None:
        query = query.where(deviations.c.run_id == run_id)
    found = conn.execute(query).all()
    closed = {
        r.deviation_id: row_dict(r)
        for r in conn.execute(
            sa.select(closures).where(closures.c.deviation_id.in_([d.audit_id for d in found]))
        )
    }
    return [
        _shown(d.audit_id, row_dict(d),
               closed.get(d.audit_id))
        for d in found
    ]  # fmt: skip


def summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's section: the list, counts by severity and operation, the open ones."""
    opened = [d for d in items if d["open"]]
    by_severity = Counter(d["severity"] for d in items)
    open_by_severity = Counter(d["severity"] for d in opened)
    return {
        "items": items,
        "count": len(items),
        "by_severity": {s: by_severity[s] for s in SEVERITIES},
        "by_operation": dict(Counter(d["operation"] or "(none)" for d in items)),
        "open": [d["id"] for d in opened],
        "open_by_severity": {s: open_by_severity[s] for s in SEVERITIES},
    }


def for_unit(
    items: list[dict[str, Any]], serial: str, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The deviations that name the unit, or whose time window holds one of its records at
    the deviation's operation and station (those the deviation gives)."""
    found = []
    for d in items:
        if serial in d["serials"]:
            found.append(d)
            continue
        window = d["window"]
        if window is None:
            continue
        for r in records:
            if (
                window["start"] <= now_text_of(r["end_ts"]) < window["end"]
                and d["operation"] in (None, r["operation"])
                and d["station"] in (None, r["station"])
            ):
                found.append(d)
                break
    return found


def now_text_of(iso: str) -> str:
    """A genealogy time (``...Z``, microseconds optional) in the record's form."""
    return now_text(datetime.fromisoformat(iso.replace("Z", "+00:00")))
