"""The protocol's criteria on the run's record, judged like the exit criteria of the figures:
``max_open_deviations`` per severity, the ``allocation`` of units to dispositions and the
success-run plans of the ``certification_tests``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quality.sampling import success_run
from store.report.evaluate import Criterion, Result
from store.report.protocol import CertificationTest, Protocol

#: A certification unit's outcome, in its disposition's ``detail.result``.
FAILED = frozenset({"fail", "failed"})
PASSED = frozenset({"pass", "passed"})


def judge(
    protocol: Protocol,
    open_by_severity: Mapping[str, int],
    current: Mapping[str, Mapping[str, Any]],
) -> list[Criterion]:
    """``current``: each unit of the run's current disposition."""
    found = []
    for severity, limit in protocol.max_open_deviations.items():
        count = open_by_severity.get(severity, 0)
        result = Result.PASS if count <= limit else Result.FAIL
        found.append(Criterion(f"open_deviations {severity}", result, count, limit))
    for kind, wanted in protocol.allocation.items():
        held = [d for d in current.values() if d["disposition"] == kind]
        result = Result.PASS if len(held) >= wanted.min_units else Result.FAIL
        found.append(Criterion(f"allocation {kind} units", result, len(held), wanted.min_units))
        if wanted.min_users is not None:
            users = {str(d["detail"].get("user")) for d in held if d["detail"].get("user")}
            result = Result.PASS if len(users) >= wanted.min_users else Result.FAIL
            found.append(
                Criterion(f"allocation {kind} users", result, len(users), wanted.min_users)
            )
    for test, plan in protocol.certification_tests.items():
        found.append(success_run_criterion(test, plan, current)[0])
    return found


def success_run_criterion(
    test: str, plan: CertificationTest, current: Mapping[str, Mapping[str, Any]]
) -> tuple[Criterion, dict[str, Any]]:
    """The zero-failure plan of one certification test, judged on the units whose current
    disposition is ``certification`` with ``detail.test`` naming it: any failed unit fails it;
    fewer than n passed units fail it too, unless enough are allocated and results are pending
    (insufficient). Returns the criterion and its JSON section."""
    wanted = success_run(plan.success_run.reliability, plan.success_run.confidence)
    n = wanted.sample_size
    held = sorted(
        serial
        for serial, d in current.items()
        if d["disposition"] == "certification" and str(d["detail"].get("test")) == test
    )
    outcome = {s: str(current[s]["detail"].get("result", "")).strip().lower() for s in held}
    failed = [s for s in held if outcome[s] in FAILED]
    passed = [s for s in held if outcome[s] in PASSED]
    pending = [s for s in held if s not in failed and s not in passed]
    claim = (
        f"reliability {plan.success_run.reliability:g} at confidence "
        f"{plan.success_run.confidence:g} needs {n} units tested without a failure"
    )
    name = f"certification {test} success_run"
    if failed:
        note = (
            f"{test}: {len(failed)} unit(s) failed ({', '.join(failed)}); the zero-failure plan "
            f"({claim}) allows none, so the reliability is not demonstrated."
        )
        criterion = Criterion(name, Result.FAIL, len(passed), n, note)
    elif len(passed) >= n:
        note = f"{test}: {len(passed)} units passed, none failed: {claim}, so it is demonstrated."
        criterion = Criterion(name, Result.PASS, len(passed), n, note)
    elif len(held) >= n:
        note = (
            f"{test}: {len(passed)} of {len(held)} allocated units passed, {len(pending)} without "
            f"a result yet; {claim}."
        )
        criterion = Criterion(name, Result.INSUFFICIENT, len(passed), n, note)
    else:
        note = f"{test}: {len(held)} unit(s) allocated, fewer than the plan's n: {claim}."
        criterion = Criterion(name, Result.FAIL, len(passed), n, note)
    section = {
        "test": test,
        "reliability": plan.success_run.reliability,
        "confidence": plan.success_run.confidence,
        "sample_size": n,
        "achieved_confidence": wanted.achieved_confidence,
        "allocated": held,
        "passed": passed,
        "failed": failed,
        "pending": pending,
        "result": criterion.result.value,
        "note": criterion.note,
    }
    return criterion, section
