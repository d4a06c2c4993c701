"""`collector demo` (what the README's first command runs), with and without a broker."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.helpers import Mosquitto, Subscriber, assert_no_gaps, free_port

DEMO_TOPIC = "collector/demo-plant/pilot-line-1/demo-pc1/#"


async def run_demo(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "collector",
        "demo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_demo_publishes_a_changing_line_to_the_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    sub = Subscriber(mosquitto, DEMO_TOPIC)
    try:
        process = await run_demo(
            "--broker",
            f"127.0.0.1:{mosquitto.port}",
            "--duration",
            "9",
            "--buffer",
            str(tmp_path / "demo.db"),
        )
        output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    finally:
        sub.close()
    assert process.returncode == 0, output
    assert "published seq 1-" in output
    assert "left in the buffer" in output
    readings = sub.readings()
    tags = {r["tag"] for r in readings if r["device"] != "rack-1"}
    assert tags == {
        "voltage",
        "current",
        "temperature",
        "serial",
        "result",
        "failure_code",
        "clamp_closed",
        "work_order",
    }
    # The scanner is the station's serial source: the tester's readings carry what it scanned.
    scans = [r["value"] for r in readings if r["device"] == "scanner-1" and r["tag"] == "serial"]
    assert scans[:2] == ["PILOT-0001", "PILOT-0002"]
    # A new unit every 5 s: within 9 s the serial changes at least once, and values move.
    assert {"PILOT-0001", "PILOT-0002"} <= {r["unit_serial"] for r in readings}
    assert len({r["value"] for r in readings if r["tag"] == "temperature"}) > 3
    assert {r["operation"] for r in readings} == {"functional-test", "burn-in"}
    # The OPC-UA burn-in rack: subscribed temperatures that move, polled slot serials.
    rack = [r for r in readings if r["device"] == "rack-1"]
    assert {r["station"] for r in rack} == {"burn-in-1"}
    assert len({r["value"] for r in rack if r["tag"] == "slot01.temp"}) >= 2
    assert {r["value"] for r in rack if r["tag"] == "slot02.serial"} == {"PILOT-0902"}
    # Every slot's readings carry the serial in that slot (the rack's door: no slot, no unit).
    slotted = [r for r in rack if r.get("slot") is not None]
    assert {r.get("slot") for r in slotted} == {1, 2, 3, 4}
    for slot in (1, 2, 3, 4):
        serials = {r["unit_serial"] for r in slotted if r.get("slot") == slot}
        # (A subscribed value stamped before the first poll read the serial has none.)
        assert f"PILOT-{900 + slot:04d}" in serials
        assert serials <= {f"PILOT-{900 + slot:04d}", None}
    assert {r["unit_serial"] for r in rack if r["tag"] == "door_open"} == {None}
    assert all(r["quality"] == "good" for r in rack)
    assert_no_gaps(sub.seqs())
    # The first unit's record: its verdict, and the readings it counted.
    units = [u for p in sub.payloads("/units") for u in p["units"]]
    assert units[0]["serial"] == "PILOT-0001"
    assert units[0]["verdict"] == "pass"
    assert units[0]["readings"] == sum(r["unit_serial"] == "PILOT-0001" for r in readings)
    assert "unit record: PILOT-0001 functional-test attempt 1: pass" in output


async def test_demo_without_a_broker_buffers_and_forwards_when_it_appears(tmp_path: Path) -> None:
    from tests.conftest import require_mosquitto

    require_mosquitto()
    port = free_port()
    process = await run_demo(
        "--broker", f"127.0.0.1:{port}", "--duration", "30", "--buffer", str(tmp_path / "demo.db")
    )
    assert process.stdout is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            line = await asyncio.wait_for(process.stdout.readline(), 20)  # type: ignore[union-attr]
            assert line, f"demo ended before printing {text!r}: {lines}"
            lines.append(line.decode())

    broker = Mosquitto(tmp_path / "late-broker", port=port)  # where the demo was told to look
    try:
        await read_until("broker unreachable")
        assert "collecting into the buffer" in lines[-1]
        broker.start()
        await read_until("published seq 1-")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)
        broker.stop()
    assert process.returncode == 0
