"""The pilot-run report over a real SQLite store: loading the run (work orders, serial pattern,
time range), the JSON shape and values (null where undefined), the HTML page, the CLI."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bench.pilot_run import characteristics, fill_pilot_run, metadata, units
from store.report import Protocol, render_report
from store.report.cli import add_arguments, connect, main, run

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
ISSUE_KEYS = {
    "decision",
    "units",
    "rolled_throughput_yield",
    "operations",
    "characteristics",
}
OPERATION_KEYS = {
    "operation",
    "units",
    "first_pass_yield",
    "final_yield",
    "scrap_rate",
    "rework_rate",
    "cycle_time_s",
    "takt_s",
    "criteria",
}
CHARACTERISTIC_KEYS = {
    "operation",
    "name",
    "n",
    "mean",
    "sd_within",
    "sd_overall",
    "cp",
    "cpk",
    "pp",
    "ppk",
    "cpk_lower_95",
    "lsl",
    "usl",
    "out_of_spec",
    "rule_violations",
}


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The two report tables in a SQLite file, or in a database of the store's PostgreSQL
    (the session fixture of tests/store_fixtures.py, once the store is in the tree)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        try:
            server = request.getfixturevalue("postgres")
        except pytest.FixtureLookupError:
            pytest.skip("no PostgreSQL fixture in this tree (it comes with the store)")
        url = server.create_database(f"report{next(_databases)}")
    engine = connect(url)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


class Rows:
    """Unit records (and their characteristic values) as the store keeps them."""

    def __init__(self, first_seq: int = 1) -> None:
        self.first_seq = first_seq
        self.units: list[dict[str, Any]] = []
        self.chars: list[dict[str, Any]] = []

    def unit(
        self,
        serial: str,
        verdict: str,
        *,
        minute: float,
        attempt: int = 1,
        operation: str = "ft",
        code: str | None = None,
        golden: bool = False,
        work_order: str | None = "WO-1",
        cycle: float | None = 40.0,
        values: dict[str, float | None] | None = None,
    ) -> None:
        seq = self.first_seq + len(self.units)
        end = T0 + timedelta(minutes=minute)
        self.units.append(
            {
                "collector": "pc1",
                "outbox": "0123456789abcdef",
                "seq": seq,
                "serial": serial,
                "station": "ft-1",
                "slot": None,
                "operation": operation,
                "attempt": attempt,
                "start_ts": end - timedelta(seconds=cycle or 1),
                "end_ts": end,
                "cycle_time_s": cycle,
                "takt_s": 45.0,
                "verdict": verdict,
                "failure_code": code,
                "ended_by": "verdict",
                "readings": 10,
                "golden": golden,
                "work_order": work_order,
            }
        )
        for name, value in (values or {}).items():
            self.chars.append(
                {
                    "collector": "pc1",
                    "outbox": "0123456789abcdef",
                    "unit_seq": seq,
                    "serial": serial,
                    "operation": operation,
                    "name": name,
                    "last": value,
                    "min": value,
                    "max": value,
                    "lsl": None,
                    "usl": 15.0,
                    "target": None,
                    "critical": True,
                    "in_spec": None if value is None else value <= 15.0,
                    "end_ts": end,
                }
            )

    def store(self, engine: sa.Engine) -> None:
        with engine.begin() as conn:
            conn.execute(units.insert(), self.units)
            if self.chars:
                conn.execute(characteristics.insert(), self.chars)


def report(engine: sa.Engine, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    body = render_report(engine, Protocol.model_validate(protocol or {}), "json")
    result: dict[str, Any] = json.loads(body)
    return result


def small_run(engine: sa.Engine) -> None:
    rows = Rows()
    rows.unit("A", "pass", minute=0, values={"leak": 12.0})
    rows.unit("B", "fail", minute=1, code="317", values={"leak": 12.4})
    rows.unit("C", "fail", minute=2, code="317", values={"leak": 11.8})
    rows.unit("B", "pass", minute=3, attempt=2, values={"leak": 13.9})  # retest: not in Cpk
    rows.unit("C", "scrap", minute=4, attempt=2, code="12", values={"leak": 12.1})
    rows.unit("D", "pass", minute=5, cycle=None, values={"leak": None})  # missing values
    rows.unit("E", "pass", minute=6, values={"leak": 12.2})
    rows.unit("G", "pass", minute=7, golden=True, work_order=None, values={"leak": 12.0})
    rows.unit("G", "pass", minute=8, golden=True, work_order=None, values={"leak": 12.3})
    rows.store(engine)


def test_json_values_of_a_small_run_with_retests_golden_and_missing_values(
    engine: sa.Engine,
) -> None:
    small_run(engine)
    result = report(engine, {"operations": [{"name": "ft", "min_first_pass_yield": 0.5}]})
    assert result.keys() >= ISSUE_KEYS
    (op,) = result["operations"]
    assert op.keys() >= OPERATION_KEYS
    assert result["units"] == 5
    assert result["golden_units"] == ["G"]
    assert op["units"] == 5
    assert op["first_pass_yield"] == pytest.approx(3 / 5)  # A, D, E
    assert op["final_yield"] == pytest.approx(4 / 5)  # B passed its retest
    assert op["scrap_rate"] == pytest.approx(1 / 5)
    assert op["rework_rate"] == 0.0
    assert op["retest_pass_rate"] == pytest.approx(1 / 2)
    assert [(b["code"], b["count"]) for b in op["pareto"]] == [("317", 2), ("12", 1)]
    assert op["cycle_time_s"]["n"] == 6
    assert op["cycle_time_s"]["mean"] == pytest.approx(40.0)
    assert op["takt_s"] == 45.0
    assert op["criteria"] == [
        {"name": "first_pass_yield", "result": "insufficient", "value": 0.6, "limit": 0.5,
         "note": "5 units < 30"}
    ]  # fmt: skip
    assert result["decision"] == "insufficient"
    assert result["rolled_throughput_yield"] == pytest.approx(0.6)

    (char,) = result["characteristics"]
    assert char.keys() >= CHARACTERISTIC_KEYS
    first = [12.0, 12.4, 11.8, 12.2]  # first attempts, production order, D missing
    mean = statistics.fmean(first)
    sd_w = statistics.fmean([0.4, 0.6, 0.4]) / 1.128
    assert (char["n"], char["missing"]) == (4, 1)
    assert char["mean"] == pytest.approx(mean)
    assert char["sd_within"] == pytest.approx(sd_w)
    assert char["sd_overall"] == pytest.approx(statistics.stdev(first))
    assert (char["cp"], char["pp"], char["lsl"], char["usl"]) == (None, None, None, 15.0)
    assert char["cpk"] == pytest.approx((15.0 - mean) / (3 * sd_w))
    assert char["out_of_spec"] == 0.0
    assert char["rule_violations"] == []
    assert char["chart"]["serials"] == ["A", "B", "C", "E"]
    assert [(g["serial"], g["n"], g["first"], g["last"]) for g in char["golden"]] == [
        ("G", 2, 12.0, 12.3)
    ]


def test_undefined_figures_are_null(engine: sa.Engine) -> None:
    rows = Rows()
    rows.unit("A", "pass", minute=0, values={"leak": 12.0})  # n = 1
    rows.unit("B", "incomplete", minute=1, operation="burn-in", cycle=3600.0)
    rows.store(engine)
    result = report(engine, {"operations": [{"name": "pack"}]})
    by_op = {op["operation"]: op for op in result["operations"]}
    assert list(by_op) == ["pack", "ft", "burn-in"]  # protocol order, then the data's
    assert by_op["pack"]["units"] == 0
    assert by_op["pack"]["first_pass_yield"] is None
    assert by_op["pack"]["cycle_time_s"] == {
        "n": 0, "mean": None, "p50": None, "p95": None, "within_takt": None
    }  # fmt: skip
    assert by_op["burn-in"]["first_pass_yield"] == 0.0
    assert by_op["burn-in"]["cycle_time_s"]["mean"] is None  # incomplete: no cycle time
    assert result["rolled_throughput_yield"] is None
    (char,) = result["characteristics"]
    assert char["n"] == 1
    for key in ("sd_within", "sd_overall", "cp", "cpk", "pp", "ppk", "cpk_lower_95"):
        assert char[key] is None, key


def test_unit_records_without_operation_or_attempt(engine: sa.Engine) -> None:
    rows = Rows()
    rows.unit("A", "fail", minute=0)
    rows.unit("A", "pass", minute=5)
    rows.units[0]["attempt"] = rows.units[1]["attempt"] = None  # ordered by time instead
    rows.unit("B", "pass", minute=6)
    rows.units[2]["operation"] = None
    rows.store(engine)
    by_op = {op["operation"]: op for op in report(engine)["operations"]}
    assert by_op["ft"]["first_pass_yield"] == 0.0
    assert by_op["ft"]["final_yield"] == 1.0
    assert by_op["(no operation)"]["units"] == 1


def test_the_run_selection_filters_work_orders_serials_and_time(engine: sa.Engine) -> None:
    rows = Rows()
    rows.unit("PILOT-0001", "pass", minute=0, work_order="WO-1")
    rows.unit("PILOT-0002", "pass", minute=60, work_order="WO-2")
    rows.unit("PILOT-0003", "fail", minute=120, work_order="WO-2")
    rows.unit("PROTO-0004", "pass", minute=130, work_order="WO-2")
    rows.unit("PILOT-0005", "pass", minute=180, work_order=None)
    rows.unit("GOLD-1", "pass", minute=200, work_order=None, golden=True)
    rows.store(engine)
    assert report(engine)["units"] == 5
    work_orders = report(engine, {"run": {"work_orders": ["WO-2"]}})
    assert work_orders["units"] == 3
    assert work_orders["golden_units"] == ["GOLD-1"]  # a reference, whatever its work order
    serials = report(engine, {"run": {"serial_pattern": r"PILOT-\d{4}"}})
    assert serials["units"] == 4
    assert serials["golden_units"] == ["GOLD-1"]
    assert report(engine, {"run": {"serial_pattern": "PILOT"}})["units"] == 0  # full match
    window = {"start": "2026-11-21T09:00:00Z", "end": "2026-11-21T11:00:00+01:00"}
    # 09:00 UTC inclusive to 10:00 UTC exclusive: only PILOT-0002 (at 09:00).
    result = report(engine, {"run": window})
    assert result["units"] == 1
    assert result["golden_units"] == []  # outside the time range
    assert result["run"]["first_record"] == "2026-11-21T09:00:00Z"


def test_a_generated_run_fills_every_section(engine: sa.Engine) -> None:
    fill_pilot_run(engine, n_units=120, n_operations=3, n_characteristics=5)
    protocol = {
        "sample_sizes": {"min_units": 30, "min_pieces": 50, "min_subgroups": 5},
        "operations": [
            {"name": "press-fit", "min_first_pass_yield": 0.9, "min_cpk_critical": 1.0},
            {"name": "flash", "max_scrap_rate": 0.05, "cycle_time_p95_within_takt": True},
        ],
    }
    result = report(engine, protocol)
    assert result["units"] == 120
    assert [op["operation"] for op in result["operations"]] == [
        "press-fit",
        "flash",
        "functional-test",
    ]
    assert len(result["characteristics"]) == 15
    drifting = next(
        c for c in result["characteristics"] if c["name"] == "press_force" and
        c["operation"] == "press-fit"
    )  # fmt: skip
    assert any(v["rule"] == 4 for v in drifting["rule_violations"])  # the mid-run shift
    assert all(c["golden"] for c in result["characteristics"])
    assert result["decision"] in ("go", "no-go")
    results = {c["name"]: c["result"] for op in result["operations"] for c in op["criteria"]}
    assert "insufficient" not in results.values()


def test_html_is_one_self_contained_page(engine: sa.Engine) -> None:
    small_run(engine)
    protocol = Protocol.model_validate(
        {"operations": [{"name": "ft", "min_first_pass_yield": 0.5}]}
    )
    page = render_report(engine, protocol, "html", unit_base="http://store:8080").decode()
    assert page.startswith("<!DOCTYPE html>")
    assert "INSUFFICIENT DATA" in page
    assert '<a class="unit" href="http://store:8080/units/A">A</a>' in page
    assert "<svg" in page
    assert "@media print" in page
    for remote in ("<script", "src=", "@import", "url("):
        assert remote not in page
    # A serial that needs quoting stays one path segment and is escaped in HTML.
    rows = Rows(first_seq=100)
    rows.unit("X/1&<2>", "pass", minute=9)
    rows.store(engine)
    page = render_report(engine, protocol, "html").decode()
    assert '<a class="unit" href="/units/X%2F1%26%3C2%3E">X/1&amp;&lt;2&gt;</a>' in page


def test_cli_writes_the_report_and_reports_errors(
    engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_run(engine)
    protocol = tmp_path / "pilot.yaml"
    protocol.write_text("operations:\n  - name: ft\n    min_first_pass_yield: 0.5\n")
    out = tmp_path / "report.json"
    db = str(engine.url)
    assert (
        main(["--protocol", str(protocol), "--format", "json", "--out", str(out), "--db", db]) == 0
    )
    assert json.loads(out.read_bytes())["units"] == 5
    assert "report written to" in capsys.readouterr().err

    protocol.write_text("operations:\n  - name: ft\n    min_first_pass_yeld: 0.5\n")
    assert main(["--protocol", str(protocol), "--db", db]) == 2
    err = capsys.readouterr().err
    assert f"{protocol}:3: operations[0].min_first_pass_yeld: unknown key" in err

    # Wired into a CLI that owns --db and the engine (the store's `collector store report`).
    parser = argparse.ArgumentParser()
    parser.add_argument("--db")
    add_arguments(parser, db=False)
    protocol.write_text("operations:\n  - name: ft\n")
    args = parser.parse_args(["--protocol", str(protocol), "--format", "json", "--out", str(out)])
    assert run(args, engine) == 0
    assert json.loads(out.read_bytes())["operations"][0]["operation"] == "ft"
    with engine.connect() as conn:  # the caller's engine is still usable
        assert conn.execute(sa.select(sa.func.count()).select_from(units)).scalar_one() == 9
    capsys.readouterr()

    protocol.write_text("run: {}\n")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["--protocol", str(protocol), "--db", empty]) == 1
    assert "cannot read the store at" in capsys.readouterr().err


def test_the_benchmark_runs_on_a_tiny_run() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bench.report", "--units", "20", "--operations", "2",
         "--characteristics", "2", "--repeat", "1"],
        capture_output=True, text=True, timeout=120, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert "20 units x 2 operations x 2 characteristics" in done.stdout
    assert "render_report(html)" in done.stdout


def _units_message(seq: int, unit: dict[str, Any]) -> bytes:
    """A schema-2 units message as a collector sends it (docs/messages.md)."""
    return orjson.dumps(
        {
            "schema": 2,
            "collector": "line1-pc1",
            "outbox": "6f1d0c2a9b7e4e55",
            "units": [{"seq": seq, **unit}],
        }
    )


def test_the_report_reads_what_the_store_ingests(db_url: str) -> None:
    """Unit records through the store's own ingest (store.ingest.Writer into store.schema),
    on SQLite and PostgreSQL: the report reads the tables the store really writes."""
    from store.db import connect as store_connect
    from store.db import create_schema
    from store.ingest import Incoming, Writer

    engine = store_connect(db_url)
    create_schema(engine)
    topic = "collector/site/line1/line1-pc1/units"
    messages = []
    first_values = []
    for i in range(40):
        start = T0 + timedelta(minutes=3 * i)
        verdicts = ["fail", "pass"] if i % 10 == 3 else ["pass"]
        for attempt, verdict in enumerate(verdicts, start=1):
            value = 12.0 + 0.1 * ((i * 7) % 5) + (0.5 if attempt > 1 else 0.0)
            if attempt == 1:
                first_values.append(value)
            end = start + timedelta(seconds=40 + attempt * 60)
            messages.append(
                {
                    "serial": f"PILOT-{i:04d}",
                    "station": "ft-1",
                    "slot": None,
                    "operation": "functional-test",
                    "attempt": attempt,
                    "start": (end - timedelta(seconds=40)).isoformat().replace("+00:00", "Z"),
                    "end": end.isoformat().replace("+00:00", "Z"),
                    "cycle_time_s": 40.0,
                    "takt_s": 45.0,
                    "verdict": verdict,
                    "failure_code": 317 if verdict == "fail" else None,
                    "ended_by": "verdict",
                    "readings": 12,
                    "golden": False,
                    "work_order": "WO-1",
                    "characteristics": {
                        "leakage_current": {
                            "last": value, "min": value, "max": value, "lsl": 10.0,
                            "usl": 15.0, "target": 12.5, "critical": True, "in_spec": True,
                        }
                    },
                }
            )  # fmt: skip
    golden = {**messages[0], "serial": "GOLD-1", "golden": True, "work_order": None}
    messages.append(golden)
    try:
        Writer(engine).write(
            [Incoming(topic, _units_message(seq, m)) for seq, m in enumerate(messages, 1)]
        )
        protocol = {
            "run": {"work_orders": ["WO-1"]},
            "sample_sizes": {"min_units": 30, "min_pieces": 30, "min_subgroups": 2},
            "operations": [
                {
                    "name": "functional-test",
                    "min_first_pass_yield": 0.95,
                    "cycle_time_p95_within_takt": True,
                    "min_cpk_critical": 1.0,
                }
            ],
        }
        result = report(engine, protocol)
    finally:
        engine.dispose()
    (op,) = result["operations"]
    assert (result["units"], result["golden_units"]) == (40, ["GOLD-1"])
    assert op["first_pass_yield"] == pytest.approx(36 / 40)
    assert op["final_yield"] == 1.0
    assert op["retest_pass_rate"] == 1.0
    assert [(b["code"], b["count"]) for b in op["pareto"]] == [("317", 4)]
    assert (op["takt_s"], op["cycle_time_s"]["p95"]) == (45.0, 40.0)
    (char,) = result["characteristics"]
    assert char["n"] == 40
    assert char["mean"] == pytest.approx(statistics.fmean(first_values))
    assert char["sd_overall"] == pytest.approx(statistics.stdev(first_values))
    assert (char["lsl"], char["usl"], char["target"]) == (10.0, 15.0, 12.5)
    assert char["chart"]["serials"][:2] == ["PILOT-0000", "PILOT-0001"]
    assert [g["serial"] for g in char["golden"]] == ["GOLD-1"]
    results = {c["name"]: c["result"] for c in op["criteria"]}
    assert results == {
        "first_pass_yield": "fail",
        "cycle_time_p95": "pass",
        "cpk_lower_95 leakage_current": "pass",
    }
    assert result["decision"] == "no-go"
