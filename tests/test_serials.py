"""Serials from any source (a device's string register, a barcode scanner on a pty, the HTTP
unit endpoint) with a control or format character are rejected and counted, never a unit, and
never reach the log raw. Real parts: pymodbus server, a pty, mosquitto, HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from collector.acquisition.poller import DeviceStatus, Poller
from collector.config import Config
from common.backoff import Backoff
from contract.records import Reading
from contract.text import escaped, serial_problem
from drivers.modbus.sim import SimulatedModbusServer
from drivers.serial.config import BarcodeScannerDevice, SerialAsciiDevice
from drivers.serial.driver import BarcodeScannerDriver, SerialAsciiDriver, SerialLines
from drivers.serial.lines import LineAssembler
from tests.helpers import (
    Mosquitto,
    PtyPort,
    RunningService,
    async_wait_until,
    config_dict,
    set_tester,
)

TOKEN = "t0ken-for-serials"
HOSTILE = ["SN\x001", "SN\x1b[2J1", "\u202eSN1", "SN\u200b1", "SN\u2066X\u2069", "\x85SN"]


@pytest.mark.parametrize("serial", HOSTILE)
def test_control_and_format_characters_are_no_serial(serial: str) -> None:
    problem = serial_problem(serial)
    assert problem is not None
    assert problem.startswith("contains the control or format character U+")
    shown = escaped(serial)
    assert shown.isascii()
    assert shown.isprintable()


def test_ordinary_serials_pass() -> None:
    for serial in ("PILOT-0001", "SN 12/34", "Prüfling-7", "批次-1"):
        assert serial_problem(serial) is None
    assert serial_problem("x" * 129) == "longer than 128 characters (129)"


async def test_the_default_scanner_pattern_takes_no_line_noise(
    tmp_path: Path, opened: object
) -> None:
    pty = PtyPort(tmp_path / "ttyACM-scan")
    try:
        device = BarcodeScannerDevice.model_validate(
            {"name": "scanner-1", "protocol": "barcode_scanner", "port": str(pty.path)}
        )
        driver = await opened(BarcodeScannerDriver(device))  # type: ignore[operator]
        pty.send(b"\x00\x01\x02\rSN\xe2\x80\xae1\rPILOT-0001\r")
        got: list[object] = []

        async def one() -> bool:
            got.extend(await driver.read())
            return bool(got)

        await async_wait_until(one, 5, "the good scan")
        assert [(r.tag, r.value) for r in got] == [("serial", "PILOT-0001")]  # type: ignore[attr-defined]
        assert driver.details()["counts"]["bad_input"] == 2
        assert driver.take_input_errors() == {"bad_input": 2}
    finally:
        pty.close()


async def test_every_source_rejects_counts_and_never_logs_raw(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TEST_SERIALS_TOKEN", TOKEN)
    pty = PtyPort(tmp_path / "ttyACM-scan")
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
    raw["health"]["token_env"] = "TEST_SERIALS_TOKEN"
    raw["stations"] += [
        {
            "name": "pack-1",
            "operation": "pack",
            "serial_source": {"device": "scanner-1", "tag": "serial"},
        },
        {"name": "manual-1", "operation": "rework", "serial_source": "http"},
    ]
    raw["devices"].append(
        {
            "name": "scanner-1",
            "protocol": "barcode_scanner",
            "station": "pack-1",
            "port": str(pty.path),
            "serial_pattern": ".+",  # loose on purpose: the serial check still holds
        }
    )
    config = Config.model_validate(raw)
    caplog.set_level(logging.INFO)
    try:
        await set_tester(modbus_server, config, serial="SN\x1b[2J1", voltage=1.0, result=0)
        async with RunningService(config) as running:
            service = running.service
            port = service.health_server.bound_port  # type: ignore[union-attr]
            # 1. A device's string register.
            await async_wait_until(
                lambda: service.devices["tester-1"].polls >= 3, 10, "tester polls"
            )
            assert service.context.current_serial("ft-1") is None
            # 2. The scanner, with a pattern that would take anything.
            pty.send(b"SN\x1b[31m9\r")
            await async_wait_until(
                lambda: service.devices["scanner-1"].errors.get("bad_input") == 1,
                10,
                "the bad scan in the device's error counts",
            )
            assert service.context.current_serial("pack-1") is None
            pty.send(b"PILOT-0001\r")
            await async_wait_until(
                lambda: service.context.current_serial("pack-1") == "PILOT-0001", 10, "scan"
            )
            # 3. HTTP.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                response = await http.post(
                    "/stations/manual-1/unit", json={"serial": "\u202eSN1"}, headers=auth
                )
                assert response.status_code == 422
                assert "U+202E" in response.text
                assert service.context.current_serial("manual-1") is None
                ok = await http.post(
                    "/stations/manual-1/unit", json={"serial": "SN-7"}, headers=auth
                )
                assert ok.status_code == 200
                status = (await http.get("/status")).json()
                metrics = (await http.get("/metrics")).text
            assert status["rejected_serials"]["ft-1"] >= 1
            assert status["rejected_serials"]["manual-1"] >= 1
            assert 'collector_rejected_serials_total{station="manual-1"}' in metrics
            assert 'collector_device_errors_total{code="bad_input",device="scanner-1"} 1.0' in (
                metrics
            )
            # The tester's serial is fixed: its unit starts.
            await set_tester(modbus_server, config, serial="SN0001")
            await async_wait_until(
                lambda: service.context.current_serial("ft-1") == "SN0001", 10, "good serial"
            )
    finally:
        pty.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SN\\x1b[2J1" in logged  # said, escaped
    for char in ("\x1b", "\u202e", "\x00"):
        assert char not in logged


# --------------------------------------------------------------------- serial lines: bounded


def test_max_line_bytes_counts_the_line_without_its_crlf() -> None:
    a = LineAssembler(b"\r\n", 8)
    assert a.feed(b"12345678\r\n") == [b"12345678"]  # exactly max_line_bytes: kept
    assert a.feed(b"123456789\r\n") == []  # one more: discarded, counted
    assert a.overlong == 1
    for byte in b"ABCDEFGH\r\n":  # byte by byte, the CR held before its LF
        got = a.feed(bytes([byte]))
    assert got == [b"ABCDEFGH"]
    assert a.overlong == 1


async def test_a_burst_beyond_the_pending_bound_is_counted_and_reaches_the_device_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SerialLines, "MAX_PENDING_LINES", 5)
    pty = PtyPort(tmp_path / "ttyUSB-scale")
    device = SerialAsciiDevice.model_validate(
        {
            "name": "scale-1",
            "protocol": "serial_ascii",
            "port": str(pty.path),
            "mode": "listen",
            "pattern": r"^(?P<weight>[0-9]+)$",
            "max_line_bytes": 8,
            "poll_interval_ms": 1000,
        }
    )
    polls: list[Sequence[Reading]] = []
    status = DeviceStatus("scale-1", "serial_ascii", None)
    driver = SerialAsciiDriver(device)
    poller = Poller(driver, status, 2.0, lambda _n, r: polls.append(r), Backoff(0.05, 0.1))
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_until(lambda: status.polls >= 1, 5, "the first poll")
        # The whole burst arrives between two polls (2 s apart).
        pty.send(b"".join(b"%d\r\n" % n for n in range(12)) + b"garbage\r\n123456789\r\n")
        await async_wait_until(lambda: any(polls), 10, "the poll after the burst")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await driver.close()
        pty.close()
    # 13 complete lines arrived (12 numbers and the garbage); 5 are kept: the 8 oldest dropped.
    assert [r.value for r in next(p for p in polls if p)] == [8.0, 9.0, 10.0, 11.0]
    assert dict(status.errors) == {"dropped_lines": 8, "bad_input": 1, "overlong_lines": 1}
