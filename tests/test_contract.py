"""The reference decoder (contract/decode.py), pure logic: hand-made schema-1 and schema-2
messages as docs/messages.md and the schema-2 spec write them, and real schema-1 messages made
by the collector's own encoder."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from contract.codes import ErrorCode
from contract.decode import (
    ContractError,
    FlatReading,
    decode_meta,
    decode_polls,
    decode_readings,
    decode_units,
)
from contract.encode import ReadingEncoder, build_message, encode_unit, ts_text, with_seq
from contract.records import Context, Quality, Reading, UnitRecord, Value

OUTBOX = "6f1d0c2a9b7e4e55"
TS = "2026-11-21T10:15:02.250113Z"


def readings2(**extra: Any) -> dict[str, Any]:
    poll = {
        "seq": 1042,
        "ts": TS,
        "device": "tester-1",
        "meta": "a1b2c3d4",
        "station": "ft-1",
        "slot": None,
        "unit_serial": "PILOT-0042",
        "operation": "functional-test",
        "attempt": 1,
        "phase": "test",
        "golden": False,
        "values": {
            "supply_voltage": 12.03,
            "current": 0.51,
            "temp": {"value": None, "quality": "bad", "error": "timeout"},
        },
    }
    poll.update(extra)
    return {"schema": 2, "collector": "line1-pc1", "outbox": OUTBOX, "polls": [poll]}


def unit2(**extra: Any) -> dict[str, Any]:
    unit = {
        "seq": 17,
        "serial": "PILOT-0042",
        "station": "ft-1",
        "slot": None,
        "operation": "functional-test",
        "attempt": 2,
        "start": "2026-11-21T10:15:02.250113Z",
        "end": "2026-11-21T10:15:41.730020Z",
        "cycle_time_s": 39.48,
        "takt_s": 45.0,
        "verdict": "fail",
        "failure_code": 317,
        "ended_by": "verdict",
        "readings": 412,
        "golden": False,
        "work_order": None,
        "characteristics": {
            "leakage_current": {
                "last": 12.1,
                "min": 11.7,
                "max": 12.4,
                "lsl": None,
                "usl": 15.0,
                "target": None,
                "critical": True,
                "in_spec": True,
            }
        },
    }
    unit.update(extra)
    return {"schema": 2, "collector": "line1-pc1", "outbox": OUTBOX, "units": [unit]}


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def test_schema2_readings_flatten_in_member_order_with_consecutive_seqs() -> None:
    got = decode_readings(dumps(readings2()))
    assert [(r.seq, r.tag, r.value, r.quality, r.error) for r in got] == [
        (1042, "supply_voltage", 12.03, "good", None),
        (1043, "current", 0.51, "good", None),
        (1044, "temp", None, "bad", "timeout"),
    ]
    first = got[0]
    assert first == FlatReading(
        "line1-pc1", OUTBOX, 1042, TS, "tester-1", "supply_voltage", 12.03, "good", None,
        "ft-1", None, "PILOT-0042", "functional-test", 1, "test", False, None,
    )  # fmt: skip


def test_schema2_optional_members_default() -> None:
    doc = {
        "schema": 2,
        "collector": "c",
        "outbox": OUTBOX,
        "polls": [{"seq": 5, "ts": TS, "device": "d", "values": {"a": 1, "b": "x", "c": True}}],
    }
    got = decode_readings(dumps(doc))
    assert [(r.seq, r.value) for r in got] == [(5, 1), (6, "x"), (7, True)]
    r = got[0]
    assert (r.station, r.slot, r.unit_serial, r.operation, r.attempt, r.phase, r.golden) == (
        None, None, None, None, None, None, False,
    )  # fmt: skip
    assert decode_polls(dumps(doc)).polls[0].meta is None


def test_schema2_uncertain_keeps_value_and_slot_may_be_int_or_text() -> None:
    doc = readings2(slot=3, golden=True, values={"x": {"value": 1.5, "quality": "uncertain"}})
    (r,) = decode_readings(dumps(doc))
    assert (r.value, r.quality, r.error, r.slot, r.golden) == (1.5, "uncertain", None, 3, True)
    (r,) = decode_readings(dumps(readings2(slot="A3", values={"x": 1})))
    assert r.slot == "A3"


@pytest.mark.parametrize(
    ("doc", "message", "kind"),
    [
        (b"not json", "not JSON", "json"),
        (b"[1,2]", "not a JSON object", "json"),
        ({"collector": "c", "polls": []}, "schema: missing", "schema"),
        ({"schema": 4, "collector": "c", "polls": []}, "schema: unsupported version 4", "schema"),
        ({"schema": "2", "collector": "c"}, 'schema: unsupported version "2"', "schema"),
        ({"schema": True, "collector": "c"}, "schema: unsupported version true", "schema"),
        ({**readings2(), "outbox": "ABC"}, "outbox: must be 16 lowercase hex", "field"),
        ({**readings2(), "outbox": None}, "outbox: must be a string, got null", "field"),
        ({"schema": 2, "collector": "c", "polls": []}, "outbox: missing", "field"),
        ({**readings2(), "collector": 7}, "collector: must be a string, got 7", "field"),
        ({**readings2(), "polls": {}}, "polls: must be an array", "field"),
        (readings2(seq="1"), 'polls[0].seq: must be an integer >= 0, got "1"', "field"),
        (readings2(seq=-1), "polls[0].seq: must be an integer >= 0, got -1", "field"),
        (readings2(ts="yesterday"), "polls[0].ts: must be an RFC 3339 time", "field"),
        (readings2(ts="2026-11-21T10:15:02"), "polls[0].ts: must be an RFC 3339 time", "field"),
        (readings2(device=None), "polls[0].device: must be a string, got null", "field"),
        (readings2(attempt=1.5), "polls[0].attempt: must be an integer or null", "field"),
        (readings2(golden=1), "polls[0].golden: must be true or false, got 1", "field"),
        (readings2(phase="before"), 'polls[0].phase: must be "test", "after" or null', "field"),
        (readings2(slot=[1]), "polls[0].slot: must be an integer, a string or null", "field"),
        (readings2(values=[1]), "polls[0].values: must be an object", "field"),
        (readings2(values={"t": [1]}), "polls[0].values.t: must be a number", "field"),
        (
            readings2(values={"t": {"value": 1, "quality": "good"}}),
            'polls[0].values.t.quality: must be "bad" or "uncertain"',
            "field",
        ),
        (  # a list cannot even be looked up in a set: a ContractError, not a TypeError
            readings2(values={"t": {"value": 1, "quality": ["bad"]}}),
            'polls[0].values.t.quality: must be "bad" or "uncertain", got ["bad"]',
            "field",
        ),
        (
            readings2(values={"t": {"quality": "bad"}}),
            "polls[0].values.t.value: missing",
            "field",
        ),
        (
            readings2(values={"t": {"value": {"a": 1}, "quality": "bad"}}),
            "polls[0].values.t.value: must be a number",
            "field",
        ),
        (
            readings2(values={"t": {"value": None, "quality": "bad", "error": 5}}),
            "polls[0].values.t.error: must be a string or null, got 5",
            "field",
        ),
    ],
)
def test_bad_readings_messages_name_the_field(doc: Any, message: str, kind: str) -> None:
    payload = doc if isinstance(doc, bytes) else dumps(doc)
    with pytest.raises(ContractError) as caught:
        decode_readings(payload)
    assert str(caught.value).startswith(message), str(caught.value)
    assert caught.value.kind == kind


def test_schema1_hand_made_message() -> None:
    doc = {
        "schema": 1,
        "collector": "line1-pc1",
        "readings": [
            {
                "seq": 1042, "ts": TS, "station": "ft-1", "device": "tester-1",
                "tag": "supply_voltage", "value": 12.03, "unit": "V", "quality": "good",
                "error": None, "unit_serial": "PILOT-0042", "operation": "functional-test",
                "attempt": 1,
            },
            {
                "seq": 1043, "ts": TS, "station": "ft-1", "device": "tester-1",
                "tag": "temp", "value": None, "unit": "C", "quality": "bad",
                "error": "timeout", "unit_serial": "PILOT-0042", "operation": "functional-test",
                "attempt": 1,
            },
        ],
    }  # fmt: skip
    got = decode_readings(dumps(doc))
    assert [(r.outbox, r.seq, r.tag, r.value, r.unit, r.quality, r.error) for r in got] == [
        ("", 1042, "supply_voltage", 12.03, "V", "good", None),
        ("", 1043, "temp", None, "C", "bad", "timeout"),
    ]
    assert {(r.slot, r.phase, r.golden) for r in got} == {(None, None, False)}
    assert len(decode_polls(dumps(doc)).polls) == 1  # same ts, device, context: one poll


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("quality", "ok", 'readings[0].quality: must be "good", "uncertain" or "bad", got "ok"'),
        (
            "quality",
            ["good"],
            'readings[0].quality: must be "good", "uncertain" or "bad", got ["good"]',
        ),
        ("tag", None, "readings[0].tag: must be a string, got null"),
        ("unit", 1, "readings[0].unit: must be a string or null, got 1"),
        ("value", {"v": 1}, "readings[0].value: must be a number, boolean, string or null"),
    ],
)
def test_bad_schema1_readings(field: str, value: Any, message: str) -> None:
    reading = {"seq": 1, "ts": TS, "device": "d", "tag": "t", "value": 1, "quality": "good"}
    reading[field] = value
    with pytest.raises(ContractError) as caught:
        decode_readings(dumps({"schema": 1, "collector": "c", "readings": [reading]}))
    assert str(caught.value).startswith(message), str(caught.value)


def encoded_schema1() -> tuple[bytes, list[tuple[int, str, Value]]]:
    """A message built by the collector's own encoder: two polls, two contexts, bad values."""
    encoder = ReadingEncoder()
    ctx_a = Context("ft-1", "PILOT-0042", "functional-test", 2)
    ctx_none = Context(None, None, None)
    t0 = 1_795_000_000.25
    poll_1 = [
        Reading(t0, "supply_voltage", 12.03, "V"),
        Reading(t0, "count", 7),
        Reading.bad(t0, "temp", ErrorCode.TIMEOUT, "C"),
    ]
    poll_2 = [
        Reading(t0 + 1, "flag", True),
        Reading(t0 + 1, "label", "ok"),
        Reading(t0 + 1.5, "drift", 0.5, None, Quality.UNCERTAIN, ErrorCode.BAD_STATUS),
    ]
    items = b",".join(
        [
            encoder.encode(10, "tester-1", poll_1, [ctx_a] * 3),
            encoder.encode(13, "rack", poll_2, [ctx_a, ctx_none, ctx_none]),
        ]
    )
    expect: list[tuple[int, str, Value]] = [
        (10, "supply_voltage", 12.03),
        (11, "count", 7),
        (12, "temp", None),
        (13, "flag", True),
        (14, "label", "ok"),
        (15, "drift", 0.5),
    ]
    return build_message("line1-pc1", items), expect


def test_real_schema1_stream_from_the_collector_encoder() -> None:
    payload, expect = encoded_schema1()
    got = decode_readings(payload)
    assert [(r.seq, r.tag, r.value) for r in got] == expect
    assert {r.collector for r in got} == {"line1-pc1"}
    assert got[0].ts == ts_text(1_795_000_000.25)
    assert (got[0].station, got[0].unit_serial, got[0].operation, got[0].attempt) == (
        "ft-1", "PILOT-0042", "functional-test", 2,
    )  # fmt: skip
    assert (got[2].quality, got[2].error, got[2].unit) == ("bad", "timeout", "C")
    assert (got[4].station, got[4].unit_serial, got[4].attempt) == (None, None, None)
    assert (got[5].quality, got[5].error, got[5].value) == ("uncertain", "bad_status", 0.5)
    assert got[5].ts == ts_text(1_795_000_001.75)
    # Runs sharing ts, device and context are one poll: (10-12), (13), (14), (15).
    assert [(p.seq, len(p.values)) for p in decode_polls(payload).polls] == [
        (10, 3), (13, 1), (14, 1), (15, 1),
    ]  # fmt: skip


def test_real_schema1_unit_records_from_the_collector_encoder() -> None:
    record = UnitRecord(
        serial="PILOT-0042",
        station="ft-1",
        operation="functional-test",
        attempt=2,
        start_ts=1_795_000_000.0,
        end_ts=1_795_000_039.48,
        ended_by="verdict",
        verdict="fail",
        failure_code=317,
        readings=412,
        characteristics={"leakage_current": (12.1, 11.7, 12.4)},
    )
    payload = build_message("line1-pc1", with_seq([(17, encode_unit(record))]), b"units")
    (unit,) = decode_units(payload)
    assert (unit.collector, unit.outbox, unit.seq, unit.serial, unit.verdict) == (
        "line1-pc1", "", 17, "PILOT-0042", "fail",
    )  # fmt: skip
    assert (unit.attempt, unit.failure_code, unit.readings, unit.cycle_time_s) == (
        2, 317, 412, 39.48,
    )  # fmt: skip
    assert unit.start == ts_text(1_795_000_000.0)
    assert (unit.slot, unit.takt_s, unit.golden, unit.work_order) == (None, None, False, None)
    assert unit.characteristics == {
        "leakage_current": {
            "last": 12.1, "min": 11.7, "max": 12.4, "lsl": None, "usl": None,
            "target": None, "critical": False, "in_spec": None,
        }
    }  # fmt: skip


def test_schema2_unit_record() -> None:
    (unit,) = decode_units(dumps(unit2(slot="2", work_order="WO-7", golden=True)))
    assert (unit.outbox, unit.slot, unit.takt_s, unit.work_order, unit.golden) == (
        OUTBOX, "2", 45.0, "WO-7", True,
    )  # fmt: skip
    char = unit.characteristics["leakage_current"]
    assert (char["usl"], char["lsl"], char["critical"], char["in_spec"]) == (15.0, None, True, True)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"verdict": "ok"}, "units[0].verdict: must be one of fail, incomplete, pass, rework"),
        ({"verdict": ["pass"]}, "units[0].verdict: must be one of fail, incomplete, pass"),
        ({"serial": ""}, "units[0].serial: must not be empty"),
        ({"start": 5}, "units[0].start: must be an RFC 3339 string, got 5"),
        ({"end": "soon"}, "units[0].end: must be an RFC 3339 time"),
        ({"cycle_time_s": "39"}, 'units[0].cycle_time_s: must be a number or null, got "39"'),
        ({"failure_code": [1]}, "units[0].failure_code: must be a number"),
        ({"characteristics": {"x": {"usl": "high"}}}, "units[0].characteristics.x.usl"),
        ({"characteristics": {"x": {"critical": None}}}, "units[0].characteristics.x.critical"),
        ({"characteristics": {"x": {"in_spec": 1}}}, "units[0].characteristics.x.in_spec"),
    ],
)
def test_bad_unit_records_name_the_field(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ContractError) as caught:
        decode_units(dumps(unit2(**extra)))
    assert str(caught.value).startswith(message), str(caught.value)


def test_meta_message() -> None:
    doc = {
        "schema": 2,
        "collector": "line1-pc1",
        "device": "tester-1",
        "meta": "a1b2c3d4",
        "tags": {"supply_voltage": {"unit": "V", "type": "float32", "scale": 1.0, "offset": 0.0}},
    }
    assert decode_meta(dumps(doc))["tags"]["supply_voltage"]["unit"] == "V"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"meta": "XYZ"}, "meta: must be 8 lowercase hex"),
        ({"tags": {"supply_voltage": {"scale": "1"}}}, "tags.supply_voltage.scale: must be a num"),
        ({"schema": 1}, "schema: tag metadata exists from schema 2"),
    ]
    for bad, message in cases:
        with pytest.raises(ContractError) as caught:
            decode_meta(dumps({**doc, **bad}))
        assert str(caught.value).startswith(message), str(caught.value)


def test_ms_text_writes_rfc_3339_with_the_millisecond_only_when_not_zero() -> None:
    """A schema-3 ts (Unix milliseconds) as the decoders write it; the second's text is cached
    (contract.fields._second_text), so neighbouring milliseconds must not share a fraction."""
    from datetime import UTC, datetime, timedelta

    from contract.fields import MAX_EPOCH_MS, ms_text

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for ms in (0, 1, 999, 1000, 1795256102250, 1795256102251, 1795256102000, MAX_EPOCH_MS):
        at = epoch + timedelta(milliseconds=ms)
        expected = at.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")
        assert ms_text(ms) == expected
    assert ms_text(1795256102250) == "2026-11-21T10:15:02.250Z"
