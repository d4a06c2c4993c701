"""How the page renders what /status may hold, in a real browser but without a collector: the
page's own files are served from the package through Playwright's request routing, and /status
is a fixed document. Covers what the running line of test_live_page.py does not have yet
(slots, phase, yield and takt from the traceability work) and hostile text from a device."""

from __future__ import annotations

from importlib import resources
from typing import Any

from playwright.async_api import Route, expect

from collector.operations.advice import advice_json
from tests.livepage import browser

BASE = "http://collector.test"
HOSTILE = '<img src=x onerror="window.pwned=1">'


def status() -> dict[str, Any]:
    now = 1_800_000_000.0
    return {
        "collector": {
            "id": "pc7",
            "site": "s",
            "line": "l",
            "started_ts": now - 100,
            "uptime_s": 100,
        },
        "health": {"status": "degraded", "reasons": ["device rack-1 not connected: timeout"]},
        "stations": {
            "burn-in": {
                "station": "burn-in",
                "slot": None,
                "operation": "burn-in",
                "unit_serial": None,
                "present_serial": "SN-9",
                "phase": "after",
                "work_order": "WO-1001",
                "resources": {"fixture": "nest-3", "operator": HOSTILE},
                "takt_s": 45,
                "last_verdicts": ["pass", "fail", "pass"],
                "figures": {
                    "units": 43,
                    "passes": 41,
                    "fails": 2,
                    "retests": 1,
                    "first_pass_yield": 0.953,
                    "last_cycle_time_s": 42,
                    "mean_cycle_time_s": 40,
                },
            },
            # A rack's slots are stations of their own in /status, grouped on the page.
            "rack-a.slot01": {
                "station": "rack-a",
                "slot": 1,
                "operation": "burn-in",
                "unit_serial": "SN-A",
                "attempt": 2,
                "time_at_station_s": 75,
            },
            "rack-a.slot02": {"station": "rack-a", "slot": 2, "operation": "burn-in"},
            "ft-1": {"operation": "functional-test", "unit_serial": HOSTILE, "attempt": 1},
        },
        "devices": {
            "rack-1": {
                "protocol": "opcua",
                "connected": False,
                "state_since_ts": now - 30,
                "last_error": "timeout: read timed out",
                "last_error_ts": now - 1,
                "errors": {"timeout": 12, "bad_status": 1},
                "polls": 40,
                "good_polls": 28,
                "tags": {
                    "temp": {
                        "value": "nan",
                        "unit": "degC",
                        "quality": "uncertain",
                        "error": None,
                        "ts": now - 31,
                    },
                    "label": {
                        "value": HOSTILE,
                        "unit": None,
                        "quality": "good",
                        "error": None,
                        "ts": now - 31,
                    },
                    "p": {
                        "value": None,
                        "unit": "bar",
                        "quality": "bad",
                        "error": "bad_status",
                        "ts": now - 31,
                    },
                },
            }
        },
        "buffer": {
            "depth": 10,
            "max_readings": 100,
            "oldest_unsent_age_s": 3.5,
            "dropped_total": 2,
        },
        "mqtt": {
            "connected": False,
            "last_connect_error": "cannot connect to 127.0.0.1:1883: refused",
        },
    }


async def serve(route: Route) -> None:
    path = route.request.url.removeprefix(BASE)
    if path == "/status":
        await route.fulfill(json=status())
    elif path == "/events":
        await route.fulfill(status=503, body="too many pages")
    elif path == "/page/advice.json":
        await route.fulfill(json=advice_json())
    elif path in ("/", "/page/page.js", "/page/page.css"):
        name = "index.html" if path == "/" else path.removeprefix("/page/")
        body = (resources.files("collector.operations") / "page" / name).read_bytes()
        kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
        await route.fulfill(body=body, content_type=kind[name.rsplit(".", 1)[1]])
    else:
        await route.fulfill(status=404)


async def test_slots_figures_bad_values_and_hostile_text_render_as_text() -> None:
    async with browser() as chromium:
        page = await chromium.new_page(viewport={"width": 1366, "height": 768})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.route(f"{BASE}/**", serve)
        await page.goto(f"{BASE}/")
        rack_a = page.locator('[data-station="rack-a"]')
        await expect(rack_a.locator('[data-slot="1"] [data-field="serial"]')).to_have_text("SN-A")
        await expect(rack_a.locator('[data-slot="1"]')).to_contain_text("Attempt2")
        await expect(rack_a.locator('[data-slot="2"] [data-field="serial"]')).to_have_text(
            "No unit at the station"
        )
        assert await page.locator('[data-station="rack-a.slot01"]').count() == 0
        burn_in = page.locator('[data-station="burn-in"]')
        # Present after its verdict: the serial still shows, with the phase.
        await expect(burn_in.locator('[data-field="serial"]')).to_have_text("SN-9")
        await expect(burn_in).to_contain_text("Phaseafter")
        await expect(burn_in).to_contain_text("Work orderWO-1001")
        await expect(burn_in).to_contain_text(f"Made withfixture: nest-3, operator: {HOSTILE}")
        await expect(burn_in).to_contain_text("First pass yield95.3 %")
        await expect(burn_in).to_contain_text("Cycle time42 s, mean 40 s (takt 45 s)")
        await expect(burn_in).to_contain_text("Units43 (41 pass, 2 fail, 1 retests)")
        await expect(burn_in).to_contain_text("✔ PASS✖ FAIL✔ PASS")
        # A device's text is shown as text, never run as markup.
        await expect(page.locator('[data-station="ft-1"] [data-field="serial"]')).to_have_text(
            HOSTILE
        )
        rack = page.locator('[data-device="rack-1"]')
        await expect(rack.locator('[data-tag="label"]')).to_contain_text(HOSTILE)
        assert await page.evaluate("window.pwned === undefined")
        assert await page.locator("img").count() == 0
        await expect(rack.locator('[data-tag="temp"]')).to_contain_text("nan")
        await expect(rack.locator('[data-tag="temp"]')).to_contain_text("⚠ uncertain")
        await expect(rack.locator('[data-tag="p"]')).to_contain_text("✖ bad: bad_status")
        await expect(rack.locator('[data-field="state"]')).to_contain_text("✖ Not connected since")
        await expect(rack.locator(".problem")).to_contain_text("The device did not answer in time.")
        await expect(rack.locator('[data-error="timeout"]')).to_contain_text("12")
        await expect(page.locator('[data-field="dropped"]')).to_contain_text("2 readings dropped")
        await expect(page.locator('[data-field="broker-state"]')).to_have_text("✖ Not connected")
        await expect(page.locator("#broker")).to_contain_text("refused")
        # The stream was refused (503: too many pages): the page says its picture is not live.
        await expect(page.locator("#live")).to_contain_text("Live updates lost")
        assert errors == []
