"""Which resources made a unit, end to end with real parts: an operator badge scanned on a
barcode scanner (a pty) and a fixture nest read from a pymodbus tester -> collector ->
SQLite -> mosquitto -> subscriber; the units message carries ``resources`` and is valid
against the units JSON Schema. Over HTTP: the operator given with the serial, a bad one
refused with 422 naming the field."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from collector.config import Config
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    TOPIC,
    Mosquitto,
    PtyPort,
    RunningService,
    Subscriber,
    assert_valid,
    async_wait_until,
)
from tests.test_traceability import SimTester, line_config, units, wait_for

TOKEN = "res0urce-token"
NEST = {"name": "nest", "table": "holding_register", "address": 22, "type": "uint16"}


@pytest.fixture
def scanner(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "scanner")
    yield port
    port.close()


async def test_a_scanned_badge_and_the_fixture_nest_reach_the_unit_records(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    scanner: PtyPort,
) -> None:
    raw = line_config(
        mosquitto, modbus_server.port, tmp_path,
        operator_source={"device": "scanner-1", "tag": "badge"},
        resources={"fixture": {"device": "tester-1", "tag": "nest"}},
    )  # fmt: skip
    raw["devices"][0]["routes"] = [{"tag": "badge", "pattern": r"OP-\d{4}"}]
    raw["devices"][1]["tags"].append(NEST)
    config = Config.model_validate(raw)
    tester = SimTester(modbus_server, config)
    await tester.set(voltage=12.0, result=1, failure_code=0, nest=3)
    sub = Subscriber(mosquitto, TOPIC)
    try:
        async with RunningService(config) as running:
            ctx = running.service.context

            last = ctx._stations["ft-1"].last  # the station's last signal values

            async def scan_until(text: str, done: Callable[[], object]) -> None:
                # The first scan may come before the port is open (and be dropped): again.
                for _ in range(20):
                    scanner.send(f"{text}\r".encode())
                    if await wait_for(done, 0.5):
                        return
                raise AssertionError(f"{text} was never taken")

            async def verdict(value: int) -> None:
                await tester.set(result=value)
                await async_wait_until(lambda: last.get("verdict") == value, 10, f"result {value}")

            await scan_until("SN-R1", lambda: ctx.current_serial("ft-1") == "SN-R1")
            # The badge after the serial: the unit under test has no operator yet, takes it.
            await scan_until("OP-0042", lambda: last.get("operator"))
            await verdict(0)
            await verdict(1)
            await async_wait_until(lambda: ctx.current_serial("ft-1") is None, 10, "SN-R1 ends")
            await tester.set(nest=4)  # the fixture indexes to the next nest
            await async_wait_until(lambda: last.get("fixture") == 4, 10, "nest 4 read")
            await scan_until("SN-R2", lambda: ctx.current_serial("ft-1") == "SN-R2")
            await verdict(0)
            await tester.set(failure_code=9)
            await verdict(2)
            await async_wait_until(lambda: len(units(sub)) >= 2, 20, "two unit records")
    finally:
        sub.close()
    assert [(u["serial"], u["verdict"], u["resources"]) for u in units(sub)] == [
        ("SN-R1", "pass", {"operator": "OP-0042", "fixture": "3"}),
        ("SN-R2", "fail", {"operator": "OP-0042", "fixture": "4"}),
    ]
    for topic, payload, _ in sub.messages:
        if topic.endswith("/units"):
            assert_valid(payload, "units-2.json")


async def test_the_operator_comes_with_the_serial_over_http(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_UNIT_TOKEN", TOKEN)
    raw = line_config(
        mosquitto, modbus_server.port, tmp_path, serial_source="http", operator_source="http"
    )
    raw["health"]["token_env"] = "TEST_UNIT_TOKEN"
    raw["devices"] = raw["devices"][1:]  # no scanner: the MES says which unit and who
    config = Config.model_validate(raw)
    await SimTester(modbus_server, config).set(voltage=5.0, result=0)
    sub = Subscriber(mosquitto, TOPIC)
    try:
        async with RunningService(config) as running:
            port = running.service.health_server.bound_port  # type: ignore[union-attr]
            auth = {"Authorization": f"Bearer {TOKEN}"}
            url = "/stations/ft-1/unit"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                bad = await http.post(
                    url, json={"serial": "SN-H1", "operator": "a\x1bb"}, headers=auth
                )
                typo = await http.post(url, json={"serial": "SN-H1", "operater": "x"}, headers=auth)
                first = await http.post(
                    url, json={"serial": "SN-H1", "operator": "OP-7"}, headers=auth
                )
                second = await http.post(url, json={"serial": "SN-H2"}, headers=auth)
                left = await http.post(url, json={"serial": ""}, headers=auth)
            await async_wait_until(lambda: len(units(sub)) >= 2, 20, "two unit records")
    finally:
        sub.close()
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "operator"]
    assert typo.status_code == 422
    assert typo.json()["detail"][0]["msg"].endswith("work_order, operator")  # fields listed
    assert (first.status_code, second.status_code, left.status_code) == (200, 200, 200)
    assert [(u["serial"], u["ended_by"], u["resources"]) for u in units(sub)] == [
        ("SN-H1", "next_serial", {"operator": "OP-7"}),
        ("SN-H2", "serial_cleared", {"operator": "OP-7"}),  # the operator stays
    ]
