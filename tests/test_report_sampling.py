"""The report's AQL sampling-plan criterion and its capability-only-in-control rule, over a
real store (the engine fixture and row builder of tests/test_report.py)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from store.report import Protocol, render_report
from tests.test_report import Rows, engine, report

__all__ = ["engine"]  # the fixture, imported for pytest

SIZES = {"min_units": 1, "min_pieces": 20, "min_subgroups": 1}


def units(engine: sa.Engine, verdicts: list[str], retest: int | None = None) -> None:
    """One unit per verdict, ending a minute apart; `retest`: that unit passes a second try."""
    rows = Rows()
    for i, verdict in enumerate(verdicts):
        rows.unit(f"U{i:02d}", verdict, minute=i)
    if retest is not None:
        rows.unit(f"U{retest:02d}", "pass", minute=len(verdicts) + 1, attempt=2)
    rows.store(engine)


def aql_report(engine: sa.Engine, aql: dict[str, Any]) -> dict[str, Any]:
    result = report(engine, {"sample_sizes": SIZES, "operations": [{"name": "ft", "aql": aql}]})
    (operation,) = result["operations"]
    return operation


def test_aql_accepts_when_the_sample_has_no_defect(engine: sa.Engine) -> None:
    # 20 units: lot 20, level II -> code letter C; AQL 1.0 at C, D: down arrows -> E: n 13,
    # Ac 0, Re 1 (MIL-STD-105E Tables I, II-A). The failure is the 15th unit: not sampled.
    verdicts = ["pass"] * 20
    verdicts[14] = "fail"
    units(engine, verdicts)
    operation = aql_report(engine, {"level": "II", "aql": 1.0})
    assert operation["aql"] == {
        "level": "II",
        "aql": 1.0,
        "lot_size": 20,
        "code_letter": "C",
        "sample_size": 13,
        "accept": 0,
        "reject": 1,
        "full_inspection": False,
        "p50": pytest.approx(1 - 0.5 ** (1 / 13), rel=1e-12),
        "inspected": 20,
        "defects": 0,
        "verdict": "accept",
    }
    (criterion,) = operation["criteria"]
    assert (criterion["name"], criterion["result"], criterion["value"], criterion["limit"]) == (
        "aql",
        "pass",
        0,
        0,
    )


def test_aql_rejects_on_a_failed_first_attempt_even_if_the_retest_passed(
    engine: sa.Engine,
) -> None:
    verdicts = ["pass"] * 20
    verdicts[4] = "fail"
    units(engine, verdicts, retest=4)
    operation = aql_report(engine, {"aql": 1.0})  # level II by default
    assert (operation["aql"]["defects"], operation["aql"]["verdict"]) == (1, "reject")
    assert operation["aql"]["inspected"] == 20  # units, not attempts
    assert operation["criteria"][0]["result"] == "fail"
    assert (
        report(
            engine, {"sample_sizes": SIZES, "operations": [{"name": "ft", "aql": {"aql": 1.0}}]}
        )["decision"]
        == "no-go"
    )


def test_aql_insufficient_below_the_sample_size_and_full_inspection(engine: sa.Engine) -> None:
    units(engine, ["pass"] * 20)
    # A lot of 1000 (given): J; AQL 1.0 -> n 80, Ac 2, Re 3; 20 inspected < 80.
    operation = aql_report(engine, {"aql": 1.0, "lot_size": 1000})
    a = operation["aql"]
    assert (a["code_letter"], a["sample_size"], a["accept"], a["reject"]) == ("J", 80, 2, 3)
    assert (a["inspected"], a["verdict"]) == (20, "insufficient")
    assert operation["criteria"][0]["result"] == "insufficient"
    assert operation["criteria"][0]["note"] == "20 units inspected < sample size 80"
    # AQL 0.10 on the lot of 20: C -> down to K (n 125) >= 20: every unit, n = 20, Ac 0.
    a = aql_report(engine, {"aql": 0.1})["aql"]
    assert (a["sample_size"], a["accept"], a["full_inspection"], a["verdict"]) == (
        20,
        0,
        True,
        "accept",
    )


def test_aql_line_in_the_html(engine: sa.Engine) -> None:
    units(engine, ["pass"] * 20)
    protocol = {"sample_sizes": SIZES, "operations": [{"name": "ft", "aql": {"aql": 1.0}}]}
    page = render_report(engine, Protocol.model_validate(protocol), "html").decode()
    assert (
        "AQL 1 %, level II, lot 20: code letter C, n = 13, Ac 0, Re 1. Accepts a lot with "
        "5.2 % defective half of the time." in page
    )


def drift_run(engine: sa.Engine) -> None:
    # 30 values rising by 0.1: MR-bar 0.1, sigma within 0.1 / 1.128 = 0.0887, centre 11.45.
    # Rule 1 (beyond 3 sigma = 0.266): points 0-11 and 18-29; rule 2 (2 of 3 beyond 2 sigma =
    # 0.177): points 2-12 and 18-29. Together 25 points signal. Cpk is large (USL 15).
    rows = Rows()
    for i in range(30):
        rows.unit(f"U{i:02d}", "pass", minute=i, values={"current": 10.0 + 0.1 * i})
    rows.store(engine)


def cpk(engine: sa.Engine, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    operation = {"name": "ft", "min_cpk_critical": 1.33, **options}
    result = report(engine, {"sample_sizes": SIZES, "operations": [operation]})
    (characteristic,) = result["characteristics"]
    return characteristic["criterion"], characteristic["control"]


def test_capability_of_a_drifting_critical_characteristic_fails(engine: sa.Engine) -> None:
    drift_run(engine)
    criterion, control = cpk(engine)
    assert criterion["value"] > 1.33  # the bound itself would pass
    assert criterion["result"] == "fail"
    assert criterion["note"].startswith(
        "not in control: 25 signal(s) of Western Electric rule(s) 1, 2;"
    )
    assert control["rules"] == [1, 2]
    assert control["signals"] == 25
    assert control["in_control"] is False
    assert "not a prediction" in control["note"]
    # Rule 1 only: 24 points.
    criterion, control = cpk(engine, control_rules=[1])
    assert (control["signals"], criterion["result"]) == (24, "fail")
    # Switched off: the index is judged alone, and no control block.
    criterion, control = cpk(engine, require_control=False)
    assert (criterion["result"], control) == ("pass", None)


def test_not_in_control_in_words_in_the_html(engine: sa.Engine) -> None:
    drift_run(engine)
    protocol = {"sample_sizes": SIZES, "operations": [{"name": "ft", "min_cpk_critical": 1.33}]}
    page = render_report(engine, Protocol.model_validate(protocol), "html").decode()
    assert "it is not a prediction of what the line will make" in page


def test_a_steady_process_keeps_its_verdict(engine: sa.Engine) -> None:
    rows = Rows()
    for i in range(30):
        rows.unit(f"U{i:02d}", "pass", minute=i, values={"current": 10.0 + 0.1 * (i % 2)})
    rows.store(engine)
    criterion, control = cpk(engine)
    assert (criterion["result"], control["signals"], control["in_control"]) == ("pass", 0, True)
    assert control["note"] is None
