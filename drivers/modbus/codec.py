"""Register words <-> values, pure (no I/O, no pymodbus): :class:`TagCodec` resolves a tag's byte
and word order against its device, :func:`decode` / :func:`encode` convert, and
:func:`interpretations` shows raw words in every type and order (``collector probe``)."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from contract.records import Value
from drivers.modbus.config import (
    TYPE_REGISTERS,
    ByteOrder,
    ModbusRtuDevice,
    ModbusTable,
    ModbusTag,
    ModbusTcpDevice,
    ModbusType,
    WordOrder,
)

_STRUCT: dict[ModbusType, str] = {
    ModbusType.INT16: ">h",
    ModbusType.UINT16: ">H",
    ModbusType.INT32: ">i",
    ModbusType.UINT32: ">I",
    ModbusType.INT64: ">q",
    ModbusType.UINT64: ">Q",
    ModbusType.FLOAT32: ">f",
    ModbusType.FLOAT64: ">d",
}


def _swap_bytes(data: bytes) -> bytes:
    swapped = bytearray(data)
    swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
    return bytes(swapped)


def words_to_bytes(words: Sequence[int], byte_order: ByteOrder, word_order: WordOrder) -> bytes:
    """Register words to bytes, most significant first (ABCD order).

    ABCD = big/big, CDAB = big bytes/little words, BADC = little/big, DCBA = little/little.
    """
    ordered = reversed(words) if word_order is WordOrder.LITTLE else words
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    return _swap_bytes(data) if byte_order is ByteOrder.LITTLE else data


def bytes_to_words(data: bytes, byte_order: ByteOrder, word_order: WordOrder) -> list[int]:
    """The inverse of :func:`words_to_bytes`."""
    if byte_order is ByteOrder.LITTLE:
        data = _swap_bytes(data)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if word_order is WordOrder.LITTLE else words


@dataclass(frozen=True, slots=True)
class TagCodec:
    """A tag with its orders resolved against the device defaults."""

    tag: ModbusTag
    byte_order: ByteOrder
    word_order: WordOrder

    @classmethod
    def for_device(cls, tag: ModbusTag, device: ModbusTcpDevice | ModbusRtuDevice) -> TagCodec:
        return cls(tag, tag.byte_order or device.byte_order, tag.word_order or device.word_order)


_FLOAT32 = struct.Struct(">f")
_SHORTEST: dict[bytes, float] = {}  # by the 4 bytes: a line repeats its values poll after poll
_SHORTEST_MAX = 4096


def float32_value(value: float, raw: bytes | None = None) -> float:
    """A float32 as the shortest decimal that reads back as the same float32 (354.315, not
    the double 354.3149719238281 it widens to), so that every encoder publishes the value at
    the precision the device has. ``raw``: its 4 bytes big-endian, if at hand."""
    key = _FLOAT32.pack(value) if raw is None else raw
    known = _SHORTEST.get(key)
    if known is not None:
        return known
    for digits in (".6g", ".7g", ".8g"):  # 9 significant digits always read back
        short = float(format(value, digits))
        if _FLOAT32.pack(short) == key:
            break
    else:
        short = float(format(value, ".9g"))
    if len(_SHORTEST) >= _SHORTEST_MAX:
        _SHORTEST.clear()
    _SHORTEST[key] = short
    return short


def decode(codec: TagCodec, words: Sequence[int]) -> Value:
    """Decode a register tag from exactly ``tag.width`` words. Raises ValueError if not finite."""
    tag = codec.tag
    if tag.type is ModbusType.BOOL:
        assert tag.bit is not None
        return bool((words[0] >> tag.bit) & 1)
    if tag.type is ModbusType.STRING:
        # Strings are register order; only the bytes within each register may be swapped.
        raw = words_to_bytes(words, codec.byte_order, WordOrder.BIG)
        return raw.rstrip(b"\x00 ").decode("ascii", errors="replace")
    raw = words_to_bytes(words, *_orders(codec))
    (raw_value,) = struct.unpack(_STRUCT[tag.type], raw)
    if isinstance(raw_value, float) and not math.isfinite(raw_value):
        raise ValueError(f"{tag.name}: not a finite number ({raw_value})")
    if tag.type is ModbusType.FLOAT32:
        raw_value = float32_value(raw_value, raw)
    if tag.scale != 1.0 or tag.offset != 0.0:
        return float(raw_value * tag.scale + tag.offset)
    return raw_value  # type: ignore[no-any-return]


def encode(codec: TagCodec, value: Value) -> list[int]:
    """Encode a value into register words (the inverse of :func:`decode`; for simulators)."""
    tag = codec.tag
    if tag.type is ModbusType.STRING:
        assert tag.count is not None
        raw = str(value).encode("ascii")[: tag.count * 2].ljust(tag.count * 2, b"\x00")
        return bytes_to_words(raw, codec.byte_order, WordOrder.BIG)
    if tag.type is ModbusType.BOOL:
        assert tag.bit is not None
        return [(1 << tag.bit) if value else 0]
    assert isinstance(value, int | float)
    raw_value: float = value
    if tag.scale != 1.0 or tag.offset != 0.0:
        raw_value = (value - tag.offset) / tag.scale
    if tag.type not in (ModbusType.FLOAT32, ModbusType.FLOAT64):
        raw_value = round(raw_value)  # exact for unscaled 64-bit integers, too
    return bytes_to_words(struct.pack(_STRUCT[tag.type], raw_value), *_orders(codec))


def _orders(codec: TagCodec) -> tuple[ByteOrder, WordOrder]:
    return codec.byte_order, codec.word_order


_ORDERS = (
    ("ABCD", ByteOrder.BIG, WordOrder.BIG),
    ("CDAB", ByteOrder.BIG, WordOrder.LITTLE),
    ("BADC", ByteOrder.LITTLE, WordOrder.BIG),
    ("DCBA", ByteOrder.LITTLE, WordOrder.LITTLE),
)


def interpretations(words: Sequence[int], address: int = 0) -> list[tuple[str, list[str]]]:
    """The words starting at ``address`` read as every type, in each byte/word order
    (columns ABCD, CDAB, BADC, DCBA; 16-bit types only have a byte order)."""
    rows: list[tuple[str, list[str]]] = []
    for type_ in ModbusType:
        if type_ in (ModbusType.BOOL, ModbusType.STRING):
            continue
        width = TYPE_REGISTERS[type_]
        if width > len(words):
            continue
        tag = ModbusTag(name="x", table=ModbusTable.HOLDING_REGISTER, address=address, type=type_)
        cells = []
        for _, byte_order, word_order in _ORDERS:
            if width == 1 and word_order is WordOrder.LITTLE:
                cells.append("=")  # a single register has no word order
                continue
            try:
                value = decode(TagCodec(tag, byte_order, word_order), words[:width])
            except ValueError:
                value = "not finite"
            cells.append(f"{value:.6g}" if isinstance(value, float) else str(value))
        rows.append((type_.value, cells))
    for label, byte_order in (
        ("string", ByteOrder.BIG),
        ("string (bytes swapped)", ByteOrder.LITTLE),
    ):
        tag = ModbusTag(
            name="x",
            table=ModbusTable.HOLDING_REGISTER,
            address=address,
            type=ModbusType.STRING,
            count=len(words),
        )
        rows.append((label, [repr(decode(TagCodec(tag, byte_order, WordOrder.BIG), words))]))
    return rows
