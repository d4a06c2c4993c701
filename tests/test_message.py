"""The message contract's reading encoder (pure logic, no network): the hand-built JSON is the
same document a plain dict through orjson gives, for every kind of value and context."""

from __future__ import annotations

import orjson
import pytest

from collector.errors import ErrorCode
from collector.message import ReadingEncoder, build_message, ts_text
from collector.reading import Context, Quality, Reading, Value

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
    # slot, phase and golden follow, each only when set.
    extra = tuple(k for k, v in zip(("slot", "phase", "golden"), context[4:], strict=True) if v)
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
