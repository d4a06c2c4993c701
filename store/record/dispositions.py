"""Where each unit went after the line (dispositions), and remarks on a unit.

A unit's dispositions are kept in order; the latest is its current one. A unit whose last
verdict is fail or scrap, or whose current disposition is scrap, cannot go to a field test,
certification, the golden samples or a customer: 409 with the reason.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from store.record.audit import append, canonical, lock, now_text, row_dict
from store.record.bodies import DispositionIn, RemarkIn
from store.record.errors import RecordError
from store.record.people import Person
from store.record.runs import acting_function
from store.record.schema import dispositions, remarks
from store.schema import units

#: Where only a good unit may go.
GOOD_ONLY = frozenset({"field_test", "certification", "golden", "shipped"})
BAD_VERDICTS = frozenset({"fail", "scrap"})
#: Detail a disposition must give (the report counts field-test users, for one).
REQUIRED_DETAIL = {
    "field_test": ("site", "user"),
    "certification": ("lab", "test", "destructive"),
    "golden": ("location",),
}


def _last_record(conn: sa.Connection, serial: str) -> Any:
    row = conn.execute(
        sa.select(units.c.verdict, units.c.operation, units.c.end_ts)
        .where(units.c.serial == serial)
        .order_by(units.c.end_ts.desc(), units.c.seq.desc())
        .limit(1)
    ).first()
    if row is None:
        raise RecordError(404, f"no unit {serial!r} in the store")
    return row


def dispose(engine: sa.Engine, person: Person, serial: str, body: DispositionIn) -> dict[str, Any]:
    function = acting_function(person, body.function)
    for key in REQUIRED_DETAIL.get(body.disposition, ()):
        if body.detail.get(key) in (None, ""):
            raise RecordError(422, f"body.detail.{key}: required for {body.disposition}")
    at = now_text()
    with engine.begin() as conn:
        lock(conn)
        last = _last_record(conn, serial)
        if body.disposition in GOOD_ONLY:
            if last.verdict in BAD_VERDICTS:
                raise RecordError(
                    409, f"unit {serial!r} cannot go to {body.disposition}: its last verdict "
                    f"is {last.verdict} ({last.operation or 'no operation'}, "
                    f"{now_text(last.end_ts)})"
                )  # fmt: skip
            current = conn.execute(
                sa.select(dispositions.c.disposition, dispositions.c.at, dispositions.c.person)
                .where(dispositions.c.serial == serial)
                .order_by(dispositions.c.audit_id.desc()).limit(1)
            ).first()  # fmt: skip
            if current is not None and current.disposition == "scrap":
                raise RecordError(
                    409, f"unit {serial!r} cannot go to {body.disposition}: it was scrapped "
                    f"at {current.at} by {current.person}"
                )  # fmt: skip
        row = {"serial": serial, "disposition": body.disposition,
               "detail": canonical(body.detail), "reason": body.reason,
               "person": person.name, "at": at}  # fmt: skip
        written = append(conn, actor=person.name, function=function, action="disposition",
                         table=dispositions, row=row, at=at)  # fmt: skip
    return {"id": written.id, **row, "detail": body.detail}


def remark(engine: sa.Engine, person: Person, serial: str, body: RemarkIn) -> dict[str, Any]:
    at = now_text()
    with engine.begin() as conn:
        lock(conn)
        _last_record(conn, serial)  # 404 for an unknown serial
        row = {"serial": serial, "author": body.author, "text": body.text,
               "person": person.name, "at": at}  # fmt: skip
        written = append(conn, actor=person.name, function=None, action="remark",
                         table=remarks, row=row, at=at)  # fmt: skip
    return {"id": written.id, **row}


def _rows(conn: sa.Connection, table: sa.Table, where: Any) -> list[dict[str, Any]]:
    found = []
    for r in conn.execute(sa.select(table).where(where).order_by(table.c.audit_id)):
        item = row_dict(r)
        if "detail" in item:
            item["detail"] = orjson.loads(item["detail"])
        found.append(item)
    return found


def of_unit(conn: sa.Connection, serial: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dispositions, remarks) of a unit, oldest first."""
    return (
        _rows(conn, dispositions, dispositions.c.serial == serial),
        _rows(conn, remarks, remarks.c.serial == serial),
    )


def current(conn: sa.Connection, serials: set[str]) -> dict[str, dict[str, Any]]:
    """Each serial's current (latest) disposition, for those that have one."""
    latest: dict[str, dict[str, Any]] = {}
    for item in _rows(conn, dispositions, dispositions.c.serial.in_(sorted(serials))):
        latest[item["serial"]] = item
    return latest
