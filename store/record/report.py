"""A run's report: store/report's JSON for the run's protocol version, with the record's
sections added at its top level, here and only here: ``protocol_version``, ``approvals``,
``deviations``, ``allocation``, ``signoffs``, ``state``, ``awaiting`` and ``audit``."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from store.record import criteria, deviations, dispositions, runs, signoffs
from store.record.audit import now_text, verify
from store.record.bodies import DISPOSITIONS
from store.report.as_json import report_dict
from store.report.evaluate import Report, evaluate
from store.report.load import load_run


def run_report(
    engine: sa.Engine, run_id: int, version: int | None = None, now: datetime | None = None
) -> dict[str, Any]:
    return build_run_report(engine, run_id, version, now)[0]


def build_run_report(
    engine: sa.Engine, run_id: int, version: int | None = None, now: datetime | None = None
) -> tuple[dict[str, Any], Report, datetime]:
    """The report's JSON, the judged report it was made from (store/report's HTML renders
    that one) and its time."""
    with engine.connect() as conn:
        judged = runs.find_version(conn, run_id, version)
        found = deviations.of_run(conn, run_id)
        approval_rows = runs.approval_rows(conn, run_id)
        signatures = signoffs.of_run(conn, run_id)
    protocol = judged.protocol
    data = load_run(engine, protocol.run)
    serials = {record.attempt.serial for record in data.units}
    with engine.connect() as conn:
        current = dispositions.current(conn, serials)
    deviation_section = deviations.summary(found)
    extra = criteria.judge(protocol, deviation_section["open_by_severity"], current)
    report = evaluate(data, protocol, extra)
    generated_at = now or datetime.now(UTC)
    doc = report_dict(report, generated_at)
    first_unit = None if report.first_record is None else now_text(report.first_record)

    doc["protocol_version"] = {
        "run_id": run_id, "run": judged.run_name, "version": judged.version,
        "latest_version": judged.latest, "sha256": judged.sha256,
        "created_at": judged.created_at, "created_by": judged.created_by,
    }  # fmt: skip
    doc["approvals"] = runs.approval_summary(judged, approval_rows, first_unit)
    doc["deviations"] = deviation_section
    counts = Counter(d["disposition"] for d in current.values())
    users = {str(d["detail"]["user"]) for d in current.values()
             if d["disposition"] == "field_test" and d["detail"].get("user")}  # fmt: skip
    doc["allocation"] = {
        "units": {kind: counts[kind] for kind in DISPOSITIONS},
        "unallocated": len(serials) - len(current),
        "serials": {kind: sorted(s for s, d in current.items() if d["disposition"] == kind)
                    for kind in DISPOSITIONS if counts[kind]},
        "field_test_users": sorted(users),
        "criteria": [c for c in doc["run_criteria"] if c["name"].startswith("allocation ")],
        "certification_tests": [criteria.success_run_criterion(test, plan, current)[1]
                                for test, plan in protocol.certification_tests.items()],
    }  # fmt: skip
    evidence = signoffs.evidence_sha256(doc)
    run_state = signoffs.state(judged, signatures, evidence)
    doc["signoffs"] = signatures
    doc["state"] = run_state["state"]
    doc["awaiting"] = run_state["awaiting"]
    doc["state_words"] = run_state["words"]
    doc["evidence_sha256"] = evidence
    checked = verify(engine)
    doc["audit"] = checked.as_dict()
    return doc, report, generated_at
