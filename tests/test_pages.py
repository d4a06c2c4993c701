"""The store's pages (store/pages): the search's new filters and CSVs over HTTP, then the
pages themselves in headless Chromium (Debian's, driven by Playwright) against a real store
app served by uvicorn on a SQLite file: a run opened and approved through the API, the pilot
records in the store, searches, a unit's deviation and disposition, signing through the form,
a wrong token, hostile text, the CSP and the console."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
import yaml
from fastapi.testclient import TestClient

from contract.records import Spec
from store.api import create_app
from store.ingest import Incoming
from store.pages.serve import CSP
from store.record.schema import signoffs
from store.service import StoreService
from tests.helpers import CHROMIUM_ARGS, chromium_or_skip, free_port
from tests.test_record import (  # noqa: F401
    PROTOCOL,
    TOKENS,
    app,
    auth,
    make_app,
    post_run,
    unit,
    units_message,
)

#: Typed on the shop floor: must show as text, never run.
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the pages read the API, whose PostgreSQL side tests/test_record.py covers."""
    return f"sqlite:///{tmp_path / 'store.db'}"


def opened(client: TestClient) -> int:
    """A run opened and approved by its three functions through the API."""
    created = post_run(client, PROTOCOL)
    assert created.status_code == 201, created.text
    run_id: int = created.json()["id"]
    for who, function in (("alice", "Quality"), ("bob", "Production"), ("carol", "Engineering")):
        body = {"function": function, "decision": "approve", "reason": "reviewed"}
        answer = client.post(f"/runs/{run_id}/approvals", json=body, headers=auth(who))
        assert answer.status_code == 201, answer.text
    return run_id


def add_records(service: StoreService) -> None:
    """A unit whose characteristic was out of spec, and one with a formula for a serial."""
    bad = dataclasses.replace(
        unit("OOS-1", "pass", 2_000_000_000.0),
        characteristics={"current": (2.4, 2.3, 2.5)},
        specs={"current": Spec(1.0, 2.0, 1.5, True, False)},
        work_order='=HYPERLINK("http://x")',
    )
    formula = unit("@SUM(1+1)", "pass", 2_000_000_100.0)
    result = service.writer.write([units_message([bad, formula], 100)])
    assert result.quarantined == []


def serials(client: TestClient, query: str) -> list[str]:
    answer = client.get(f"/units?{query}")
    assert answer.status_code == 200, answer.text
    return sorted({u["serial"] for u in answer.json()})


def test_search_filters_and_csv(app: tuple[TestClient, StoreService]) -> None:  # noqa: F811
    client, service = app
    run_id = opened(client)
    add_records(service)
    assert serials(client, "attempt=2") == ["GOLD-1", "PILOT-03"]
    assert serials(client, "out_of_spec=any") == ["OOS-1"]
    assert serials(client, "out_of_spec=current") == ["OOS-1"]
    assert serials(client, "out_of_spec=voltage") == []
    # Dispositions: the current one counts.
    for disposition in ("rework", "use_as_is"):
        answer = client.post(
            "/units/PILOT-05/dispositions",
            json={"disposition": disposition, "reason": "check"},
            headers=auth("alice"),
        )
        assert answer.status_code == 201, answer.text
    assert serials(client, "disposition=use_as_is") == ["PILOT-05"]
    assert serials(client, "disposition=rework") == []
    assert "PILOT-05" not in serials(client, "disposition=none")
    assert "PILOT-06" in serials(client, "disposition=none")
    # Deviations: named units, and units with a record in a window at the operation.
    named = {"description": "clamp", "severity": "major", "serials": ["PILOT-07"], "action": "a"}
    assert client.post(f"/runs/{run_id}/deviations", json=named, headers=auth("carol")).is_success
    window = {
        "description": "drift", "severity": "minor", "operation": "functional-test",
        "window": {"start": "2033-05-18T03:33:00Z", "end": "2033-05-18T03:35:00Z"},
        "action": "recalibrated",
    }  # fmt: skip
    answer = client.post(f"/runs/{run_id}/deviations", json=window, headers=auth("carol"))
    assert answer.status_code == 201, answer.text
    assert serials(client, "deviation=major") == ["PILOT-07"]
    assert serials(client, "deviation=any") == ["OOS-1", "PILOT-07"]  # OOS-1 ends 03:33:20
    assert serials(client, "deviation=critical") == []
    assert client.get("/units?deviation=grave").status_code == 422
    assert client.get("/units?disposition=lost").status_code == 422
    assert serials(client, "verdict=&serial=OOS-*") == ["OOS-1"]  # an empty field: no filter

    # CSV: the same rows; formulas kept as text.
    table = client.get("/units.csv?serial=PILOT-0*&verdict=fail")
    assert table.status_code == 200
    assert table.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert [(r["serial"], r["verdict"], r["attempt"]) for r in rows] == [("PILOT-03", "fail", "1")]
    everything = list(csv.DictReader(io.StringIO(client.get("/units.csv?limit=100").text)))
    by_serial = {r["serial"]: r for r in everything}
    assert "'@SUM(1+1)" in by_serial
    assert by_serial["OOS-1"]["work_order"] == '\'=HYPERLINK("http://x")'
    assert client.get("/readings.csv?serial=PILOT-01").text.startswith("ts,collector,")
    assert client.get("/readings.csv?serial=NONE").status_code == 404


def test_content_negotiation(app: tuple[TestClient, StoreService]) -> None:  # noqa: F811
    """Browsers get pages, API clients the JSON exactly as before."""
    client, _ = app
    run_id = opened(client)
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    for path in ("/search", "/runs", f"/runs/{run_id}", "/units/PILOT-01", "/units/A%2FB"):
        page = client.get(path, headers=html)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html"), path
        assert page.headers["content-security-policy"] == CSP
        assert "<script>" not in page.text  # scripts only from files (CSP: script-src 'self')
        assert "style=" not in page.text
    for path in (f"/runs/{run_id}", "/runs", "/units/PILOT-01"):
        assert client.get(path).headers["content-type"] == "application/json"
        assert (
            client.get(path + "?format=json", headers=html).headers["content-type"]
            == "application/json"
        )
    assert client.get(f"/runs/{run_id}").json()["state"] == "awaiting"
    assert client.get("/pages/pages.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/pages/nothing.js").status_code == 404


# --- in Chromium -----------------------------------------------------------------------


@pytest.fixture
def served(
    app: tuple[TestClient, StoreService],  # noqa: F811
) -> Iterator[tuple[str, TestClient, StoreService, int]]:
    client, service = app
    run_id = opened(client)
    add_records(service)
    with serving(service) as base:
        yield base, client, service, run_id


@contextlib.contextmanager
def serving(service: StoreService) -> Iterator[str]:
    """The store's app served by uvicorn on a free loopback port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_pages_in_chromium(
    served: tuple[str, TestClient, StoreService, int], tmp_path: Path
) -> None:
    """Screenshots go to $PAGES_SCREENSHOTS when set (to look at them), else tmp_path."""
    base, client, service, run_id = served
    shots = Path(os.environ.get("PAGES_SCREENSHOTS", tmp_path))
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    deviation = client.post(
        f"/runs/{run_id}/deviations",
        headers=auth("carol"),
        json={"description": "clamp replaced " + HOSTILE, "severity": "major",
              "serials": ["PILOT-03"], "action": "re-tested\nthe unit"},
    )  # fmt: skip
    assert deviation.status_code == 201, deviation.text
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            # Search by prefix, then by verdict; the CSV link has the same rows.
            response = page.goto(base + "/search?serial=PILOT-0*")
            assert response is not None
            assert response.headers["content-security-policy"] == CSP
            expect(page.locator("#count")).to_have_text("10 unit records")
            shown = page.locator("#units tbody tr td:first-child").all_text_contents()
            assert sorted(set(shown)) == [f"PILOT-{i:02d}" for i in range(1, 10)]
            page.select_option("select[name=verdict]", "fail")
            page.click("button[type=submit]")
            expect(page.locator("#count")).to_have_text("1 unit record")
            assert page.url.endswith("/search?serial=PILOT-0*&verdict=fail")  # bookmarkable
            expect(page.locator("#units tbody tr")).to_have_count(1)
            expect(page.locator("#units tbody td").nth(4)).to_have_text("✗ fail")
            with page.expect_download() as download:
                page.click("#csv")
            rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
            assert [(r["serial"], r["verdict"]) for r in rows] == [("PILOT-03", "fail")]
            page.screenshot(path=str(shots / "search-1366.png"), full_page=True)

            # The unit page: the deviation (hostile text shown as text), then a disposition.
            page.click("#units a.unit")
            expect(page.locator("h1")).to_have_text("Unit PILOT-03")
            dev = page.locator("#deviations-table tbody tr")
            expect(dev).to_have_count(1)
            expect(dev.locator("td").nth(1)).to_have_text("● open")
            expect(dev.locator("td").nth(3)).to_have_text("clamp replaced " + HOSTILE)
            expect(page.locator("#operations-table tbody tr")).to_have_count(2)
            assert page.evaluate("window.pwned") is None
            form = page.locator("#dispose")
            form.locator("select[name=disposition]").select_option("rework")
            form.locator("textarea[name=reason]").fill("retest " + HOSTILE)
            form.locator("input[name=token]").fill("wrong-token")
            form.locator("button[type=submit]").click()
            expect(form.locator(".message")).to_contain_text(
                "401 not signed in: the token is missing or belongs to nobody"
            )
            form.locator("input[name=token]").fill("alice-token-1")
            form.locator("button[type=submit]").click()
            expect(form.locator(".message")).to_contain_text("disposition rework recorded")
            expect(page.locator("#dispositions-table tbody tr")).to_have_count(1)
            expect(page.locator("#dispositions-table tbody td").nth(3)).to_have_text(
                "retest " + HOSTILE
            )
            expect(page.locator("#current")).to_contain_text("rework")
            remark = page.locator("#remark")
            remark.locator("input[name=author]").fill("Night shift")
            remark.locator("textarea[name=text]").fill(HOSTILE)
            remark.locator("button[type=submit]").click()  # the token is kept from the first form
            expect(page.locator("#remarks-table tbody td").nth(2)).to_have_text(HOSTILE)
            assert page.evaluate("window.pwned") is None
            assert page.locator("img").count() == 0  # no element from the text
            page.screenshot(path=str(shots / "unit-1366.png"), full_page=True)

            # Which resources made a unit, shown as text (a badge value may hold markup).
            made = dataclasses.replace(
                unit("RES-1", "pass", 2_000_000_200.0),
                resources={"operator": HOSTILE, "fixture": "nest-3"},
            )
            assert service.writer.write([units_message([made], 200)]).quarantined == []
            page.goto(base + "/units/RES-1")
            expect(page.locator("#operations-table tbody td").nth(11)).to_have_text(
                f"fixture: nest-3, operator: {HOSTILE}"  # the store keeps the kinds sorted
            )
            assert page.evaluate("window.pwned") is None

            # The run page: awaiting, a 403 in words, then three signatures -> a state.
            page.goto(base + f"/runs/{run_id}")
            expect(page.locator("#state")).to_have_text("⏳ AWAITING")
            expect(page.locator("#state-words")).to_contain_text(
                "Awaiting the signatures of Quality, Production, Engineering"
            )
            expect(page.locator("#approvals-table tbody tr")).to_have_count(3)
            expect(page.locator("#deviations-table tbody tr")).to_have_count(1)
            sign = page.locator("#sign")
            sign.locator("select[name=function]").select_option("Production")
            sign.locator("input[name=token]").fill("alice-token-1")
            sign.locator("button[type=submit]").click()
            expect(sign.locator(".message")).to_contain_text(
                "403 not allowed: this person does not act for that function — Alice Q does "
                "not act for Production"
            )
            for token, function in (("alice-token-1", "Quality"), ("bob-token-2", "Production")):
                sign.locator("select[name=function]").select_option(function)
                sign.locator("textarea[name=reason]").fill("override: the deviation is contained")
                sign.locator("input[name=token]").fill(token)
                sign.locator("button[type=submit]").click()
                expect(sign.locator(".message")).to_contain_text(f"signed go for {function}")
            expect(page.locator("#state")).to_have_text("⏳ AWAITING")
            expect(page.locator("#state-words")).to_contain_text("signatures of Engineering")
            expect(page.locator("#signoffs-table")).to_contain_text("⚠ OVERRIDE")
            sign.locator("select[name=function]").select_option("Engineering")
            sign.locator("select[name=decision]").select_option("no-go")
            sign.locator("textarea[name=reason]").fill("open major deviation")
            sign.locator("input[name=token]").fill("carol-token-3")
            sign.locator("button[type=submit]").click()
            expect(page.locator("#state")).to_have_text("✗ NO-GO")
            page.screenshot(path=str(shots / "run-1366.png"), full_page=True)

            # A deviation through the form.
            deviate = page.locator("#deviate")
            deviate.locator("textarea[name=description]").fill("scanner swapped")
            deviate.locator("select[name=severity]").select_option("minor")
            deviate.locator("textarea[name=serials]").fill("PILOT-01, PILOT-02")
            deviate.locator("textarea[name=action]").fill("rescanned")
            deviate.locator("input[name=token]").fill("carol-token-3")
            deviate.locator("button[type=submit]").click()
            expect(deviate.locator(".message")).to_contain_text("(minor, open)")
            expect(page.locator("#deviations-table tbody tr")).to_have_count(2)

            # The first one closed through the form: cause and action.
            closing = page.locator("#close")
            first = str(deviation.json()["id"])
            expect(closing.locator("select[name=deviation] option")).to_have_count(2)
            closing.locator("select[name=deviation]").select_option(first)
            closing.locator("textarea[name=cause]").fill("worn clamp " + HOSTILE)
            closing.locator("textarea[name=action]").fill("clamp pads on the weekly check")
            closing.locator("input[name=token]").fill("carol-token-3")
            closing.locator("button[type=submit]").click()
            expect(closing.locator(".message")).to_contain_text(
                f"deviation {first} closed by Carol E at "
            )
            closed_row = page.locator("#deviations-table tbody tr").first
            expect(closed_row.locator("td").nth(1)).to_have_text("○ closed")
            expect(closed_row.locator("td").nth(8)).to_contain_text("worn clamp " + HOSTILE)
            expect(closing.locator("select[name=deviation] option")).to_have_count(1)

            # The report as a page, linked from the run page: the record in place of the
            # empty signature lines.
            page.click("#html-report")
            expect(page.locator("h1")).to_contain_text("pilot-run report")
            expect(page.locator("#run-state")).to_contain_text("✗ NO-GO")
            signed_rows = page.locator("table.signoffs tbody tr")
            expect(signed_rows).to_have_count(3)
            expect(signed_rows.nth(2)).to_contain_text("Carol E")
            expect(signed_rows.nth(2)).to_contain_text("open major deviation")
            expect(signed_rows.nth(0)).to_contain_text("⚠ OVERRIDE")
            expect(page.locator("#approval-notes")).to_contain_text("approved by every function")
            expect(page.locator("table.deviations-table tbody tr")).to_have_count(2)
            expect(page.locator("table.deviations-table")).to_contain_text(
                "clamp replaced " + HOSTILE
            )
            expect(page.locator("table.deviations-table")).to_contain_text("cause worn clamp")
            expect(page.locator("#audit")).to_contain_text("audit trail verified, ")
            assert page.locator("img").count() == 0
            assert page.evaluate("window.pwned") is None
            page.screenshot(path=str(shots / "run-report-1366.png"), full_page=True)
            page.go_back()

            # A tablet.
            page.set_viewport_size({"width": 800, "height": 1200})
            page.reload()
            expect(page.locator("#state")).to_have_text("✗ NO-GO")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 800, width  # tables scroll in their own box, the page does not
            page.screenshot(path=str(shots / "run-800.png"), full_page=True)
            page.goto(base + "/runs")
            expect(page.locator("#runs-table tbody tr")).to_have_count(1)
        finally:
            browser.close()
    # Only the two refusals the test asked for (Chromium logs every 4xx answer it loads).
    assert problems == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)",
        "Failed to load resource: the server responded with a status of 403 (Forbidden)",
    ]
    with service.engine.connect() as conn:
        signed = conn.execute(
            sa.select(signoffs.c.person, signoffs.c.function, signoffs.c.decision).order_by(
                signoffs.c.audit_id
            )
        ).all()
    assert [tuple(r) for r in signed] == [
        ("Alice Q", "Quality", "go"),
        ("Bob P", "Production", "go"),
        ("Carol E", "Engineering", "no-go"),
    ]
    genealogy: dict[str, Any] = client.get("/units/PILOT-03").json()
    assert genealogy["disposition"] == "rework"
    assert genealogy["remarks"][0]["text"] == HOSTILE


def test_links_behind_the_read_token_save_their_files_in_chromium(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under http.read_token a followed link carries no token (a 401 page): once the tab has
    been asked for the token, the report, JSON and CSV links fetch with it and save files."""
    monkeypatch.setenv("REC_TEST_BOB", TOKENS["bob"])
    client, service = make_app(db_url, tmp_path, read_token=True)
    reader = {"Authorization": "Bearer reader"}
    created = client.post("/runs", content=yaml.safe_dump(PROTOCOL), headers=auth("alice"))
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    assert client.get(f"/runs/{run_id}/report?format=html").status_code == 401
    tagged = {
        "schema": 2, "collector": "pc9", "outbox": "00000000000000a9",
        "polls": [{"seq": 1, "ts": "2033-05-18T03:33:05Z", "device": "d", "station": "ft-1",
                   "unit_serial": "PILOT-03", "values": {"current": 1.5, "voltage": 12}}],
    }  # fmt: skip
    incoming = Incoming("collector/s/l/pc9/readings", json.dumps(tagged).encode())
    assert service.writer.write([incoming]).quarantined == []
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    with serving(service) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(base + f"/runs/{run_id}")
            problem = page.locator("#problem")
            expect(problem).to_contain_text("401 not signed in")
            problem.locator("input.token").fill("reader")
            problem.locator("button[type=submit]").click()
            expect(page.locator("#title")).to_contain_text(f"Pilot run {run_id}")

            with page.expect_download() as download:
                page.click("#html-report")
            assert download.value.suggested_filename == f"pilot-run-{run_id}-report.html"
            html = Path(download.value.path()).read_text()
            assert "pilot-run report" in html
            assert html == client.get(f"/runs/{run_id}/report?format=html", headers=reader).text
            with page.expect_download() as download:
                page.click("#full-report")
            saved = json.loads(Path(download.value.path()).read_text())
            assert saved["protocol_version"]["run_id"] == run_id

            page.goto(base + "/search?serial=PILOT-0*")  # the token is kept by the tab
            expect(page.locator("#count")).to_have_text("10 unit records")
            with page.expect_download() as download:
                page.click("#csv")
            rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
            assert len(rows) == 10

            page.goto(base + "/units/PILOT-03")
            with page.expect_download() as download:
                page.click("#readings-csv")
            assert download.value.suggested_filename == "readings-PILOT-03.csv"
            expected = client.get("/readings.csv?serial=PILOT-03", headers=reader).content
            assert Path(download.value.path()).read_bytes() == expected
            assert expected.count(b"\r\n") == 3  # the header and the two readings
        finally:
            browser.close()
