"""The live page in a real browser (Debian's headless Chromium, driven by Playwright) against a
real collector process polling real pymodbus simulators and forwarding to a real mosquitto."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from collector.operations.advice import ADVICE
from contract.codes import ErrorCode
from tests.helpers import EventClient, Mosquitto, async_wait_until
from tests.livepage import browser, live_line, open_page, updates


async def test_the_page_shows_stations_devices_values_and_a_new_unit_without_reloading(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with live_line(mosquitto, tmp_path) as line, browser() as chromium:
        page = await open_page(chromium, line.collector.url + "/")
        station = page.locator('[data-station="ft-1"]')
        tester = page.locator('[data-device="tester-1"]')
        fixture = page.locator('[data-device="fixture-1"]')
        await expect(station).to_contain_text("functional-test")
        await expect(station.locator('[data-field="serial"]')).to_have_text(
            "No unit at the station"
        )
        await expect(tester.locator('[data-field="state"]')).to_contain_text(
            "Connected since", timeout=10_000
        )
        await expect(fixture.locator('[data-field="state"]')).to_contain_text("Connected since")
        voltage = tester.locator('[data-tag="voltage"]')
        await expect(voltage).to_contain_text("12.25")
        await expect(voltage).to_contain_text("V")
        await expect(voltage).to_contain_text("good")
        await expect(fixture.locator('[data-tag="clamp"]')).to_contain_text("false")
        await expect(page.locator('[data-field="broker-state"]')).to_have_text(
            "✔ Connected", timeout=10_000
        )
        await expect(page.locator('[data-field="dropped"]')).to_have_text("none")
        await expect(page.locator("#collector-id")).to_have_text("Collector pc1")
        await expect(page.locator("#summary")).to_have_text("✔ 2 of 2 devices connected")

        # A new unit arrives over the authenticated endpoint; the page shows it by itself.
        await page.evaluate("window.notReloaded = true")
        await line.set_unit("SN-LIVE-0042")
        await expect(station.locator('[data-field="serial"]')).to_have_text(
            "SN-LIVE-0042", timeout=10_000
        )
        await expect(station).to_contain_text("Attempt1")
        # And a new value too.
        await line.set_tester(voltage=13.5)
        await expect(voltage).to_contain_text("13.5", timeout=10_000)
        assert await page.evaluate("window.notReloaded === true")


async def test_a_device_taken_down_shows_not_connected_with_its_reason(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with live_line(mosquitto, tmp_path) as line, browser() as chromium:
        page = await open_page(chromium, line.collector.url + "/")
        tester = page.locator('[data-device="tester-1"]')
        await expect(tester).to_have_attribute("data-connected", "yes", timeout=10_000)
        await line.tester.stop()
        down_at = time.monotonic()
        # The requirement is 2 s; the deadline is generous so that a loaded machine does not
        # fail the test. The time taken is printed, and checked in the benchmark's figures.
        await expect(tester).to_have_attribute("data-connected", "no", timeout=15_000)
        took = time.monotonic() - down_at
        print(f"tester-1 shown 'not connected' {took:.2f} s after its simulator stopped")
        state = tester.locator('[data-field="state"]')
        await expect(state).to_contain_text(re.compile(r"Not connected since \d"))
        # The reason, in words and with what to check, from the device's last error code.
        status = await line.collector.status()
        last_error = status["devices"]["tester-1"]["last_error"]
        code = ErrorCode(re.split(r"[:,]", last_error)[0])
        problem = tester.locator(".problem")
        await expect(problem).to_contain_text(ADVICE[code].what)
        await expect(problem).to_contain_text("Check: " + ADVICE[code].check)
        await expect(problem).to_contain_text(last_error)
        # The other device, on its own simulator, is still fine.
        await expect(page.locator('[data-device="fixture-1"]')).to_have_attribute(
            "data-connected", "yes"
        )
        await expect(page.locator("#summary")).to_have_text("✖ 1 of 2 devices connected")
        await expect(page.locator("#health")).to_contain_text("Needs attention")
        await expect(page.locator("#reasons")).to_contain_text("tester-1")
        assert took < 15


@pytest.mark.slow
async def test_a_page_left_open_does_not_grow_the_collectors_memory(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A bounded soak: the page and as many other live streams as the collector allows, for
    60 s after a warm-up, and the collector's RSS compared before and after.

    Why 60 s stands for the 10 minutes of the requirement: whatever a page costs the collector
    is paid per event sent (the snapshot is shared; nothing is kept per page between events).
    8 streams for 60 s is 480 events, about the 600 that one page gets in 10 minutes, so a leak
    per event would show here about as much as in 10 minutes. The full 10 minutes with one page
    is `python -m bench.live_page`, whose figures are in docs/performance.md."""
    async with live_line(mosquitto, tmp_path) as line, browser() as chromium:
        page = await open_page(chromium, line.collector.url + "/")
        status = await line.collector.status()
        others = [
            EventClient(line.collector.port)
            for _ in range(status["http"]["live_pages"]["max_clients"] - 1)
        ]
        for client in others:
            await client.open()
        try:
            assert [c.code for c in others] == [200] * len(others)
            await async_wait_until(lambda: updates_at_least(page, 15), 60, "warm-up")
            await line.set_unit("SN-SOAK")
            before_kib = line.collector.rss_kib()
            events_before = sum(len(c.statuses) for c in others)
            samples = []
            started = time.monotonic()
            while time.monotonic() - started < 60:  # the soak's length, not a wait
                await asyncio.sleep(5)  # sampling RSS every 5 s
                samples.append(line.collector.rss_kib())
            after_kib = line.collector.rss_kib()
            events = sum(len(c.statuses) for c in others) - events_before
            page_updates = await updates(page)
            async with httpx.AsyncClient(timeout=5) as http:
                pages = (await http.get(line.collector.url + "/status")).json()["http"]
        finally:
            for client in others:
                await client.close()
    print(
        f"collector RSS {before_kib} KiB -> {after_kib} KiB over 60 s "
        f"(max {max(samples)} KiB); {events} events to {len(others)} streams, "
        f"{page_updates} page updates"
    )
    assert events >= 40 * len(others)  # the streams were live all along
    assert pages["live_pages"]["clients"] == len(others) + 1
    # Generous: allocator noise and the buffer's SQLite cache, not a leak, fit in 8 MiB.
    assert after_kib - before_kib < 8 * 1024, (before_kib, after_kib, samples)


async def updates_at_least(page: object, count: int) -> bool:
    return await updates(page) >= count  # type: ignore[arg-type]


@pytest.mark.slow
async def test_the_live_page_benchmark_runs(tmp_path: Path) -> None:
    """`python -m bench.live_page` (10 minutes by default) on a few seconds: it prints its
    figures. Figures are not asserted (docs/performance.md has them)."""
    from tests.conftest import REPO, require_mosquitto
    from tests.helpers import chromium_or_skip

    require_mosquitto()
    chromium_or_skip()
    shot = tmp_path / "page.png"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.live_page",
        "--duration-s",
        "2",
        "--warmup-s",
        "2",
        "--screenshot",
        str(shot),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    text = out.decode()
    assert process.returncode == 0, text
    assert "RSS (MiB)" in text
    assert re.search(r"pages 1, 2 s after a 2 s warm-up: RSS [\d.]+ MiB -> [\d.]+ MiB", text), text
    assert shot.read_bytes().startswith(b"\x89PNG")
