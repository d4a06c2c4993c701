"""The pilot-run report's second-stage analyses (issue 27) end to end on a real SQLite store:
results by resource with a fixture nest that is worse (named at the 1 % level), the gauge
check from a golden sample that drifts (the criterion fails, with the sentence on measurement
versus process), the success-run plans of certification tests, and resources through the
store's own ingest. Figures are checked against independent computations from the rows."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from scipy import stats

from bench.pilot_run import fill_pilot_run, golden_reference, specs
from quality.compare import holm_adjusted, wilson_interval
from store.record.criteria import judge
from store.report import Protocol, render_report
from store.report.load import load_run
from store.report.protocol import RunSelection
from store.report.resources import ResourceGroup, ResourceSplit, _with_findings
from store.report.resources import Test as ResourceTest

SPECS = {s.name: s for s in specs(2)}  # supply_voltage (two-sided), leakage_current (upper)


def engine_with(tmp_path: Path, **run: Any) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    fill_pilot_run(engine, n_units=160, n_operations=3, n_characteristics=2, **run)
    return engine


def report(engine: sa.Engine, protocol: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        render_report(engine, Protocol.model_validate(protocol), "json")
    )
    return result


def split(doc: dict[str, Any], operation: str, kind: str) -> dict[str, Any]:
    (found,) = [s for s in doc["resources"] if (s["operation"], s["kind"]) == (operation, kind)]
    return found


def first_attempts(engine: sa.Engine, operation: str) -> list[tuple[str, str, dict[str, str]]]:
    """(serial, verdict, resources) of each unit's first attempt at the operation: the rows."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT serial, verdict, resources FROM units WHERE operation = :op "
                "AND attempt = 1 AND NOT golden"
            ),
            {"op": operation},
        ).all()
    return [(r.serial, r.verdict, json.loads(r.resources)) for r in rows]


def test_a_worse_fixture_nest_is_named_at_the_1_percent_level(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, resources=True, worse_fixture="nest-3")
    doc = report(engine, {"operations": [{"name": "press-fit", "min_first_pass_yield": 0.9}]})

    fixture = split(doc, "press-fit", "fixture")
    # Counts and yields per nest, from the rows.
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for _, verdict, made_by in first_attempts(engine, "press-fit"):
        tally[made_by["fixture"]][0] += 1
        tally[made_by["fixture"]][1] += verdict == "pass"
    assert {v["value"]: [v["units"], v["first_passes"]] for v in fixture["values"]} == tally
    table = [tally[nest] for nest in sorted(tally)]
    chi2 = stats.chi2_contingency([[p, n - p] for n, p in table], correction=False)
    assert fixture["yield_test"]["test"] == "chi_square"
    assert fixture["yield_test"]["p_value"] == pytest.approx(float(chi2.pvalue), rel=1e-9)
    assert fixture["yield_test"]["p_value"] < 0.01
    nest3 = next(v for v in fixture["values"] if v["value"] == "nest-3")
    n, passes = tally["nest-3"]
    assert nest3["first_pass_yield"] == pytest.approx(passes / n)
    # The Wilson interval by its formula (Wilson 1927), z = 1.959964.
    z, p = 1.959963984540054, passes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert nest3["first_pass_yield_95"] == pytest.approx([centre - half, centre + half])

    # The critical characteristics' mean and Cpk of nest 3, from its first-attempt values.
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.last FROM characteristics c JOIN units u ON u.seq = c.unit_seq "
                "WHERE u.operation = 'press-fit' AND u.attempt = 1 AND NOT u.golden "
                "AND c.name = 'supply_voltage' AND u.resources LIKE '%nest-3%' ORDER BY u.end_ts"
            )
        ).all()
    values = [r.last for r in rows]
    mean = statistics.fmean(values)
    sigma = statistics.fmean(abs(b - a) for a, b in itertools.pairwise(values)) / 1.128
    cpk = min(12.6 - mean, mean - 11.4) / (3 * sigma)
    voltage = next(c for c in nest3["characteristics"] if c["name"] == "supply_voltage")
    assert (voltage["n"], voltage["mean"], voltage["cpk"]) == (
        len(values), pytest.approx(mean), pytest.approx(cpk, rel=1e-3),
    )  # fmt: skip
    welch = next(m for m in fixture["mean_tests"] if m["characteristic"] == "supply_voltage")
    assert welch["test"] == "welch_anova"
    assert welch["p_value"] < 0.01

    # Every test's p adjusted by Holm's method over all the tests of the report.
    made = [s["yield_test"] for s in doc["resources"] if s["yield_test"]] + [
        m for s in doc["resources"] for m in s["mean_tests"] if m.get("test")
    ]
    assert len(made) > 4
    expected = holm_adjusted([t["p_value"] for t in made])
    assert [t["p_adjusted"] for t in made] == pytest.approx(expected, rel=1e-12)
    assert fixture["yield_test"]["p_adjusted"] < 0.01

    findings = doc["resource_findings"]
    assert fixture["differs"]
    assert findings[0].startswith(
        "Fixture nest-3 at press-fit differs at the 1 % level: first-pass yield "
    )
    assert "(chi-square test, p = " in findings[0]
    assert ", Holm-adjusted " in findings[0]
    assert all("press-fit" in f for f in findings if f.startswith("Fixture"))  # one operation
    assert not any(f.startswith("Cavity") for f in findings)  # cavities are not in step with nests
    assert split(doc, "press-fit", "cavity")["yield_test"]["p_value"] > 0.01

    page = render_report(engine, Protocol.model_validate({}), "html").decode()
    assert '<h2 id="resources">Results by resource</h2>' in page
    assert "Fixture nest-3 at press-fit differs at the 1 % level" in page


def test_the_same_run_without_a_worse_nest_names_no_fixture(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, resources=True)
    doc = report(engine, {})
    assert not any(f.startswith("Fixture") for f in doc["resource_findings"])
    assert all(not split(doc, op, "fixture")["differs"] for op in ("press-fit", "flash"))
    page = render_report(engine, Protocol.model_validate({}), "html").decode()
    assert "<li>No resource differs at the 1 % level.</li>" in page or "Fixture" not in page


def test_records_without_resources_give_no_split(tmp_path: Path) -> None:
    doc = report(engine_with(tmp_path), {})
    assert (doc["resources"], doc["resource_findings"]) == ([], [])


def gauge_protocol(serial: str = "GOLD-1", **gauge: Any) -> dict[str, Any]:
    reference = golden_reference(SPECS["supply_voltage"], serial)
    return {
        "operations": [
            {
                "name": "press-fit",
                "gauge": {"references": {serial: {"supply_voltage": reference}}, **gauge},
            }
        ]
    }


def golden_values(engine: sa.Engine, serial: str) -> list[float]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT last FROM characteristics WHERE serial = :s AND operation = 'press-fit' "
                "AND name = 'supply_voltage'"
            ),
            {"s": serial},
        ).all()
    return [r.last for r in rows]


def test_a_drifting_golden_sample_fails_the_gauge_criterion_with_the_sentence(
    tmp_path: Path,
) -> None:
    engine = engine_with(tmp_path, golden_times=30, golden_drift=4.0)
    doc = report(engine, gauge_protocol())
    (study,) = doc["gauge"]
    values = golden_values(engine, "GOLD-1")
    s = statistics.stdev(values)
    bias = statistics.fmean(values) - study["reference"]
    assert study["n"] == len(values) >= 25
    assert study["cg"] == pytest.approx(0.2 * 1.2 / (6 * s))
    assert study["cgk"] == pytest.approx((0.1 * 1.2 - abs(bias)) / (3 * s))
    t = stats.ttest_1samp(values, study["reference"])
    assert study["p_value"] == pytest.approx(float(t.pvalue))
    assert study["result"] == "fail"
    assert study["cgk"] < 1.33
    (criterion,) = [
        c for c in doc["operations"][0]["criteria"] if c["name"] == "gauge_cg supply_voltage GOLD-1"
    ]
    assert (criterion["result"], criterion["limit"]) == ("fail", 1.33)
    assert doc["decision"] == "no-go"
    (note,) = doc["measurement_notes"]
    assert note.startswith("The first-pass yield loss at press-fit (")
    assert "may be measurement rather than process" in note
    assert "supply_voltage on golden sample GOLD-1: Cg " in note

    page = render_report(engine, Protocol.model_validate(gauge_protocol()), "html").decode()
    assert '<h2 id="gauge">Gauge check from the golden samples (type-1 study)</h2>' in page
    assert "may be measurement rather than process" in page
    assert "Gauge Cg and Cgk of <b>supply_voltage GOLD-1</b> (golden sample) ≥" in page


def test_a_stable_golden_sample_passes_and_says_nothing_of_measurement(tmp_path: Path) -> None:
    engine = engine_with(tmp_path, golden_times=30)
    doc = report(engine, gauge_protocol())
    (study,) = doc["gauge"]
    assert study["result"] == "pass"
    assert min(study["cg"], study["cgk"]) >= 1.33
    assert doc["measurement_notes"] == []


def test_too_few_golden_measurements_or_no_tolerance_are_insufficient(tmp_path: Path) -> None:
    engine = engine_with(tmp_path)  # golden samples measured 4 times (every 53rd unit)
    doc = report(engine, gauge_protocol())
    (study,) = doc["gauge"]
    assert (study["result"], study["note"]) == (
        "insufficient", "4 measurements of the golden sample < 25",
    )  # fmt: skip
    one_sided = {"references": {"GOLD-1": {"leakage_current": 9.5}}}
    doc = report(engine, {"operations": [{"name": "press-fit", "gauge": one_sided}]})
    assert [(g["result"], g["note"]) for g in doc["gauge"]] == [
        ("insufficient", "no two-sided tolerance")
    ]


def certification(serial: str, result: str | None, test: str = "drop-1m") -> dict[str, Any]:
    detail: dict[str, Any] = {"lab": "L1", "test": test, "destructive": True}
    if result is not None:
        detail["result"] = result
    return {"disposition": "certification", "detail": detail}


@pytest.mark.parametrize(
    ("outcomes", "result", "note"),
    [
        (["pass"] * 22, "pass", "drop-1m: 22 units passed, none failed: reliability 0.9 at "
         "confidence 0.9 needs 22 units tested without a failure, so it is demonstrated."),
        (["pass"] * 21 + ["fail"], "fail", "drop-1m: 1 unit(s) failed (U21); the zero-failure "
         "plan (reliability 0.9 at confidence 0.9 needs 22 units tested without a failure) "
         "allows none, so the reliability is not demonstrated."),
        (["pass"] * 17 + [None] * 5, "insufficient", "drop-1m: 17 of 22 allocated units "
         "passed, 5 without a result yet; reliability 0.9 at confidence 0.9 needs 22 units "
         "tested without a failure."),
        (["pass"] * 10, "fail", "drop-1m: 10 unit(s) allocated, fewer than the plan's n: "
         "reliability 0.9 at confidence 0.9 needs 22 units tested without a failure."),
    ],
)  # fmt: skip
def test_a_success_run_plan_checks_the_units_allocated_to_its_certification_test(
    outcomes: list[str | None], result: str, note: str
) -> None:
    protocol = Protocol.model_validate(
        {
            "certification_tests": {
                "drop-1m": {"success_run": {"reliability": 0.9, "confidence": 0.9}}
            }
        }
    )
    current = {f"U{i:02d}": certification(f"U{i:02d}", r) for i, r in enumerate(outcomes)}
    current["X1"] = certification("X1", "fail", test="salt-spray")  # another test's failure
    current["F1"] = {"disposition": "field_test", "detail": {"site": "s", "user": "u"}}
    (criterion,) = judge(protocol, {}, current)
    assert (criterion.name, criterion.result.value, criterion.note) == (
        "certification drop-1m success_run", result, note,
    )  # fmt: skip
    assert criterion.limit == 22  # ceil(ln(0.1) / ln(0.9)) = ceil(21.85)


def test_the_store_ingests_resources_and_the_report_reads_them(tmp_path: Path) -> None:
    from store.db import connect
    from store.ingest import Incoming, Writer
    from store.migrate import migrate

    engine = connect(f"sqlite:///{tmp_path / 'store.db'}")
    migrate(engine)
    units = [
        {
            "seq": i + 1, "serial": f"PILOT-{i:04d}", "station": "press-2", "slot": None,
            "operation": "press-fit", "attempt": 1, "start": f"2026-11-21T10:{i:02d}:00Z",
            "end": f"2026-11-21T10:{i:02d}:30Z", "verdict": "pass" if i % 3 else "fail",
            "golden": False,
            "resources": {"operator": "OP-anna", "fixture": f"nest-{i % 2 + 1}"} if i else None,
        }
        for i in range(6)
    ]  # fmt: skip
    payload = orjson.dumps(
        {"schema": 2, "collector": "pc3", "outbox": "0123456789abcdef", "units": units}
    )
    writer = Writer(engine)
    result = writer.write([Incoming("collector/site/line1/pc3/units", payload)])
    writer.close()
    assert result.units_inserted == 6
    with engine.connect() as conn:
        stored = [r[0] for r in conn.execute(sa.text("SELECT resources FROM units ORDER BY seq"))]
    assert stored[:2] == [None, '{"fixture":"nest-2","operator":"OP-anna"}']
    data = load_run(engine, RunSelection())
    assert [dict(u.resources) for u in data.units][:2] == [
        {}, {"fixture": "nest-2", "operator": "OP-anna"},
    ]  # fmt: skip
    # The genealogy and its CSV show them too.
    from store.genealogy import UnitQuery, search_units, unit_genealogy
    from store.pages.csvout import units_csv

    genealogy = unit_genealogy(engine, "PILOT-0001")
    assert genealogy is not None
    assert genealogy["operations"][0]["resources"] == {"fixture": "nest-2", "operator": "OP-anna"}
    found = search_units(engine, UnitQuery(serial="PILOT-000*"))
    csv_text = units_csv(found)
    assert csv_text.splitlines()[0].endswith(",work_order,resources")
    assert '"{""fixture"": ""nest-2"", ""operator"": ""OP-anna""}"' in csv_text
    assert sorted(u["resources"] == {} for u in found) == [False] * 5 + [True]
    doc = report(engine, {})
    assert [
        (s["kind"], s["without"], [v["value"] for v in s["values"]]) for s in doc["resources"]
    ] == [
        ("operator", 1, ["OP-anna"]),
        ("fixture", 1, ["nest-2", "nest-1"]),
    ]
    engine.dispose()


def test_the_example_protocol_has_a_gauge_check_and_a_success_run() -> None:
    from store.report import load_protocol
    from tests.helpers import REPO

    protocol = load_protocol(REPO / "config" / "pilot-protocol.yaml")
    gauge = protocol.operations[1].gauge
    assert gauge is not None
    assert (gauge.min_cg, gauge.min_measurements) == (1.33, 25)
    assert gauge.references == {"GOLD-1": {"supply_voltage": 12.045, "leakage_current": 9.55}}
    plan = protocol.certification_tests["drop-1m"].success_run
    assert (plan.reliability, plan.confidence) == (0.9, 0.9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "operations:\n  - name: ft\n    gauge: {references: {}}\n",
            "pilot.yaml:3: operations[0].gauge.references: name a golden sample and a "
            "characteristic's reference value",
        ),
        (
            "operations:\n  - name: ft\n    gauge:\n      min_cg: 0\n"
            "      references: {G: {v: 1}}\n",
            "pilot.yaml:4: operations[0].gauge.min_cg: Input should be greater than 0",
        ),
        (
            "certification_tests:\n  drop: {success_run: {reliability: 1.0, confidence: 0.9}}\n",
            "pilot.yaml:2: certification_tests.drop.success_run.reliability: Input should be less",
        ),
    ],
)
def test_bad_gauge_and_success_run_options_name_file_line_and_path(
    text: str, expected: str
) -> None:
    from common.errors import ConfigError
    from store.report import parse_protocol

    with pytest.raises(ConfigError) as info:
        parse_protocol(text, "pilot.yaml")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def _fixture_split(operation: str, p_value: float) -> ResourceSplit:
    groups = tuple(
        ResourceGroup(nest, 20, passes, wilson_interval(passes, 20), ())
        for nest, passes in (("nest-1", 19), ("nest-2", 12))
    )
    test = ResourceTest("fisher_exact", 12.0, p_value)
    return ResourceSplit(operation, "fixture", groups, 0, test, "", (), ())


def test_a_p_below_one_percent_is_no_finding_when_the_report_made_many_tests() -> None:
    """p = 0.006 alone is named; beside another test at 0.008, Holm's adjusted p of both is
    0.012 (2 x 0.006, then no lower for the larger) and neither is: the chance of a false call
    among the tests stays at most 1 %."""
    [alone] = _with_findings([_fixture_split("press-fit", 0.006)])
    assert alone.yield_test is not None
    assert alone.yield_test.p_adjusted == 0.006
    assert alone.findings == (
        "Fixture nest-2 at press-fit differs at the 1 % level: first-pass yield 60.0 % (95 % CI "
        "38.7 % to 78.1 %, 20 units) against 95.0 % for the other fixture values (Fisher's "
        "exact test, p = 0.006, Holm-adjusted 0.006).",
    )
    pair = _with_findings([_fixture_split("press-fit", 0.006), _fixture_split("flash", 0.008)])
    assert [s.yield_test.p_adjusted for s in pair if s.yield_test] == pytest.approx([0.012, 0.012])
    assert [s.findings for s in pair] == [(), ()]
