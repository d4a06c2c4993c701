"""Every reply is checked against its request before its values are credited to tags."""

from __future__ import annotations

import pytest
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from contract.codes import ErrorCode
from drivers.base import RequestError
from drivers.modbus.codec import TagCodec
from drivers.modbus.config import ByteOrder, ModbusTable, ModbusTag, WordOrder
from drivers.modbus.plan import Request, check_reply


def request(table: ModbusTable, count: int) -> Request:
    tag = ModbusTag.model_validate(
        {
            "name": "t",
            "table": table.value,
            "address": 0,
            "type": "bool" if table.is_bit_table else "uint16",
        }
    )
    return Request(table, 0, count, (TagCodec(tag, ByteOrder.BIG, WordOrder.BIG),))


def test_matching_register_reply_is_accepted() -> None:
    reply = ReadHoldingRegistersResponse(registers=[1, 2, 3])
    assert check_reply(request(ModbusTable.HOLDING_REGISTER, 3), reply) == [1, 2, 3]


def test_reply_with_another_count_is_rejected() -> None:
    reply = ReadHoldingRegistersResponse(registers=[1, 2])
    with pytest.raises(RequestError, match="2 registers, expected 3") as info:
        check_reply(request(ModbusTable.HOLDING_REGISTER, 3), reply)
    assert info.value.code is ErrorCode.BAD_REPLY


def test_reply_to_another_function_is_rejected() -> None:
    # An input-register reply (FC4) arriving for a holding-register request (FC3).
    reply = ReadInputRegistersResponse(registers=[1, 2, 3])
    with pytest.raises(RequestError, match="function 4, expected 3") as info:
        check_reply(request(ModbusTable.HOLDING_REGISTER, 3), reply)
    assert info.value.code is ErrorCode.BAD_REPLY


def test_exception_reply_maps_to_its_code() -> None:
    for exception_code, code in [
        (2, ErrorCode.ILLEGAL_DATA_ADDRESS),
        (6, ErrorCode.DEVICE_BUSY),
        (11, ErrorCode.GATEWAY_TARGET_NO_RESPONSE),
        (9, ErrorCode.EXCEPTION_OTHER),
    ]:
        with pytest.raises(RequestError) as info:
            check_reply(
                request(ModbusTable.HOLDING_REGISTER, 1), ExceptionResponse(3, exception_code)
            )
        assert info.value.code is code


def test_exception_reply_for_another_function_is_a_bad_reply() -> None:
    with pytest.raises(RequestError) as info:
        check_reply(request(ModbusTable.HOLDING_REGISTER, 1), ExceptionResponse(4, 2))
    assert info.value.code is ErrorCode.BAD_REPLY


def test_bits_are_padded_to_bytes_but_never_short() -> None:
    assert len(check_reply(request(ModbusTable.COIL, 3), ReadCoilsResponse(bits=[True] * 8))) == 8
    with pytest.raises(RequestError, match="8 bits in reply"):
        check_reply(request(ModbusTable.COIL, 10), ReadCoilsResponse(bits=[True] * 8))
