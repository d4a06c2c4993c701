"""A small line for the live page's tests and benchmark: two real pymodbus simulators (a tester
at a station whose serial comes over HTTP, and a fixture), a real collector process, and
headless Chromium (Debian's, driven by Playwright) showing the page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, Page, async_playwright

from collector.config import Config
from drivers.modbus.codec import TagCodec
from drivers.modbus.sim import SimulatedModbusServer
from tests.collector_process import CollectorProcess
from tests.helpers import CHROMIUM_ARGS, Mosquitto, chromium_or_skip, free_port

TOKEN = "live-page-token"
VIEWPORT = {"width": 1366, "height": 768}


def page_config(
    broker: Mosquitto, tester_port: int, fixture_port: int, folder: Path, down_device: bool
) -> Any:
    config: dict[str, Any] = {
        "collector": {"id": "pc1", "site": "plant-a", "line": "line-1"},
        "buffer": {"path": str(folder / "b.db")},
        # No central store: rows leave the buffer on the broker's PUBACK.
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5, "delivery": "broker"},
        "health": {"port": free_port(), "token_env": "COLLECTOR_API_TOKEN"},
        "stations": [{"name": "ft-1", "operation": "functional-test", "serial_source": "http"}],
        "devices": [
            {
                "name": "tester-1",
                "protocol": "modbus_tcp",
                "station": "ft-1",
                "host": "127.0.0.1",
                "port": tester_port,
                "unit_id": 1,
                "poll_interval_ms": 100,
                "timeout_ms": 300,
                "reconnect_min_ms": 200,
                "reconnect_max_ms": 2000,
                "tags": [
                    {
                        "name": "voltage",
                        "table": "holding_register",
                        "address": 0,
                        "type": "float32",
                        "unit": "V",
                    },
                    {
                        "name": "current",
                        "table": "input_register",
                        "address": 0,
                        "type": "float32",
                        "unit": "A",
                    },
                    {
                        "name": "result",
                        "table": "holding_register",
                        "address": 20,
                        "type": "uint16",
                    },
                ],
            },
            {
                "name": "fixture-1",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": fixture_port,
                "unit_id": 1,
                "poll_interval_ms": 200,
                "tags": [{"name": "clamp", "table": "coil", "address": 0, "type": "bool"}],
            },
        ],
    }
    if down_device:  # a press whose address nobody listens on: how a problem looks
        config["devices"].append(
            {
                "name": "press-2",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "unit_id": 1,
                "tags": [
                    {"name": "force", "table": "input_register", "address": 0, "type": "uint16"}
                ],
            }
        )
    return config


@dataclass
class LiveLine:
    tester: SimulatedModbusServer
    fixture: SimulatedModbusServer
    collector: CollectorProcess
    config: Config

    async def set_tester(self, **values: Any) -> None:
        device = self.config.devices[0]
        for tag in device.tags:
            if tag.name in values:
                await self.tester.set_value(1, TagCodec.for_device(tag, device), values[tag.name])

    async def set_unit(self, serial: str | None) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.post(
                f"{self.collector.url}/stations/ft-1/unit",
                json={"serial": serial},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        answer.raise_for_status()
        return answer.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def live_line(
    broker: Mosquitto, folder: Path, down_device: bool = False
) -> AsyncIterator[LiveLine]:
    tester, fixture = SimulatedModbusServer(), SimulatedModbusServer()
    await tester.start()
    await fixture.start()
    raw = page_config(broker, tester.port, fixture.port, folder, down_device)
    collector = CollectorProcess(raw, folder, env={"COLLECTOR_API_TOKEN": TOKEN})
    line = LiveLine(tester, fixture, collector, Config.model_validate(raw))
    await line.set_tester(voltage=12.25, current=0.5, result=0)
    try:
        await collector.start()
        yield line
    finally:
        await collector.stop()
        await tester.stop()
        await fixture.stop()


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_or_skip(), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(chromium: Browser, url: str) -> Page:
    page = await chromium.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    await page.goto(url)
    return page


async def updates(page: Page) -> int:
    """How many pictures the page has shown (page.js counts them on <body>)."""
    return int(await page.evaluate("Number(document.body.dataset.updates || 0)"))
