"""Decode tables: register words as a device sends them -> value, for every type and order.

The words are written out by hand from the vendor notations (ABCD = big-endian bytes and
words; CDAB = word-swapped; BADC = byte-swapped; DCBA = both), not computed by the code under
test.
"""

from __future__ import annotations

import math

import pytest

from contract.records import Quality, Reading
from drivers.modbus.codec import TagCodec, decode, encode
from drivers.modbus.config import ByteOrder, ModbusTable, ModbusTag, WordOrder

B, L = ByteOrder.BIG, ByteOrder.LITTLE
WB, WL = WordOrder.BIG, WordOrder.LITTLE
ORDERS = {"ABCD": (B, WB), "CDAB": (B, WL), "BADC": (L, WB), "DCBA": (L, WL)}


def codec(type_: str, order: str = "ABCD", **extra: object) -> TagCodec:
    tag = ModbusTag.model_validate(
        {"name": "t", "table": "holding_register", "address": 0, "type": type_, **extra}
    )
    return TagCodec(tag, *ORDERS[order])


CASES = [
    # type, order, words, value
    ("uint16", "ABCD", [0xABCD], 0xABCD),
    ("uint16", "BADC", [0xCDAB], 0xABCD),
    ("int16", "ABCD", [0xFFFE], -2),
    ("int16", "BADC", [0xFEFF], -2),
    ("int16", "ABCD", [0x7FFF], 32767),
    # 0x12345678 = 305419896
    ("int32", "ABCD", [0x1234, 0x5678], 305419896),
    ("int32", "CDAB", [0x5678, 0x1234], 305419896),
    ("int32", "BADC", [0x3412, 0x7856], 305419896),
    ("int32", "DCBA", [0x7856, 0x3412], 305419896),
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("uint32", "ABCD", [0xDEAD, 0xBEEF], 0xDEADBEEF),
    ("uint32", "CDAB", [0xBEEF, 0xDEAD], 0xDEADBEEF),
    ("uint32", "BADC", [0xADDE, 0xEFBE], 0xDEADBEEF),
    ("uint32", "DCBA", [0xEFBE, 0xADDE], 0xDEADBEEF),
    # 1.5 = 0x3FC00000
    ("float32", "ABCD", [0x3FC0, 0x0000], 1.5),
    ("float32", "CDAB", [0x0000, 0x3FC0], 1.5),
    ("float32", "BADC", [0xC03F, 0x0000], 1.5),
    ("float32", "DCBA", [0x0000, 0xC03F], 1.5),
    ("float32", "ABCD", [0xC148, 0x0000], -12.5),
    # 0x0102030405060708 = 72623859790382856
    ("int64", "ABCD", [0x0102, 0x0304, 0x0506, 0x0708], 72623859790382856),
    ("int64", "CDAB", [0x0708, 0x0506, 0x0304, 0x0102], 72623859790382856),
    ("int64", "BADC", [0x0201, 0x0403, 0x0605, 0x0807], 72623859790382856),
    ("int64", "DCBA", [0x0807, 0x0605, 0x0403, 0x0201], 72623859790382856),
    ("int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
    ("uint64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], 2**64 - 1),
    ("uint64", "DCBA", [0x0100, 0x0000, 0x0000, 0x0000], 1),
    # 1.5 = 0x3FF8000000000000; -0.1 = 0xBFB999999999999A
    ("float64", "ABCD", [0x3FF8, 0, 0, 0], 1.5),
    ("float64", "CDAB", [0, 0, 0, 0x3FF8], 1.5),
    ("float64", "BADC", [0xF83F, 0, 0, 0], 1.5),
    ("float64", "DCBA", [0, 0, 0, 0xF83F], 1.5),
    ("float64", "ABCD", [0xBFB9, 0x9999, 0x9999, 0x999A], -0.1),
]


@pytest.mark.parametrize(("type_", "order", "words", "value"), CASES)
def test_decode_table(type_: str, order: str, words: list[int], value: float) -> None:
    assert decode(codec(type_, order), words) == value


@pytest.mark.parametrize(("type_", "order", "words", "value"), CASES)
def test_encode_is_the_inverse(type_: str, order: str, words: list[int], value: float) -> None:
    assert encode(codec(type_, order), value) == words


@pytest.mark.parametrize(
    ("order", "words", "text"),
    [
        ("ABCD", [0x4142, 0x3132, 0x0000], "AB12"),  # NUL padded
        ("ABCD", [0x4142, 0x3132, 0x2020], "AB12"),  # space padded
        ("ABCD", [0x4142, 0x3100, 0x0000], "AB1"),  # odd length
        ("BADC", [0x4241, 0x3231, 0x0000], "AB12"),  # byte-swapped registers
        ("CDAB", [0x4142, 0x3132, 0x0000], "AB12"),  # word order does not apply to strings
        ("ABCD", [0x0000, 0x0000, 0x0000], ""),
    ],
)
def test_strings(order: str, words: list[int], text: str) -> None:
    assert decode(codec("string", order, count=3), words) == text


@pytest.mark.parametrize(
    ("bit", "word", "value"),
    [(0, 0x0001, True), (3, 0x0008, True), (3, 0xFFF7, False), (15, 0x8000, True)],
)
def test_bool_bit_of_register(bit: int, word: int, value: bool) -> None:
    assert decode(codec("bool", bit=bit), [word]) is value


def test_scale_and_offset() -> None:
    c = codec("int16", scale=0.1, offset=-40)
    assert decode(c, [0x0190]) == pytest.approx(0.0)  # 400 * 0.1 - 40
    assert decode(c, [0xFFF6]) == pytest.approx(-41.0)  # -10 * 0.1 - 40
    assert encode(c, 0.0) == [0x0190]


def test_not_a_number_is_a_decode_error() -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        decode(codec("float32"), [0x7FC0, 0x0000])
    with pytest.raises(ValueError, match="not a finite number"):
        decode(codec("float32"), [0x7F80, 0x0000])  # +inf


def test_unscaled_integers_stay_integers() -> None:
    value = decode(codec("uint32"), [0x0001, 0x0000])
    assert value == 65536
    assert isinstance(value, int)
    assert not math.isnan(float(value))


@pytest.mark.parametrize("type_", ["uint16", "int16"])
@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (0.1, 0.0), (0.01, -40.0)])
@pytest.mark.parametrize("byte_order", ["big", "little"])
def test_the_fast_path_decodes_exactly_as_the_general_one(
    type_: str, scale: float, offset: float, byte_order: str
) -> None:
    from drivers.modbus.plan import Request, readings_from_reply

    tag = ModbusTag.model_validate(
        {
            "name": "t",
            "table": "holding_register",
            "address": 0,
            "type": type_,
            "scale": scale,
            "offset": offset,
        }
    )
    codec = TagCodec(tag, ByteOrder(byte_order), WordOrder.BIG)
    request = Request(ModbusTable.HOLDING_REGISTER, 0, 1, (codec,))
    for word in (0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 12345):
        (reading,) = readings_from_reply(request, [word], 1.0)
        expected = decode(codec, [word])
        assert reading.value == expected
        assert type(reading.value) is type(expected)


@pytest.mark.parametrize(
    ("table", "addresses", "words"),
    [
        # every register of the request, in order: the reply itself is the values
        ("holding_register", [0, 1, 2, 3], [0, 1, 0x8000, 0xFFFF]),
        # holes and an overlap in the request: the values are picked by offset
        ("input_register", [10, 12, 15], [7, 0, 8, 0, 0, 9]),
        # bits come padded to whole bytes: the padding is no reading
        ("coil", [0, 1, 2], [1, 0, 1, 0, 0, 0, 0, 0]),
    ],
)
def test_a_block_of_plain_registers_reads_as_tag_by_tag(
    table: str, addresses: list[int], words: list[int]
) -> None:
    """Requests whose tags are all plain one-register (or one-bit) values are decoded in one
    go; the readings must be the ones the tag-by-tag decode makes, types and units included."""
    from drivers.modbus.plan import Request, readings_from_reply

    bits = table == "coil"
    codecs = tuple(
        TagCodec(
            ModbusTag.model_validate(
                {
                    "name": f"t{a}",
                    "table": table,
                    "address": a,
                    "type": "bool" if bits else "uint16",
                    **({} if i % 2 else {"unit": "bar"}),
                }
            ),
            ByteOrder.BIG,
            WordOrder.BIG,
        )
        for i, a in enumerate(addresses)
    )
    first = addresses[0]
    count = addresses[-1] - first + 1
    request = Request(ModbusTable(table), first, count, codecs)
    assert request.block is not None  # the fast path is the one under test
    # ints for bits too: whatever the reply holds, a bit reads as a bool, as tag by tag
    values = words
    readings = readings_from_reply(request, values, 5.0)
    expected = [
        Reading(
            5.0,
            c.tag.name,
            (bool if bits else int)(values[c.tag.address - first]),
            c.tag.unit,
        )
        for c in codecs
    ]
    assert readings == expected
    assert [type(r) for r in readings] == [Reading] * len(codecs)
    assert [type(r.value) for r in readings] == [type(e.value) for e in expected]
    assert [r.quality for r in readings] == [Quality.GOOD] * len(codecs)


def test_a_block_with_one_converted_tag_is_decoded_tag_by_tag() -> None:
    from drivers.modbus.plan import Request, readings_from_reply

    plain, scaled = (
        TagCodec(
            ModbusTag.model_validate(
                {"name": name, "table": "holding_register", "address": a, "type": "uint16", **x}
            ),
            ByteOrder.BIG,
            WordOrder.BIG,
        )
        for name, a, x in (("p", 0, {}), ("s", 1, {"scale": 0.5}))
    )
    request = Request(ModbusTable.HOLDING_REGISTER, 0, 2, (plain, scaled))
    assert request.block is None
    assert [r.value for r in readings_from_reply(request, [3, 3], 1.0)] == [3, 1.5]


def test_float32_is_published_at_float32_precision() -> None:
    import random
    import struct

    from drivers.modbus.codec import float32_value

    c = codec("float32")
    value = decode(c, encode(c, 354.315))
    assert value == 354.315  # not the double 354.3149719238281 the float32 widens to
    assert repr(value) == "354.315"
    assert repr(decode(c, encode(c, 0.1))) == "0.1"
    scaled = codec("float32", scale=10.0)
    assert decode(scaled, encode(c, 1.5)) == 15.0
    rng = random.Random(7)
    for _ in range(5000):
        raw = struct.pack(">I", rng.getrandbits(32))
        (wide,) = struct.unpack(">f", raw)
        if not math.isfinite(wide):
            continue
        short = float32_value(wide)
        assert struct.pack(">f", short) == raw or wide == 0.0  # the same float32 (-0.0 == 0.0)
        # the shortest such decimal: one digit fewer does not read back
        digits = len(f"{short:.9g}".lstrip("-").replace(".", "").split("e")[0].strip("0"))
        if digits > 1:
            fewer = float(f"{wide:.{digits - 1}g}")
            assert struct.pack(">f", fewer) != raw
