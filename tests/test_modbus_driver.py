"""The Modbus TCP driver and the poller against real pymodbus servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from collector.acquisition.poller import DeviceStatus, Poller
from collector.service import cancel_and_wait
from common.backoff import Backoff
from contract.codes import ErrorCode
from contract.records import Quality, Reading
from drivers.base import NotConnectedError
from drivers.modbus.codec import TagCodec
from drivers.modbus.config import ModbusTable, ModbusTcpDevice
from drivers.modbus.driver import ModbusTcpDriver
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import async_wait_until, free_port


def device(port: int, unit_id: int = 1, **extra: Any) -> ModbusTcpDevice:
    spec: dict[str, Any] = {
        "name": f"dev{unit_id}",
        "protocol": "modbus_tcp",
        "host": "127.0.0.1",
        "port": port,
        "unit_id": unit_id,
        "timeout_ms": 300,
        "tags": [
            {"name": "voltage", "table": "holding_register", "address": 0, "type": "float32"},
            {
                "name": "count",
                "table": "holding_register",
                "address": 2,
                "type": "uint32",
                "word_order": "little",
            },
            {
                "name": "serial",
                "table": "holding_register",
                "address": 10,
                "type": "string",
                "count": 4,
            },
            {
                "name": "temp",
                "table": "input_register",
                "address": 5,
                "type": "int16",
                "scale": 0.1,
                "unit": "degC",
            },
            {"name": "clamp", "table": "coil", "address": 3, "type": "bool"},
            {"name": "ready", "table": "discrete_input", "address": 17, "type": "bool"},
            {"name": "door", "table": "holding_register", "address": 20, "type": "bool", "bit": 4},
        ],
    }
    spec.update(extra)
    return ModbusTcpDevice.model_validate(spec)


async def fill(server: SimulatedModbusServer, cfg: ModbusTcpDevice, values: dict[str, Any]) -> None:
    for tag in cfg.tags:
        if tag.name in values:
            await server.set_value(cfg.unit_id, TagCodec.for_device(tag, cfg), values[tag.name])


def by_tag(readings: Sequence[Reading]) -> dict[str, Reading]:
    return {r.tag: r for r in readings}


@pytest.fixture
async def driver_for() -> AsyncIterator[Any]:
    drivers: list[ModbusTcpDriver] = []

    async def make(cfg: ModbusTcpDevice) -> ModbusTcpDriver:
        driver = ModbusTcpDriver(cfg)
        await driver.connect()
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()


async def test_reads_all_four_tables_and_decodes(
    modbus_server: SimulatedModbusServer, driver_for: Any
) -> None:
    cfg = device(modbus_server.port)
    await fill(
        modbus_server,
        cfg,
        {"voltage": 12.5, "count": 70000, "serial": "SN42", "temp": 23.4, "door": True},
    )
    await modbus_server.set_bits(1, ModbusTable.COIL, 3, [True])
    await modbus_server.set_bits(1, ModbusTable.DISCRETE_INPUT, 17, [True])
    driver = await driver_for(cfg)
    # Tags at 0..3, 10..13 and 20 are one request with the default gap of 16.
    assert [str(r) for r in driver.plan] == [
        "coil[3..3]",
        "discrete_input[17..17]",
        "input_register[5..5]",
        "holding_register[0..20]",
    ]
    got = by_tag(await driver.read())
    assert got["voltage"].value == 12.5
    assert got["count"].value == 70000
    assert got["serial"].value == "SN42"
    assert got["temp"].value == pytest.approx(23.4)
    assert got["temp"].unit == "degC"
    assert got["clamp"].value is True
    assert got["ready"].value is True
    assert got["door"].value is True
    assert all(r.quality is Quality.GOOD for r in got.values())


async def test_unit_ids_behind_one_gateway_are_kept_apart(
    modbus_server: SimulatedModbusServer, driver_for: Any
) -> None:
    one, two = device(modbus_server.port, 1), device(modbus_server.port, 2)
    await fill(modbus_server, one, {"voltage": 1.0, "serial": "UNIT1"})
    await fill(modbus_server, two, {"voltage": 2.0, "serial": "UNIT2"})
    first, second = await driver_for(one), await driver_for(two)
    assert by_tag(await first.read())["serial"].value == "UNIT1"
    assert by_tag(await second.read())["voltage"].value == 2.0


async def test_exception_reply_gives_bad_readings_for_that_request_only(
    modbus_server: SimulatedModbusServer, driver_for: Any
) -> None:
    cfg = device(
        modbus_server.port,
        tags=[
            {"name": "ok", "table": "holding_register", "address": 0, "type": "uint16"},
            # The simulator has 1000 registers: 5000 is an illegal data address.
            {"name": "missing", "table": "holding_register", "address": 5000, "type": "uint16"},
        ],
    )
    await fill(modbus_server, cfg, {"ok": 7})
    driver = await driver_for(cfg)
    got = by_tag(await driver.read())
    assert got["ok"].value == 7
    assert got["ok"].quality is Quality.GOOD
    assert got["missing"].quality is Quality.BAD
    assert got["missing"].error is ErrorCode.ILLEGAL_DATA_ADDRESS
    assert got["missing"].value is None


async def test_nan_is_a_bad_reading_with_decode_error(
    modbus_server: SimulatedModbusServer, driver_for: Any
) -> None:
    cfg = device(modbus_server.port)
    await modbus_server.set_registers(1, ModbusTable.HOLDING_REGISTER, 0, [0x7FC0, 0])
    got = by_tag(await (await driver_for(cfg)).read())
    assert got["voltage"].error is ErrorCode.DECODE
    assert got["serial"].quality is Quality.GOOD


async def test_connect_to_a_closed_port_raises_not_connected() -> None:
    driver = ModbusTcpDriver(device(free_port()))
    with pytest.raises(NotConnectedError, match=r"cannot connect to 127\.0\.0\.1"):
        await driver.connect()
    await driver.close()


class SilentDevice:
    """A TCP peer that accepts connections and never answers: a hung device."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(1024):
                pass
            writer.close()

        self.server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_a_request_timeout_gives_bad_readings_with_timeout() -> None:
    silent = SilentDevice()
    await silent.start()
    driver = ModbusTcpDriver(device(silent.port))
    await driver.connect()
    readings = await driver.read()
    assert {r.tag for r in readings} == {
        "voltage",
        "count",
        "serial",
        "temp",
        "clamp",
        "ready",
        "door",
    }
    assert {(r.quality, r.error) for r in readings} == {(Quality.BAD, ErrorCode.TIMEOUT)}
    await driver.close()
    await silent.stop()


async def test_a_device_that_closes_the_link_under_a_request_is_a_lost_connection_at_once() -> (
    None
):
    """pymodbus itself waits out the request's timeout and says "no response": the driver
    must call it a lost connection, and at once, not a silent device a timeout later."""
    request_seen = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the first request, never answered
        request_seen.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # A 60 s timeout: failing within the 20 s below can only be the lost link.
    driver = ModbusTcpDriver(device(port, timeout_ms=60_000))
    try:
        await driver.connect()
        async with asyncio.timeout(20):
            with pytest.raises(NotConnectedError) as raised:
                await driver.read()
        assert request_seen.is_set()
        assert raised.value.code is ErrorCode.CONNECTION
        assert "connection lost: the device closed the link" in str(raised.value)
    finally:
        await driver.close()
        server.close()


async def test_a_dead_device_never_delays_another_devices_schedule(
    modbus_server: SimulatedModbusServer,
) -> None:
    silent = SilentDevice()
    await silent.start()
    got: dict[str, list[Sequence[Reading]]] = {"good": [], "hung": []}

    def sink(name: str, readings: Sequence[Reading]) -> None:
        got[name].append(readings)

    good_cfg = device(modbus_server.port, poll_interval_ms=50)
    hung_cfg = device(silent.port, poll_interval_ms=50, timeout_ms=2000)
    good = Poller(
        ModbusTcpDriver(good_cfg),
        DeviceStatus("good", "modbus_tcp", None),
        0.05,
        sink,
        Backoff(0.05, 0.1),
    )
    hung = Poller(
        ModbusTcpDriver(hung_cfg),
        DeviceStatus("hung", "modbus_tcp", None),
        0.05,
        sink,
        Backoff(0.05, 0.1),
    )
    tasks = [asyncio.create_task(good.run()), asyncio.create_task(hung.run())]
    try:
        # The hung device's first poll takes 7 requests x 2 s; the good one polls on meanwhile.
        await async_wait_until(
            lambda: len(got["good"]) >= 20, timeout=5, what="20 polls of the good device"
        )
        assert got["hung"] == []
        assert good.status.connected
        assert good.status.good_polls >= 20
    finally:
        await cancel_and_wait(tasks)
        await silent.stop()


async def test_a_poller_skips_polls_while_the_buffer_cannot_take_more(
    modbus_server: SimulatedModbusServer,
) -> None:
    """Back-pressure: under sustained overload a reading is not read rather than read and
    dropped; the skipped slots are counted, and polling resumes when there is room."""
    polls: list[Sequence[Reading]] = []
    room = True
    status = DeviceStatus("dev", "modbus_tcp", None)
    poller = Poller(
        ModbusTcpDriver(device(modbus_server.port, poll_interval_ms=20)),
        status,
        0.02,
        lambda _name, readings: polls.append(readings),
        Backoff(0.05, 0.1),
        can_take=lambda: room,
    )
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_until(lambda: len(polls) >= 3, timeout=5, what="3 polls")
        room = False
        held_at = len(polls)
        await async_wait_until(lambda: status.skipped_polls >= 5, timeout=5, what="5 skips")
        assert len(polls) <= held_at + 1  # at most the poll already under way
        room = True
        resumed_at = len(polls)
        await async_wait_until(lambda: len(polls) >= resumed_at + 3, timeout=5, what="resumed")
        # Skipped slots are not polls; a poll is counted when it starts, so the one under way
        # now may not have reached the sink yet.
        assert len(polls) <= status.polls <= len(polls) + 1
    finally:
        # Python 3.11's wait_for (inside pymodbus) can swallow one cancel: cancel until it stops.
        await cancel_and_wait([task])


async def test_poller_reconnects_after_the_device_comes_back() -> None:
    port = free_port()
    server = SimulatedModbusServer(unit_ids=[1], port=port)
    await server.start()
    cfg = device(port, poll_interval_ms=50)
    await fill(server, cfg, {"voltage": 1.0})
    values: list[Any] = []
    status = DeviceStatus("dev1", "modbus_tcp", None)
    poller = Poller(
        ModbusTcpDriver(cfg),
        status,
        0.05,
        lambda _n, rs: values.append(by_tag(rs)["voltage"].value),
        Backoff(0.05, 0.2),
    )
    task = asyncio.create_task(poller.run())
    try:
        await async_wait_until(lambda: 1.0 in values, 5, "first value")
        await server.stop()
        await async_wait_until(lambda: not status.connected, 5, "device marked down")
        # Whether the stop came between requests or under one, the device went away: a lost
        # connection, never a timeout (pymodbus alone would report one under a request).
        assert status.errors["connection"] >= 1
        assert status.errors["timeout"] == 0
        server = SimulatedModbusServer(unit_ids=[1], port=port)
        await server.start()
        await fill(server, cfg, {"voltage": 2.0})
        await async_wait_until(lambda: 2.0 in values, 10, "value after restart")
        assert status.connected
        assert status.connects == 2
    finally:
        # Python 3.11's wait_for (inside pymodbus) can swallow one cancel: cancel until it stops.
        await cancel_and_wait([task])
        await server.stop()


class SlowDriver(ModbusTcpDriver):
    """Each poll takes 60 ms longer: a scheduler that plans from the end of the last poll
    would drift by that much every period."""

    async def read(self) -> list[Reading]:
        await asyncio.sleep(0.06)
        return await super().read()


async def test_polls_keep_a_fixed_grid(modbus_server: SimulatedModbusServer) -> None:
    """Each poll is planned from the previous plan, not from when the last poll ended."""
    cfg = device(modbus_server.port, poll_interval_ms=100)
    times: list[float] = []
    loop = asyncio.get_running_loop()
    poller = Poller(
        SlowDriver(cfg),
        DeviceStatus("d", "modbus_tcp", None),
        0.1,
        lambda _n, _r: times.append(loop.time()),
        Backoff(0.05, 0.1),
    )
    task = asyncio.create_task(poller.run())
    await async_wait_until(lambda: len(times) >= 11, 10, "11 polls")
    # Python 3.11's wait_for (inside pymodbus) can swallow one cancel: cancel until it stops.
    await cancel_and_wait([task])
    # 10 periods on the grid span 1.0 s; drifting by 60 ms a poll would span >= 1.6 s (and
    # skip nothing). A crowded machine can make a 60 ms read overrun its 100 ms slot (seen at
    # load 5 to 8.5): that slot is skipped and counted, the next stays on the grid, 0.1 s
    # later per skip.
    span = times[10] - times[0]
    skipped = poller.status.skipped_polls
    assert 0.9 < span < 1.3 + 0.1 * skipped, (span, skipped)


async def test_a_float32_reads_at_float32_precision(
    modbus_server: SimulatedModbusServer, driver_for: Any
) -> None:
    cfg = device(modbus_server.port)
    await fill(modbus_server, cfg, {"voltage": 354.315})
    driver = await driver_for(cfg)
    value = by_tag(await driver.read())["voltage"].value
    assert repr(value) == "354.315"  # what every encoder then publishes
