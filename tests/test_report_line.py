"""The report's line view end to end on a real SQLite store: three operations, the middle one
the slowest; the JSON figures are worked out by hand below, the HTML is checked in headless
Chromium (the sentence, the chart, the tables)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.pilot_run import metadata, units
from store.report import Protocol, render_report
from tests.helpers import CHROMIUM_ARGS, chromium_or_skip

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
PROTOCOL: dict[str, Any] = {
    "sample_sizes": {"min_units": 4},
    "min_throughput_per_hour": 60,
    "operations": [{"name": "press"}, {"name": "test"}, {"name": "pack"}],
}

# (serial, operation, station, start s, end s) from T0; cycle time = end - start, takt 50 s.
# press: 30 s each. test (one station): 60, 70, 80, 90 s, units queue for it.
# pack: 80 s on two stations (40 s per unit of output). G: a golden sample, left out.
RUN = [
    ("U1", "press", "press-1", 0, 30),
    ("U2", "press", "press-1", 60, 90),
    ("U3", "press", "press-1", 120, 150),
    ("U4", "press", "press-1", 180, 210),
    ("U1", "test", "test-1", 40, 100),
    ("U2", "test", "test-1", 100, 170),
    ("U3", "test", "test-1", 170, 250),
    ("U4", "test", "test-1", 250, 340),
    ("U1", "pack", "pack-1", 100, 180),
    ("U2", "pack", "pack-2", 175, 255),
    ("U3", "pack", "pack-1", 250, 330),
    ("U4", "pack", "pack-2", 340, 420),
    ("G", "test", "test-1", 500, 1000),
]


def fill(engine: sa.Engine) -> None:
    metadata.create_all(engine)
    rows = [
        {
            "collector": "pc1",
            "outbox": "0123456789abcdef",
            "seq": seq,
            "serial": serial,
            "station": station,
            "slot": None,
            "operation": operation,
            "attempt": 1,
            "start_ts": T0 + timedelta(seconds=start),
            "end_ts": T0 + timedelta(seconds=end),
            "cycle_time_s": float(end - start),
            "takt_s": 50.0,
            "verdict": "pass",
            "failure_code": None,
            "ended_by": "verdict",
            "readings": 1,
            "golden": serial == "G",
            "work_order": None if serial == "G" else "WO-1",
        }
        for seq, (serial, operation, station, start, end) in enumerate(RUN, start=1)
    ]
    with engine.begin() as conn:
        conn.execute(units.insert(), rows)


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    fill(engine)
    yield engine
    engine.dispose()


def test_the_line_view_in_json(engine: sa.Engine) -> None:
    body = render_report(engine, Protocol.model_validate(PROTOCOL), "json")
    line = json.loads(body)["line"]
    assert line["operations"] == [
        {"operation": "press", "stations": 1, "n": 4, "p50_s": 30.0, "p95_s": 30.0,
         "effective_p50_s": 30.0, "effective_p95_s": 30.0, "takt_s": 50.0,
         "over_takt_p50": False, "over_takt_p95": False},
        # 60 70 80 90: p50 75, p95 h = 2.85: 80 + 8.5 = 88.5 (G's 500 s left out)
        {"operation": "test", "stations": 1, "n": 4, "p50_s": 75.0, "p95_s": 88.5,
         "effective_p50_s": 75.0, "effective_p95_s": 88.5, "takt_s": 50.0,
         "over_takt_p50": True, "over_takt_p95": True},
        {"operation": "pack", "stations": 2, "n": 4, "p50_s": 80.0, "p95_s": 80.0,
         "effective_p50_s": 40.0, "effective_p95_s": 40.0, "takt_s": 50.0,
         "over_takt_p50": False, "over_takt_p95": False},
    ]  # fmt: skip
    assert line["constraint"] == "test"
    assert line["throughput_per_hour"] == 48.0  # 3600 / 75
    assert (line["takt_s"], line["takt_per_hour"], line["reason"]) == (50.0, 72.0, None)
    press_test, test_pack = line["wip"]
    # press -> test: waits 10, 10, 20, 40 s; one unit waiting at a time, 80 s of 220 s
    assert press_test["between"] == ["press", "test"]
    assert (press_test["units"], press_test["max"], press_test["mean_wait_s"]) == (4, 1, 20.0)
    assert press_test["mean"] == pytest.approx(80 / 220)
    # test -> pack: waits 0, 5, 0, 0 s: 5 s of 240 s
    assert (test_pack["units"], test_pack["max"], test_pack["mean_wait_s"]) == (4, 1, 1.25)
    assert test_pack["mean"] == pytest.approx(5 / 240)
    assert line["criteria"] == [
        {"name": "throughput_per_hour", "result": "fail", "value": 48.0, "limit": 60.0,
         "note": "constraint test"}
    ]  # fmt: skip
    assert json.loads(body)["decision"] == "no-go"


def test_the_throughput_criterion_needs_enough_cycle_times(engine: sa.Engine) -> None:
    protocol = {**PROTOCOL, "sample_sizes": {"min_units": 5}, "min_throughput_per_hour": 40}
    doc = json.loads(render_report(engine, Protocol.model_validate(protocol), "json"))
    (criterion,) = doc["line"]["criteria"]
    assert criterion["result"] == "insufficient"
    assert criterion["note"] == (
        "press: 4 cycle times < 5; test: 4 cycle times < 5; pack: 4 cycle times < 5"
    )
    enough = {**protocol, "sample_sizes": {"min_units": 4}}
    doc = json.loads(render_report(engine, Protocol.model_validate(enough), "json"))
    assert doc["line"]["criteria"][0]["result"] == "pass"  # 48 >= 40


def test_no_cycle_time_gives_nulls_and_a_reason(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    metadata.create_all(engine)
    line = json.loads(render_report(engine, Protocol.model_validate(PROTOCOL), "json"))["line"]
    engine.dispose()
    assert (line["constraint"], line["throughput_per_hour"]) == (None, None)
    assert line["reason"] == "no operation has a cycle time"
    assert [w["mean"] for w in line["wip"]] == [None, None]
    assert line["wip"][0]["reason"] == "no unit ended press and then started test"


def test_the_line_view_in_chromium(engine: sa.Engine, tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_bytes(render_report(engine, Protocol.model_validate(PROTOCOL), "html"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.goto(page_file.as_uri())
            sentence = page.locator("p.line-sentence")
            assert sentence.is_visible()
            assert sentence.inner_text() == (
                "Operation test limits the line to 48 units/h; takt allows 72 units/h "
                "(✗ the line cannot keep takt)."
            )
            chart = page.locator('svg[aria-label="Line: cycle time per operation against takt"]')
            assert chart.is_visible()
            box = chart.bounding_box()
            assert box is not None
            assert box["width"] > 200
            assert box["height"] > 80
            assert chart.locator("rect.bar").count() == 3
            assert chart.locator("rect.bar.constraint").count() == 1
            assert chart.locator("line.whisker").count() == 1  # only test has p95 > p50
            texts = chart.locator("text").all_text_contents()
            assert "takt 50 s" in texts
            assert "▲ constraint · ✗ over takt" in texts  # in words, not only in red
            rows = page.locator("table.line-operations tbody tr").all_inner_texts()
            assert rows[1].split("\t")[:1] == ["test ▲ constraint"]
            assert "✗ over" in rows[1]
            assert "✓ within" in rows[0]
            wip = page.locator("table.wip tbody tr").all_inner_texts()
            assert [r.split("\t")[:5] for r in wip] == [
                ["press → test", "4", "0.364", "1", "20.0"],
                ["test → pack", "4", "0.0208", "1", "1.2"],
            ]
            criteria = page.locator("table.criteria").inner_text()
            assert "Line throughput (units/h) ≥" in criteria
        finally:
            browser.close()
