"""``collector demo``: a simulated pilot line and a collector for it, in one process.

The line: a barcode scanner (on a pseudo-terminal) where the operator scans each unit and,
every 5 units, a work order (a reading of tag work_order); a functional tester (a real Modbus
TCP server on 127.0.0.1) that tests a unit in about 1.2 s, a new one every 1.6 s (a 60 s demo
makes dozens: enough for the pilot-run report), with the unit serial also in its string
registers and a result register that goes running -> pass/fail/rework/scrap per unit, with a
failure code. Its current (critical, with spec limits) and temperature vary from unit to
unit; the voltage drifts. The station takes its unit serial from the scanner and its verdict
from the result register; a failed unit is tested again (attempt 2), and scrapped if it fails
again; every tenth unit the operator tests the golden sample GOLD-001. Each unit's record is
printed too.
A burn-in rack (a real asyncua OPC-UA server on 127.0.0.1, 4 slots, one session) warms up and
cools down; its temperatures are subscribed (deadband 0.5 degC), the rest polled. The rack is
one station with a slot range: each slot's readings carry the serial in that slot.
The collector polls it, buffers to SQLite and forwards to the broker; the live view prints
what the broker accepted. With no broker it keeps collecting and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from collector.config import Config
from collector.service import Service
from contract.decode import ContextBook, ContractError, MetaBook, decode_readings
from contract.encode import ContextVersion
from drivers.modbus.sim import SimulatedModbusServer, codecs
from drivers.opcua.sim import RACK_NAMESPACE, SimulatedBurnInRack, rack_slot_tags
from drivers.serial.sim import SimulatedScanner

UNIT_SECONDS = 1.2  # the test; with the unloading pause a unit every 1.6 s
UNLOAD_SECONDS = 0.4  # more than two tester polls: the verdict is always seen
TAKT_S = 2.0
RESULT_RUNNING, RESULT_PASS, RESULT_FAIL, RESULT_REWORK, RESULT_SCRAP = 0, 1, 2, 3, 4
GOLDEN = "GOLD-001"
# The critical characteristic: the current at the end of the test, per unit about
# N(1.70, 0.012) A against 1.60..1.80 A (Cpk about 2.7 at the start, slowly drifting up).
CURRENT_LSL, CURRENT_TARGET, CURRENT_USL = 1.60, 1.70, 1.80


RACK_SLOTS = 4


def _rack_device(endpoint: str) -> dict[str, Any]:
    tags = rack_slot_tags(1, RACK_SLOTS)  # one entry per variable, expanded per slot at load
    for tag in tags:
        if tag["name"].endswith(".temp"):
            tag["collect"] = "subscribe"
    tags.append({"name": "door_open", "namespace_uri": RACK_NAMESPACE, "id": "s=Rack1.DoorOpen"})
    return {
        "name": "rack-1",
        "protocol": "opcua",
        "station": "burn-in-1",
        "endpoint": endpoint,
        "poll_interval_ms": 2000,
        "publishing_interval_ms": 500,
        "sampling_interval_ms": 250,
        "deadband": {"type": "absolute", "value": 0.5},
        "tags": tags,
    }


def demo_config(  # noqa: PLR0917 - one value for each simulated part
    broker_host: str,
    broker_port: int,
    modbus_port: int,
    buffer: Path,
    scanner_port: str,
    rack_endpoint: str,
    delivery: str = "broker",
) -> Config:
    # The station token of POST /deviations (the live page's form), when the caller set one
    # (deploy/demo.sh does); without it that endpoint is off.
    token = {"token_env": TOKEN_ENV} if os.environ.get(TOKEN_ENV) else {}
    return Config.model_validate(
        {
            "collector": {"id": "demo-pc1", "site": "demo-plant", "line": "pilot-line-1"},
            "buffer": {"path": str(buffer), "max_readings": 1_000_000},
            # delivery broker (no central store): readings leave the buffer on the broker's
            # PUBACK; store (deploy/demo.sh runs one): on the store's acknowledgement.
            "mqtt": {
                "host": broker_host,
                "port": broker_port,
                "shutdown_grace_s": 3,
                "delivery": delivery,
            },
            "health": {"host": "127.0.0.1", "port": 0, **token},
            "stations": [
                {
                    "name": "ft-1",
                    "operation": "functional-test",
                    "serial_source": {"device": "scanner-1", "tag": "serial"},
                    "work_order_source": {"device": "scanner-1", "tag": "work_order"},
                    "verdict": {
                        "device": "tester-1",
                        "tag": "result",
                        "map": {
                            RESULT_PASS: "pass",
                            RESULT_FAIL: "fail",
                            RESULT_REWORK: "rework",
                            RESULT_SCRAP: "scrap",
                        },
                    },
                    "failure_code": {"device": "tester-1", "tag": "failure_code"},
                    "key_characteristics": [
                        {
                            "device": "tester-1",
                            "tag": "current",
                            "lsl": CURRENT_LSL,
                            "usl": CURRENT_USL,
                            "target": CURRENT_TARGET,
                            "critical": True,
                        },
                        {"device": "tester-1", "tag": "temperature", "usl": 45.0},
                    ],
                    "takt_s": TAKT_S,
                    "golden_pattern": r"GOLD-\d{3}",
                    "unit_timeout_s": 60,
                },
                {
                    "name": "burn-in-1",
                    "operation": "burn-in",
                    "slots": {"first": 1, "last": RACK_SLOTS},
                    "serial_source": {"device": "rack-1", "tag": "slot{slot:02d}.serial"},
                    "key_characteristics": [
                        {"device": "rack-1", "tag": "slot{slot:02d}.temp", "usl": 90.0}
                    ],
                    "unit_timeout_s": 48 * 3600,
                },
            ],
            "devices": [
                {
                    "name": "scanner-1",
                    "protocol": "barcode_scanner",
                    "station": "ft-1",
                    "port": scanner_port,
                    "strip_prefix": "]C1",
                    "serial_pattern": r"PILOT-\d{4}|GOLD-\d{3}",
                    "routes": [{"tag": "work_order", "pattern": r"WO\d{6}"}],
                },
                {
                    "name": "tester-1",
                    "protocol": "modbus_tcp",
                    "station": "ft-1",
                    "host": "127.0.0.1",
                    "port": modbus_port,
                    "unit_id": 1,
                    "poll_interval_ms": 150,
                    "timeout_ms": 500,
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
                            "table": "holding_register",
                            "address": 2,
                            "type": "float32",
                            "unit": "A",
                        },
                        {
                            "name": "temperature",
                            "table": "input_register",
                            "address": 0,
                            "type": "int16",
                            "scale": 0.1,
                            "unit": "degC",
                        },
                        {
                            "name": "serial",
                            "table": "holding_register",
                            "address": 10,
                            "type": "string",
                            "count": 8,
                        },
                        {
                            "name": "result",
                            "table": "holding_register",
                            "address": 20,
                            "type": "uint16",
                        },
                        {
                            "name": "failure_code",
                            "table": "holding_register",
                            "address": 21,
                            "type": "uint16",
                        },
                        {"name": "clamp_closed", "table": "coil", "address": 0, "type": "bool"},
                    ],
                },
                _rack_device(rack_endpoint),
            ],
        }
    )


class SimulatedTester:
    """Drives the tester's registers: a new unit every 1.6 s, each scanned at the station
    before its test starts; retests, rework, scrap and a golden sample now and then."""

    def __init__(
        self, server: SimulatedModbusServer, config: Config, scanner: SimulatedScanner
    ) -> None:
        self._server = server
        self._scanner = scanner
        self._codecs = codecs(next(d for d in config.devices if d.name == "tester-1"))
        self._rng = random.Random(7)
        # Verdicts from their own generator: the same sequence whatever the timing (the
        # measurements' draws depend on how many polls a test takes).
        self._verdicts = random.Random(36)
        self._attempts: dict[str, int] = {}
        self._last_golden = -1

    async def _set(self, name: str, value: Any) -> None:
        await self._server.set_value(1, self._codecs[name], value)

    async def run(self) -> None:
        unit = 0
        retest: str | None = None
        started = time.monotonic()
        while True:
            golden = retest is None and unit % 10 == 9 and unit != self._last_golden
            if golden:
                self._last_golden = unit
                serial = GOLDEN  # the operator checks the tester on the golden sample
            elif retest is None:
                unit += 1
                if unit % 5 == 1:
                    self._scanner.scan(f"WO{100000 + unit // 5:06d}")  # a new work order
                serial = f"PILOT-{unit:04d}"
            else:
                serial = retest  # reworked or adjusted, and back for its next attempt
            attempt = self._attempts[serial] = self._attempts.get(serial, 0) + 1
            await self._test(serial, golden, started)
            result, code = self._result(unit, attempt, golden)
            retest = serial if result in (RESULT_FAIL, RESULT_REWORK) else None
            if code:
                await self._set("failure_code", code)
            await self._set("result", result)
            await self._set("clamp_closed", False)
            await asyncio.sleep(UNLOAD_SECONDS)

    async def _test(self, serial: str, golden: bool, started: float) -> None:
        """Scan, clamp and measure for UNIT_SECONDS: the current settles at this unit's value
        (the golden sample's is always near the target), the temperature rises."""
        self._scanner.scan(serial)
        await self._set("serial", serial)
        await self._set("result", RESULT_RUNNING)
        await self._set("failure_code", 0)
        await self._set("clamp_closed", True)
        t = time.monotonic() - started
        current = CURRENT_TARGET + 0.0005 * t + self._rng.gauss(0, 0.012)
        if golden:
            current = CURRENT_TARGET + 0.0005 * t + self._rng.gauss(0, 0.002)  # tester drift
        final_temp = 35 + self._rng.gauss(0, 0.1 if golden else 1.0)
        unit_start = time.monotonic()
        while (elapsed := time.monotonic() - unit_start) < UNIT_SECONDS:
            await self._set(
                "voltage", round(12.0 + 0.05 * math.sin(t) + self._rng.gauss(0, 0.01), 3)
            )
            settle = 1 - math.exp(-elapsed / 0.15)
            await self._set("current", round(current * settle + self._rng.gauss(0, 0.0005), 4))
            await self._set("temperature", round(25 + (final_temp - 25) * settle, 1))
            await asyncio.sleep(0.1)

    def _result(self, unit: int, attempt: int, golden: bool) -> tuple[int, int]:
        """The verdict and failure code. The second unit fails (so that a short demo shows a
        retest), then about 12 % of first attempts fail (a third of them are sent to rework);
        a retest fails again 1 time in 4, and the unit is scrapped."""
        if golden:
            return RESULT_PASS, 0
        if attempt > 1:
            return (RESULT_SCRAP, 317) if self._verdicts.random() < 0.25 else (RESULT_PASS, 0)
        if unit == 2 or self._verdicts.random() < 0.12:
            code = self._verdicts.choice((101, 101, 101, 204, 204, 317))
            return (RESULT_REWORK if code == 204 else RESULT_FAIL), code
        return RESULT_PASS, 0


async def load_rack(rack: SimulatedBurnInRack) -> None:
    """A unit in every slot (serials in the slots' Serial nodes) before the burn-in starts."""
    for slot in range(1, RACK_SLOTS + 1):
        await rack.set(f"Slot{slot:02d}.Serial", f"PILOT-{900 + slot:04d}")


async def run_rack(rack: SimulatedBurnInRack) -> None:
    """Each slot warms up to about 85 degC and cools down (in seconds, not the hours of a real
    burn-in), out of phase with the others."""
    rng = random.Random(11)
    started = time.monotonic()
    while True:
        t = time.monotonic() - started
        for slot in range(1, RACK_SLOTS + 1):
            phase = t / 5 + slot  # a fast cycle, so a short demo shows it
            temp = 55 + 30 * math.sin(phase) + rng.gauss(0, 0.05)
            await rack.set(f"Slot{slot:02d}.Temp", round(temp, 2))
            await rack.set(f"Slot{slot:02d}.Current", round(0.5 + 0.01 * temp, 3))
        await asyncio.sleep(0.5)


#: The environment variable holding the collector's station token in the demo.
TOKEN_ENV = "COLLECTOR_DEMO_TOKEN"  # noqa: S105 - a variable's name, not a secret
#: The deviation the demo's operator records on the live page once a few units are done.
DEVIATION = {
    "description": "Tester clamp re-seated after a jam; the units tested just before were "
    "set aside for a check",
    "severity": "minor",
    "station": "ft-1",
    "operation": "functional-test",
    "device": "tester-1",
    "action": "Clamp re-seated, the two units before the jam retested",
    "who": "Demo operator",
}


class LiveView:
    """Prints one compact line per message the broker accepted."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.delivered = 0
        self.units = 0  # unit records the broker accepted
        #: Serials of the units that passed, in the order their records were published.
        self.serials: list[str] = []
        self.three_passed = asyncio.Event()
        #: The tag metadata the readings refer to (their tags are sent by position).
        self.book = MetaBook()
        #: The unit contexts they name, and where to find a version not seen yet (the
        #: writer's: this view sees only the delivered readings, not the context topic).
        self.contexts = ContextBook()
        self.versions: Callable[[], list[ContextVersion]] = list
        self.collector = ""

    def on_message(self, payload: bytes) -> None:
        if b'","deviations":[' in payload[:200]:  # right after the header: not a tag name
            for d in orjson.loads(payload)["deviations"]:
                print(f"deviation {d['seq']} published: {d['severity']} at {d['station']}",
                      flush=True)  # fmt: skip
            return
        if b'"units":' in payload:
            self._units(orjson.loads(payload)["units"])
            return
        # The reference decoder: one record per reading, whatever the schema.
        try:
            try:
                records = decode_readings(payload, self.book, self.contexts)
            except ContractError as exc:
                if exc.kind != "unknown_context":
                    raise
                for version in self.versions():
                    self.contexts.add(version.message(self.collector))
                records = decode_readings(payload, self.book, self.contexts)
        except ContractError:  # e.g. polls of a version from a previous run's buffer
            polls = orjson.loads(payload)["polls"]
            self.delivered += sum(
                len(p.get("values") or p.get("v") or p.get("value_list") or ()) for p in polls
            )
            return
        self.delivered += len(records)
        if self.quiet:
            return
        values: dict[str | None, dict[str, str]] = {}
        units: dict[str | None, str | None] = {}
        for r in records:
            value = r.value
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            values.setdefault(r.station, {})[r.tag] = f"{text}{' ' + r.unit if r.unit else ''}"
            units[r.station] = r.unit_serial
        shown = " | ".join(
            f"{station} unit {units[station]}: " + " ".join(f"{k}={v}" for k, v in tags.items())
            for station, tags in values.items()
        )
        print(
            f"published seq {records[0].seq}-{records[-1].seq} ({len(records)} readings) {shown}",
            flush=True,
        )

    def _units(self, units: list[dict[str, Any]]) -> None:
        self.units += len(units)
        self.serials.extend(u["serial"] for u in units if u["verdict"] == "pass")
        if len(self.serials) >= 3:
            self.three_passed.set()
        if self.quiet:
            return
        for u in units:
            code = f" (failure code {u['failure_code']})" if u["failure_code"] else ""
            print(
                f"unit record: {u['serial']} {u['operation']} attempt {u['attempt']}: "
                f"{u['verdict']}{code} in {u['cycle_time_s']:.1f} s, {u['readings']} readings",
                flush=True,
            )


def run_demo(
    broker: str,
    duration: float | None,
    buffer: Path | None,
    quiet: bool = False,
    delivery: str = "broker",
) -> int:
    host, _, port_text = broker.rpartition(":")
    if not host or not port_text.isdigit():
        print(f"--broker: expected HOST:PORT, got {broker!r}", file=sys.stderr)
        return 2
    buffer = buffer or Path(tempfile.gettempdir()) / "collector-demo.db"
    return asyncio.run(_demo(host, int(port_text), duration, buffer, quiet, delivery))


async def _demo(  # noqa: PLR0917 - the command line's options
    host: str, port: int, duration: float | None, buffer: Path, quiet: bool, delivery: str
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = SimulatedModbusServer(unit_ids=[1])
    await server.start()
    rack = SimulatedBurnInRack(slots=RACK_SLOTS)
    await rack.start()
    await load_rack(rack)
    scanner = SimulatedScanner()
    config = demo_config(host, port, server.port, buffer, scanner.port, rack.endpoint, delivery)
    view = LiveView(quiet)
    service = Service(config, on_delivered=view.on_message)
    for meta in service.writer.metas.values():
        view.book.add(meta.message(config.collector.id))
    view.versions, view.collector = service.writer.context_versions, config.collector.id
    print(
        f"demo: simulated tester on 127.0.0.1:{server.port}, scanner on {scanner.port}, "
        f"burn-in rack on {rack.endpoint}, broker {host}:{port}, buffer {buffer}",
        flush=True,
    )
    running = asyncio.create_task(service.run(stop))
    tester = asyncio.create_task(_start_line(service, SimulatedTester(server, config, scanner)))
    reporter = asyncio.create_task(_report_outage(service, stop))
    heater = asyncio.create_task(run_rack(rack))
    deviation = asyncio.create_task(_record_deviation(service, view))
    try:
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration)
            stop.set()
        await running
    finally:
        for task in (tester, reporter, heater, deviation):
            task.cancel()
        await asyncio.gather(tester, reporter, heater, deviation, return_exceptions=True)
        await server.stop()
        await rack.stop()
        scanner.close()
    print(
        f"demo: {view.delivered} readings and {view.units} unit records published; "
        f"{service.left_in_buffer} left in the buffer",
        flush=True,
    )
    return 0


async def _start_line(service: Service, tester: SimulatedTester) -> None:
    """The first unit is scanned once the station is up: a serial port discards what arrived
    before it was opened, as a real one does."""
    await service.ready.wait()
    scanner = service.devices["scanner-1"]
    for _ in range(100):  # at most 10 s
        if scanner.connected:
            break
        await asyncio.sleep(0.1)
    await tester.run()


async def _record_deviation(service: Service, view: LiveView) -> None:
    """Once three units passed, the operator records a deviation on the live page: the same
    request its form sends, POST /deviations with the station token, naming the two units
    before the jam. Only when the demo has a token (deploy/demo.sh sets one)."""
    token = os.environ.get(TOKEN_ENV)
    await service.ready.wait()
    if not token or service.health_server is None:
        return
    url = f"http://127.0.0.1:{service.health_server.bound_port}"
    print(f"demo: the collector's live page: {url}/ (its form records deviations)", flush=True)
    await view.three_passed.wait()
    body = {**DEVIATION, "serials": view.serials[1:3]}
    request = urllib.request.Request(  # noqa: S310 - the demo's own loopback address
        f"{url}/deviations",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        # A thread: the collector answering this request runs on this very loop.
        answer = await asyncio.to_thread(_post, request)
    except (OSError, urllib.error.URLError) as exc:
        print(f"demo: recording the deviation failed: {exc}", flush=True)
        return
    print(
        f"demo: deviation {answer['seq']} recorded on the live page (POST /deviations): "
        f"{answer['severity']} at {answer['station']}, units {', '.join(body['serials'])}",
        flush=True,
    )


def _post(request: urllib.request.Request) -> dict[str, Any]:
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        found: dict[str, Any] = orjson.loads(answer.read())
        return found


async def _report_outage(service: Service, stop: asyncio.Event) -> None:
    """While the broker is unreachable, say so every few seconds, with the buffer depth."""
    await service.ready.wait()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=3.0)
        if not stop.is_set() and not service.mqtt.connected:
            stats = await service.outbox.stats()
            print(
                f"broker unreachable ({service.mqtt.last_connect_error or 'connecting'}): "
                f"collecting into the buffer, {stats.depth} readings waiting",
                flush=True,
            )
