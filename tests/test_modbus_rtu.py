"""Modbus RTU on a shared bus (two pty ports joined back to back), with a real pymodbus RTU
server holding unit 1; unit 2 is on the bus but never answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from collector.acquisition.poller import DeviceStatus, Poller
from common.backoff import Backoff
from contract.codes import ErrorCode
from contract.records import Quality, Reading
from drivers.modbus.config import ModbusRtuDevice, ModbusTable
from drivers.modbus.driver import ModbusRtuDriver
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import PtyLink, async_wait_until


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[tuple[PtyLink, SimulatedModbusServer]]:
    link = PtyLink(tmp_path, asyncio.get_running_loop(), absent_units={2})
    server = SimulatedModbusServer(unit_ids=[1], serial_port=str(link.b.path))
    await server.start()
    await server.set_registers(1, ModbusTable.HOLDING_REGISTER, 0, [0x41C8, 0x0000, 7])
    yield link, server
    await server.stop()
    link.close()


def unit(link: PtyLink, unit_id: int, **extra: Any) -> ModbusRtuDevice:
    return ModbusRtuDevice.model_validate(
        {
            "name": f"unit-{unit_id}",
            "protocol": "modbus_rtu",
            "port": str(link.a.path),
            "unit_id": unit_id,
            "timeout_ms": 200,
            "parity": "none",  # the simulated bus is a pty, which refuses some parity settings
            "poll_interval_ms": 100,
            "tags": [
                {"name": "temp", "table": "holding_register", "address": 0, "type": "float32"},
                {"name": "count", "table": "holding_register", "address": 2, "type": "uint16"},
            ],
            **extra,
        }
    )


async def test_reads_a_unit_with_the_same_tag_model_and_coalescing(
    bus: tuple[PtyLink, SimulatedModbusServer],
) -> None:
    link, _ = bus
    driver = ModbusRtuDriver(unit(link, 1))
    assert [str(r) for r in driver.plan] == ["holding_register[0..2]"]
    await driver.connect()
    try:
        got = {r.tag: r for r in await driver.read()}
    finally:
        await driver.close()
    assert got["temp"].value == 25.0
    assert got["count"].value == 7


async def test_a_silent_unit_is_backed_off_and_the_other_keeps_its_schedule(
    bus: tuple[PtyLink, SimulatedModbusServer],
) -> None:
    link, _ = bus
    good: list[Sequence[Reading]] = []
    silent: list[Sequence[Reading]] = []
    statuses = {n: DeviceStatus(n, "modbus_rtu", None) for n in ("unit-1", "unit-2")}

    def sink(name: str, readings: Sequence[Reading]) -> None:
        (good if name == "unit-1" else silent).append(readings)

    pollers = [
        Poller(ModbusRtuDriver(unit(link, 1)), statuses["unit-1"], 0.1, sink, Backoff(0.05, 0.1)),
        Poller(ModbusRtuDriver(unit(link, 2)), statuses["unit-2"], 0.1, sink, Backoff(2.0, 4.0)),
    ]
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    try:
        await async_wait_until(
            lambda: not statuses["unit-2"].connected and statuses["unit-2"].errors["timeout"] >= 1,
            10,
            "the silent unit marked down",
        )
        polls_at_down, silent_at_down = len(good), len(silent)
        # Backed off for >= 1 s: unit 1 has the bus to itself and polls every 100 ms, and
        # the silent unit costs the bus nothing meanwhile.
        await async_wait_until(lambda: len(good) >= polls_at_down + 8, 3, "unit 1 polls on")
        assert len(silent) == silent_at_down
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r.quality is Quality.GOOD for poll in good for r in poll)
    # Before it was marked down the silent unit gave bad readings with the timeout code.
    assert {r.error for poll in silent for r in poll} == {ErrorCode.TIMEOUT}
    assert silent_at_down == 2  # the third silent poll marks it down instead
    assert statuses["unit-2"].errors["timeout"] >= 3


async def test_line_noise_is_counted_as_bad_frames(
    bus: tuple[PtyLink, SimulatedModbusServer],
) -> None:
    link, server = bus
    await server.stop()  # nobody answers; only noise comes back
    driver = ModbusRtuDriver(unit(link, 1))
    await driver.connect()
    loop = asyncio.get_running_loop()
    try:
        loop.call_later(0.05, link.inject, b"\x01\x03\x04\xde\xad\xbe\xef\x00\x00")  # bad CRC
        got = await driver.read()
    finally:
        await driver.close()
    assert {r.error for r in got} == {ErrorCode.BAD_FRAME}


def test_units_on_one_port_must_agree_on_its_settings() -> None:
    from collector.config import parse_config
    from common.errors import ConfigError

    text = """\
collector: {id: pc1, site: s, line: l}
buffer: {path: /tmp/b.db}
devices:
  - {name: u1, protocol: modbus_rtu, port: /dev/ttyUSB0, unit_id: 1, baudrate: 19200,
     tags: [{name: t, table: holding_register, address: 0}]}
  - {name: u2, protocol: modbus_rtu, port: /dev/ttyUSB0, unit_id: 2, baudrate: 9600,
     tags: [{name: t, table: holding_register, address: 0}]}
"""
    with pytest.raises(ConfigError, match="share port /dev/ttyUSB0 but not its settings"):
        parse_config(text, "bus.yaml")
