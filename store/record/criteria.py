"""The protocol's criteria on the run's record, judged like the exit criteria of the figures:
``max_open_deviations`` per severity and the ``allocation`` of units to dispositions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from store.report.evaluate import Criterion, Result
from store.report.protocol import Protocol


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
    return found
