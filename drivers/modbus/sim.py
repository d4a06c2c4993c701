"""A simulated Modbus device: a real pymodbus server (TCP, or RTU on a serial line) with the four
tables, for the demo (collector.demo), the benchmark (bench/) and the tests.

A simulator, not a driver: it imports pymodbus's server side itself, and the driver never
imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from contract.records import Value
from drivers.base import DeviceBase
from drivers.modbus.codec import TagCodec, encode
from drivers.modbus.config import ModbusRtuDevice, ModbusTable, ModbusTcpDevice
from drivers.modbus.plan import FUNCTION_CODE


def codecs(device: DeviceBase) -> dict[str, TagCodec]:
    """The codecs of a Modbus device's tags by name, to set its values in the simulator."""
    if not isinstance(device, ModbusTcpDevice | ModbusRtuDevice):
        raise TypeError(f"{device.name} is not a Modbus device")
    return {t.name: TagCodec.for_device(t, device) for t in device.tags}


class SimulatedModbusServer:
    """A real pymodbus TCP server with the four tables, for the demo, tests and benchmarks.

    Every unit id gets ``size`` registers in each register table and ``size`` bits in each bit
    table, all starting at address 0. Values are set with :meth:`set_registers` and
    :meth:`set_bits`.
    """

    def __init__(
        self,
        unit_ids: Iterable[int] = (1,),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        size: int = 1000,
        serial_port: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        self._host, self._requested_port, self._size = host, port, size
        self._unit_ids = tuple(unit_ids)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port = port
        # With serial_port: Modbus RTU on that serial line (8N1: Linux pseudo-terminals refuse
        # some parity settings) instead of TCP; units not in unit_ids stay silent, as a dead
        # unit on an RS-485 bus does.
        self._serial_port, self._baudrate = serial_port, baudrate

    def _device(self, unit_id: int) -> SimDevice:
        bit_words = self._size // 16 + 1

        def bits() -> list[SimData]:
            return [SimData(0, count=bit_words, values=0, datatype=DataType.BITS)]

        def registers() -> list[SimData]:
            return [SimData(0, count=self._size, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(id=unit_id, simdata=(bits(), bits(), registers(), registers()))

    async def start(self) -> None:
        devices = [self._device(u) for u in self._unit_ids]
        if self._serial_port is not None:
            rtu = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self._serial_port,
                baudrate=self._baudrate,
                parity="N",
                ignore_missing_devices=True,
            )
            await rtu.serve_forever(background=True)
            self._server = rtu
            return
        server = ModbusTcpServer(devices, address=(self._host, self._requested_port))
        await server.serve_forever(background=True)
        self._server = server
        listener: Any = server.transport  # an asyncio.Server once listening
        self.port = int(listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def set_registers(
        self, unit_id: int, table: ModbusTable, address: int, words: Sequence[int]
    ) -> None:
        assert self._server is not None
        assert not table.is_bit_table
        await self._server.context.async_setValues(
            unit_id, FUNCTION_CODE[table], address, list(words)
        )

    async def set_bits(
        self, unit_id: int, table: ModbusTable, address: int, bits: Sequence[bool]
    ) -> None:
        assert self._server is not None
        assert table.is_bit_table
        await self._server.context.async_setValues(
            unit_id, FUNCTION_CODE[table], address, list(bits)
        )

    async def set_value(self, unit_id: int, codec: TagCodec, value: Value) -> None:
        """Encode a value the way ``codec`` decodes it, and store it."""
        tag = codec.tag
        if tag.table.is_bit_table:
            await self.set_bits(unit_id, tag.table, tag.address, [bool(value)])
        else:
            await self.set_registers(unit_id, tag.table, tag.address, encode(codec, value))
