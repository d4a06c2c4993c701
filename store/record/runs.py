"""Runs, their protocol versions and the approvals of each version.

A run is named by its protocol's ``run.name``. POSTing a protocol stores its text, SHA-256
and scope as version 1 of a new run, or as the next version of the run of that name when the
text changed (old versions stay readable), or answers the existing version when the text is
the same. Each function named in a version's ``signoff`` approves (or rejects) that version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa

from common.errors import ConfigError
from store.record.audit import append, lock, now_text, row_dict
from store.record.bodies import ApprovalIn
from store.record.errors import RecordError
from store.record.people import Person
from store.record.schema import approvals, runs, versions
from store.report.protocol import Protocol, parse_protocol

#: The protocol's name in its FILE:LINE problems.
PROTOCOL_NAME = "protocol"


@lru_cache(maxsize=64)
def protocol_of(text: str) -> Protocol:
    """A stored version's protocol (it validated when it was stored)."""
    return parse_protocol(text, PROTOCOL_NAME)


@dataclass(frozen=True, slots=True)
class Version:
    run_id: int
    run_name: str
    version: int
    sha256: str
    text: str
    created_at: str
    created_by: str
    latest: int  # the run's latest version number

    @property
    def protocol(self) -> Protocol:
        return protocol_of(self.text)


def acting_function(person: Person, function: str | None) -> str:
    """The function the person acts for: the one named (403 unless theirs), else their first."""
    if function is None:
        return person.functions[0]
    if function not in person.functions:
        raise RecordError(
            403, f"{person.name} does not act for {function} (their functions: "
            f"{', '.join(person.functions)})"
        )  # fmt: skip
    return function


def open_run(engine: sa.Engine, person: Person, text: str) -> tuple[bool, dict[str, Any]]:
    """(created, {id, name, version, sha256}): a new run or version, or the existing one."""
    try:
        protocol = parse_protocol(text, PROTOCOL_NAME)
    except ConfigError as exc:
        raise RecordError(422, str(exc)) from None
    sha = hashlib.sha256(text.encode()).hexdigest()
    name = protocol.run.name
    scope = orjson.dumps(protocol.run.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    at = now_text()
    with engine.begin() as conn:
        lock(conn)
        run_id = conn.execute(sa.select(runs.c.audit_id).where(runs.c.name == name)).scalar()
        if run_id is None:
            run_row = {"name": name, "created_at": at, "created_by": person.name}
            run_id = append(conn, actor=person.name, function=None, action="run.open",
                            table=runs, row=run_row, at=at).id  # fmt: skip
        else:
            same = conn.execute(
                sa.select(versions.c.version).where(
                    versions.c.run_id == run_id, versions.c.sha256 == sha
                )
            ).scalar()
            if same is not None:
                return False, {"id": run_id, "name": name, "version": same, "sha256": sha}
        latest = conn.execute(
            sa.select(sa.func.max(versions.c.version)).where(versions.c.run_id == run_id)
        ).scalar()
        number = (latest or 0) + 1
        row = {"run_id": run_id, "version": number, "sha256": sha, "text": text,
               "scope": scope.decode(), "created_at": at, "created_by": person.name}  # fmt: skip
        append(conn, actor=person.name, function=None, action="run.version", table=versions,
               row=row, at=at)  # fmt: skip
    return True, {"id": run_id, "name": name, "version": number, "sha256": sha}


def find_version(conn: sa.Connection, run_id: int, version: int | None = None) -> Version:
    """A version of a run (default: its latest), or 404 naming what is missing."""
    name = conn.execute(sa.select(runs.c.name).where(runs.c.audit_id == run_id)).scalar()
    if name is None:
        raise RecordError(404, f"no run {run_id} in the store")
    rows = conn.execute(
        sa.select(versions).where(versions.c.run_id == run_id).order_by(versions.c.version)
    ).all()
    latest = rows[-1].version
    wanted = latest if version is None else version
    row = next((r for r in rows if r.version == wanted), None)
    if row is None:
        raise RecordError(404, f"run {run_id} has no version {wanted} (latest: {latest})")
    return Version(run_id, name, row.version, row.sha256, row.text, row.created_at,
                   row.created_by, latest)  # fmt: skip


def approve(engine: sa.Engine, person: Person, run_id: int, body: ApprovalIn) -> dict[str, Any]:
    function = acting_function(person, body.function)
    if body.decision == "reject" and not body.reason:
        raise RecordError(422, "body.reason: a rejection needs a reason")
    at = now_text()
    with engine.begin() as conn:
        lock(conn)
        version = find_version(conn, run_id, body.version)
        signers = version.protocol.signoff
        if function not in signers:
            raise RecordError(
                422, f"body.function: {function} does not sign this protocol (signoff: "
                f"{', '.join(signers)})"
            )  # fmt: skip
        previous = conn.execute(
            sa.select(approvals.c.decision)
            .where(approvals.c.run_id == run_id, approvals.c.version == version.version,
                   approvals.c.function == function, approvals.c.person == person.name)
            .order_by(approvals.c.audit_id.desc()).limit(1)
        ).scalar()  # fmt: skip
        if previous == body.decision:
            raise RecordError(
                409, f"{person.name} has already given {body.decision} for {function} on "
                f"version {version.version} of run {run_id}"
            )  # fmt: skip
        row = {"run_id": run_id, "version": version.version, "function": function,
               "person": person.name, "decision": body.decision, "reason": body.reason,
               "at": at}  # fmt: skip
        written = append(conn, actor=person.name, function=function, action="approval",
                         table=approvals, row=row, at=at)  # fmt: skip
    return {"id": written.id, **row}


def approval_rows(conn: sa.Connection, run_id: int) -> list[dict[str, Any]]:
    query = sa.select(approvals).where(approvals.c.run_id == run_id).order_by(approvals.c.audit_id)
    return [row_dict(r)
            for r in conn.execute(query)]  # fmt: skip


def approval_summary(
    version: Version, rows: list[dict[str, Any]], first_unit: str | None
) -> dict[str, Any]:
    """For the version judged against: who approved it and when, what is missing, and
    whether the version and every approval came before the run's first unit record."""
    mine = [r for r in rows if r["version"] == version.version]
    latest: dict[str, dict[str, Any]] = {}
    for row in mine:  # in entry order: a function's last word counts
        latest[row["function"]] = row
    required = list(version.protocol.signoff)
    approved = [f for f in required if latest.get(f, {}).get("decision") == "approve"]
    rejected = [f for f in required if latest.get(f, {}).get("decision") == "reject"]
    missing = [f for f in required if f not in latest]
    notes: list[str] = []
    late = False
    if first_unit is not None:
        if version.created_at > first_unit:
            late = True
            notes.append(f"protocol version {version.version} was created at "
                         f"{version.created_at}, after the run's first unit record "
                         f"({first_unit})")  # fmt: skip
        for function in approved:
            at = latest[function]["at"]
            if at > first_unit:
                late = True
                notes.append(f"{function} approved version {version.version} at {at}, after "
                             f"the run's first unit record ({first_unit})")  # fmt: skip
    if missing:
        notes.append(f"not approved yet by {', '.join(missing)}")
    if rejected:
        notes.append(f"rejected by {', '.join(rejected)}")
    if not notes:
        notes.append(f"protocol version {version.version} was approved by every function "
                     "before the run's first unit record" if first_unit else
                     f"protocol version {version.version} was approved by every function; "
                     "no unit record yet")  # fmt: skip
    return {
        "run_id": version.run_id,
        "version": version.version,
        "latest_version": version.latest,
        "sha256": version.sha256,
        "created_at": version.created_at,
        "created_by": version.created_by,
        "required": required,
        "by_function": [latest[f] for f in required if f in latest],
        "history": mine,
        "approved": not missing and not rejected,
        "missing": missing,
        "rejected": rejected,
        "first_unit": first_unit,
        "before_first_unit": not late,
        "notes": notes,
    }


def list_runs(conn: sa.Connection) -> list[dict[str, Any]]:
    latest = (
        sa.select(versions.c.run_id, sa.func.max(versions.c.version).label("latest"))
        .group_by(versions.c.run_id)
        .subquery()
    )
    query = (
        sa.select(runs.c.audit_id, runs.c.name, runs.c.created_at, runs.c.created_by,
                  latest.c.latest)
        .join(latest, latest.c.run_id == runs.c.audit_id)
        .order_by(runs.c.audit_id)
    )  # fmt: skip
    return [
        {"id": r.audit_id, "name": r.name, "created_at": r.created_at,
         "created_by": r.created_by, "latest_version": r.latest}
        for r in conn.execute(query)
    ]  # fmt: skip


def version_rows(conn: sa.Connection, run_id: int) -> list[dict[str, Any]]:
    query = sa.select(versions).where(versions.c.run_id == run_id).order_by(versions.c.version)
    return [
        {"version": r.version, "sha256": r.sha256, "created_at": r.created_at,
         "created_by": r.created_by, "signoff": list(protocol_of(r.text).signoff),
         "scope": orjson.loads(r.scope), "protocol": r.text}
        for r in conn.execute(query)
    ]  # fmt: skip
