"""Junk that overflows pymodbus's receive buffer is ``bad_frame``, not ``timeout`` (issue 25,
item 3): pymodbus drops a buffer over its 260-byte frame size without a trace, so these used
to look like a silent device. Real parts: raw TCP servers on 127.0.0.1, pymodbus's client."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from contract.codes import ErrorCode
from drivers.modbus.driver import ModbusTcpDriver
from tests.test_modbus_hostile import HostileServer, Reply, device

# MBAP: transaction id (echoed), protocol 0, length, unit 1; then function 3.
# A byte count of 4 for one register, padded to 300 bytes of body (MBAP length says so).
WRONG_BYTE_COUNT: Reply = lambda tid: tid + b"\x00\x00\x01\x2f\x01\x03\x04" + bytes(300)  # noqa: E731
# An MBAP length of 65535, then 2,000 bytes of the body it announces.
MBAP_65535: Reply = lambda tid: tid + b"\x00\x00\xff\xff\x01\x03\x02\x00\x01" + bytes(2000)  # noqa: E731


class FloodServer:
    """Sends 64 kB/s of junk from the moment a client connects, whatever it asks."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.stop = asyncio.Event()
        self.handlers: set[asyncio.Task[None]] = set()
        self.sent = 0

    async def _handle(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while not self.stop.is_set():
                writer.write(b"\x5a" * 6400)
                await writer.drain()
                self.sent += 6400
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.1)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> FloodServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.stop.set()
        self.server.close()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def _two_polls(port: int) -> list[ErrorCode | None]:
    driver = ModbusTcpDriver(device(port))
    await driver.connect()
    try:
        return [r.error for _ in range(2) for r in await driver.read()]
    finally:
        await driver.close()


@pytest.mark.parametrize("reply", [WRONG_BYTE_COUNT, MBAP_65535], ids=["byte count", "65535"])
async def test_a_long_junk_reply_is_bad_frame(reply: Reply) -> None:
    async with HostileServer(reply) as server:
        assert await _two_polls(server.port) == [ErrorCode.BAD_FRAME, ErrorCode.BAD_FRAME]


async def test_a_flood_of_junk_is_bad_frame() -> None:
    async with FloodServer() as server:
        assert await _two_polls(server.port) == [ErrorCode.BAD_FRAME, ErrorCode.BAD_FRAME]
    assert server.sent >= 6400
