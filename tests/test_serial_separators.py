"""Serials with a line or paragraph separator, and unit bodies with unknown fields, are refused
(issue 25, item 4). Real parts: the service's health server over HTTP, mosquitto, pymodbus."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from contract.text import serial_problem
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import Mosquitto, RunningService
from tests.test_health_server import TOKEN, unit_api_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("char", ["\u2028", "\u2029"])
def test_a_line_or_paragraph_separator_is_no_serial(char: str) -> None:
    assert serial_problem(f"SN-1{char}SN-2") == (
        f"contains the line or paragraph separator U+{ord(char):04X}"
    )


def test_ordinary_serials_and_spaces_still_pass() -> None:
    assert serial_problem("SN-0001 rev B") is None
    assert serial_problem("SN-\u00e9\u4e2d\U0001f600") is None


@pytest.fixture
async def port(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[RunningService, int]]:
    monkeypatch.setenv("TEST_HEALTH_TOKEN", TOKEN)
    async with RunningService(unit_api_config(mosquitto, modbus_server, tmp_path)) as running:
        assert running.service.health_server is not None
        yield running, running.service.health_server.bound_port


async def test_http_refuses_a_separator_and_logs_nothing_raw(
    port: tuple[RunningService, int], caplog: pytest.LogCaptureFixture
) -> None:
    running, number = port
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{number}") as http:
        response = await http.post(
            "/stations/ft-1/unit", json={"serial": "SN-1\u2028FAKE: unit passed"}, headers=AUTH
        )
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "serial"]
    assert detail["msg"] == "contains the line or paragraph separator U+2028"
    assert running.service.context.current_serial("ft-1") is None
    assert not any("\u2028" in record.getMessage() for record in caplog.records)


async def test_http_refuses_unknown_fields_naming_them(port: tuple[RunningService, int]) -> None:
    running, number = port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{number}") as http:
        response = await http.post(
            "/stations/ft-1/unit", json={"serial": "SN-1", "admin": True}, headers=AUTH
        )
        ok = await http.post("/stations/ft-1/unit", json={"serial": "SN-2"}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [
        {
            "type": "extra_forbidden",
            "loc": ["body", "admin"],
            "msg": "unknown field 'admin'; the fields are serial, golden, work_order, operator",
        }
    ]
    assert ok.status_code == 200, ok.text
    assert running.service.context.current_serial("ft-1") == "SN-2"
