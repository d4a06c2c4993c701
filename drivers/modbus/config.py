"""Config models of Modbus devices (``modbus_tcp``, ``modbus_rtu``) and their tags. No pymodbus
here: the registry imports this module for the config's device union."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, field_validator, model_validator

from common.config import FieldPath, Host, TagName
from common.config import Model as _Model
from common.config import reject_duplicates as _reject_duplicates
from drivers.base import DeviceBase, SharedLine
from drivers.serial.config import Parity, SerialPort


class ModbusTable(StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"

    @property
    def is_bit_table(self) -> bool:
        return self in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)


class ModbusType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


# Registers each fixed-size type spans.
TYPE_REGISTERS: dict[ModbusType, int] = {
    ModbusType.BOOL: 1,
    ModbusType.INT16: 1,
    ModbusType.UINT16: 1,
    ModbusType.INT32: 2,
    ModbusType.UINT32: 2,
    ModbusType.FLOAT32: 2,
    ModbusType.INT64: 4,
    ModbusType.UINT64: 4,
    ModbusType.FLOAT64: 4,
}


class ByteOrder(StrEnum):
    """Order of the two bytes inside one register (big = the Modbus standard)."""

    BIG = "big"
    LITTLE = "little"


class WordOrder(StrEnum):
    """Order of registers in a multi-register value (big = most significant word first)."""

    BIG = "big"
    LITTLE = "little"


class ModbusTag(_Model):
    name: TagName = Field(description="Tag name, unique within the device.")
    table: ModbusTable = Field(description="Which of the four Modbus tables.")
    address: int = Field(ge=0, le=65535, description="0-based address in that table.")
    type: ModbusType = Field(default=ModbusType.UINT16, description="Value type.")
    count: int | None = Field(
        default=None, ge=1, le=125, description="Registers of a string (2 characters each)."
    )
    bit: int | None = Field(
        default=None, ge=0, le=15, description="For bool in a register: bit 0 (LSB) to 15."
    )
    byte_order: ByteOrder | None = Field(default=None, description="Default: the device's.")
    word_order: WordOrder | None = Field(default=None, description="Default: the device's.")
    scale: float = Field(default=1.0, description="value = raw * scale + offset.")
    offset: float = Field(default=0.0, description="value = raw * scale + offset.")
    unit: str | None = Field(default=None, max_length=32, description="Engineering unit.")
    slot: int | None = Field(
        default=None,
        description="The rack slot this tag belongs to (set by `slots` expansion, or by hand).",
    )

    @model_validator(mode="after")
    def _type_fits_table(self) -> Self:
        if self.table.is_bit_table:
            if self.type is not ModbusType.BOOL:
                raise ValueError(
                    f"a {self.table.value} holds one bit: give it type: bool (type "
                    f"{self.type.value} needs a register table: holding_register or "
                    "input_register)"
                )
            if self.bit is not None:
                raise ValueError(f"bit is only for bool in a register, not in a {self.table.value}")
        elif self.type is ModbusType.BOOL and self.bit is None:
            raise ValueError("bool in a register needs bit: 0 (LSB) to 15")
        elif self.type is not ModbusType.BOOL and self.bit is not None:
            raise ValueError("bit is only allowed with type bool")
        if self.type is ModbusType.STRING and self.count is None:
            raise ValueError("type string needs count: the number of registers (1 to 125)")
        if self.type is not ModbusType.STRING and self.count is not None:
            raise ValueError("count is only allowed with type string")
        if self.address + self.width - 1 > 65535:
            raise ValueError(f"address {self.address} + {self.width} registers runs past 65535")
        if self.type in (ModbusType.STRING, ModbusType.BOOL) and (
            self.scale != 1.0 or self.offset != 0.0
        ):
            raise ValueError(f"scale and offset do not apply to type {self.type.value}")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits, in a bit table) this tag occupies."""
        if self.table.is_bit_table:
            return 1
        if self.type is ModbusType.STRING:
            assert self.count is not None
            return self.count
        return TYPE_REGISTERS[self.type]


class ModbusWorkarounds(_Model):
    """Device quirks. Defaults are the Modbus specification's limits."""

    max_registers_per_request: int = Field(
        default=125, ge=1, le=125, description="Lower it for devices that reject long reads."
    )
    max_bits_per_request: int = Field(
        default=2000, ge=1, le=2000, description="Lower it for devices that reject long reads."
    )


def _modicon_reading(address: int) -> tuple[ModbusTable, int] | None:
    """(table, 0-based address) when ``address`` reads like a Modicon 5-digit reference
    (1xxxx discrete input, 3xxxx input register, 4xxxx holding register; 1-based)."""
    for first, table in (
        (10001, ModbusTable.DISCRETE_INPUT),
        (30001, ModbusTable.INPUT_REGISTER),
        (40001, ModbusTable.HOLDING_REGISTER),
    ):
        if first <= address <= first + 9998:
            return table, address - first
    return None


class _ModbusDevice(DeviceBase):
    csv_tag_model: ClassVar[type[_Model] | None] = ModbusTag

    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit (slave) id.")
    byte_order: ByteOrder = Field(default=ByteOrder.BIG, description="Default for the tags.")
    word_order: WordOrder = Field(default=WordOrder.BIG, description="Default for the tags.")
    max_gap_registers: int = Field(
        default=16, ge=0, le=124, description="Unused registers bridged to join two requests."
    )
    max_gap_bits: int = Field(
        default=64, ge=0, le=1999, description="Unused bits bridged to join two requests."
    )
    workarounds: ModbusWorkarounds = Field(default_factory=ModbusWorkarounds)
    tags: list[ModbusTag] = Field(min_length=1, description="What to read.")
    tags_csv: Path | None = Field(
        default=None,
        description="A register map (CSV with a header: name, table, address, type, count, "
        "bit, byte_order, word_order, scale, offset, unit), relative to the config file; its "
        "rows are added to tags.",
    )

    def warnings(self) -> list[tuple[FieldPath, str]]:
        found: list[tuple[FieldPath, str]] = []
        for index, tag in enumerate(self.tags):
            modicon = _modicon_reading(tag.address)
            if modicon is not None:
                table, address = modicon
                found.append(
                    (
                        ("tags", index, "address"),
                        f"{tag.address} looks like a Modicon reference number: that is "
                        f"table: {table.value}, address: {address} (0-based); if the manual "
                        f"really means {table.value} {tag.address}, leave it",
                    )
                )
        return found

    @field_validator("tags")
    @classmethod
    def _unique_tag_names(cls, tags: list[ModbusTag]) -> list[ModbusTag]:
        _reject_duplicates((t.name for t in tags), "tag name")
        return tags

    @model_validator(mode="after")
    def _fits_in_requests(self) -> Self:
        limit = self.workarounds.max_registers_per_request
        for tag in self.tags:
            if not tag.table.is_bit_table and tag.width > limit:
                raise ValueError(
                    f"tag {tag.name!r} spans {tag.width} registers, more than "
                    f"workarounds.max_registers_per_request ({limit})"
                )
        return self

    @property
    def tag_names(self) -> set[str]:
        return {t.name for t in self.tags}


class ModbusTcpDevice(_ModbusDevice):
    protocol: Literal["modbus_tcp"] = Field(description="Modbus TCP (also via a TCP gateway).")
    host: Host = Field(description="IP address or host name of the device or gateway.")
    port: int = Field(default=502, ge=1, le=65535, description="TCP port.")


class ModbusRtuDevice(_ModbusDevice, SerialPort):
    """One unit on an RS-485 bus. Devices with the same ``port`` share it, one request at a
    time; their serial settings must agree."""

    protocol: Literal["modbus_rtu"] = Field(description="Modbus RTU on a serial line.")
    baudrate: int = Field(default=19200, description="Bits per second (Modbus default 19200).")
    parity: Parity = Field(default=Parity.EVEN, description="Parity (Modbus default even).")

    def shared_line(self) -> SharedLine:
        settings = {
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": self.parity,
            "stopbits": self.stopbits,
        }
        return SharedLine(f"modbus_rtu:{self.port}", self.port, settings)
