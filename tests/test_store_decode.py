"""The store's decoder (store.decode) against the reference decoder (contract.decode):
for every message, valid or broken one field at a time, the same readings or the same
error (kind and text). Pure: no database, no network."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from contract.codes import ErrorCode
from contract.decode import ContextBook, ContractError, MetaBook, decode_polls
from contract.encode import (
    ContextVersion,
    DeviceMeta,
    PollEncoder,
    ReadingEncoder,
    build_message,
    envelope,
    join_polls,
)
from contract.records import Context, Quality, Reading
from store.decode import CTX_KEY_FIELDS, FLOATS, NUMBERS, Decoded, Decoder

OUTBOX = "6f1d0c2a9b7e4e55"
T0 = 1_795_000_000.25
CTX = Context("ft-1", "S-1", "functional-test", 2, slot=3, phase="test")


def collector_readings(values: list[Any]) -> list[Reading]:
    return [Reading(T0, f"t{i}", v, "V") for i, v in enumerate(values)]


def keyed_message() -> dict[str, Any]:
    """A schema-3 message from the collector's own encoder, tags by name (no metadata):
    values of every kind, the second half read 25 ms after the first (``dt``)."""
    readings = collector_readings([1.5, 7, 2**60, True, "OK", None])
    readings.append(Reading.bad(T0, "t6", next(iter(ErrorCode))))
    readings.append(Reading(T0, "t7", 0.5, "V", Quality.UNCERTAIN))
    readings[4:] = [r._replace(ts=T0 + 0.025) for r in readings[4:]]
    body = PollEncoder().encode(1, "dev", readings, [CTX] * len(readings))
    return orjson.loads(envelope("pc1", OUTBOX, body))  # type: ignore[no-any-return]


def joined_message() -> bytes:
    """Four polls as the forwarder joins them (contract.encode.join_polls): devices a and b
    read in the same millisecond, c 2 ms later, d after a gap in the seqs."""
    encoder, parts = PollEncoder(), []
    for seq, device, at in (
        (1, "a", T0),
        (4, "b", T0),
        (7, "c", T0 + 0.002),
        (20, "d", T0 + 0.002),
    ):
        readings = [Reading(at, f"t{i}", 10 * seq + i, "V") for i in range(3)]
        parts.append((seq, 3, encoder.encode(seq, device, readings, [CTX] * 3)))
    return envelope("pc1", OUTBOX, join_polls(parts))


#: CTX's version, as a consumer has it from context/ft-1/3, and as the store keys it.
VERSION = ContextVersion(CTX)
BOOK = ContextBook()
BOOK.add(VERSION.message("pc1"))
CTX_KEY = (CTX.station, CTX.slot, CTX.unit_serial, CTX.operation, CTX.attempt, CTX.phase,
           CTX.golden, CTX.work_order)  # fmt: skip
#: The tag metadata of device "dev" (6 tags), as a consumer has it from meta/dev.
META = DeviceMeta("dev", {f"t{i}": {"unit": "V", "type": "float64", "scale": 1.0, "offset": 0.0,
                                    "station": None} for i in range(6)})  # fmt: skip
METAS = MetaBook()
METAS.add(META.message("pc1"))


def flat(decoded: Decoded) -> list[tuple[Any, ...]]:
    """(seq, tag, value, quality, error, context...) of every reading of a keyed message."""
    out = []
    for run in decoded.runs:
        # A positional run's tags: its meta version's order from tag_index on (the writer's).
        tags = run.tags
        if tags is None:
            order = METAS.order(decoded.collector, run.device, run.meta)  # type: ignore[arg-type]
            assert order is not None
            tags = order[run.tag_index : run.tag_index + len(run.values)]
        for i, (tag, value) in enumerate(zip(tags, run.values, strict=True)):
            v, q, e = (
                (value["value"], value["quality"], value.get("error"))
                if type(value) is dict
                else (value, "good", None)
            )
            out.append((run.seq + i, tag, v, q, e, run.ts, run.device, *run.context))
    for p in decoded.polls:
        for i, (tag, v, q, e, _unit) in enumerate(p.values):
            out.append((p.seq + i, tag, v, q, e, p.ts, p.device, p.station, p.slot,
                        p.unit_serial, p.operation, p.attempt, p.phase, p.golden,
                        p.work_order))  # fmt: skip
    return out


def reference(payload: bytes) -> list[tuple[Any, ...]] | tuple[str, str]:
    try:
        message = decode_polls(payload, METAS, BOOK)
    except ContractError as exc:
        if exc.kind in ("unknown_meta", "unknown_context"):  # the store parks it
            return (exc.kind, "")
        if "past the" in str(exc):  # the store's writer refuses it in its own words
            return ("field", "past the order")
        return (exc.kind, str(exc))
    return flat(Decoded(message.collector, message.outbox, polls=message.polls))


def store(payload: bytes) -> list[tuple[Any, ...]] | tuple[str, str]:
    try:
        decoded = Decoder().decode(payload)
    except ContractError as exc:
        return (exc.kind, str(exc))
    # A poll by position without device: its meta version names it (the writer's look-up).
    devices = {m: METAS.device(decoded.collector, m) for d, m in decoded.needs if not d}
    if None in devices.values():
        return ("unknown_meta", "")  # parked until its meta version arrives
    decoded.named(devices)  # type: ignore[arg-type]
    if any(METAS.order(decoded.collector, *need) is None for need in decoded.needs):
        return ("unknown_meta", "")  # parked until its meta version arrives
    for run in decoded.runs:  # the writer's check (store.metabook.run_problem)
        order = METAS.order(decoded.collector, run.device, run.meta) if run.tags is None else ()
        if run.tags is None and run.tag_index + len(run.values) > len(order or ()):
            return ("field", "past the order")
    if decoded.collector != "pc1" or decoded.contexts_needed - {VERSION.ctx}:  # parked
        return ("unknown_context", "")
    decoded.resolved({VERSION.ctx: CTX_KEY})
    return flat(decoded)


BAD_VALUES: list[Any] = [None, -1, "x", 1.5, True, [], {}, "2026-11-21T10:00:00", "1" * 50]
BAD_WRAPPERS: list[Any] = [
    {"value": 1, "quality": "good"}, {"quality": "bad"}, {"value": [], "quality": "bad"},
    {"value": 1, "quality": "bad", "error": 3},
]  # fmt: skip


def variants() -> Iterator[tuple[str, bytes]]:
    base = keyed_message()
    yield "valid", orjson.dumps(base)
    for key in ("schema", "collector", "outbox", "polls"):
        for bad in BAD_VALUES:
            doc = copy.deepcopy(base)
            doc[key] = bad
            yield f"{key}={bad!r}", orjson.dumps(doc)
        doc = copy.deepcopy(base)
        del doc[key]
        yield f"no {key}", orjson.dumps(doc)
    poll = base["polls"][0]
    for key in (*poll, "slot", "golden", "meta"):
        for bad in BAD_VALUES:
            doc = copy.deepcopy(base)
            doc["polls"][0][key] = bad
            yield f"polls[0].{key}={bad!r}", orjson.dumps(doc)
        doc = copy.deepcopy(base)
        doc["polls"][0].pop(key, None)
        yield f"no polls[0].{key}", orjson.dumps(doc)
    for i in range(len(poll["v"])):
        for bad in [*BAD_VALUES, *BAD_WRAPPERS]:
            doc = copy.deepcopy(base)
            doc["polls"][0]["v"][i] = bad
            yield f"v[{i}]={bad!r}", orjson.dumps(doc)
    doc = copy.deepcopy(base)
    doc["polls"][0]["value_list"] = doc["polls"][0]["v"]
    yield "v and value_list", orjson.dumps(doc)
    del doc["polls"][0]["v"]
    yield "value_list (a poll buffered by schema 2)", orjson.dumps(doc)
    for key, bad_point in (
        ("dt", [[9, 1]]),
        ("dt", [[0, "1"]]),
        ("dt", [[4, 1], [2, 1]]),
        ("ctx", [[0, "nothex"]]),
        ("ctx", [[0, None], [0, None]]),
    ):
        doc = copy.deepcopy(base)
        doc["polls"][0][key] = bad_point
        yield f"polls[0].{key}={bad_point!r}", orjson.dumps(doc)
    doc = copy.deepcopy(base)
    doc["polls"][0]["ctx"] = [[0, None], [2, VERSION.ctx]]
    yield "a context from value 2 on", orjson.dumps(doc)
    doc = copy.deepcopy(base)
    doc["polls"][0]["station"] = "ft-1"
    yield "ctx and a context member", orjson.dumps(doc)
    doc = copy.deepcopy(base)
    doc["polls"][0]["work_order"] = "WO-1001"
    yield "ctx and a work order", orjson.dumps(doc)
    doc = copy.deepcopy(base)
    del doc["polls"][0]["ctx"]
    doc["polls"][0].update(station="ft-1", unit_serial="SN1", work_order="WO-1001")
    yield "context members with a work order (buffered by schema 2)", orjson.dumps(doc)
    for bad in (5, True, ["WO-1"]):
        doc["polls"][0]["work_order"] = bad
        yield f"work_order={bad!r}", orjson.dumps(doc)
    yield "a repeated key", orjson.dumps(base).replace(b'"seq":1,', b'"seq":1,"seq":2,', 1)
    doc = copy.deepcopy(base)
    doc["polls"].append("not a poll")
    yield "a poll that is no object", orjson.dumps(doc)
    joined = orjson.loads(joined_message())
    yield "polls without the seq and ts the previous poll implies", orjson.dumps(joined)
    for i, key, bad in (
        (0, "seq", None),  # the first poll: nothing to take them from
        (0, "ts", None),
        (0, "v", "x"),  # the next poll's seq cannot follow from it
        (1, "v", {}),
        (1, "ts", "yesterday"),
        (1, "ts", "2025-11-24T16:00:00.251Z"),  # RFC 3339 text (a poll buffered by schema 2)
        (1, "ts", 1_764_000_000_251),  # epoch ms
        (0, "ts", 10**16),  # past the year 9999
        (0, "ts", 0),
        (2, "seq", 4),  # repeats the seqs of the poll before
        (2, "seq", -1),
        (3, "ts", None),  # its ts from poll 2, which takes its own from poll 1's
    ):
        doc = copy.deepcopy(joined)
        if bad is None:
            doc["polls"][i].pop(key, None)
        else:
            doc["polls"][i][key] = bad
        yield f"joined: polls[{i}].{key}={bad!r}", orjson.dumps(doc)
    yield (
        "joined: a repeated key",
        joined_message().replace(b'"device":"b",', b'"device":"b","ts":"x","ts":"y",', 1),
    )
    yield "not json", b"{not json"
    yield "an array", b"[1, 2]"
    old = build_message("pc1", ReadingEncoder().encode(5, "dev", collector_readings([1.0, 2]),
                                                       [CTX] * 2))  # fmt: skip
    yield "schema 1", old
    broken = orjson.loads(old)
    broken["readings"][1]["quality"] = "great"
    yield "schema 1, bad quality", orjson.dumps(broken)


@pytest.mark.parametrize(("name", "payload"), list(variants()), ids=lambda v: str(v)[:60])
def test_same_readings_or_same_error_as_the_reference_decoder(name: str, payload: bytes) -> None:
    assert store(payload) == reference(payload), name


def usual_message() -> dict[str, Any]:
    """Three polls as the collector usually sends them (store.decode's fast path): by
    position (tag_index), one context version, one time each; the second and third joined
    without the seq and ts that follow from the poll before."""
    encoder, parts = PollEncoder(), []
    for seq, at, first in ((1, T0, 0), (4, T0, 3), (7, T0 + 0.1, 1)):
        readings = [Reading(at, f"t{first + i}", 0.5 * (seq + i), "V") for i in range(3)]
        parts.append((seq, 3, encoder.encode(seq, "dev", readings, [CTX] * 3, META)))
    doc = orjson.loads(envelope("pc1", OUTBOX, join_polls(parts)))
    assert [sorted(p) for p in doc["polls"]] == [
        ["ctx", "meta", "seq", "ts", "v"],
        ["ctx", "meta", "tag_index", "v"],
        ["ctx", "meta", "tag_index", "ts", "v"],
    ]
    return doc  # type: ignore[no-any-return]


#: What the fast path checks, each broken in a poll of the usual shape: the first (all its
#: members written) and the second (seq and ts implied by the first).
USUAL_FIELDS = ("seq", "device", "meta", "ctx", "tag_index", "ts", "v", "value_list")
#: A schema-2 context member beside ``ctx``: valid on its own, refused with ``ctx``.
MEMBERS: dict[str, Any] = {"station": "ft-1", "slot": 3, "unit_serial": "S-1",
                           "operation": "functional-test", "attempt": 2, "phase": "test",
                           "golden": False}  # fmt: skip


def usual_variants() -> Iterator[tuple[str, bytes]]:
    joined = usual_message()
    alone = copy.deepcopy(joined)
    del alone["polls"][1:]  # no next poll whose seq check would refuse a bad seq anyway
    yield "usual", orjson.dumps(joined)
    yield "usual, one poll", orjson.dumps(alone)
    for name, base, i in (("one poll", alone, 0), ("joined", joined, 0), ("joined", joined, 1)):
        for key in USUAL_FIELDS:
            for bad in [*BAD_VALUES, "", 10**16, "0123456789ab", VERSION.ctx.upper(), 0]:
                doc = copy.deepcopy(base)
                doc["polls"][i][key] = bad
                yield f"{name}: polls[{i}].{key}={bad!r}", orjson.dumps(doc)
            doc = copy.deepcopy(base)
            doc["polls"][i].pop(key, None)
            yield f"{name}: no polls[{i}].{key}", orjson.dumps(doc)
        for key, value in MEMBERS.items():
            doc = copy.deepcopy(base)
            doc["polls"][i][key] = value
            yield f"{name}: polls[{i}]: ctx and {key}", orjson.dumps(doc)
        for j in range(3):
            for bad in [*BAD_VALUES, *BAD_WRAPPERS]:
                doc = copy.deepcopy(base)
                doc["polls"][i]["v"][j] = bad
                yield f"{name}: polls[{i}].v[{j}]={bad!r}", orjson.dumps(doc)
        doc = copy.deepcopy(base)
        doc["polls"][i]["device"] = "dev"  # the device it names (as schema 2 did): the same
        yield f"{name}: polls[{i}] with its device", orjson.dumps(doc)
        doc["polls"][i]["value_list"] = doc["polls"][i].pop("v")
        yield f"{name}: polls[{i}] with its device and value_list", orjson.dumps(doc)
        doc = copy.deepcopy(base)
        doc["polls"][i]["remark"] = "x"  # a member no decoder reads: not the fast path's
        yield f"{name}: polls[{i}].remark", orjson.dumps(doc)
    yield (
        "usual: a repeated key",
        orjson.dumps(joined).replace(b'"tag_index":3,', b'"tag_index":3,"tag_index":3,', 1),
    )
    # contract.fields.check_keys counts colons first: a key written with blanks before its
    # colon, or a colon inside a string, must still leave a repeated key found.
    yield (
        "usual: a repeated key, blanks before its colon",
        orjson.dumps(joined).replace(b'"tag_index":3,', b'"tag_index":3,"tag_index" :3,', 1),
    )
    with_colon = copy.deepcopy(joined)
    with_colon["polls"][0]["device"] = 'line:1 "dev":'
    yield "usual: colons in a string", orjson.dumps(with_colon)
    yield (
        "usual: colons in a string and a repeated key",
        orjson.dumps(with_colon).replace(b'"tag_index":3,', b'"tag_index":3,"tag_index":3,', 1),
    )


@pytest.mark.parametrize(("name", "payload"), list(usual_variants()), ids=lambda v: str(v)[:60])
def test_the_usual_poll_gives_the_same_readings_or_error(name: str, payload: bytes) -> None:
    assert store(payload) == reference(payload), name


def test_the_usual_poll_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual poll is one Run built at once (never the slow path's _run), the same Run
    the slow path builds."""
    payload = orjson.dumps(usual_message())
    slow = Decoder().decode(payload)
    assert CTX_KEY_FIELDS  # the slow path refuses a member of them beside ctx

    def refuse(*_args: Any) -> None:
        raise AssertionError("the slow path")

    monkeypatch.setattr(Decoder, "_run", refuse)
    fast = Decoder().decode(payload)
    assert fast == slow
    assert [(r.seq, r.tag_index, r.context, r.plain) for r in fast.runs] == [
        (1, 0, VERSION.ctx, FLOATS), (4, 3, VERSION.ctx, FLOATS), (7, 1, VERSION.ctx, FLOATS)
    ]  # fmt: skip


def test_plain_number_polls_take_the_fast_path() -> None:
    decoder = Decoder()
    floats = envelope("pc1", OUTBOX, PollEncoder().encode(1, "d", collector_readings([1.5, 2.5]),
                                                          [CTX] * 2))  # fmt: skip
    mixed = envelope("pc1", OUTBOX, PollEncoder().encode(1, "d", collector_readings([1.5, 2]),
                                                         [CTX] * 2))  # fmt: skip
    big = envelope("pc1", OUTBOX, PollEncoder().encode(1, "d", collector_readings([1.5, 2**60]),
                                                       [CTX] * 2))  # fmt: skip
    assert [decoder.decode(p).runs[0].plain for p in (floats, mixed, big)] == [FLOATS, NUMBERS, 0]


def test_a_shape_the_reference_decoder_fails_on_is_still_a_field_error() -> None:
    """An unhashable quality (``["bad"]``: ``x not in frozenset`` would raise TypeError) is a
    field error naming the field: the store quarantines such a message, it never retries its
    batch forever."""
    doc = keyed_message()
    doc["polls"][0]["v"][0] = {"value": 1, "quality": ["bad"]}
    with pytest.raises(ContractError) as caught:
        Decoder().decode(orjson.dumps(doc))
    assert caught.value.kind == "field"
    assert str(caught.value).startswith(
        'polls[0].value_list[0].quality: must be "bad" or "uncertain"'
    )


def test_a_time_made_from_epoch_milliseconds_has_the_microseconds_of_its_text() -> None:
    """The store's decoder gives the writer the microseconds of a schema-3 time from its
    epoch milliseconds (Decoder.micros), not from the text made of them: the same number
    as parsing that text, from the first millisecond to the last schema 3 takes."""
    from datetime import datetime

    from contract.decode import expand_polls
    from contract.fields import MAX_EPOCH_MS, ms_text
    from store.schema import to_micros

    for ms in (0, 1, 999, 1000, 1_795_000_000_250, 1_795_000_000_000, MAX_EPOCH_MS,
               *range(1_795_000_000_000, 1_795_000_003_000, 7)):  # fmt: skip
        made: dict[str, int] = {}
        assert expand_polls([{"ts": ms}], made) == 0
        assert made == {ms_text(ms): ms * 1000}
        assert to_micros(datetime.fromisoformat(ms_text(ms))) == ms * 1000, ms
    decoder = Decoder()
    payload = orjson.dumps(usual_message())
    runs = decoder.decode(payload).runs
    for run in runs:
        assert decoder.micros(run.ts) == to_micros(datetime.fromisoformat(run.ts))
    assert Decoder().micros(runs[0].ts) is None  # not checked by that decoder: parsed


@pytest.mark.parametrize(
    ("text", "repeated"),
    [
        (b'{"a":1,"b":{"c":2}}', False),
        (b'{"a":1,"a":2}', True),
        (b'{"a":1,"a" :2}', True),
        (b'{"a" : 1, "b" : 2}', False),
        (b'{"a":"x:y","b":"\\":"}', False),
        (b'{"a":"x:y","a":2}', True),
        (b'{"a":"\\":","a":2}', True),
        (b'{"t":"2026-12-07T10:00:00Z","p":[{"a":1},{"a":1,"a":1}]}', True),
    ],
)
def test_check_keys_finds_every_repeated_key(text: bytes, repeated: bool) -> None:
    """The colon count that check_keys tries first never lets a repeated key through: the
    same answer as the standard library's parser seeing every pair."""
    from contract.fields import check_keys, count_keys

    if repeated:
        with pytest.raises(ContractError) as caught:
            check_keys(text, count_keys(orjson.loads(text)))
        assert caught.value.kind == "duplicate_key"
    else:
        check_keys(text, count_keys(orjson.loads(text)))
