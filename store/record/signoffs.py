"""The gate's signatures and the run's state.

A signature records who signed, for which function, when, go or no-go, the reason, what the
signature means in words, and the report it was given on (kept as signed, with its SHA-256).
Exceptions a `go` signs over (the report says no-go or insufficient; the protocol version was
not approved by every function, or created or approved after the first unit record) need a
reason and are kept with the signature. One person signs once for a function (409 after).

State: ``no-go`` once any function's latest signature is no-go, ``go`` when every function of
the protocol's ``signoff`` signed go, else ``awaiting`` (naming who has not signed). A
signature given on data that has changed since (its evidence hash differs from the current
report's) is flagged ``stale``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
import sqlalchemy as sa

from store.record.audit import append, canonical, lock, now_text, row_dict
from store.record.bodies import SignoffIn
from store.record.errors import RecordError
from store.record.people import Person
from store.record.runs import Version, acting_function, find_version
from store.record.schema import signoffs

#: Sections left out of the evidence hash: they change with time or with the signatures, not
#: with the data signed on.
NOT_EVIDENCE = frozenset({
    "generated_at", "approvals", "signoffs", "state", "awaiting", "state_words",
    "evidence_sha256", "audit",
})  # fmt: skip


def evidence_sha256(report: dict[str, Any]) -> str:
    return hashlib.sha256(
        canonical({k: v for k, v in report.items() if k not in NOT_EVIDENCE}).encode()
    ).hexdigest()


def meaning(person: Person, function: str, decision: str, version: Version, sha: str) -> str:
    verdict = (
        "the pilot run meets its exit criteria and the product may go to the next phase"
        if decision == "go"
        else "the pilot run does not meet its exit criteria and the product may not go on"
    )
    return (
        f"{person.name}, for {function}, signs {decision.upper()} on pilot run "
        f"{version.run_name!r} (protocol version {version.version}, SHA-256 {version.sha256}): "
        f"{verdict}, on the evidence of the report with SHA-256 {sha}."
    )


def exceptions_of(report: dict[str, Any]) -> list[str]:
    """What a `go` on this report signs over."""
    found = []
    if report["decision"] != "go":
        found.append(f"override: the report's decision is {report['decision']}")
    approvals = report["approvals"]
    if not approvals["approved"] or not approvals["before_first_unit"]:
        found.append("protocol: " + "; ".join(approvals["notes"]))
    return found


def late_unnamed(report: dict[str, Any], reason: str) -> str | None:
    """Why ``reason`` does not name the late protocol version a go signs over, or None.

    A version created or approved after the run's first unit record is named when the reason
    says ``version N`` (N: the version judged; any case, e.g. "accept Version 2: only the
    limits' wording changed"). A reason such as "ok" would sign over a protocol written after
    the data without saying which one was accepted."""
    approvals = report["approvals"]
    if approvals["before_first_unit"]:
        return None
    number = approvals["version"]
    if re.search(rf"\bversion\s*{number}(?!\d)", reason, re.IGNORECASE):
        return None
    return (
        f"protocol version {number} was created or approved after the run's first unit "
        f"record: the reason must name it ('version {number}'): " + "; ".join(approvals["notes"])
    )


def sign(
    engine: sa.Engine,
    person: Person,
    run_id: int,
    body: SignoffIn,
    report: dict[str, Any],
) -> dict[str, Any]:
    """Sign ``report`` (the run's report now, built by the caller) for ``body.function``."""
    function = acting_function(person, body.function)
    with engine.connect() as conn:
        version = find_version(conn, run_id)
    if function not in version.protocol.signoff:
        raise RecordError(
            422, f"body.function: {function} does not sign this protocol (signoff: "
            f"{', '.join(version.protocol.signoff)})"
        )  # fmt: skip
    exceptions = exceptions_of(report) if body.decision == "go" else []
    if body.decision == "no-go" and not body.reason:
        raise RecordError(422, "body.reason: a no-go needs a reason")
    if exceptions and not body.reason:
        raise RecordError(
            422, "body.reason: a go over these needs a reason naming them: "
            + "; ".join(exceptions)
        )  # fmt: skip
    if body.decision == "go" and (unnamed := late_unnamed(report, body.reason or "")):
        raise RecordError(422, f"body.reason: {unnamed}")
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    sha = hashlib.sha256(text.encode()).hexdigest()
    at = now_text()
    with engine.begin() as conn:
        lock(conn)
        earlier = conn.execute(
            sa.select(signoffs.c.decision, signoffs.c.at)
            .where(signoffs.c.run_id == run_id, signoffs.c.function == function,
                   signoffs.c.person == person.name)
        ).first()  # fmt: skip
        if earlier is not None:
            raise RecordError(
                409, f"{person.name} has already signed {earlier.decision} for {function} on "
                f"run {run_id} at {earlier.at}"
            )  # fmt: skip
        row = {
            "run_id": run_id, "version": version.version, "function": function,
            "person": person.name, "decision": body.decision, "reason": body.reason,
            "meaning": meaning(person, function, body.decision, version, sha),
            "exceptions": canonical(exceptions), "report_sha256": sha,
            "evidence_sha256": report["evidence_sha256"], "at": at,
        }  # fmt: skip
        written = append(conn, actor=person.name, function=function, action="signoff",
                         table=signoffs, row=row, at=at, extra={"report": text})  # fmt: skip
    return {"id": written.id, **row, "exceptions": exceptions, "override": _override(exceptions)}


def _override(exceptions: list[str]) -> bool:
    return any(e.startswith("override:") for e in exceptions)


def of_run(conn: sa.Connection, run_id: int) -> list[dict[str, Any]]:
    columns = [c for c in signoffs.c if c.name != "report"]
    query = sa.select(*columns).where(signoffs.c.run_id == run_id).order_by(signoffs.c.audit_id)
    found = []
    for r in conn.execute(query):
        item = row_dict(r)
        item["exceptions"] = orjson.loads(item["exceptions"])
        item["override"] = _override(item["exceptions"])
        found.append(item)
    return found


def signed_report(conn: sa.Connection, run_id: int, signoff_id: int) -> str | None:
    return conn.execute(
        sa.select(signoffs.c.report).where(
            signoffs.c.run_id == run_id, signoffs.c.audit_id == signoff_id
        )
    ).scalar()


def state(
    version: Version, signatures: list[dict[str, Any]], evidence: str | None
) -> dict[str, Any]:
    """The run's state from the signatures on ``version``; ``evidence``: the current
    report's evidence hash (signatures given on other evidence are marked stale)."""
    latest: dict[str, dict[str, Any]] = {}
    for s in signatures:
        s["stale"] = evidence is not None and s["evidence_sha256"] != evidence
        s["current_version"] = s["version"] == version.version
        if s["version"] == version.version:
            latest[s["function"]] = s
    functions = list(version.protocol.signoff)
    awaiting = [f for f in functions if f not in latest]
    if any(s["decision"] == "no-go" for s in latest.values()):
        name = "no-go"
    elif not awaiting:
        name = "go"
    else:
        name = "awaiting"
    stale = [s["id"] for s in signatures if s["stale"] and s["current_version"]]
    words = {
        "go": "every function signed go",
        "no-go": "no-go signed by " + ", ".join(
            f"{s['person']} ({f})" for f, s in latest.items() if s["decision"] == "no-go"
        ),
        "awaiting": "awaiting the signatures of " + ", ".join(awaiting),
    }[name]  # fmt: skip
    if stale:
        words += (f"; signature(s) {', '.join(map(str, stale))} were given on an earlier "
                  "state of the data (data arrived or changed after them)")  # fmt: skip
    return {"state": name, "awaiting": awaiting, "stale": stale, "words": words}
