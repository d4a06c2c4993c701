"""Traceability end to end, with real parts: a barcode scanner on a pty and a pymodbus tester
-> collector -> SQLite -> mosquitto -> subscriber. Readings carry the right unit and attempt;
unit records arrive on their own topic; the HTTP serial source needs its token; a crash in the
middle of a unit keeps the serial."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from collector.config import Config
from drivers.modbus.codec import TagCodec
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    TOPIC,
    Mosquitto,
    PtyPort,
    RunningService,
    Subscriber,
    assert_no_gaps,
    async_wait_until,
    start_collector,
)

TOKEN = "s3cret-line-token"


def line_config(
    broker: Mosquitto, modbus_port: int, tmp_path: Path, **station: Any
) -> dict[str, Any]:
    return {
        "collector": {"id": "pc1", "site": "plant-a", "line": "line-1"},
        "buffer": {"path": str(tmp_path / "b.db")},
        # No central store here: records leave the buffer on the broker's PUBACK.
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "keepalive_s": 5,
            "shutdown_grace_s": 5,
            "delivery": "broker",
        },
        "health": {"port": 0},
        "stations": [
            {
                "name": "ft-1",
                "operation": "functional-test",
                "serial_source": {"device": "scanner-1", "tag": "serial"},
                "verdict": {"device": "tester-1", "tag": "result", "map": {1: "pass", 2: "fail"}},
                "failure_code": {"device": "tester-1", "tag": "failure_code"},
                "key_characteristics": [{"device": "tester-1", "tag": "voltage"}],
                **station,
            }
        ],
        "devices": [
            {
                "name": "scanner-1",
                "protocol": "barcode_scanner",
                "station": "ft-1",
                "port": str(tmp_path / "scanner"),
                "terminator": "cr",
                "serial_pattern": r"SN-\w+",
            },
            {
                "name": "tester-1",
                "protocol": "modbus_tcp",
                "station": "ft-1",
                "host": "127.0.0.1",
                "port": modbus_port,
                "poll_interval_ms": 50,
                "tags": [
                    {
                        "name": "voltage",
                        "table": "holding_register",
                        "address": 0,
                        "type": "float32",
                        "unit": "V",
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
                ],
            },
        ],
    }


class SimTester:
    def __init__(self, server: SimulatedModbusServer, config: Config) -> None:
        self.server = server
        self.device = next(d for d in config.devices if d.name == "tester-1")

    async def set(self, **values: Any) -> None:
        for tag in self.device.tags:  # type: ignore[union-attr]
            if tag.name in values:
                codec = TagCodec.for_device(tag, self.device)  # type: ignore[arg-type]
                await self.server.set_value(1, codec, values[tag.name])


async def wait_for(predicate: Callable[[], Any], seconds: float) -> bool:
    """Whether the condition came true within ``seconds`` (for bounded retry loops)."""
    try:
        await async_wait_until(predicate, seconds)
    except AssertionError:
        return False
    return True


def units(sub: Subscriber) -> list[dict[str, Any]]:
    return [u for p in sub.payloads("/units") for u in p["units"]]


def tagged(sub: Subscriber, serial: str, attempt: int) -> set[int]:
    """The seqs of readings that arrived tagged with this unit and attempt."""
    return {
        r["seq"] for r in sub.readings() if r["unit_serial"] == serial and r["attempt"] == attempt
    }


@pytest.fixture
def scanner(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "scanner")
    yield port
    if port.master >= 0:
        port.vanish()


@pytest.fixture
async def subscriber(mosquitto: Mosquitto) -> AsyncIterator[Subscriber]:
    sub = Subscriber(mosquitto, TOPIC)
    yield sub
    sub.close()


async def test_units_across_a_shift_with_a_retest_and_an_incomplete_unit(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    scanner: PtyPort,
    subscriber: Subscriber,
) -> None:
    config = Config.model_validate(
        line_config(mosquitto, modbus_server.port, tmp_path, unit_timeout_s=2)
    )
    tester = SimTester(modbus_server, config)
    await tester.set(voltage=0.0, result=1, failure_code=0)  # the last shift's result
    sub = subscriber
    async with RunningService(config) as running:
        ctx = running.service.context

        async def unit_at_station(serial: str) -> None:
            # The first scan may come before the port is open (and be dropped): scan again.
            for _ in range(20):
                scanner.send(f"{serial}\r".encode())
                if await wait_for(lambda: ctx.current_serial("ft-1") == serial, 0.5):
                    return
            raise AssertionError(f"{serial} never became the unit at the station")

        async def readings_with(serial: str, attempt: int, voltage: float) -> None:
            await async_wait_until(
                lambda: (
                    sum(
                        1
                        for r in sub.readings()
                        if (r["unit_serial"], r["attempt"], r["tag"], r["value"])
                        == (serial, attempt, "voltage", voltage)
                    )
                    >= 3
                ),
                10,
                f"readings of {serial} attempt {attempt}",
            )

        # SN-A passes. The tester clears its result when a test starts.
        await tester.set(voltage=11.5)
        await unit_at_station("SN-A")
        await tester.set(result=0)
        await readings_with("SN-A", 1, 11.5)
        await tester.set(voltage=12.5)
        await readings_with("SN-A", 1, 12.5)
        await tester.set(result=1)
        await async_wait_until(lambda: ctx.current_serial("ft-1") is None, 10, "SN-A ends")
        # SN-B fails with code 17, is reworked and passes on attempt 2.
        await unit_at_station("SN-B")
        await tester.set(result=0, voltage=3.0)
        await readings_with("SN-B", 1, 3.0)
        await tester.set(failure_code=17, result=2)
        await async_wait_until(lambda: ctx.current_serial("ft-1") is None, 10, "SN-B fails")
        await unit_at_station("SN-B")
        assert ctx.status()["ft-1"]["attempt"] == 2
        await tester.set(result=0, failure_code=0, voltage=12.0)
        await readings_with("SN-B", 2, 12.0)
        await tester.set(result=1)
        await async_wait_until(lambda: ctx.current_serial("ft-1") is None, 10, "SN-B passes")
        # SN-C never gets a verdict: the 2 s timeout ends it as incomplete.
        await unit_at_station("SN-C")
        await async_wait_until(lambda: len(units(sub)) >= 4, 20, "four unit records")

        # The subscriber can see the last record before the collector has its PUBACK: the
        # record leaves the buffer only then.
        async def buffer_empty() -> dict[str, Any] | None:
            status = await running.service.status()
            return status if status["buffer"]["units_depth"] == 0 else None

        status = await async_wait_until(buffer_empty, 10, "the unit records' deletes")
    sub_units = units(sub)
    assert [(u["serial"], u["attempt"], u["verdict"], u["ended_by"]) for u in sub_units] == [
        ("SN-A", 1, "pass", "verdict"),
        ("SN-B", 1, "fail", "verdict"),
        ("SN-B", 2, "pass", "verdict"),
        ("SN-C", 1, "incomplete", "timeout"),
    ]
    assert [u["seq"] for u in sub_units] == [1, 2, 3, 4]  # their own seq space
    assert [u["failure_code"] for u in sub_units] == [None, 17, None, None]
    a = sub_units[0]
    assert a["station"] == "ft-1"
    assert a["operation"] == "functional-test"
    assert a["characteristics"]["voltage"]["min"] == 11.5
    assert a["characteristics"]["voltage"]["max"] == 12.5
    assert a["characteristics"]["voltage"]["last"] == 12.5
    assert a["cycle_time_s"] > 0
    assert a["start"] < a["end"]
    # Each record counts exactly the readings that arrived tagged with its unit.
    for u in sub_units:
        assert u["readings"] == len(tagged(sub, u["serial"], u["attempt"])), u
    # Between units, readings flow with no serial.
    assert any(r["unit_serial"] is None and r["attempt"] is None for r in sub.readings())
    assert_no_gaps(sub.seqs())
    assert status["stations"]["ft-1"]["last_unit"]["verdict"] == "incomplete"
    assert status["buffer"]["units_depth"] == 0


async def test_http_serial_source_needs_the_token(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    subscriber: Subscriber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_UNIT_TOKEN", TOKEN)
    raw = line_config(mosquitto, modbus_server.port, tmp_path, serial_source="http")
    raw["health"]["token_env"] = "TEST_UNIT_TOKEN"
    raw["devices"] = raw["devices"][1:]  # no scanner: the MES says which unit is there
    config = Config.model_validate(raw)
    await SimTester(modbus_server, config).set(voltage=5.0, result=0)
    async with RunningService(config) as running:
        port = running.service.health_server.bound_port  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            url = "/stations/ft-1/unit"
            body = {"serial": "SN-H1"}
            missing = await http.post(url, json=body)
            wrong = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
            assert running.service.context.current_serial("ft-1") is None
            auth = {"Authorization": f"Bearer {TOKEN}"}
            unknown = await http.post("/stations/ft-9/unit", json=body, headers=auth)
            garbled = await http.post(url, json={"serial": "a\x00b"}, headers=auth)
            ok = await http.post(url, json=body, headers=auth)
            await async_wait_until(
                lambda: any(r["unit_serial"] == "SN-H1" for r in subscriber.readings()),
                10,
                "readings of the unit set over HTTP",
            )
            left = await http.post(url, json={"serial": ""}, headers=auth)
            await async_wait_until(lambda: units(subscriber), 10, "the unit record")
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in wrong.text
    assert unknown.status_code == 404
    assert garbled.status_code == 422
    assert ok.status_code == 200
    assert ok.json()["unit_serial"] == "SN-H1"
    assert ok.json()["attempt"] == 1
    assert left.json()["unit_serial"] is None
    assert [(u["serial"], u["ended_by"]) for u in units(subscriber)] == [
        ("SN-H1", "serial_cleared")
    ]


async def test_without_a_token_the_unit_endpoint_is_off(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    config = Config.model_validate(line_config(mosquitto, modbus_server.port, tmp_path))
    async with RunningService(config) as running:
        port = running.service.health_server.bound_port  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answer = await http.post(
                "/stations/ft-1/unit", json={"serial": "X"}, headers={"Authorization": "Bearer x"}
            )
    assert answer.status_code == 403
    assert "token_env" in answer.json()["detail"]


async def test_a_crash_in_the_middle_of_a_unit_keeps_its_serial(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    scanner: PtyPort,
    subscriber: Subscriber,
) -> None:
    raw = line_config(mosquitto, modbus_server.port, tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    tester = SimTester(modbus_server, Config.model_validate(raw))
    await tester.set(voltage=7.0, result=0)
    sub = subscriber
    process = await start_collector(path)
    try:
        # A serial port drops what arrived before it was opened: scan until it is taken (a
        # repeated scan of the open unit changes nothing).
        for _ in range(40):
            scanner.send(b"SN-K\r")
            if await wait_for(lambda: len(tagged(sub, "SN-K", 1)) >= 10, 0.5):
                break
        assert len(tagged(sub, "SN-K", 1)) >= 10
        process.send_signal(signal.SIGKILL)
        await process.wait()
        before = max(sub.seqs())
        process = await start_collector(path)
        # No new scan: after the restart, readings still belong to SN-K.
        await async_wait_until(
            lambda: any(s > before for s in tagged(sub, "SN-K", 1)), 20, "SN-K after restart"
        )
        await tester.set(result=1)
        await async_wait_until(lambda: units(sub), 20, "the unit record")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
    (record,) = units(sub)
    assert (record["serial"], record["attempt"], record["verdict"]) == ("SN-K", 1, "pass")
    # The count is stored with the readings it counts, so the crash lost none of either.
    assert record["readings"] == len(tagged(sub, "SN-K", 1))
    assert_no_gaps(sub.seqs())
    assert os.path.exists(tmp_path / "b.db")
