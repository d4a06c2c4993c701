"""The message contract's reading encoder (pure logic, no network): the hand-built JSON is the
same document a plain dict through orjson gives, for every kind of value and context."""

from __future__ import annotations

import orjson
import pytest

from contract.codes import ErrorCode
from contract.encode import ReadingEncoder, build_message, ts_text
from contract.records import Context, Quality, Reading, Value

FIELDS = (
    "seq",
    "ts",
    "station",
    "device",
    "tag",
    "value",
    "unit",
    "quality",
    "error",
    "unit_serial",
    "operation",
    "attempt",
)


def reference(seq: int, device: str, reading: Reading, context: Context) -> bytes:
    """The reading as docs/messages.md defines it, the slow and obvious way."""
    return orjson.dumps(
        {
            "seq": seq,
            "ts": ts_text(reading.ts),
            "station": context.station,
            "device": device,
            "tag": reading.tag,
            "value": reading.value,
            "unit": reading.unit,
            "quality": reading.quality.value,
            "error": None if reading.error is None else reading.error.value,
            "unit_serial": context.unit_serial,
            "operation": context.operation,
            "attempt": context.attempt,
            # Added in schema 1 by issue 15, present only when set.
            **({"slot": context.slot} if context.slot is not None else {}),
            **({"phase": context.phase} if context.phase is not None else {}),
            **({"golden": True} if context.golden else {}),
            # Added with the work order in the unit context (issue 24), only when set.
            **({"work_order": context.work_order} if context.work_order is not None else {}),
        }
    )


VALUES: list[Value] = [
    0,
    -32768,
    65535,
    2**64 - 1,
    -(2**63),
    12.03,
    -0.0,
    1e-300,
    float("nan"),  # drivers mark NaN bad; if one gets through it is null, never invalid JSON
    True,
    False,
    None,
    "",
    "PILOT-0042",
    'quote " backslash \\ newline \n tab \t',
    "ünïcödé °C µm",
    "\x00\x01",
]

CONTEXTS = [
    Context(None, None, None),
    Context("ft-1", None, "functional-test"),
    Context("ft-1", 'SN-"1"', "op ü", 3),
    Context("rack-a", "SN-7", "burn-in", 2, 7, "after", True),
    Context("ft-1", "SN-8", "functional-test", 1, None, "test", False, "WO-1001"),
]


@pytest.mark.parametrize("context", CONTEXTS)
def test_each_value_and_context_encodes_like_the_reference(context: Context) -> None:
    encoder = ReadingEncoder()
    readings = [
        Reading(1_700_000_000.0 + i / 7, f"tag {i} ✓", value, "°C" if i % 2 else None)
        for i, value in enumerate(VALUES)
    ]
    readings.append(Reading.bad(1_700_000_000.25, "dead", ErrorCode.TIMEOUT, "V"))
    readings.append(Reading(1_700_000_000.5, "maybe", 1.5, None, Quality.UNCERTAIN))
    body = encoder.encode(100, 'dev "x"', readings, [context] * len(readings))
    expected = b",".join(reference(100 + i, 'dev "x"', r, context) for i, r in enumerate(readings))
    assert body == expected
    items = orjson.loads(b"[" + body + b"]")
    # slot, phase, golden and work_order follow, each only when set.
    later = ("slot", "phase", "golden", "work_order")
    extra = tuple(k for k, v in zip(later, context[4:], strict=True) if v)
    assert [tuple(item) for item in items] == [FIELDS + extra] * len(readings)  # documented order


def test_cached_pieces_follow_changes_between_readings_and_polls() -> None:
    encoder = ReadingEncoder()
    a, b = Context("st", "SN1", "op", 1), Context("st", "SN2", "op", 1)
    first = [Reading(1.0, "v", 1), Reading(1.0, "v", 2), Reading(2.0, "v", 3)]
    body = encoder.encode(1, "dev", first, [a, a, b])
    items = orjson.loads(b"[" + body + b"]")
    assert [(i["seq"], i["ts"], i["unit_serial"]) for i in items] == [
        (1, "1970-01-01T00:00:01Z", "SN1"),
        (2, "1970-01-01T00:00:01Z", "SN1"),
        (3, "1970-01-01T00:00:02Z", "SN2"),
    ]
    again = orjson.loads(b"[" + encoder.encode(4, "other", first[:1], [b]) + b"]")
    assert (again[0]["device"], again[0]["unit_serial"]) == ("other", "SN2")


def test_the_message_wraps_the_stored_readings() -> None:
    body = ReadingEncoder().encode(7, "dev", [Reading(1.0, "v", 1)], [Context(None, None, None)])
    message = orjson.loads(build_message("pc1", body))
    assert message["schema"] == 1
    assert message["collector"] == "pc1"
    assert [r["seq"] for r in message["readings"]] == [7]


# --------------------------------------------------------------------------- schema 3


def test_float32_values_are_written_at_float32_precision() -> None:
    import struct

    from contract.encode import float32_text

    def widened(x: float) -> float:  # what a driver decoding a float32 register returns
        return float(struct.unpack("<f", struct.pack("<f", x))[0])

    assert widened(354.315) == 354.31500244140625
    assert float32_text(widened(354.315)) == b"354.315"
    assert float32_text(widened(0.1)) == b"0.1"
    assert float32_text(widened(12.5)) == b"12.5"
    assert float32_text(widened(-1.0e-7)) == b"-1e-07"
    assert float32_text(widened(3.4028234663852886e38)) == b"3.4028235e+38"
    assert float32_text(float("nan")) == b"null"
    for x in (1 / 3, 2.718281828, 123456.789, 1e-30, 16777217.0):
        text = float32_text(widened(x))
        assert widened(float(text)) == widened(x)  # reads back as the same float32
        assert len(text) <= len(repr(widened(x)))


def book_of(encoder: object) -> object:
    """The context versions an encoder's polls named, as a consumer's ContextBook holds them
    after reading ``context/#``."""
    from contract.decode import ContextBook
    from contract.encode import PollEncoder

    assert isinstance(encoder, PollEncoder)
    book = ContextBook()
    for version, _ in encoder.used:
        book.add(version.message("pc1"))
    return book


def test_one_poll_object_carries_every_value_of_the_cycle_by_tag() -> None:
    from contract.codes import ErrorCode
    from contract.decode import ContextBook, decode_readings
    from contract.encode import DeviceMeta, PollEncoder, envelope

    meta = DeviceMeta(
        "dev",
        {
            "v": {"unit": "V", "type": "float32", "scale": 1.0, "offset": 0.0, "station": "st"},
            "n": {"unit": None, "type": "uint16", "scale": 1.0, "offset": 0.0, "station": "st"},
        },
    )
    unit = Context("st", "SN1", "op", 1)
    readings = [
        Reading(1.0, "v", 354.31500244140625),  # a float32 register holding 354.315
        Reading(1.0, "n", 7),
        Reading.bad(1.0, "t", ErrorCode.TIMEOUT),
        Reading(2.0, "n", 8, quality=Quality.UNCERTAIN),  # a second request, 1 s later
    ]
    encoder = PollEncoder(positional=False)
    body = encoder.encode(5, "dev", readings, [unit] * 4, meta)
    version = encoder.version(unit)
    assert version is not None
    assert body == (
        b'{"seq":5,"ts":1000,"device":"dev","meta":"%b","ctx":"%b",'
        b'"tags":["v","n","t","n"],"dt":[[3,1000]],"v":[354.315,7,'
        b'{"value":null,"quality":"bad","error":"timeout"},'
        b'{"value":8,"quality":"uncertain","error":null}]}'
    ) % (meta.meta.encode(), version.ctx.encode())
    assert version.message("pc1") == (
        b'{"schema":3,"collector":"pc1","ctx":"%b","attempt":1,"operation":"op",'
        b'"station":"st","unit_serial":"SN1"}' % version.ctx.encode()
    )
    contexts = book_of(encoder)
    assert isinstance(contexts, ContextBook)
    flat = decode_readings(envelope("pc1", "0123456789abcdef", body), None, contexts)
    assert [(r.seq, r.ts, r.tag, r.value, r.quality, r.unit_serial) for r in flat] == [
        (5, "1970-01-01T00:00:01Z", "v", 354.315, "good", "SN1"),
        (6, "1970-01-01T00:00:01Z", "n", 7, "good", "SN1"),
        (7, "1970-01-01T00:00:01Z", "t", None, "bad", "SN1"),
        (8, "1970-01-01T00:00:02Z", "n", 8, "uncertain", "SN1"),
    ]
    assert {r.outbox for r in flat} == {"0123456789abcdef"}


def test_times_are_written_to_the_millisecond() -> None:
    """A poll's ts to the millisecond, each value's offset in whole milliseconds: requests
    (or subscription changes) within one millisecond share a time, so they cost no ``dt``
    point; one a millisecond or more later has its point."""
    from contract.decode import decode_readings
    from contract.encode import PollEncoder, envelope

    t0 = 1_795_000_000.2501  # .250 1 ms: written .250
    readings = [
        Reading(t0, "a", 1),
        Reading(t0 + 0.0003, "b", 2),  # .250 4 ms: the same millisecond as written
        Reading(t0 + 0.0012, "c", 3),  # .251 3 ms: 1 ms after .250
        Reading(t0 + 0.0016, "d", 4),  # .251 7 ms: 2
        Reading(t0 + 0.0017, "e", 5),  # .251 8 ms: still 2
        Reading(t0 - 0.0031, "f", 6),  # .247 0 ms (a clock step back): -3
    ]
    none = Context(None, None, None)
    body = PollEncoder(positional=False).encode(1, "dev", readings, [none] * 6)
    assert body == (
        b'{"seq":1,"ts":1795000000250,"device":"dev",'
        b'"tags":["a","b","c","d","e","f"],"dt":[[2,1],[3,2],[5,-3]],'
        b'"v":[1,2,3,4,5,6]}'
    )
    flat = decode_readings(envelope("pc1", "0" * 16, body))
    assert [r.ts for r in flat] == [
        "2026-11-18T11:06:40.250Z",
        "2026-11-18T11:06:40.250Z",
        "2026-11-18T11:06:40.251Z",
        "2026-11-18T11:06:40.252Z",
        "2026-11-18T11:06:40.252Z",
        "2026-11-18T11:06:40.247Z",
    ]


def test_a_cycle_with_several_contexts_is_grouped_by_context_keeping_each_tags_samples() -> None:
    from contract.encode import by_context

    slot1, slot2 = Context("rack", None, "op", slot=1), Context("rack", None, "op", slot=2)
    tags = ["s1.t", "s2.t", "s1.v", "s1.t", "s2.v"]
    readings = [Reading(1.0 + i, tag, i) for i, tag in enumerate(tags)]
    contexts = [slot1, slot2, slot1, slot1, slot2]
    got, their = by_context(readings, contexts)
    assert [(r.tag, r.value) for r in got] == [
        ("s1.t", 0), ("s1.v", 2), ("s1.t", 3), ("s2.t", 1), ("s2.v", 4),
    ]  # fmt: skip
    assert [c.slot for c in their] == [1, 1, 1, 2, 2]
    one = [slot1] * 5
    assert by_context(readings, one) == (readings, one)  # as is: nothing to group


def test_split_polls_keeps_every_value_its_seq_and_its_poll_fields() -> None:
    from contract.decode import ContextBook, decode_readings
    from contract.encode import PollEncoder, envelope, split_polls

    readings = [Reading(1.0 + i // 3, f"t{i}", i) for i in range(7)]
    serials = ["SN"] * 4 + ["SN2"] * 3  # a unit that changed within the cycle
    encoder = PollEncoder()
    body = encoder.encode(11, "dev", readings, [Context("st", s, "op") for s in serials])
    parts = split_polls(body, 2)
    assert [(first, last) for first, last, _, _ in parts] == [
        (11, 12),
        (13, 14),
        (15, 16),
        (17, 17),
    ]
    assert [ts for _, _, ts, _ in parts] == [1.0, 1.0, 2.0, 3.0]
    contexts = book_of(encoder)
    assert isinstance(contexts, ContextBook)

    def flat(b: bytes) -> list[tuple[int, str, str, object, str | None]]:
        return [
            (r.seq, r.ts, r.tag, r.value, r.unit_serial)
            for r in decode_readings(envelope("pc1", "0" * 16, b), None, contexts)
        ]

    assert [x for _, _, _, b in parts for x in flat(b)] == flat(body)
    assert [x[4] for x in flat(body)] == serials


def test_slot_phase_and_golden_are_written_when_set_and_decoded_back() -> None:
    """A rack slot's reading after its unit's verdict, of a golden sample: its context
    version names the slot, the phase and the golden flag (left out at their defaults)."""
    from contract.decode import ContextBook, decode_readings
    from contract.encode import PollEncoder, envelope

    after = Context("rack-a", "GOLD-1", "burn-in", 2, slot=7, phase="after", golden=True)
    encoder = PollEncoder()
    body = encoder.encode(1, "rack", [Reading(1.0, "slot07.temp", 41)], [after])
    version = encoder.version(after)
    assert version is not None
    assert version.station_key == "rack-a/7"
    assert body == (
        b'{"seq":1,"ts":1000,"device":"rack","ctx":"%b",'
        b'"tags":["slot07.temp"],"v":[41]}' % version.ctx.encode()
    )
    assert version.body == (
        b'{"attempt":2,"golden":true,"operation":"burn-in","phase":"after","slot":7,'
        b'"station":"rack-a","unit_serial":"GOLD-1"}'
    )
    contexts = book_of(encoder)
    assert isinstance(contexts, ContextBook)
    (flat,) = decode_readings(envelope("pc1", "0123456789abcdef", body), None, contexts)
    assert (flat.station, flat.slot, flat.phase, flat.golden) == ("rack-a", 7, "after", True)
    assert (flat.unit_serial, flat.attempt) == ("GOLD-1", 2)
