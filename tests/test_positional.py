"""Positional values in schema 2 (docs/messages.md, "Values by position"), pure logic: the
encoder writes ``tag_index`` + ``value_list`` when a run is a contiguous slice of the device's
``order`` and the keyed form otherwise; the reference decoder resolves them through a
:class:`MetaBook` and parks what it cannot resolve (``unknown_meta``)."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import orjson
import pytest

from contract.codes import ErrorCode
from contract.decode import (
    ContextBook,
    ContractError,
    MetaBook,
    decode_meta,
    decode_polls,
    decode_readings,
)
from contract.encode import (
    ContextVersion,
    DeviceMeta,
    PollEncoder,
    device_metas,
    envelope,
    split_polls,
)
from contract.metahash import meta_hash_problem, meta_version
from contract.records import Context, Quality, Reading

OUTBOX = "0123456789abcdef"
ST = Context("st", "SN1", "op", 1)
NONE = Context(None, None, None)
#: ST's context version, as a consumer gets it on context/st.
ST_VERSION = ContextVersion(ST)
ST_CTX = ST_VERSION.ctx.encode()
CONTEXTS = ContextBook()
CONTEXTS.add(ST_VERSION.message("pc1"))


def tag(kind: str = "uint16", station: str | None = "st") -> dict[str, Any]:
    return {"unit": None, "type": kind, "scale": 1.0, "offset": 0.0, "station": station}


META = DeviceMeta("dev", {"v": tag("float32"), "n": tag(), "t": tag()}, ("v", "n", "t"))


def f32(x: float) -> float:
    """What a driver decoding a float32 register returns."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def book(*metas: DeviceMeta, collector: str = "pc1") -> MetaBook:
    out = MetaBook()
    for meta in metas:
        out.add(meta.message(collector))
    return out


def flat(body: bytes, metas: MetaBook | None) -> list[tuple[int, str, object, str, str | None]]:
    return [
        (r.seq, r.tag, r.value, r.quality, r.error)
        for r in decode_readings(envelope("pc1", OUTBOX, body), metas, CONTEXTS)
    ]


# --- the meta message ------------------------------------------------------------------------


def test_meta_names_the_order_and_hashes_it_with_the_tags() -> None:
    doc = orjson.loads(META.message("pc1"))
    assert doc["order"] == ["v", "n", "t"]
    assert doc["schema"] == 3
    canonical = orjson.dumps(
        {"device": "dev", "order": ["v", "n", "t"], "tags": doc["tags"]},
        option=orjson.OPT_SORT_KEYS,
    )
    assert doc["meta"] == hashlib.sha256(canonical).hexdigest()[:8] == META.meta
    assert meta_hash_problem(doc["meta"], doc["order"], doc["tags"], "dev") is None
    # The device is hashed too: two devices configured alike are two versions, so a
    # version id names one device of a collector.
    assert DeviceMeta("dev2", META.tags, META.order).meta != META.meta
    # The same tags in another order are another version; the order of the tags dict is not.
    assert DeviceMeta("dev", META.tags, ("n", "v", "t")).meta != META.meta
    reordered = {k: META.tags[k] for k in ("t", "n", "v")}
    assert DeviceMeta("dev", reordered, ("v", "n", "t")).meta == META.meta
    # What the buffer keeps of a version gives the same version back (its tags' members
    # sorted, as hashed).
    again = DeviceMeta.from_body("dev", META.body)
    assert (again.meta, again.order) == (META.meta, META.order)
    assert orjson.loads(again.message("pc1")) == doc


def test_a_version_buffered_before_schema_3_keeps_its_schema_2_id() -> None:
    """A buffer's metas table written by a schema-2 collector holds {"order", "tags"}: that
    version is republished as it was (schema 2, its old id, which its buffered polls name),
    and a schema-2 meta message is still checked with its own form."""
    old_body = orjson.dumps(
        {"order": list(META.order), "tags": META.tags}, option=orjson.OPT_SORT_KEYS
    )
    old = DeviceMeta.from_body("dev", old_body)
    assert old.schema == 2
    assert old.meta == meta_version(META.order, META.tags) != META.meta
    doc = orjson.loads(old.message("pc1"))
    assert (doc["schema"], doc["meta"]) == (2, old.meta)
    assert meta_hash_problem(doc["meta"], doc["order"], doc["tags"]) is None
    problem = meta_hash_problem(doc["meta"], doc["order"], doc["tags"], "dev")
    assert problem is not None
    assert "does not match its version id" in problem
    # The reference decoder reads both; only schema 3 names a device by its id.
    metas = MetaBook()
    metas.add(old.message("pc1"))
    metas.add(META.message("pc1"))
    assert metas.device("pc1", META.meta) == "dev"
    assert metas.device("pc1", old.meta) is None
    assert metas.order("pc1", "dev", old.meta) == META.order


def test_tag_order_is_the_config_order() -> None:
    from collector.config import Config

    config = Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "s", "line": "l"},
            "buffer": {"path": "/tmp/never-opened.db"},
            "devices": [
                {
                    "name": "plc",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "tags": [
                        {"name": "z", "table": "holding_register", "address": 0},
                        {"name": "a", "table": "holding_register", "address": 1},
                        {"name": "m", "table": "holding_register", "address": 2},
                    ],
                },
                {
                    "name": "scale",
                    "protocol": "serial_ascii",
                    "port": "/dev/ttyUSB0",
                    "mode": "listen",
                    "pattern": r"W(?P<weight>\d+) T(?P<tare>\d+) (?P<count>\d+)",
                },
                {
                    "name": "scanner",
                    "protocol": "barcode_scanner",
                    "port": "/dev/ttyUSB1",
                    "routes": [{"tag": "work_order", "pattern": "WO.*"}],
                },
            ],
        }
    )
    metas = device_metas(config.devices)
    assert metas["plc"].order == ("z", "a", "m")
    assert metas["scale"].order == ("weight", "tare", "count")  # the line's groups, in order
    assert metas["scanner"].order == ("serial", "work_order")  # one reading per scan: sorted
    assert set(metas["plc"].tags) == {"z", "a", "m"}


# --- the encoder ---------------------------------------------------------------------------


def test_a_whole_poll_is_positional_with_bad_and_uncertain_values_wrapped() -> None:
    readings = [
        Reading(1.0, "v", f32(354.315)),
        Reading.bad(1.0, "n", ErrorCode.TIMEOUT),
        Reading(1.0, "t", 9, quality=Quality.UNCERTAIN),
    ]
    body = PollEncoder().encode(5, "dev", readings, [ST] * 3, META)
    # From the first tag of the order: tag_index 0 is left out.
    assert body == (
        b'{"seq":5,"ts":1000,"meta":"%b","ctx":"%b",'
        b'"v":[354.315,{"value":null,"quality":"bad","error":"timeout"},'
        b'{"value":9,"quality":"uncertain","error":null}]}' % (META.meta.encode(), ST_CTX)
    )
    assert flat(body, book(META)) == [
        (5, "v", 354.315, "good", None),
        (6, "n", None, "bad", "timeout"),
        (7, "t", 9, "uncertain", None),
    ]


def test_a_poll_read_in_two_requests_is_one_object_with_the_later_time_as_an_offset() -> None:
    readings = [Reading(1.0, "v", f32(0.1)), Reading(1.25, "n", 7), Reading(1.25, "t", 8)]
    body = PollEncoder().encode(10, "dev", readings, [ST] * 3, META)
    (poll,) = orjson.loads(b"[" + body + b"]")
    assert (poll["seq"], poll.get("tag_index"), poll["dt"], poll["v"]) == (
        10, None, [[1, 250]], [0.1, 7, 8],
    )  # fmt: skip
    assert flat(body, book(META)) == [
        (10, "v", 0.1, "good", None),
        (11, "n", 7, "good", None),
        (12, "t", 8, "good", None),
    ]
    got = decode_readings(envelope("pc1", OUTBOX, body), book(META), CONTEXTS)
    assert [r.ts for r in got] == ["1970-01-01T00:00:01Z"] + ["1970-01-01T00:00:01.250Z"] * 2


@pytest.mark.parametrize(
    ("tags", "tag_list"),
    [
        (["n", "v"], [1, 0]),  # out of order
        (["v", "t"], [0, 2]),  # a gap
        (["n", "n"], [1, 1]),  # the same tag twice: two samples, never a repeated key
    ],
)
def test_tags_that_are_not_a_contiguous_slice_are_listed_by_position(
    tags: list[str], tag_list: list[int]
) -> None:
    readings = [Reading(1.0, name, i) for i, name in enumerate(tags)]
    body = PollEncoder().encode(1, "dev", readings, [ST] * len(tags), META)
    (poll,) = orjson.loads(b"[" + body + b"]")
    assert "tag_index" not in poll
    assert "device" not in poll  # by position: the meta version names it
    assert (poll["tag_list"], poll["v"]) == (tag_list, list(range(len(tags))))
    assert flat(body, book(META)) == [(1 + i, t, i, "good", None) for i, t in enumerate(tags)]


def test_a_tag_the_metadata_does_not_know_names_every_tag() -> None:
    tags = ["v", "x", "x"]
    readings = [Reading(1.0, name, i) for i, name in enumerate(tags)]
    body = PollEncoder().encode(1, "dev", readings, [ST] * 3, META)
    (poll,) = orjson.loads(b"[" + body + b"]")
    assert poll["tags"] == tags
    assert poll["meta"] == META.meta  # polls by name still name their version
    assert flat(body, None) == [(1 + i, t, i, "good", None) for i, t in enumerate(tags)]


def test_by_name_when_switched_off_refused_or_without_metadata() -> None:
    readings = [Reading(1.0, "v", f32(12.5)), Reading(1.0, "n", 3)]
    named = b'{"seq":1,"ts":1000,"device":"dev",%b"tags":["v","n"],"v":[12.5,3]}'
    with_meta = named % b'"meta":"%b",' % META.meta.encode()
    # mqtt.value_keys: name
    assert PollEncoder(positional=False).encode(1, "dev", readings, [NONE] * 2, META) == with_meta
    # a device whose metadata the broker refused
    assert PollEncoder().encode(1, "dev", readings, [NONE] * 2, META, positional=False) == (
        with_meta
    )
    # no metadata at all: no float32 either, and no meta member
    assert PollEncoder().encode(1, "dev", [readings[1]], [NONE], None) == (
        b'{"seq":1,"ts":1000,"device":"dev","tags":["n"],"v":[3]}'
    )


def test_float32_values_are_shortest_in_the_positional_form_too() -> None:
    readings = [Reading(1.0, "v", f32(354.315)), Reading(1.0, "n", 2.5)]
    body = PollEncoder().encode(1, "dev", readings, [ST] * 2, META)
    assert b'"v":[354.315,2.5]' in body
    # a float tag that is not float32 keeps every digit
    body = PollEncoder().encode(1, "dev", [Reading(1.0, "n", f32(354.315))], [ST], META)
    assert b'"v":[354.31500244140625]' in body


def test_split_polls_keeps_each_form_and_every_value_with_its_seq() -> None:
    meta = DeviceMeta("dev", {f"r{i}": tag() for i in range(7)}, tuple(f"r{i}" for i in range(7)))
    readings = [Reading(1.0 + i // 4, f"r{i}", 100 + i) for i in range(7)]
    positional = PollEncoder().encode(11, "dev", readings, [ST] * 7, meta)
    keyed = PollEncoder(positional=False).encode(11, "dev", readings, [ST] * 7, meta)
    metas = book(meta)
    for body in (positional, keyed):
        parts = split_polls(body, 3)
        assert [(first, last) for first, last, _, _ in parts] == [(11, 13), (14, 16), (17, 17)]
        assert [ts for _, _, ts, _ in parts] == [1.0, 1.0, 2.0]
        assert [x for *_, b in parts for x in flat(b, metas)] == flat(body, metas)
    (second,) = orjson.loads(b"[" + split_polls(positional, 3)[1][3] + b"]")
    assert (second["seq"], second["tag_index"], second["dt"], second["v"]) == (
        14, 3, [[1, 1000]], [103, 104, 105],
    )  # fmt: skip


# --- the decoder ---------------------------------------------------------------------------


def positional_poll(**extra: Any) -> dict[str, Any]:
    poll: dict[str, Any] = {
        "seq": 1041,
        "ts": "2026-11-21T10:00:00.12Z",
        "device": "tester-1",
        "meta": SPEC_META,
        "station": "ft-1",
        "tag_index": 0,
        "value_list": [12.03, 0.51, {"value": None, "quality": "bad", "error": "timeout"}],
    }
    poll.update(extra)
    return poll


def message(*polls: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {"schema": 2, "collector": "line1-pc1", "outbox": OUTBOX, "polls": list(polls)}
    )


def meta_message(order: list[str] | None = None) -> dict[str, Any]:
    """A schema-2 meta message whose ``meta`` is the hash of its content (MetaBook checks)."""
    order = order or ["supply_voltage", "current", "temp"]
    tags = {name: tag("float32", "ft-1") for name in order}
    return {
        "schema": 2,
        "collector": "line1-pc1",
        "device": "tester-1",
        "meta": meta_version(order, tags),
        "order": order,
        "tags": tags,
    }


#: The version of the spec example's tester, and one of three other tags.
SPEC_META = meta_message()["meta"]
OTHER_META = meta_message(["a", "b", "c"])["meta"]


def test_a_meta_message_whose_id_is_not_its_hash_is_refused() -> None:
    metas = MetaBook()
    forged = {**meta_message(), "meta": "a1b2c3d4"}
    with pytest.raises(ContractError, match="the content does not match its version id") as e:
        metas.add(orjson.dumps(forged))
    assert (e.value.path, e.value.kind) == ("meta", "meta_hash")
    # The same tags in another order are another version: its id must change too.
    reordered = {**meta_message(), "order": ["temp", "current", "supply_voltage"]}
    with pytest.raises(ContractError, match="does not match its version id"):
        metas.add(orjson.dumps(reordered))
    assert metas.order("line1-pc1", "tester-1", SPEC_META) is None


def test_the_spec_example_decodes_with_its_meta() -> None:
    metas = MetaBook()
    assert metas.add(orjson.dumps(meta_message())) == ("line1-pc1", "tester-1", SPEC_META)
    got = decode_readings(message(positional_poll()), metas)
    assert [(r.seq, r.tag, r.value, r.quality, r.error, r.station) for r in got] == [
        (1041, "supply_voltage", 12.03, "good", None, "ft-1"),
        (1042, "current", 0.51, "good", None, "ft-1"),
        (1043, "temp", None, "bad", "timeout", "ft-1"),
    ]
    (poll,) = decode_polls(message(positional_poll(tag_index=1, value_list=[1])), metas).polls
    assert poll.values == [("current", 1, "good", None, None)]


def test_an_unknown_meta_is_its_own_kind_and_names_every_version_it_waits_for() -> None:
    metas = MetaBook()
    metas.add(meta_message())  # a dict, as decode_meta returns it, is taken too
    payload = message(
        positional_poll(),
        positional_poll(seq=2000, meta=OTHER_META),
        positional_poll(seq=3000, device="tester-2", meta=OTHER_META),
    )
    with pytest.raises(ContractError) as caught:
        decode_readings(payload, metas)
    assert caught.value.kind == "unknown_meta"
    assert caught.value.path == "polls[1].meta"
    assert f"unknown meta version {OTHER_META} of device tester-1" in str(caught.value)
    assert caught.value.missing == (
        ("line1-pc1", "tester-1", OTHER_META),
        ("line1-pc1", "tester-2", OTHER_META),
    )
    # Without a MetaBook every positional poll is unknown; a keyed one is not.
    with pytest.raises(ContractError) as caught:
        decode_readings(message(positional_poll()))
    assert caught.value.kind == "unknown_meta"
    # Once the version arrived, the parked message decodes.
    metas.add(meta_message(["a", "b", "c"]))
    with pytest.raises(ContractError, match="device tester-2"):
        decode_readings(payload, metas)
    metas.add({**meta_message(["a", "b", "c"]), "device": "tester-2"})
    assert [r.tag for r in decode_readings(payload, metas)][3:] == ["a", "b", "c", "a", "b", "c"]


def test_a_bad_poll_is_a_field_error_even_when_its_meta_is_unknown() -> None:
    """Only a missing meta parks a message: one that is wrong anyway is refused as such."""
    bad = positional_poll(value_list=[1, [2]])
    with pytest.raises(ContractError) as caught:
        decode_readings(message(bad))
    assert (caught.value.kind, caught.value.path) == ("field", "polls[0].value_list[1]")


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [
        ({"values": {"a": 1}}, "polls[0].values", "either values or tag_index + value_list"),
        ({"tag_index": -1}, "polls[0].tag_index", "must be an integer >= 0, got -1"),
        ({"tag_index": True}, "polls[0].tag_index", "must be an integer >= 0, got true"),
        ({"tag_index": None}, "polls[0].tag_index", "must be an integer >= 0"),
        ({"value_list": {"a": 1}}, "polls[0].value_list", "must be an array"),
        ({"meta": None}, "polls[0].meta", "a poll with tag_index needs its meta"),
        ({"tag_index": 1}, "polls[0].value_list", "3 values from tag_index 1 run past the 3"),
        (
            {"value_list": [1, {"value": 2, "quality": "good", "error": None}]},
            "polls[0].value_list[1].quality",
            'must be "bad" or "uncertain"',
        ),
    ],
)
def test_bad_positional_polls(change: dict[str, Any], path: str, problem: str) -> None:
    poll = positional_poll(**change)
    if change.get("tag_index", 0) is None:
        del poll["tag_index"]
    with pytest.raises(ContractError) as caught:
        decode_readings(message(poll), book_for_spec())
    assert caught.value.path == path
    assert problem in caught.value.problem
    assert caught.value.kind == "field"


def book_for_spec() -> MetaBook:
    metas = MetaBook()
    metas.add(meta_message())
    return metas


def test_meta_messages_checked_and_kept_by_the_book() -> None:
    doc = decode_meta(orjson.dumps(meta_message()))
    assert doc["order"] == ["supply_voltage", "current", "temp"]
    for order, path, problem in [
        ("x", "order", 'must be an array, got "x"'),
        (["current", "nope"], "order[1]", 'must be a tag of tags, got "nope"'),
        (["current", "current"], "order", "names a tag twice"),
    ]:
        bad = {**meta_message(), "order": order}
        with pytest.raises(ContractError) as caught:
            decode_meta(orjson.dumps(bad))
        assert (caught.value.path, caught.value.problem) == (path, problem)
    metas = MetaBook()
    assert metas.add(b"") is None  # a cleared retained message
    old = {k: v for k, v in meta_message().items() if k != "order"}
    assert decode_meta(orjson.dumps(old))["order"] is None
    assert metas.add(orjson.dumps(old)) is None  # written before positional values: no order
    assert len(metas) == 0
    metas.add(META.message("pc1"))
    assert ("pc1", "dev", META.meta) in metas
    assert metas.order("pc1", "dev", META.meta) == ("v", "n", "t")
    assert metas.order("pc2", "dev", META.meta) is None  # per collector


def test_tags_with_the_same_metadata_share_one_dict_and_keep_their_values() -> None:
    """A big line keeps one metadata dict per distinct metadata, not one per tag (issue 28)."""
    from collector.config import Config

    config = Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "s", "line": "l"},
            "buffer": {"path": "/tmp/never-opened.db"},
            "devices": [
                {
                    "name": f"plc{d}",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "tags": [
                        {
                            "name": "a",
                            "table": "holding_register",
                            "address": 0,
                            "type": "uint16",
                            "unit": "V",
                        },
                        {
                            "name": "b",
                            "table": "holding_register",
                            "address": 1,
                            "type": "uint16",
                            "unit": "V",
                        },
                        {
                            "name": "c",
                            "table": "holding_register",
                            "address": 2,
                            "type": "int16",
                            "offset": -0.0,
                        },
                    ],
                }
                for d in range(2)
            ],
        }
    )
    metas = device_metas(config.devices)
    a, b, c = (metas["plc0"].tags[t] for t in "abc")
    assert a is b is metas["plc1"].tags["a"]
    assert a == {"unit": "V", "type": "uint16", "scale": 1.0, "offset": 0.0, "station": None}
    assert c is not a
    assert orjson.dumps(c) == (
        b'{"unit":null,"type":"int16","scale":1.0,"offset":-0.0,"station":null}'
    )


# --- schema 3: a positional poll names its device by its meta version ----------------------


def test_positional_polls_without_device_decode_to_the_device_their_version_names() -> None:
    """Two devices configured alike: two versions, and each poll, which names no device,
    decodes to its own."""
    twin = DeviceMeta("dev2", META.tags, META.order)
    assert twin.meta != META.meta
    encoder = PollEncoder()
    first = encoder.encode(1, "dev", [Reading(1.0, "n", 4)], [ST], META)
    second = encoder.encode(2, "dev2", [Reading(1.0, "n", 5)], [ST], twin)
    assert b'"device"' not in first + second
    payload = envelope("pc1", OUTBOX, first + b"," + second)
    got = decode_readings(payload, book(META, twin), CONTEXTS)
    assert [(r.seq, r.device, r.tag, r.value) for r in got] == [
        (1, "dev", "n", 4), (2, "dev2", "n", 5),
    ]  # fmt: skip
    # Without the version, the poll waits for it: unknown_meta, naming the version.
    with pytest.raises(ContractError) as caught:
        decode_readings(payload, book(META), CONTEXTS)
    assert caught.value.kind == "unknown_meta"
    assert caught.value.missing == (("pc1", "", twin.meta),)
    assert f"unknown meta version {twin.meta} (collector pc1)" in str(caught.value)
    # A version of schema 2 (its id covers no device) names no device: still unknown.
    old = DeviceMeta.from_body("dev", orjson.dumps({"order": list(META.order), "tags": META.tags}))
    no_device = b'{"seq":1,"ts":1000,"meta":"%b","ctx":"%b","v":[4]}' % (
        old.meta.encode(), ST_CTX,
    )  # fmt: skip
    with pytest.raises(ContractError) as caught:
        decode_readings(envelope("pc1", OUTBOX, no_device), book(old), CONTEXTS)
    assert caught.value.kind == "unknown_meta"


def test_expand_polls_gives_a_consumer_the_device_and_value_list() -> None:
    from contract.decode import expand_polls

    body = PollEncoder().encode(7, "dev", [Reading(1.0, "v", 2.5)], [ST], META)
    polls = orjson.loads(b"[" + body + b"]")
    metas = book(META)
    assert expand_polls(polls, devices=metas.device, collector="pc1") == 1
    assert (polls[0]["device"], polls[0]["value_list"], "v" in polls[0]) == ("dev", [2.5], False)


def test_schema_2_value_list_still_decodes_in_a_schema_3_message() -> None:
    """A positional poll buffered by a schema-2 collector (device, value_list, its version
    of schema 2) sent in a schema-3 envelope after an upgrade."""
    old = DeviceMeta.from_body("dev", orjson.dumps({"order": list(META.order), "tags": META.tags}))
    buffered = (
        b'{"seq":3,"ts":"1970-01-01T00:00:01Z","device":"dev","meta":"%b",' % (old.meta.encode())
        + b'"station":"st","tag_index":1,"value_list":[6,7]}'
    )
    got = decode_readings(envelope("pc1", OUTBOX, buffered), book(old))
    assert [(r.seq, r.device, r.tag, r.value, r.station) for r in got] == [
        (3, "dev", "n", 6, "st"), (4, "dev", "t", 7, "st"),
    ]  # fmt: skip


def test_a_poll_with_both_v_and_value_list_is_refused() -> None:
    body = b'{"seq":1,"ts":1000,"meta":"%b","ctx":"%b","v":[1],"value_list":[2]}' % (
        META.meta.encode(), ST_CTX,
    )  # fmt: skip
    with pytest.raises(ContractError) as caught:
        decode_readings(envelope("pc1", OUTBOX, body), book(META), CONTEXTS)
    assert (caught.value.kind, caught.value.path) == ("field", "polls[0].v")
    assert "not both" in caught.value.problem
