"""The JSON Schema files consumers are given (contract/schema/) against the collector's real
messages, in both forms of a poll (positional and keyed), and against messages that break
the contract. (tests/test_end_to_end.py validates what a real broker delivered, too.)"""

from __future__ import annotations

import json
import struct
from typing import Any

import jsonschema
import orjson
import pytest

from contract.codes import ErrorCode
from contract.encode import DeviceMeta, PollEncoder, envelope
from contract.records import Context, Quality, Reading
from tests.helpers import SCHEMAS, assert_valid

META = DeviceMeta(
    "tester-1",
    {
        name: {"unit": unit, "type": kind, "scale": 1.0, "offset": 0.0, "station": "ft-1"}
        for name, unit, kind in [
            ("supply_voltage", "V", "float32"),
            ("current", "A", "float32"),
            ("serial", None, "string"),
        ]
    },
    ("supply_voltage", "current", "serial"),
)
UNIT = Context("ft-1", "PILOT-0042", "functional-test", 1, phase="test")


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def readings_message(positional: bool) -> bytes:
    readings = [
        Reading(1_764_000_000.25, "supply_voltage", f32(12.03)),
        Reading.bad(1_764_000_000.25, "current", ErrorCode.TIMEOUT),
        Reading(1_764_000_000.25, "serial", "PILOT-0042", quality=Quality.UNCERTAIN),
        Reading(1_764_000_000.5, "current", f32(0.51)),
    ]
    body = PollEncoder(positional).encode(1041, "tester-1", readings, [UNIT] * 4, META)
    return envelope("line1-pc1", "6f1d0c2a9b7e4e55", body)


def test_real_messages_of_both_forms_are_valid() -> None:
    positional = readings_message(True)
    keyed = readings_message(False)
    # One poll object for the cycle: the last value read later (dt), current read twice.
    assert b'"tag_list":[0,1,2,1],"dt":[[3,250]],"v":[12.03,' in positional
    # By position the meta version names the device; by name the poll does.
    assert b'"device"' not in positional
    assert b'"device":"tester-1"' in keyed
    assert b'"tags":["supply_voltage","current","serial","current"],' in keyed
    assert b"tag_index" not in keyed
    assert b'"ctx":"%b"' % PollEncoder().version(UNIT).ctx.encode() in positional  # type: ignore[union-attr]
    assert_valid(positional, "readings-3.json")
    assert_valid(keyed, "readings-3.json")
    assert_valid(META.message("line1-pc1"), "meta-3.json")
    # A version a schema-2 collector buffered goes out as it was.
    old = DeviceMeta.from_body("tester-1", orjson.dumps({"order": META.order, "tags": META.tags}))
    assert_valid(old.message("line1-pc1"), "meta-2.json")
    version = PollEncoder().version(UNIT)
    assert version is not None
    assert_valid(version.message("line1-pc1"), "context-3.json")
    with_wo = PollEncoder().version(UNIT._replace(work_order="WO-1001"))
    assert with_wo is not None
    assert b'"work_order":"WO-1001"' in with_wo.message("line1-pc1")
    assert_valid(with_wo.message("line1-pc1"), "context-3.json")


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


@pytest.mark.parametrize(
    ("change", "remove"),
    [
        ({"values": {"supply_voltage": 1}}, ()),  # both forms at once
        ({}, ("meta",)),  # by position without its meta
        ({}, ("v",)),
        ({"value_list": [1, 2, 3, 4]}, ()),  # v and value_list
        ({"tags": ["a", "b", "c", "d"]}, ("tag_list",)),  # by name without its device
        ({"tag_list": [-1, 0, 1, 1]}, ()),
        ({"tag_index": 0}, ()),  # tag_list and tag_index
        ({"tags": ["a", "b", "c", "d"]}, ()),  # by name and by position
        ({"v": []}, ()),
        ({"v": [[1]]}, ()),
        ({"v": [{"value": 1, "quality": "good", "error": None}]}, ()),
        ({"ctx": "PILOT"}, ()),
        ({"ctx": [[0]]}, ()),
        ({"dt": [[3, "250"]]}, ()),
        ({"station": "ft-1"}, ()),  # a context by ctx and by members
        ({"work_order": "WO-1001"}, ()),
    ],
)
def test_broken_polls_are_invalid(change: dict[str, Any], remove: tuple[str, ...]) -> None:
    doc = json.loads(readings_message(True))
    poll = doc["polls"][0]
    poll.update(change)
    for name in remove:
        del poll[name]
    assert not validator("readings-3.json").is_valid(doc)


def test_a_poll_with_no_values_and_a_meta_without_order_are_invalid() -> None:
    doc = json.loads(readings_message(False))
    del doc["polls"][0]["v"]
    assert not validator("readings-3.json").is_valid(doc)
    meta = json.loads(META.message("line1-pc1"))
    assert validator("meta-3.json").is_valid(meta)
    del meta["order"]
    assert not validator("meta-3.json").is_valid(meta)
    version = PollEncoder().version(UNIT)
    assert version is not None
    context = json.loads(version.message("line1-pc1"))
    context["work_station"] = "x"
    assert not validator("context-3.json").is_valid(context)


def test_a_poll_buffered_by_a_schema_2_collector_is_valid_in_a_schema_3_message() -> None:
    doc = json.loads(readings_message(True))
    doc["polls"].append(
        {"seq": 1, "ts": "2026-11-21T10:15:02Z", "device": "tester-1", "station": "ft-1",
         "unit_serial": "PILOT-0041", "work_order": "WO-1001", "values": {"supply_voltage": 12.0}}
    )  # fmt: skip
    # and one by position: its device, its values in value_list
    doc["polls"].append(
        {"seq": 2, "ts": "2026-11-21T10:15:02Z", "device": "tester-1", "meta": "a1b2c3d4",
         "station": "ft-1", "tag_index": 1, "value_list": [0.5]}
    )  # fmt: skip
    assert validator("readings-3.json").is_valid(doc)


def test_polls_joined_without_the_seq_and_ts_the_previous_poll_implies() -> None:
    """The forwarder joins stored polls leaving out a seq that follows on and a ts equal to
    the previous poll's (contract.encode.join_polls): the JSON Schema takes it, and both
    decoders read the same readings as from the polls with every member."""
    from contract.decode import ContextBook, decode_readings
    from contract.encode import join_polls
    from store.decode import Decoder

    encoder = PollEncoder()
    t0 = 1_764_000_000.25
    parts = []
    times = ((1, "a", t0), (3, "b", t0 + 0.0004), (5, "c", t0 + 0.002), (9, "d", t0 + 0.002))
    for seq, device, at in times:
        readings = [Reading(at, "v", seq), Reading(at, "w", seq + 1)]
        parts.append((seq, 2, encoder.encode(seq, device, readings, [UNIT] * 2)))
    joined = join_polls(parts)
    version = encoder.version(UNIT)
    assert version is not None
    ctx = b'"ctx":"%b",' % version.ctx.encode()
    tail = b'"tags":["v","w"],"v":[%d,%d]}'
    assert joined == (
        b'{"seq":1,"ts":1764000000250,"device":"a",%b' % ctx + tail % (1, 2)
        # the same millisecond, seq 3 follows on from 1 + 2 values: neither member
        + b',{"device":"b",%b' % ctx + tail % (3, 4)
        + b',{"ts":1764000000252,"device":"c",%b' % ctx + tail % (5, 6)
        # after a gap in the seqs: its seq, and the ts of the poll before
        + b',{"seq":9,"device":"d",%b' % ctx + tail % (9, 10)
    )  # fmt: skip
    message = envelope("line1-pc1", "6f1d0c2a9b7e4e55", joined)
    assert_valid(message, "readings-3.json")
    full = envelope("line1-pc1", "6f1d0c2a9b7e4e55", b",".join(p[2] for p in parts))
    book = ContextBook()
    book.add(version.message("line1-pc1"))
    got = decode_readings(message, None, book)
    assert got == decode_readings(full, None, book)
    assert [(r.seq, r.ts, r.device) for r in got][::2] == [
        (1, "2025-11-24T16:00:00.250Z", "a"),
        (3, "2025-11-24T16:00:00.250Z", "b"),
        (5, "2025-11-24T16:00:00.252Z", "c"),
        (9, "2025-11-24T16:00:00.252Z", "d"),
    ]
    store = Decoder().decode(message)
    assert [(r.seq, r.ts, r.device) for r in store.runs] == [
        (r.seq, r.ts, r.device) for r in Decoder().decode(full).runs
    ]
    # The first poll has nothing to take them from.
    first = json.loads(message)
    del first["polls"][0]["seq"]
    assert not validator("readings-3.json").is_valid(first)
