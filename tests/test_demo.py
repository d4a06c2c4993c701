"""`collector demo` (what the README's first command runs), with and without a broker, and
the first command itself, deploy/demo.sh, through the store to the report."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from store.db import connect
from tests.helpers import REPO, Mosquitto, Subscriber, assert_no_gaps, free_port, run_cli

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
    # The operator scanned work order WO100000 before the first unit (the station's
    # work_order_source), so its record carries it.
    work_orders = [r["value"] for r in readings if r["tag"] == "work_order"]
    assert work_orders[0] == units[0]["work_order"] == "WO100000"
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


@pytest.mark.slow
def test_demo_script_runs_the_chain_to_the_report_and_says_where_to_look(tmp_path: Path) -> None:
    """README's first command, `bash deploy/demo.sh`, shortened: line -> collector -> broker ->
    store -> report, ending by itself with the report's path, a unit to look up and how to
    serve /report and /units again."""
    from tests.conftest import require_mosquitto

    require_mosquitto()
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "demo.sh"), "20"],
        capture_output=True, text=True, timeout=150, check=False, cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp_path), "DEMO_PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    db, conf = tmp_path / "collector-demo-store.db", tmp_path / "collector-demo-store.yaml"
    report = tmp_path / "collector-demo-report.html"
    published = re.search(r"demo: (\d+) readings and (\d+) unit records published", out)
    assert published is not None, out[-2000:]
    readings, units = int(published.group(1)), int(published.group(2))
    assert units >= 5

    # Everything the broker accepted is in the store (the script waited for it).
    engine = connect(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM readings").scalar_one() == readings
            assert conn.exec_driver_sql("SELECT count(*) FROM units").scalar_one() == units
    finally:
        engine.dispose()

    # The HTML report, written where the script says; its unit links go to the store's URL.
    store_url = re.search(r"then open (http://127\.0\.0\.1:\d+)/runs/1, ", out)
    assert store_url is not None, out[-2000:]
    assert f"demo:   {report}\n" in out
    page = report.read_text()
    assert "Demo pilot run" in page
    assert f'href="{store_url.group(1)}/units/PILOT-0001"' in page
    assert f"demo:   {sys.executable} -m collector store run --config {conf}\n" in out

    # The record (docs/pilot-record.md): the run opened and approved before the line started,
    # the deviation recorded on the live page (POST /deviations on the collector) in the
    # store, units allocated, three signatures (one no-go with its reason), all in the page.
    assert "demo: pilot run 1 opened (protocol version 1, " in out
    assert "approved by Quality, Production, Engineering before the line starts" in out
    assert "demo: deviation 1 recorded on the live page (POST /deviations): minor at ft-1" in out
    assert "\ndeviation 1 published: minor at ft-1\n" in out  # the live view
    assert re.search(r"demo: deviation \d+ in the store: minor, recorded by Demo operator at "
                     r"ft-1 \(line PC demo-pc1\)", out), out[-3000:]  # fmt: skip
    for disposition in ("golden", "field_test", "certification"):
        assert f"allocated to {disposition}\n" in out
    assert "demo: E. Demo signed no-go for Engineering" in out
    assert "demo: the run's state: no-go" in out
    assert '<p id="run-state"><b>✗ NO-GO</b>: no-go signed by E. Demo (Engineering)' in page
    assert "Too few units for a capability claim" in page
    assert "before the run&#x27;s first unit record" in page
    assert "Tester clamp re-seated after a jam" in page
    assert "line PC demo-pc1" in page
    assert "<td>golden</td><td>1</td>" in page
    assert "<td>field_test</td><td>2</td>" in page
    assert "<td>certification</td><td>1</td>" in page
    assert "audit trail verified, " in page

    # Its JSON variant: a decision, the functional test's figures, the characteristics.
    as_json = run_cli(
        "store", "report", "--config", str(conf), "--protocol",
        str(REPO / "config" / "demo-protocol.yaml"), "--format", "json",
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["decision"] in ("go", "no-go", "insufficient")
    (operation,) = [o for o in doc["operations"] if o["operation"] == "functional-test"]
    assert operation["units"] >= 5
    assert operation["retests"] >= 1  # PILOT-0002 fails its first attempt
    assert operation["takt_s"] == 2.0
    assert operation["pareto"]
    assert {c["result"] for c in operation["criteria"]} <= {"pass", "fail", "insufficient"}
    assert len(operation["criteria"]) == 5
    by_name = {c["name"]: c for c in doc["characteristics"]}
    current = by_name["current"]
    assert (current["lsl"], current["usl"], current["critical"]) == (1.6, 1.8, True)
    assert current["n"] == operation["units"]
    assert current["cpk"] is not None
    assert current["chart"]["values"]

    # The unit the script names, looked up with the printed command: its readings are there.
    lookup = re.search(r"collector store unit (\S+) --db (\S+)\n", out)
    assert lookup is not None, out[-2000:]
    serial = lookup.group(1)
    assert f"/units/{serial}" in out
    found = run_cli("store", "unit", serial, "--db", lookup.group(2))
    assert found.returncode == 0, found.stderr
    genealogy = json.loads(found.stdout)
    assert genealogy["serial"] == serial
    assert genealogy["operations"][0]["operation"] == "functional-test"
    assert genealogy["readings"]
    assert {r["tag"] for r in genealogy["readings"]} >= {"current", "temperature", "result"}
