"""The HTML report in a real browser: Debian's Chromium, headless, driven by Playwright.

The first test's page is served by a local http.server on 127.0.0.1 that also answers the
genealogy URL (/units/SERIAL) with a stand-in page, so following a unit link is checked end to
end. Every request the page makes is recorded: the report must not fetch anything. The second opens
GET /report of a running store and follows a unit link to the store's genealogy page."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from playwright.sync_api import expect

from bench.pilot_run import fill_pilot_run
from store.report import Protocol, render_report
from tests.helpers import CHROMIUM_ARGS, Mosquitto, chromium_or_skip, wait_until
from tests.store_fixtures import PILOT_PROTOCOL, StoreProcess, publish_pilot_run

PROTOCOL = {
    "run": {"name": "Pilot run P1", "product": "Controller board, rev B"},
    "sample_sizes": {"min_units": 30, "min_pieces": 50, "min_subgroups": 5},
    "operations": [
        {"name": "press-fit", "min_first_pass_yield": 0.9, "min_cpk_critical": 1.33},
        {"name": "flash", "max_scrap_rate": 0.02, "cycle_time_p95_within_takt": True},
    ],
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The report of a generated run at http://127.0.0.1:PORT/report.html."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    fill_pilot_run(engine, n_units=80, n_operations=3, n_characteristics=5)
    page = render_report(engine, Protocol.model_validate(PROTOCOL), "html")
    engine.dispose()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/report.html":
                body, kind = page, "text/html; charset=utf-8"
            elif self.path.startswith("/units/"):
                serial = self.path.removeprefix("/units/")
                body, kind = f"<h1>genealogy of {serial}</h1>".encode(), "text/html"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_the_report_in_chromium(served: str, tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"{served}/report.html", timeout=30_000)

            decision = page.locator("#decision")
            assert decision.is_visible()
            assert decision.locator(".verdict").inner_text() in ("GO", "NO-GO", "INSUFFICIENT DATA")

            for table, rows in (
                ("table.criteria", 6),  # 4 Cpk criteria (3 critical) + FPY + scrap + cycle time
                ("table.operations", 3),
                ("table.capability", 15),
            ):
                assert page.locator(table).is_visible(), table
                assert page.locator(f"{table} tbody tr").count() >= rows, table

            charts = page.locator("svg.chart")
            # Per characteristic: histogram, individuals and MR chart; plus the Paretos.
            assert charts.count() >= 15 * 3
            for index in (0, charts.count() - 1):
                chart = charts.nth(index)
                chart.scroll_into_view_if_needed()
                box = chart.bounding_box()
                assert box is not None
                assert box["width"] > 100
                assert box["height"] > 50
            assert page.locator("svg.chart circle.alarm").count() > 0  # the drifting force
            assert page.locator("svg.chart rect.bar").count() > 0  # Pareto bars

            # The capability table links to each characteristic's section.
            anchor = page.locator("table.capability a").nth(3)
            target = anchor.get_attribute("href")
            assert target is not None
            assert target.startswith("#c-")
            anchor.click()
            assert page.locator(f"section[id='{target[1:]}']").is_visible()
            assert page.evaluate("location.hash") == target

            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
            shot = os.environ.get("REPORT_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)

            link = page.locator(".all-units a.unit").first
            serial = link.inner_text()
            assert link.get_attribute("href") == f"/units/{serial}"
            link.click()
            page.wait_for_url(f"{served}/units/{serial}", timeout=10_000)
            assert page.locator("h1").inner_text() == f"genealogy of {serial}"

            # Printing: A4 pages, the capability section starts a page.
            page.goto(f"{served}/report.html", timeout=30_000)
            page.emulate_media(media="print")
            breaks = page.locator("#capability").evaluate("e => getComputedStyle(e).breakBefore")
            assert breaks == "page"
            pdf = page.pdf(format="A4", print_background=True)
            boxes = re.findall(rb"/MediaBox\s*\[0 0 ([0-9.]+) ([0-9.]+)\]", pdf)
            assert len(boxes) >= 5  # pages
            assert all(abs(float(w) - 595) < 2 and abs(float(h) - 842) < 2 for w, h in boxes)
        finally:
            browser.close()
    assert {url.split("/")[2] for url in requests} == {served.split("/")[2]}


def test_the_stores_report_page_drills_down_to_a_unit(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """GET /report of a running store (a process, fed over MQTT) in Chromium: the decision and
    the tables show, and a unit link opens that unit's genealogy page on the same store."""
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    workdir = tmp_path / "store"
    workdir.mkdir()
    (workdir / "pilot.yaml").write_text(yaml.safe_dump(PILOT_PROTOCOL))
    store = StoreProcess(
        workdir, mosquitto, f"sqlite:///{tmp_path / 'store.db'}", report={"protocol": "pilot.yaml"}
    )
    store.start()
    try:
        published = publish_pilot_run(mosquitto)
        wait_until(
            lambda: store.health()["ingest"]["units_inserted"] == published, 20, "units stored"
        )
        base = f"http://127.0.0.1:{store.port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000
            )
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 1400})
                page.goto(f"{base}/report", timeout=30_000)
                assert page.locator("#decision .verdict").is_visible()
                assert page.locator("table.operations tbody tr").count() == 1
                assert page.locator("table.capability tbody tr").count() == 1
                assert page.locator("svg.chart").count() >= 3

                link = page.locator(".all-units a.unit", has_text="PILOT-03")
                assert link.get_attribute("href") == "/units/PILOT-03"
                link.click()
                page.wait_for_url(f"{base}/units/PILOT-03", timeout=10_000)
                assert page.locator("h1").inner_text() == "Unit PILOT-03"
                rows = page.locator("#operations tr")
                # The unit page renders from its JSON once loaded: wait for the rows.
                expect(rows).to_have_count(3, timeout=10_000)  # the header, fail and retest
                assert "fail" in rows.nth(1).inner_text()
                assert "pass" in rows.nth(2).inner_text()
            finally:
                browser.close()
    finally:
        store.stop()
