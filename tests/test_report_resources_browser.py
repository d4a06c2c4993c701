"""The report's results by resource and its gauge check in a real browser (Debian's
Chromium, headless, Playwright): a run where fixture nest 3 is worse and the golden sample
drifts. The page is opened from a file: it must show the sentences and tables without
fetching anything."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from bench.pilot_run import fill_pilot_run, golden_reference, specs
from store.report import Protocol, render_report
from tests.helpers import CHROMIUM_ARGS, chromium_or_skip


def test_resources_and_gauge_sections_in_chromium(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    fill_pilot_run(
        engine, n_units=160, n_operations=2, n_characteristics=2, resources=True,
        worse_fixture="nest-3", golden_times=30, golden_drift=4.0,
    )  # fmt: skip
    reference = golden_reference(specs(1)[0], "GOLD-1")
    protocol = {
        "operations": [
            {
                "name": "press-fit",
                "gauge": {"references": {"GOLD-1": {"supply_voltage": reference}}},
            }
        ]
    }
    html = tmp_path / "report.html"
    html.write_bytes(render_report(engine, Protocol.model_validate(protocol), "html"))
    engine.dispose()

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(html.as_uri(), timeout=30_000)

            findings = page.locator("#resource-findings li.finding")
            first = findings.first
            first.scroll_into_view_if_needed()
            assert first.is_visible()
            assert first.inner_text().startswith(
                "Fixture nest-3 at press-fit differs at the 1 % level: first-pass yield"
            )
            nests = page.locator("div.resource[data-operation='press-fit'][data-kind='fixture']")
            assert nests.locator("table.resources tbody tr").count() == 4
            row = nests.locator("tr", has_text="nest-3")
            assert row.locator("td").nth(1).inner_text() == "40"  # every 4th of 160 units
            assert nests.locator("p.finding").first.is_visible()
            # Four kinds at each of the two operations, each in its own block.
            assert page.locator("div.resource").count() == 8

            gauge = page.locator("table.gauge tbody tr")
            assert gauge.count() == 1
            assert gauge.locator(".badge").inner_text() == "fail"
            note = page.locator("p.finding.measurement")
            note.scroll_into_view_if_needed()
            assert note.is_visible()
            assert "may be measurement rather than process" in note.inner_text()
            criteria = page.locator("table.criteria tbody tr", has_text="Gauge Cg and Cgk")
            assert criteria.locator(".badge").inner_text() == "fail"
        finally:
            browser.close()
    assert requests == [html.as_uri()]
