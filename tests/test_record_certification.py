"""A certification test's success-run plan judged on the run's record over HTTP (the store's
API on a real SQLite file): the units allocated to the test by their dispositions, their
results, the criterion in the run's report and its section in ``allocation``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from store.service import StoreService
from tests.test_record import PROTOCOL, app, auth, post_run  # noqa: F401

PLAN = {"drop-1m": {"success_run": {"reliability": 0.5, "confidence": 0.75}}}  # n = 2


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def certify(client: TestClient, serial: str, result: str | None) -> None:
    detail: dict[str, Any] = {"lab": "TÜV", "test": "drop-1m", "destructive": True}
    if result is not None:
        detail["result"] = result
    answer = client.post(
        f"/units/{serial}/dispositions",
        json={"disposition": "certification", "detail": detail, "reason": "plan"},
        headers=auth("alice"),
    )
    assert answer.status_code == 201, answer.text


def test_the_success_run_of_a_certification_test_in_the_runs_report(
    app: tuple[TestClient, StoreService],  # noqa: F811
) -> None:
    client, _ = app
    created = post_run(client, {**PROTOCOL, "certification_tests": PLAN})
    assert created.status_code == 201, created.text
    url = f"/runs/{created.json()['id']}/report?format=json"
    good = sorted(
        {u["serial"] for u in client.get("/units?verdict=pass&attempt=1").json()}
        - {u["serial"] for u in client.get("/units?verdict=fail").json()}
        - {u["serial"] for u in client.get("/units?verdict=scrap").json()}
    )

    def judged() -> tuple[dict[str, Any], dict[str, Any]]:
        report = client.get(url).json()
        (criterion,) = [c for c in report["run_criteria"] if c["name"].startswith("certif")]
        (section,) = report["allocation"]["certification_tests"]
        return criterion, section

    certify(client, good[0], "pass")
    certify(client, good[1], None)  # allocated, no result yet
    criterion, section = judged()
    assert (criterion["name"], criterion["result"], criterion["value"], criterion["limit"]) == (
        "certification drop-1m success_run", "insufficient", 1, 2,
    )  # fmt: skip
    assert (section["sample_size"], section["passed"], section["pending"]) == (
        2, [good[0]], [good[1]],
    )  # fmt: skip
    certify(client, good[1], "pass")  # its result: the latest disposition counts
    criterion, section = judged()
    assert criterion["result"] == "pass"
    assert section["achieved_confidence"] == 0.75
    certify(client, good[2], "fail")
    criterion, section = judged()
    assert (criterion["result"], section["failed"]) == ("fail", [good[2]])
    assert criterion["note"].startswith(f"drop-1m: 1 unit(s) failed ({good[2]}); the zero-failure")
    assert client.get(url).json()["decision"] == "no-go"
