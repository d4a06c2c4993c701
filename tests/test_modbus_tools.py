"""`collector probe modbus://` and `collector scan` against a real pymodbus server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from drivers.modbus.codec import TagCodec, interpretations
from drivers.modbus.config import ByteOrder, ModbusTable, ModbusTag, ModbusType, WordOrder
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import collector


@pytest.fixture
async def gateway() -> AsyncIterator[SimulatedModbusServer]:
    server = SimulatedModbusServer(unit_ids=[1, 7])
    await server.start()
    yield server
    await server.stop()


async def test_probe_shows_the_value_in_every_type_and_order(
    gateway: SimulatedModbusServer,
) -> None:
    tag = ModbusTag(
        name="f", table=ModbusTable.HOLDING_REGISTER, address=100, type=ModbusType.FLOAT32
    )
    # A PLC that stores floats low word first (CDAB).
    await gateway.set_value(7, TagCodec(tag, ByteOrder.BIG, WordOrder.LITTLE), 12.5)
    code, out, err = await collector(
        "probe", f"modbus://127.0.0.1:{gateway.port}?unit=7", "--address", "100", "--count", "2"
    )
    assert code == 0, err
    assert "holding_register[100..101]" in out
    assert "words: 0x0000 0x4148   (0 16712)" in out
    (float_row,) = [line for line in out.splitlines() if line.startswith("float32")]
    assert float_row.split()[1:] == ["2.34185e-41", "12.5", "2.59198e-41", "197632"]
    assert "CDAB = big, little" in out


async def test_probe_errors_are_clear(gateway: SimulatedModbusServer) -> None:
    code, _, err = await collector("probe", "modbus://127.0.0.1:1?unit=1", "--timeout-ms", "300")
    assert code == 1
    assert "connection" in err
    code, _, err = await collector("probe", f"modbus://127.0.0.1:{gateway.port}", "--count", "200")
    assert code == 2
    assert "--count must be 1..125" in err


async def test_scan_finds_the_units_behind_a_gateway(gateway: SimulatedModbusServer) -> None:
    code, out, err = await collector(
        "scan", f"modbus://127.0.0.1:{gateway.port}", "--units", "1-9", "--timeout-ms", "300"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "unit 1: holding_register[0] = 0" in lines
    assert "unit 7: holding_register[0] = 0" in lines
    # pymodbus's simulator answers unknown unit ids with an exception, as some gateways do.
    assert "answered only with an exception: units 2, 3, 4, 5, 6, 8, 9" in lines
    assert lines[-1] == "2 unit(s) answered a read; 7 with an exception only"
    code, _, err = await collector("scan", f"modbus://127.0.0.1:{gateway.port}", "--units", "0-300")
    assert code == 2
    assert "expected a range within 0-247" in err


def test_interpretations_cover_16_32_and_64_bit_types() -> None:
    rows = dict(interpretations([0x0000, 0x0001, 0x0000, 0x0002]))
    assert rows["uint16"] == ["0", "=", "0", "="]
    assert rows["uint32"][0] == "1"  # ABCD: 0x00000001
    assert rows["uint32"][1] == "65536"  # CDAB: 0x00010000
    assert rows["uint64"][0] == str(0x0000000100000002)
    text = dict(interpretations([0x4142, 0x4300]))
    assert text["string"] == ["'ABC'"]
    assert text["string (bytes swapped)"] == ["'BA\\x00C'"]


async def test_probe_keeps_64_bit_columns_apart(gateway: SimulatedModbusServer) -> None:
    tag = ModbusTag(
        name="n", table=ModbusTable.HOLDING_REGISTER, address=200, type=ModbusType.INT64
    )
    await gateway.set_value(7, TagCodec(tag, ByteOrder.BIG, WordOrder.BIG), -(2**63) + 1)
    code, out, err = await collector(
        "probe", f"modbus://127.0.0.1:{gateway.port}?unit=7", "--address", "200", "--count", "4"
    )
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:1].isalpha()}
    assert rows["int64"][0] == str(-(2**63) + 1)
    assert rows["uint64"][0] == str(2**63 + 1)
    for name in ("int64", "uint64", "float64"):
        assert len(rows[name]) == 4, rows[name]  # four columns, none run together
        for cell in rows[name]:
            float(cell)
