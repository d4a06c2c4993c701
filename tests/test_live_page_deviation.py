"""The live page's deviation form in a real browser (Debian's headless Chromium, Playwright)
against a real collector process and a real mosquitto: refusals shown in words, a deviation
recorded with the station token and published on ``.../deviations``, under the page's strict
CSP, at 1366x768 and on a tablet."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from contract.deviations import decode_deviations
from tests.helpers import Mosquitto, Subscriber, async_wait_until
from tests.livepage import TOKEN, browser, live_line, open_page

HOSTILE = "<img src=x onerror=alert(1)>"


async def fill_deviation(page: Page, token: str, serials: str) -> None:
    form = page.locator("#deviation-form")
    await form.locator("select[name=severity]").select_option("major")
    await form.locator("textarea[name=description]").fill("Clamp jammed " + HOSTILE)
    await form.locator("textarea[name=serials]").fill(serials)
    await form.locator("textarea[name=action]").fill("Units set aside\nfor retest")
    await form.locator("input[name=who]").fill("Night shift")
    await form.locator("input[name=token]").fill(token)
    await form.locator("button[type=submit]").click()


async def test_the_deviation_form_records_a_deviation_with_the_token(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    witness = Subscriber(mosquitto, "collector/plant-a/line-1/pc1/deviations", client_id="dv")
    try:
        async with live_line(mosquitto, tmp_path) as line, browser() as chromium:
            page = await open_page(chromium, line.collector.url + "/")
            refused: list[str] = []
            page.on("console", lambda m: refused.append(m.text) if m.type == "error" else None)
            form = page.locator("#deviation-form")
            result = page.locator("#deviation-result")
            # The station list and its operation come from /status.
            await expect(form.locator("select[name=station]")).to_have_value("ft-1")
            await expect(form.locator("input[name=operation]")).to_have_value("functional-test")

            await fill_deviation(page, "wrong-token", "SN-1")
            await expect(result).to_have_text(
                "✖ 401 not signed in: the token is missing or wrong — missing or wrong bearer token"
            )
            await fill_deviation(page, TOKEN, "")
            await expect(result).to_have_text(
                "✖ 422 not recorded: body.serials: name the units: serials, or a time window "
                "{start, end}"
            )
            assert witness.payloads("/deviations") == []

            await fill_deviation(page, TOKEN, "SN-1, SN-2\nSN-3")
            await expect(result).to_have_text(
                "✔ Deviation 1 recorded at ft-1 (major): kept on this PC until the central "
                "store has it"
            )
            await expect(form.locator("textarea[name=description]")).to_have_value("")
            # The token stays for the next one (this tab only).
            await expect(form.locator("input[name=token]")).to_have_value(TOKEN)
            await async_wait_until(lambda: witness.payloads("/deviations"), 20, "published")
            messages = [m for t, m, _ in witness.messages if t.endswith("/deviations")]
            [flat] = decode_deviations(messages[0])
            assert (flat.collector, flat.seq) == ("pc1", 1)
            d = flat.deviation
            assert (d.station, d.operation, d.severity, d.serials, d.who) == (
                "ft-1", "functional-test", "major", ("SN-1", "SN-2", "SN-3"), "Night shift",
            )  # fmt: skip
            assert d.description == "Clamp jammed " + HOSTILE
            assert d.action == "Units set aside\nfor retest"
            # Nothing the CSP had to refuse, nothing run from the hostile text.
            assert refused == [] or all("401" in r or "422" in r for r in refused), refused

            # Usable on a tablet: no sideways scrolling, the button on screen when scrolled to.
            await page.set_viewport_size({"width": 800, "height": 1280})
            button = form.locator("button[type=submit]")
            await button.scroll_into_view_if_needed()
            await expect(button).to_be_in_viewport()
            assert await page.evaluate(
                "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
            )
            box = await button.bounding_box()
            assert box is not None
            assert box["height"] >= 40  # a finger's target

            # A time window is typed in the tablet's zone, which the form names, and sent
            # in UTC (Asia/Kolkata: UTC+05:30 all year).
            tablet = await chromium.new_page(timezone_id="Asia/Kolkata")
            await tablet.goto(line.collector.url + "/")
            form = tablet.locator("#deviation-form")
            await expect(tablet.locator("#deviation-zone")).to_have_text(
                re.compile(  # ICU may give the zone its older name
                    r"Times in this device's zone: Asia/(Kolkata|Calcutta), UTC\+05:30\. "
                    r"The collector keeps them in UTC\."
                )
            )
            await expect(form.locator("select[name=station]")).to_have_value("ft-1")
            await form.locator("textarea[name=description]").fill("Torque drift")
            await form.locator("input[name=start]").fill("2026-12-08T10:00:00")
            await form.locator("input[name=end]").fill("2026-12-08T10:15:00")
            await form.locator("textarea[name=action]").fill("Units held")
            await form.locator("input[name=token]").fill(TOKEN)
            await form.locator("button[type=submit]").click()
            await expect(tablet.locator("#deviation-result")).to_have_text(
                "✔ Deviation 2 recorded at ft-1 (minor), units from 2026-12-08T04:30:00.000Z to "
                "2026-12-08T04:45:00.000Z (UTC): kept on this PC until the central store has it"
            )

            def second() -> list[Any]:
                sent = [m for t, m, _ in list(witness.messages) if t.endswith("/deviations")]
                return [f for m in sent for f in decode_deviations(m) if f.seq == 2]

            await async_wait_until(second, 20, "the second deviation published")
            start = datetime(2026, 12, 8, 4, 30, tzinfo=UTC).timestamp()
            assert second()[0].deviation.window == (start, start + 900)
    finally:
        witness.close()
