"""The pilot protocol file (validation, FILE:LINE errors) and the gate: each criterion to
pass / fail / insufficient, the run to go / no-go / insufficient. Pure: no database."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.errors import ConfigError
from quality import Attempt
from store.report.evaluate import Decision, Result, evaluate
from store.report.load import CharacteristicValue, RunData, UnitRecord
from store.report.protocol import Protocol, load_protocol, parse_protocol

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def test_the_example_protocol_loads() -> None:
    protocol = load_protocol(REPO / "config" / "pilot-protocol.yaml")
    assert protocol.run.work_orders == ("WO-1001", "WO-1002")
    assert protocol.run.start == datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    assert [o.name for o in protocol.operations] == ["press-fit", "functional-test", "burn-in"]
    assert protocol.operations[0].characteristics["press_force"].min_cpk == 1.33
    assert protocol.sample_sizes.min_pieces == 50


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_protocol(textwrap.dedent(text), "pilot.yaml")
    return info.value.problems


def test_errors_name_file_line_and_field() -> None:
    found = problems(
        """\
        run:
          serial_pattern: "PILOT-("
          start: 2026-11-20T06:00:00
        operations:
          - name: ft
            min_first_pass_yield: 1.5
            max_scarp_rate: 0.01
          - name: ft
        sample_sizes:
          subgroup_by: week
        """
    )
    assert found[0].startswith("pilot.yaml:2: run.serial_pattern: 'PILOT-(' is not a regular")
    assert (
        found[1] == "pilot.yaml:3: run.start: 2026-11-20T06:00:00 has no time zone: add Z or +01:00"
    )
    assert found[2].startswith("pilot.yaml:6: operations[0].min_first_pass_yield: ")
    assert "less than or equal to 1" in found[2]
    assert found[3] == (
        "pilot.yaml:7: operations[0].max_scarp_rate: unknown key (not ignored: check its "
        "spelling against docs/report.md)"
    )
    assert found[4].startswith("pilot.yaml:10: sample_sizes.subgroup_by: ")
    assert len(found) == 5  # the duplicate is reported once the items themselves are valid


def test_duplicate_operation_and_reversed_time_range() -> None:
    assert problems("operations: [{name: ft}, {name: ft}]") == [
        "pilot.yaml:1: operations: duplicate operation 'ft'"
    ]
    found = problems("run: {start: 2026-11-21T00:00:00Z, end: 2026-11-20T00:00:00Z}")
    assert found == ["pilot.yaml:1: run: start must be before end"]


def test_yaml_syntax_and_missing_file(tmp_path: Path) -> None:
    assert problems("run: [1,\n")[0].startswith("pilot.yaml:2: (yaml): ")
    assert problems("- 1\n") == ["pilot.yaml:1: (top level): the file must be a YAML mapping"]
    with pytest.raises(ConfigError, match="cannot read"):
        load_protocol(tmp_path / "absent.yaml")


# ----------------------------------------------------------------------------- the gate


def _protocol(**operation: object) -> Protocol:
    return Protocol.model_validate(
        {
            "sample_sizes": {"min_units": 10, "min_pieces": 10, "min_subgroups": 2},
            "operations": [{"name": "ft", **operation}],
        }
    )


def _run(verdicts: list[str], values: list[float] | None = None, critical: bool = True) -> RunData:
    units = []
    chars = []
    for i, verdict in enumerate(verdicts):
        end = T0 + timedelta(minutes=10 * i)
        serial = f"P{i:03d}"
        units.append(
            UnitRecord(
                Attempt(serial, "ft", 1, verdict, cycle_time_s=40.0 + i % 5, takt_s=45.0),
                end,
                "WO-1",
                "ft-1",
            )
        )
        if values is not None:
            chars.append(
                CharacteristicValue(
                    serial,
                    "ft",
                    "current",
                    values[i],
                    0.0,
                    10.0,
                    5.0,
                    critical,
                    1,
                    end,
                    "WO-1",
                    False,
                )
            )
    return RunData(tuple(units), tuple(chars))


def _alternating(n: int, spread: float) -> list[float]:
    return [5.0 + (spread if i % 2 else -spread) for i in range(n)]


def test_all_criteria_pass_gives_go() -> None:
    protocol = _protocol(
        min_first_pass_yield=0.9,
        max_scrap_rate=0.0,
        max_rework_rate=0.0,
        cycle_time_p95_within_takt=True,
        min_cpk_critical=1.33,
    )
    report = evaluate(_run(["pass"] * 20, _alternating(20, 0.1)), protocol)
    criteria = {c.name: c for c in report.operations[0].criteria}
    assert {name: c.result for name, c in criteria.items()} == {
        "first_pass_yield": Result.PASS,
        "scrap_rate": Result.PASS,
        "rework_rate": Result.PASS,
        "cycle_time_p95": Result.PASS,
        "cpk_lower_95 current": Result.PASS,
    }
    assert criteria["cycle_time_p95"].limit == 45.0
    assert report.decision is Decision.GO
    assert report.units == 20


def test_one_failing_criterion_gives_no_go() -> None:
    report = evaluate(_run(["pass"] * 18 + ["fail", "scrap"]), _protocol(min_first_pass_yield=0.95))
    (fpy,) = report.operations[0].criteria
    assert (fpy.result, fpy.value, fpy.limit) == (Result.FAIL, 0.9, 0.95)
    assert report.decision is Decision.NO_GO


def test_a_yield_exactly_at_its_minimum_and_a_rate_exactly_at_its_maximum_pass() -> None:
    # The protocol's limits are inclusive: "min_first_pass_yield: 0.9" is met by 9 of 10.
    # 9 / 10 and 1 / 10 are the same doubles as the literals 0.9 and 0.1, so the comparison
    # is at the limit exactly, not a rounding hair either side of it.
    data = _run(["pass"] * 9 + ["scrap"])
    report = evaluate(data, _protocol(min_first_pass_yield=0.9, max_scrap_rate=0.1))
    assert [(c.name, c.result, c.value, c.limit) for c in report.operations[0].criteria] == [
        ("first_pass_yield", Result.PASS, 0.9, 0.9),
        ("scrap_rate", Result.PASS, 0.1, 0.1),
    ]
    assert report.decision is Decision.GO
    # One unit fewer passing is below the limit: the boundary is where the test says it is.
    below = evaluate(_run(["pass"] * 8 + ["fail", "fail"]), _protocol(min_first_pass_yield=0.9))
    (fpy,) = below.operations[0].criteria
    assert (fpy.result, fpy.value) == (Result.FAIL, 0.8)


def test_too_few_units_is_insufficient_not_a_guess() -> None:
    report = evaluate(_run(["pass"] * 9), _protocol(min_first_pass_yield=0.95))
    (fpy,) = report.operations[0].criteria
    assert fpy.result is Result.INSUFFICIENT
    assert fpy.note == "9 units < 10"
    assert report.decision is Decision.INSUFFICIENT


def test_fail_wins_over_insufficient() -> None:
    protocol = _protocol(max_scrap_rate=0.0, min_cpk_critical=1.33)
    report = evaluate(_run(["scrap"] * 12, _alternating(12, 0.1)[:5] + [5.0] * 7), protocol)
    results = {c.name: c.result for c in report.operations[0].criteria}
    assert results["scrap_rate"] is Result.FAIL
    assert report.decision is Decision.NO_GO


def test_capability_criterion_judged_on_the_lower_bound() -> None:
    # Wide spread: Cpk itself is above 1.0 but its lower 95 % bound is below.
    protocol = _protocol(min_cpk_critical=1.0)
    report = evaluate(_run(["pass"] * 12, _alternating(12, 0.85)), protocol)
    (char,) = report.characteristics
    assert char.capability.cpk is not None
    assert char.capability.cpk > 1.0
    assert char.criterion is not None
    assert char.criterion.result is Result.FAIL
    assert char.criterion.value == char.capability.cpk_lower_95


def test_capability_sample_sizes_and_undefined_cpk() -> None:
    protocol = _protocol(min_cpk_critical=1.33)
    few = evaluate(_run(["pass"] * 9, _alternating(9, 0.1)), protocol)
    assert few.characteristics[0].criterion is not None
    assert few.characteristics[0].criterion.note == "9 pieces < 10"
    flat = evaluate(_run(["pass"] * 12, [5.0] * 12), protocol)
    assert flat.characteristics[0].criterion is not None
    assert flat.characteristics[0].criterion.note == "no spread: Cpk undefined"
    one_hour = Protocol.model_validate(
        {
            "sample_sizes": {"min_pieces": 10, "min_subgroups": 2, "subgroup_by": "work_order"},
            "operations": [{"name": "ft", "min_cpk_critical": 1.33}],
        }
    )
    grouped = evaluate(_run(["pass"] * 12, _alternating(12, 0.1)), one_hour)
    assert grouped.characteristics[0].criterion is not None
    assert grouped.characteristics[0].criterion.note == "1 subgroups (work_order) < 2"


def test_non_critical_characteristics_are_reported_but_not_judged_unless_listed() -> None:
    data = _run(["pass"] * 12, _alternating(12, 0.1), critical=False)
    assert evaluate(data, _protocol(min_cpk_critical=1.33)).characteristics[0].criterion is None
    listed = _protocol(characteristics={"current": {"min_cpk": 1.0}, "absent": {"min_cpk": 1.0}})
    report = evaluate(data, listed)
    assert [(c.name, c.result, c.note) for c in report.operations[0].criteria] == [
        ("cpk_lower_95 current", Result.PASS, ""),
        ("cpk_lower_95 absent", Result.INSUFFICIENT, "no values"),
    ]


def test_no_takt_and_no_criteria() -> None:
    units = tuple(
        UnitRecord(Attempt(f"P{i}", "ft", 1, "pass", cycle_time_s=3.0), T0, None, "s")
        for i in range(12)
    )
    report = evaluate(RunData(units, ()), _protocol(cycle_time_p95_within_takt=True))
    (ct,) = report.operations[0].criteria
    assert (ct.result, ct.note) == (Result.INSUFFICIENT, "no takt known")
    assert evaluate(RunData(units, ()), Protocol()).decision is Decision.INSUFFICIENT


def test_operations_follow_the_protocol_then_the_data_and_rty_multiplies() -> None:
    units = [
        UnitRecord(Attempt("A", "pack", 1, "pass"), T0, None, "s"),
        UnitRecord(Attempt("A", "ft", 1, "fail"), T0, None, "s"),
        UnitRecord(Attempt("A", "ft", 2, "pass"), T0, None, "s"),
        UnitRecord(Attempt("B", "ft", 1, "pass"), T0, None, "s"),
        UnitRecord(Attempt("G", "ft", 1, "pass", golden=True), T0, None, "s"),
    ]
    report = evaluate(RunData(tuple(units), ()), _protocol())
    assert [o.figures.operation for o in report.operations] == ["ft", "pack"]
    assert report.rolled_throughput_yield == pytest.approx(0.5 * 1.0)
    assert report.units == 2
    assert report.golden_serials == ("G",)
    assert {s: v for s, _, v in report.unit_rows}["A"] == {
        "pack": ("pass", 1),
        "ft": ("pass", 2),
    }


def test_aql_and_control_options_are_validated_in_the_house_format() -> None:
    found = problems(
        """\
        operations:
          - name: ft
            aql: {level: IV, aql: 0.3, lot_size: 1}
            control_rules: [5]
            characteristics:
              current: {min_cpk: 1.33, control_rules: []}
        """
    )
    assert found == [
        "pilot.yaml:3: operations[0].aql.level: Input should be 'S-1', 'S-2', 'S-3', 'S-4', "
        "'I', 'II' or 'III'; got 'IV'",
        "pilot.yaml:3: operations[0].aql.aql: AQL 0.3 is not a column of MIL-STD-105E Table "
        "II-A; one of 0.01, 0.015, 0.025, 0.04, 0.065, 0.1, 0.15, 0.25, 0.4, 0.65, 1, 1.5, 2.5, "
        "4, 6.5",
        "pilot.yaml:3: operations[0].aql.lot_size: Input should be greater than or equal to 2; "
        "got 1",
        "pilot.yaml:4: operations[0].control_rules: unknown Western Electric rule 5; rules are "
        "1 to 4",
        "pilot.yaml:6: operations[0].characteristics.current.control_rules: name at least one "
        "rule (1: beyond 3 sigma, 2: 2 of 3 beyond 2 sigma)",
    ]
    protocol = parse_protocol("operations: [{name: ft, aql: {aql: 1}, require_control: false}]")
    (operation,) = protocol.operations
    assert operation.aql is not None
    assert (operation.aql.level.value, operation.aql.aql, operation.aql.lot_size) == (
        "II",
        1.0,
        None,
    )
    assert (operation.require_control, operation.control_rules) == (False, (1, 2))
