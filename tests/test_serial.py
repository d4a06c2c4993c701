"""Serial ASCII instruments and barcode scanners, on pseudo-terminals."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from collector.acquisition.poller import DeviceStatus, Poller
from collector.config import StationConfig
from collector.context.tagging import StationContext
from common.backoff import Backoff
from contract.codes import ErrorCode
from contract.records import Quality, Reading
from drivers.serial.config import BarcodeScannerDevice, LineField, SerialAsciiDevice
from drivers.serial.driver import BarcodeScannerDriver, SerialAsciiDriver
from drivers.serial.lines import LineAssembler, LineParser
from tests.helpers import PtyPort, async_wait_until

# --------------------------------------------------------------------------- pure logic


def test_lines_split_across_reads_are_joined() -> None:
    a = LineAssembler(b"\r\n", 64)
    assert a.feed(b"ST,GS,+001") == []
    assert a.feed(b".234 kg\r") == []
    assert a.feed(b"\nST,GS,+002.000 kg\r\nST,") == [b"ST,GS,+001.234 kg", b"ST,GS,+002.000 kg"]
    assert a.feed(b"NT\r\n") == [b"ST,NT"]


@pytest.mark.parametrize("terminator", [b"\r\n", b"\n", b"\r"])
def test_each_terminator(terminator: bytes) -> None:
    a = LineAssembler(terminator, 64)
    assert a.feed(b"a" + terminator + b"b" + terminator) == [b"a", b"b"]


def test_overlong_line_is_dropped_and_counted_and_the_next_line_survives() -> None:
    a = LineAssembler(b"\n", 16)
    assert a.feed(b"good-1\n" + b"x" * 40) == [b"good-1"]
    assert a.feed(b"y" * 40 + b"\ngood-2\n") == [b"good-2"]
    assert a.overlong == 1


def test_garbage_and_empty_lines() -> None:
    a = LineAssembler(b"\n", 64)
    assert a.feed(b"\x00\xff\xfe\n\n\r\n12.5\n") == [b"\x00\xff\xfe", b"12.5"]


def parser(pattern: str, **fields: dict[str, Any]) -> LineParser:
    import re

    return LineParser(
        re.compile(pattern), {k: LineField.model_validate(v) for k, v in fields.items()}
    )


def test_named_groups_become_typed_readings() -> None:
    p = parser(
        r"^(?P<state>ST|US),GS,(?P<weight>[-+0-9.]+) (?P<u>kg)$",
        weight={"type": "float", "unit": "kg"},
        state={"type": "string"},
        u={"type": "string"},
    )
    got = {r.tag: r for r in p.parse("ST,GS,+001.234 kg", 5.0) or []}
    assert got["weight"].value == pytest.approx(1.234)
    assert got["weight"].unit == "kg"
    assert got["weight"].ts == 5.0
    assert got["state"].value == "ST"
    assert p.parse("garbage", 5.0) is None


def test_scale_int_bool_and_unparseable() -> None:
    p = parser(
        r"(?P<n>\S+) (?P<ok>\S+) (?P<mv>\S+)",
        n={"type": "int"},
        ok={"type": "bool"},
        mv={"type": "float", "scale": 0.001, "unit": "V"},
    )
    got = {r.tag: r for r in p.parse("42 PASS 1500", 0) or []}
    assert (got["n"].value, got["ok"].value, got["mv"].value) == (42, True, 1.5)
    bad = {r.tag: r for r in p.parse("4x2 maybe 1500", 0) or []}
    assert bad["n"].error is ErrorCode.DECODE
    assert bad["ok"].error is ErrorCode.DECODE
    assert bad["mv"].quality is Quality.GOOD


# --------------------------------------------------------------------------- on a pty


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "ttyUSB-test")
    yield port
    port.close()


def scale(path: Path, **extra: Any) -> SerialAsciiDevice:
    return SerialAsciiDevice.model_validate(
        {
            "name": "scale-1",
            "protocol": "serial_ascii",
            "port": str(path),
            "mode": "listen",
            "pattern": r"^ST,GS,(?P<weight>[-+0-9.]+) kg$",
            "fields": {"weight": {"unit": "kg"}},
            "max_line_bytes": 64,
            **extra,
        }
    )


async def read_until(driver: Any, count: int) -> list[Reading]:
    got: list[Reading] = []

    async def enough() -> bool:
        got.extend(await driver.read())
        return len(got) >= count

    await async_wait_until(enough, 5, f"{count} readings")
    return got


async def test_listening_scale(pty: PtyPort, opened: Any) -> None:
    driver = await opened(SerialAsciiDriver(scale(pty.path)))
    pty.send(b"ST,GS,+001.234 kg\r\nST,GS,+002.500 kg\r\n")
    got = await read_until(driver, 2)
    assert [r.value for r in got] == [pytest.approx(1.234), pytest.approx(2.5)]
    assert {r.tag for r in got} == {"weight"}
    assert got[0].unit == "kg"


async def test_garbage_partial_split_and_overlong_lines(pty: PtyPort, opened: Any) -> None:
    driver = await opened(SerialAsciiDriver(scale(pty.path)))
    pty.send(b"ST,GS,+001.000 kg\r\n")  # good
    pty.send(b"\x00\x13\xfe\xff noise\r\n")  # garbage
    pty.send(b"X" * 200 + b"\r\n")  # over-long
    pty.send(b"ST,GS,+00")  # a line split across reads...
    got = await read_until(driver, 1)
    pty.send(b"2.000 kg\r\n")  # ...completed
    pty.send(b"ST,GS,+003.000 kg\r\n")  # good after all of it
    got += await read_until(driver, 2)
    assert [r.value for r in got] == [1.0, 2.0, 3.0]
    details = driver.details()
    assert details["counts"]["bad_input"] == 1
    assert details["counts"]["overlong_lines"] == 1
    assert details["counts"]["lines"] == 3
    assert "\ufffd\ufffd noise" in details["recent_lines"][1]


async def test_queried_meter_and_a_timeout(pty: PtyPort, opened: Any) -> None:
    meter = SerialAsciiDevice.model_validate(
        {
            "name": "dmm-1",
            "protocol": "serial_ascii",
            "port": str(pty.path),
            "mode": "query",
            "command": "MEAS:VOLT?",
            "terminator": "lf",
            "timeout_ms": 300,
            "pattern": r"^(?P<voltage>[-+0-9.E]+)$",
            "fields": {"voltage": {"unit": "V"}},
        }
    )
    driver = await opened(SerialAsciiDriver(meter))
    loop = asyncio.get_running_loop()
    commands: list[bytes] = []
    answer = True

    def respond() -> None:
        data = __import__("os").read(pty.master, 256)
        commands.append(data)
        if answer:
            pty.send(b"+1.23450E+01\n")

    loop.add_reader(pty.master, respond)
    try:
        first = await driver.read()
        assert [(r.tag, r.value, r.unit) for r in first] == [("voltage", 12.345, "V")]
        answer = False
        silent = await driver.read()
        assert [(r.tag, r.error) for r in silent] == [("voltage", ErrorCode.TIMEOUT)]
    finally:
        loop.remove_reader(pty.master)
    assert commands[0] == b"MEAS:VOLT?\n"


def scanner(path: Path) -> BarcodeScannerDevice:
    return BarcodeScannerDevice.model_validate(
        {
            "name": "scanner-1",
            "protocol": "barcode_scanner",
            "station": "ft-1",
            "port": str(path),
            "strip_prefix": "]C1",
            "serial_pattern": r"PILOT-\d{4}",
            "routes": [{"tag": "work_order", "pattern": r"WO\d{6}"}],
        }
    )


async def test_scanner_serials_routes_and_rejects(pty: PtyPort, opened: Any) -> None:
    driver = await opened(BarcodeScannerDriver(scanner(pty.path)))
    pty.send(b"]C1PILOT-0001\r]C1WO123456\rHELLO\r]C1PILOT-0002\r")
    got = await read_until(driver, 3)
    assert [(r.tag, r.value) for r in got] == [
        ("serial", "PILOT-0001"),
        ("work_order", "WO123456"),
        ("serial", "PILOT-0002"),
    ]
    assert driver.details()["counts"]["bad_input"] == 1
    assert "HELLO" in driver.details()["recent_lines"]


async def test_scanner_sets_the_station_serial_through_the_serial_source_seam(
    pty: PtyPort,
    opened: Any,
) -> None:
    scan_cfg = scanner(pty.path)
    station = StationConfig(
        name="ft-1",
        operation="functional-test",
        serial_source={"device": "scanner-1", "tag": "serial"},
    )
    context = StationContext([station], [scan_cfg, _tester_in("ft-1")])
    driver = await opened(BarcodeScannerDriver(scan_cfg))
    before = Reading(time.time(), "voltage", 12.0, "V")
    assert context.tag("tester-1", [before])[0].unit_serial is None
    pty.send(b"]C1PILOT-0042\r")
    context.tag("scanner-1", await read_until(driver, 1))
    after = Reading(time.time(), "voltage", 12.0, "V")
    assert context.tag("tester-1", [after])[0].unit_serial == "PILOT-0042"
    # A reading read before the scan keeps "no unit", even when it is tagged after it.
    assert context.tag("tester-1", [before])[0].unit_serial is None


def default_scanner(path: Path) -> BarcodeScannerDevice:
    """A scanner with the default serial_pattern and no routes: every scan is a serial or noise."""
    return BarcodeScannerDevice.model_validate(
        {"name": "scanner-1", "protocol": "barcode_scanner", "station": "ft-1", "port": str(path)}
    )


async def scan_lines(
    pty: PtyPort, driver: BarcodeScannerDriver, lines: Sequence[bytes]
) -> list[Reading]:
    """Send each line as a scan (CR after it), a chunk at a time (a pty holds a few KiB), and
    read until every one of them is counted as a serial or as bad input."""
    got: list[Reading] = []
    for start in range(0, len(lines), 100):
        chunk = lines[start : start + 100]
        pty.send(b"".join(line + b"\r" for line in chunk))
        done = start + len(chunk)

        async def counted(done: int = done) -> bool:
            got.extend(await driver.read())
            counts = driver.details()["counts"]
            return bool(counts.get("lines", 0) + counts.get("bad_input", 0) == done)

        await async_wait_until(counted, 10, f"{done} scans counted")
    return got


async def test_the_default_serial_pattern_takes_no_random_binary_line(
    pty: PtyPort, opened: Any
) -> None:
    """10,000 lines of 1-32 random bytes (neither CR nor LF: one scan each) through the real
    driver on a pty: not one becomes a serial, each is counted as bad input, and the station
    whose serial source is the scanner never gets a unit."""
    rng = random.Random(24)
    alphabet = bytes(b for b in range(256) if b not in b"\r\n")
    lines = [bytes(rng.choices(alphabet, k=rng.randint(1, 32))) for _ in range(10_000)]
    # The sample is one the old default (printable ASCII without spaces) made units of.
    old_default = re.compile(r"[!-~]+")
    taken_before = [
        line for line in lines if old_default.fullmatch(line.decode("ascii", "replace").strip())
    ]
    assert len(taken_before) > 100
    scan_cfg = default_scanner(pty.path)
    context = StationContext(
        [
            StationConfig(
                name="ft-1", operation="ft", serial_source={"device": "scanner-1", "tag": "serial"}
            )
        ],
        [scan_cfg, _tester_in("ft-1")],
    )
    driver = await opened(BarcodeScannerDriver(scan_cfg))
    got = await scan_lines(pty, driver, lines)
    assert got == []
    assert driver.details()["counts"]["bad_input"] == 10_000
    assert driver.take_input_errors() == {"bad_input": 10_000}
    context.tag("scanner-1", got)
    assert (
        context.tag("tester-1", [Reading(time.time(), "voltage", 1.0, "V")])[0].unit_serial is None
    )


async def test_the_default_serial_pattern_takes_real_serials_and_not_short_or_wordy_labels(
    pty: PtyPort, opened: Any
) -> None:
    driver = await opened(BarcodeScannerDriver(default_scanner(pty.path)))
    serials = ["PV-000106", "SN12345678", "A1B2C3", "GOLD-001", "PILOT-0001", "LOT_2026.11/07"]
    rejected = ["!kr", "{", "*]", "SN-1", "12345", "HELLO", "NOREAD", "SN 123456", "SN#123456"]
    got = await scan_lines(pty, driver, [s.encode() for s in [*serials, *rejected]])
    assert [(r.tag, r.value) for r in got] == [("serial", s) for s in serials]
    assert driver.details()["counts"]["bad_input"] == len(rejected)


def _tester_in(station: str) -> Any:
    from drivers.modbus.config import ModbusTcpDevice

    return ModbusTcpDevice.model_validate(
        {
            "name": "tester-1",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "station": station,
            "tags": [{"name": "voltage", "table": "holding_register", "address": 0}],
        }
    )


async def test_port_that_vanishes_and_comes_back_is_reopened(pty: PtyPort) -> None:
    values: list[Any] = []
    status = DeviceStatus("scale-1", "serial_ascii", None)

    def sink(_name: str, readings: Sequence[Reading]) -> None:
        values.extend(r.value for r in readings)

    poller = Poller(
        SerialAsciiDriver(scale(pty.path, poll_interval_ms=50)),
        status,
        0.05,
        sink,
        Backoff(0.05, 0.2),
    )
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_until(lambda: status.connected, 5, "port open")
        pty.send(b"ST,GS,+001.000 kg\r\n")
        await async_wait_until(lambda: 1.0 in values, 5, "a weight")
        pty.vanish()  # the USB adapter is pulled
        await async_wait_until(lambda: not status.connected, 5, "the loss noticed")
        assert status.errors["connection"] >= 1
        pty.reappear()  # ... and plugged in again: same by-id path, new tty
        await async_wait_until(lambda: status.connected, 10, "reopened")
        pty.send(b"ST,GS,+002.000 kg\r\n")
        await async_wait_until(lambda: 2.0 in values, 5, "a weight after the re-plug")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_probe_command_shows_lines_and_what_the_pattern_makes_of_them(
    pty: PtyPort,
) -> None:
    import os
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector",
        "probe",
        f"serial://{pty.path}?baud=9600",
        "--pattern",
        r"^ST,GS,(?P<weight>[-+0-9.]+) kg$",
        "--seconds",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    header = await asyncio.wait_for(process.stdout.readline(), 20)
    assert b"probing" in header
    pty.send(b"ST,GS,+001.500 kg\r\nHELLO\r\n")
    out, err = await asyncio.wait_for(process.communicate(), 20)
    text = out.decode()
    assert process.returncode == 0, err.decode()
    assert "'ST,GS,+001.500 kg'  -> weight=1.5" in text
    assert "'HELLO'  -> does not match the pattern" in text


def test_probe_url_errors_are_clear() -> None:
    from drivers.serial.tools import probe_device

    with pytest.raises(ValueError, match="expected serial:///dev/PORT"):
        probe_device("modbus://1.2.3.4", None, None)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['speed'\]"):
        probe_device("serial:///dev/ttyUSB0?speed=9600", None, None)
    device = probe_device(
        "serial:///dev/ttyUSB0?baud=19200&parity=even&terminator=cr", "MEAS?", None
    )
    assert (device.baudrate, device.parity.value, device.terminator.value, device.mode) == (
        19200,
        "even",
        "cr",
        "query",
    )
