"""Every reply is checked against its request before its values are credited to tags."""

from __future__ import annotations

import pytest
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.bit_message import ReadCoilsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from contract.codes import ErrorCode
from drivers.base import RequestError
from drivers.modbus.codec import TagCodec
from drivers.modbus.config import ByteOrder, ModbusTable, ModbusTag, WordOrder
from drivers.modbus.driver import _QUIET_REPLIES
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


def test_read_replies_are_decoded_as_pymodbus_does_and_formatted_only_for_its_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pymodbus builds str() of every reply for a debug line before it looks at its log level;
    the driver registers quiet subclasses of pymodbus's own reply classes (issue 28)."""
    bases = {cls.__mro__[1] for cls in _QUIET_REPLIES}
    assert {ReadCoilsResponse, ReadHoldingRegistersResponse, ReadInputRegistersResponse} <= bases
    assert len(_QUIET_REPLIES) == 4
    decoder = DecodePDU(is_server=False)
    for quiet in _QUIET_REPLIES:
        decoder.register(quiet)  # what the driver does on each client (client.register)
    frame = bytes([3, 6, 0, 1, 0, 2, 0xFF, 0xFF])  # read holding registers: 3 values
    reply = decoder.decode(frame)
    plain = ReadHoldingRegistersResponse()
    plain.decode(frame[1:])
    assert isinstance(reply, ReadHoldingRegistersResponse)
    assert reply.registers == plain.registers == [1, 2, 65535]
    assert check_reply(request(ModbusTable.HOLDING_REGISTER, 3), reply) == [1, 2, 65535]
    assert str(reply) == "ReadHoldingRegistersResponse"  # pymodbus logs above DEBUG
    with caplog.at_level("DEBUG", logger="pymodbus"):
        assert str(reply) == str(plain)  # its debug line, when it is written, is unchanged
