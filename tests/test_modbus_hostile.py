"""A Modbus TCP server that answers garbage: a reply that is no valid frame is ``bad_frame``,
not ``timeout``; one pymodbus cannot decode (it raises inside its protocol) is ``bad_frame``
too, logged by the poller naming the device, not as asyncio's traceback naming only an fd.
Real parts: a raw TCP server on 127.0.0.1 speaking broken Modbus, pymodbus's client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from collector.acquisition.poller import DeviceStatus, Poller
from common.backoff import Backoff
from contract.codes import ErrorCode
from contract.records import Reading
from drivers.base import NotConnectedError
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.driver import ModbusTcpDriver
from tests.helpers import async_wait_until

Reply = Callable[[bytes], bytes]  # the request's transaction id -> what the "device" sends

NOT_A_FRAME: Reply = lambda tid: b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7"  # noqa: E731
# A valid MBAP header, function 3, a byte count of 8 but only 2 bytes: pymodbus cannot decode.
UNDECODABLE: Reply = lambda tid: tid + b"\x00\x00\x00\x05\x01\x03\x08\x00\x01"  # noqa: E731


class HostileServer:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await reader.read(12):
                writer.write(self.reply(request[:2]))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> HostileServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()


def device(port: int) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate(
        {
            "name": "meter-7",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout_ms": 300,
            "poll_interval_ms": 100,
            "tags": [{"name": "t", "table": "holding_register", "address": 0, "type": "uint16"}],
        }
    )


@pytest.fixture
async def garbage() -> AsyncIterator[HostileServer]:
    async with HostileServer(NOT_A_FRAME) as server:
        yield server


async def test_bytes_that_make_no_frame_are_bad_frame_not_timeout(garbage: HostileServer) -> None:
    driver = ModbusTcpDriver(device(garbage.port))
    await driver.connect()
    try:
        readings = await driver.read()
    finally:
        await driver.close()
    assert [(r.tag, r.error) for r in readings] == [("t", ErrorCode.BAD_FRAME)]


async def test_an_undecodable_reply_is_bad_frame_logged_once_naming_the_device(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with HostileServer(UNDECODABLE) as server:
        driver = ModbusTcpDriver(device(server.port))
        await driver.connect()
        with pytest.raises(NotConnectedError) as info:
            await driver.read()
        assert info.value.code is ErrorCode.BAD_FRAME
        await driver.close()
        polls: list[Sequence[Reading]] = []
        status = DeviceStatus("meter-7", "modbus_tcp", None)
        poller = Poller(
            ModbusTcpDriver(device(server.port)),
            status,
            0.1,
            lambda _n, r: polls.append(r),
            Backoff(0.05, 0.1),
        )
        task = asyncio.create_task(poller.run())
        try:
            await async_wait_until(
                lambda: status.errors.get("bad_frame", 0) >= 3, 10, "three bad frames"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors if r.name == "asyncio"] == []
    assert all(r.exc_info is None for r in errors)
    # One line per failed connection (the link is up, then the reply closes it), each naming
    # the device; no third-party record, no traceback.
    assert errors
    assert len(errors) <= status.connects
    for record in errors:
        assert record.getMessage().startswith(
            "device meter-7: down (bad_frame: reply that is no valid Modbus frame, link closed"
        )
