"""The store's side of positional values (docs/messages.md#values-by-position): a poll object
carries ``tag_index`` + ``value_list``, resolved through the ``order`` of the meta version it
names. Messages are built here by hand, so that each rule is tested on its own (the
collector's real stream goes through the store in tests/test_store_e2e.py); real SQLite files
and a real PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from contract.metahash import meta_version
from store.db import connect, create_schema
from store.genealogy import unit_genealogy
from store.ingest import Incoming, Writer
from store.schema import metas, parked, quarantine, readings
from store.status import gap_report
from tests.helpers import Mosquitto, wait_until
from tests.store_fixtures import Publisher, StoreProcess

OUTBOX = "6f1d0c2a9b7e4e55"
R_TOPIC = "collector/site/line1/pc2/readings"
M_TOPIC = "collector/site/line1/pc2/meta/d"
ORDER = ["a", "b", "c", "d", "e"]


@pytest.fixture
def engine(db_url: str) -> sa.Engine:
    engine = connect(db_url)
    create_schema(engine)
    return engine


def meta_message(order: list[str] | None = ORDER, units: str = "V") -> tuple[str, bytes]:
    """A meta message as the spec defines it; returns (its version id, its payload)."""
    tags = {t: {"unit": f"{units}{t}", "type": "float32"} for t in ORDER}
    body: dict[str, Any] = {"tags": tags} if order is None else {"order": order, "tags": tags}
    # Without order (a collector before positional values), the tags alone were hashed.
    canonical = orjson.dumps(tags if order is None else body, option=orjson.OPT_SORT_KEYS)
    meta = hashlib.sha256(canonical).hexdigest()[:8]
    doc = {"schema": 2, "collector": "pc2", "device": "d", "meta": meta, **body}
    return meta, orjson.dumps(doc)


def positional(
    meta: str, polls: list[tuple[int, int, list[Any]]], serial: str = "S-1", **extra: Any
) -> bytes:
    """A readings message of positional polls: (seq, tag_index, value_list) each."""
    doc = {
        "schema": 2, "collector": "pc2", "outbox": OUTBOX,
        "polls": [{"seq": seq, "ts": f"2026-11-21T10:15:{seq % 60:02d}.5Z", "device": "d",
                   "meta": meta, "station": "ft-2", "unit_serial": serial, "attempt": 1,
                   "tag_index": index, "value_list": values, **extra}
                  for seq, index, values in polls],
    }  # fmt: skip
    return orjson.dumps(doc)


def stored(engine: sa.Engine, serial: str = "S-1") -> list[tuple[Any, ...]]:
    found = unit_genealogy(engine, serial)
    if found is None:
        return []
    return [
        (r["seq"], r["tag"], r["value"], r["quality"], r["error"], r["unit"])
        for r in found["readings"]
    ]


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_positional_values_resolve_through_the_meta_order(engine: sa.Engine) -> None:
    meta, meta_payload = meta_message()
    values = [
        1.5,
        {"value": None, "quality": "bad", "error": "timeout"},
        {"value": 7, "quality": "uncertain", "error": None},
    ]
    payload = positional(meta, [(10, 1, values), (13, 0, [0.25, 2**60]), (15, 4, ["OK"])])
    writer = Writer(engine)
    result = writer.write([Incoming(M_TOPIC, meta_payload), Incoming(R_TOPIC, payload)])
    assert (result.quarantined, result.parked, result.readings_inserted) == ([], [], 6)
    assert stored(engine) == [
        (10, "b", 1.5, "good", None, "Vb"),
        (11, "c", None, "bad", "timeout", "Vc"),
        (12, "d", 7, "uncertain", None, "Vd"),
        (13, "a", 0.25, "good", None, "Va"),
        (14, "b", 2**60, "good", None, "Vb"),
        (15, "e", "OK", "good", None, "Ve"),
    ]
    again = writer.write([Incoming(R_TOPIC, payload)])  # a redelivery: nothing new
    assert (again.readings, again.readings_inserted) == (6, 0)
    with engine.connect() as conn:
        row = conn.execute(sa.select(metas.c.meta, metas.c.tag_order)).one()
    assert (row.meta, orjson.loads(row.tag_order)) == (meta, ORDER)


def test_a_meta_later_in_the_same_batch_resolves_its_readings(engine: sa.Engine) -> None:
    meta, meta_payload = meta_message()
    payload = positional(meta, [(1, 0, [1.0, 2.0, 3.0, 4.0, 5.0])])
    result = Writer(engine).write([Incoming(R_TOPIC, payload), Incoming(M_TOPIC, meta_payload)])
    assert (result.parked, result.readings_inserted) == ([], 5)
    assert [r[1] for r in stored(engine)] == ORDER


def test_unknown_meta_parks_the_message_until_the_meta_arrives(engine: sa.Engine) -> None:
    meta, meta_payload = meta_message()
    first = positional(meta, [(1, 0, [1.0, 2.0]), (3, 2, [3.0, 4.0, 5.0])])
    second = positional(meta, [(6, 0, [float(i) for i in range(5)])] * 1)
    writer = Writer(engine, quarantine_max_bytes=50)  # a parked payload is kept whole
    result = writer.write([Incoming(R_TOPIC, first), Incoming(R_TOPIC, second)])
    assert result.readings == 0
    assert (
        result.parked
        == [f"meta version {meta} of pc2/d not received yet: parked until it arrives"] * 2
    )
    assert result.quarantined == []
    assert stored(engine) == []
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine.c.kind, quarantine.c.payload, quarantine.c.payload_bytes)
        ).all()
        waits = conn.execute(sa.select(parked.c.collector, parked.c.device, parked.c.meta)).all()
    assert [(r.kind, bytes(r.payload), r.payload_bytes) for r in rows] == [
        ("unknown_meta", first, len(first)), ("unknown_meta", second, len(second)),
    ]  # fmt: skip
    assert [tuple(w) for w in waits] == [("pc2", "d", meta)] * 2
    assert gap_report(engine) == []  # nothing of it counted as received yet

    arrived = Writer(engine).write([Incoming(M_TOPIC, meta_payload)])  # e.g. after a restart
    assert (arrived.unparked, arrived.readings_inserted, arrived.messages) == (2, 10, 1)
    assert [r[:2] for r in stored(engine)] == [
        (1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e"),
        (6, "a"), (7, "b"), (8, "c"), (9, "d"), (10, "e"),
    ]  # fmt: skip
    assert (count(engine, quarantine), count(engine, parked)) == (0, 0)
    (stream,) = gap_report(engine)
    assert (stream.low, stream.high, stream.missing) == (1, 10, [])
    # The broker redelivers a parked message (it was acknowledged, but a store crash
    # before the ack is possible): insert-or-ignore, nothing twice.
    again = writer.write([Incoming(R_TOPIC, first)])
    assert (again.parked, again.readings, again.readings_inserted) == ([], 5, 0)
    assert count(engine, readings) == 10


def test_parked_messages_stored_before_the_meta_are_swept_at_start(engine: sa.Engine) -> None:
    """A meta version that reached the database while its parked messages were not
    released (a crash between the two transactions) is found when a writer starts."""
    meta, _ = meta_message()
    Writer(engine).write([Incoming(R_TOPIC, positional(meta, [(1, 0, [1.0])]))])
    with engine.begin() as conn:  # the meta row, as a crashed store left it
        conn.execute(
            sa.insert(metas).values(
                collector="pc2", device="d", meta=meta, tag_order=orjson.dumps(ORDER).decode(),
                tags="{}", received_at=datetime.now(UTC),
            )
        )  # fmt: skip
    result = Writer(engine).write([])
    assert (result.unparked, result.readings_inserted) == (1, 1)
    assert stored(engine) == [(1, "a", 1.0, "good", None, None)]
    assert count(engine, parked) == 0


@pytest.mark.parametrize(
    ("poll", "reason"),
    [
        ({"tag_index": -1}, "polls[0].tag_index: must be an integer >= 0, got -1"),
        ({"tag_index": "0"}, 'polls[0].tag_index: must be an integer >= 0, got "0"'),
        ({"value_list": {"a": 1}}, 'polls[0].value_list: must be an array, got {"a":1}'),
        ({"meta": None}, "polls[0].meta: missing (a poll with tag_index needs its meta)"),
        ({"values": {"a": 1}}, "polls[0].values: a poll has either values or tag_index"),
        ({"value_list": [1, [2]]}, "polls[0].value_list[1]: must be a number, boolean, "
                                   "string, null or object, got [2]"),
        ({"value_list": [{"value": 1, "quality": "good"}]},
         'polls[0].value_list[0].quality: must be "bad" or "uncertain", got "good"'),
        ({"value_list": [{"quality": "bad"}]}, "polls[0].value_list[0].value: missing"),
        ({"ts": "yesterday"}, 'polls[0].ts: must be an RFC 3339 time with offset, got "yesterday"'),
        ({"attempt": "1"}, 'polls[0].attempt: must be an integer or null, got "1"'),
        ({"value_list": [1.0] * 4, "tag_index": 2},
         "polls[0].value_list: 4 value(s) from tag_index 2 run past the 5 tags of meta "
         "version {meta} of d"),
    ],
)  # fmt: skip
def test_bad_positional_polls_are_quarantined_with_the_field_named(
    engine: sa.Engine, poll: dict[str, Any], reason: str
) -> None:
    meta, meta_payload = meta_message()
    doc = orjson.loads(positional(meta, [(1, 0, [1.0, 2.0])]))
    doc["polls"][0].update(poll)
    writer = Writer(engine)
    writer.write([Incoming(M_TOPIC, meta_payload)])
    result = writer.write(
        [Incoming(R_TOPIC, orjson.dumps(doc)), Incoming(R_TOPIC, positional(meta, [(9, 0, [1.0])]))]
    )
    assert [kind for kind, _ in result.quarantined] == ["field"]
    assert result.quarantined[0][1].startswith(reason.replace("{meta}", meta)), result.quarantined
    assert result.readings_inserted == 1  # the rest of the batch is written


def test_a_meta_version_without_order_cannot_resolve_positions(engine: sa.Engine) -> None:
    meta, meta_payload = meta_message(order=None)
    writer = Writer(engine)
    result = writer.write(
        [Incoming(M_TOPIC, meta_payload), Incoming(R_TOPIC, positional(meta, [(1, 0, [1.0])]))]
    )
    assert result.quarantined == [
        ("field", f"polls[0].meta: version {meta} of d has no order (a positional poll needs one)")
    ]


def test_a_meta_message_with_a_bad_order_is_quarantined(engine: sa.Engine) -> None:
    _, good = meta_message()
    doc = orjson.loads(good)
    doc["order"] = ["a", "a"]
    result = Writer(engine).write([Incoming(M_TOPIC, orjson.dumps(doc))])
    assert result.quarantined == [("field", "order: names a tag twice")]


def test_runs_of_plain_numbers_keep_their_types_and_their_tags(engine: sa.Engine) -> None:
    """Polls of bare numbers take the fast path (on SQLite: the run expanded by SQLite
    itself when its series ids are consecutive); integers stay integers, floats floats,
    and a tag order whose series ids are not consecutive (the series were made by an
    earlier keyed poll in another order) still maps each value to its tag."""
    keyed = {
        "schema": 2, "collector": "pc2", "outbox": OUTBOX,
        "polls": [{"seq": 1, "ts": "2026-11-21T10:15:00Z", "device": "d", "unit_serial": "S-1",
                   "values": {"e": 0.5, "c": 1, "a": 2.0}}],
    }  # fmt: skip
    meta, meta_payload = meta_message()
    writer = Writer(engine)
    writer.write([Incoming(R_TOPIC, orjson.dumps(keyed)), Incoming(M_TOPIC, meta_payload)])
    mixed = [1, 2.5, -7, 40123, 0.1]
    result = writer.write([Incoming(R_TOPIC, positional(meta, [(4, 0, mixed), (9, 2, [3.0])]))])
    assert (result.quarantined, result.readings_inserted) == ([], 6)
    got = [(seq, tag, value, type(value)) for seq, tag, value, *_ in stored(engine)]
    assert got == [
        (1, "e", 0.5, float), (2, "c", 1, int), (3, "a", 2.0, float),
        (4, "a", 1, int), (5, "b", 2.5, float), (6, "c", -7, int), (7, "d", 40123, int),
        (8, "e", 0.1, float), (9, "c", 3.0, float),
    ]  # fmt: skip
    found = unit_genealogy(engine, "S-1")
    assert found is not None
    assert [r["ts"] for r in found["readings"]][::4] == [
        "2026-11-21T10:15:00Z", "2026-11-21T10:15:04.500000Z",
        "2026-11-21T10:15:09.500000Z",
    ]  # fmt: skip
    again = writer.write([Incoming(R_TOPIC, positional(meta, [(4, 0, mixed), (9, 2, [3.0])]))])
    assert (again.readings, again.readings_inserted) == (6, 0)


def test_series_of_a_meta_version_are_numbered_in_its_order(engine: sa.Engine) -> None:
    """The collector lists a meta message's tags sorted by name (r0, r1, r10, ...) and
    ``order`` in config order (r0, r1, r2, ...): the series ids follow the order, so a
    poll's series ids are consecutive."""
    order = [f"r{i}" for i in range(12)]
    tags = {t: {"unit": None} for t in sorted(order)}
    meta = meta_version(order, tags)
    doc = {"schema": 2, "collector": "pc2", "device": "d", "meta": meta, "order": order,
           "tags": tags}  # fmt: skip
    writer = Writer(engine)
    writer.write([Incoming(M_TOPIC, orjson.dumps(doc))])
    writer.write([Incoming(R_TOPIC, positional(meta, [(1, 0, [float(i) for i in range(12)])]))])
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.text("SELECT tag, id FROM series")).all())
    assert [ids[t] for t in order] == list(range(ids["r0"], ids["r0"] + 12))
    assert [(tag, value) for _, tag, value, *_ in stored(engine)] == [
        (f"r{i}", float(i)) for i in range(12)
    ]


def test_the_store_service_parks_counts_and_releases(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Through a real broker: positional readings published before their meta version are
    parked (acknowledged, counted on /health and /metrics, logged once for the version),
    then stored when the retained meta message arrives; a message the reference decoder
    crashes on is quarantined and the stream goes on."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = StoreProcess(tmp_path / "s", mosquitto, url)
    store.start()
    publisher = Publisher(mosquitto)
    try:
        meta, meta_payload = meta_message()
        publisher.publish(R_TOPIC, positional(meta, [(1, 0, [1.0, 2.0, 3.0, 4.0, 5.0])]))
        publisher.publish(R_TOPIC, positional(meta, [(6, 0, [6.0, 7.0])]))
        wait_until(lambda: store.metric("store_parked_total") == 2, 20, "2 parked")
        assert store.health()["ingest"]["parked"] == 2
        assert store.metric("store_parked_messages") == 2  # waiting now, from the database
        crash = {"schema": 2, "collector": "pc2", "outbox": OUTBOX,
                 "units": [{"seq": 1, "verdict": ["pass"]}]}  # fmt: skip
        publisher.publish("collector/site/line1/pc2/units", orjson.dumps(crash))
        wait_until(lambda: store.metric("store_quarantined_total") == 1, 20, "1 quarantined")
        publisher.client.publish(M_TOPIC, meta_payload, qos=1, retain=True).wait_for_publish(10)
        engine = connect(url)
        wait_until(lambda: count(engine, readings) == 7, 20, "the parked readings stored")
        assert store.metric("store_unparked_total") == 2
        assert store.metric("store_parked_messages") == 0
        assert [r[1] for r in stored(engine)] == [*ORDER, "a", "b"]
        assert (count(engine, parked), count(engine, quarantine)) == (0, 1)
        log = store.log.read_text()
        assert log.count("readings message(s) parked") == 1, log[-2000:]
        assert "ingested 2 parked message(s)" in log
    finally:
        publisher.close()
        store.stop()


def test_no_transaction_is_left_open_between_batches(db_url: str) -> None:
    """The look-ups around parking (is the meta version there now? anything to release?)
    end their own transaction: a PostgreSQL connection idle in a transaction would hold
    back vacuum for as long as no batch comes."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite runs in autocommit between batches")
    engine = connect(db_url)
    create_schema(engine)
    meta, meta_payload = meta_message()
    writer = Writer(engine)
    writer.write([Incoming(R_TOPIC, positional(meta, [(1, 0, [1.0])]))])  # parked
    conn = writer._connection()
    assert conn.info.transaction_status.name == "IDLE"
    writer.write([Incoming(M_TOPIC, meta_payload)])  # released
    assert conn.info.transaction_status.name == "IDLE"
    assert count(engine, readings) == 1


# --- schema 3: a poll by position names its device by its meta version ----------------------


def meta3_message(device: str, order: list[str] = ORDER) -> tuple[str, bytes]:
    """A schema-3 meta message: its id hashes {"device", "order", "tags"}."""
    tags = {t: {"unit": f"V{t}", "type": "float32"} for t in ORDER}
    meta = meta_version(order, tags, device)
    doc = {"schema": 3, "collector": "pc2", "device": device, "meta": meta, "order": order,
           "tags": tags}  # fmt: skip
    return meta, orjson.dumps(doc)


def positional3(polls: list[tuple[int, str, list[Any]]], key: str = "v") -> bytes:
    """A schema-3 readings message of polls by position without device: (seq, meta, values)
    each, from tag_index 0, with the unit's context as members."""
    doc = {
        "schema": 3, "collector": "pc2", "outbox": OUTBOX,
        "polls": [{"seq": seq, "ts": 1_795_000_000_000 + seq, "meta": meta, "station": "ft-2",
                   "unit_serial": "S-1", "attempt": 1, key: values}
                  for seq, meta, values in polls],
    }  # fmt: skip
    return orjson.dumps(doc)


def devices_of(engine: sa.Engine) -> list[tuple[int, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT r.seq, s.device, s.tag FROM readings r JOIN series s ON s.id = r.series "
                "ORDER BY r.seq"
            )
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_a_poll_without_device_is_stored_as_the_device_its_version_names(
    engine: sa.Engine,
) -> None:
    """Two devices configured alike: two versions; each poll goes to its own device."""
    meta_a, payload_a = meta3_message("d")
    meta_b, payload_b = meta3_message("e")
    assert meta_a != meta_b
    writer = Writer(engine)
    result = writer.write([
        Incoming(M_TOPIC, payload_a),
        Incoming(M_TOPIC.replace("/meta/d", "/meta/e"), payload_b),
        Incoming(R_TOPIC, positional3([(1, meta_a, [1.0, 2.0]), (3, meta_b, [3.0])])),
    ])  # fmt: skip
    assert (result.quarantined, result.parked, result.readings_inserted) == ([], [], 3)
    assert devices_of(engine) == [(1, "d", "a"), (2, "d", "b"), (3, "e", "a")]
    # value_list (a poll buffered by schema 2) is read too; v and value_list is refused.
    later = writer.write([Incoming(R_TOPIC, positional3([(4, meta_b, [4.0])], "value_list"))])
    assert later.readings_inserted == 1
    both = orjson.loads(positional3([(5, meta_b, [5.0])]))
    both["polls"][0]["value_list"] = [5.0]
    refused = writer.write([Incoming(R_TOPIC, orjson.dumps(both))])
    assert refused.quarantined == [
        ("field", "polls[0].v: a poll has its values in v or value_list, not both")
    ]
    assert devices_of(engine)[-1] == (4, "e", "a")


def test_a_poll_without_device_naming_an_unknown_version_parks_until_it_arrives(
    engine: sa.Engine,
) -> None:
    meta, meta_payload = meta3_message("d")
    known, known_payload = meta3_message("e")
    # A poll of a known version beside it: the message waits whole.
    payload = positional3([(1, meta, [1.0, 2.0, 3.0]), (4, known, [4.0])])
    writer = Writer(engine)
    writer.write([Incoming(M_TOPIC.replace("/meta/d", "/meta/e"), known_payload)])
    result = writer.write([Incoming(R_TOPIC, payload)])
    assert result.parked == [
        f"meta version {meta} of pc2 not received yet: parked until it arrives"
    ]
    assert result.quarantined == []
    with engine.connect() as conn:
        waits = conn.execute(sa.select(parked.c.collector, parked.c.device, parked.c.meta)).all()
        kinds = conn.execute(sa.select(quarantine.c.kind)).scalars().all()
    assert [tuple(w) for w in waits] == [("pc2", "/", meta)]
    assert kinds == ["unknown_meta"]
    arrived = Writer(engine).write([Incoming(M_TOPIC, meta_payload)])  # e.g. after a restart
    assert (arrived.unparked, arrived.readings_inserted) == (1, 4)
    assert devices_of(engine) == [(1, "d", "a"), (2, "d", "b"), (3, "d", "c"), (4, "e", "a")]
    assert (count(engine, quarantine), count(engine, parked)) == (0, 0)


def test_a_parked_poll_without_device_is_swept_at_start(engine: sa.Engine) -> None:
    """Its version reached the database while it was not released (a crash)."""
    meta, meta_payload = meta3_message("d")
    Writer(engine).write([Incoming(R_TOPIC, positional3([(1, meta, [1.0])]))])
    with engine.begin() as conn:  # the meta row, as a crashed store left it
        conn.execute(
            sa.insert(metas).values(
                collector="pc2", device="d", meta=meta, tag_order=orjson.dumps(ORDER).decode(),
                tags=orjson.dumps(orjson.loads(meta_payload)["tags"]).decode(),
                received_at=datetime.now(UTC),
            )
        )  # fmt: skip
    result = Writer(engine).write([])
    assert (result.unparked, result.readings_inserted) == (1, 1)
    assert devices_of(engine) == [(1, "d", "a")]
    assert count(engine, parked) == 0


def test_a_schema_2_version_names_no_device_for_a_poll_without_one(engine: sa.Engine) -> None:
    """Schema 2's id does not cover the device: a poll that names its device by it alone is
    refused (quarantined, never parked for ever); schema 2's polls name their device."""
    meta, meta_payload = meta_message()
    writer = Writer(engine)
    result = writer.write(
        [Incoming(M_TOPIC, meta_payload), Incoming(R_TOPIC, positional3([(1, meta, [1.0])]))]
    )
    assert result.parked == []
    assert [kind for kind, _ in result.quarantined] == ["field"]
    assert "names no one device" in result.quarantined[0][1]
    ok = writer.write([Incoming(R_TOPIC, positional(meta, [(2, 0, [2.0])]))])
    assert ok.readings_inserted == 1


def test_a_poll_buffered_before_the_upgrade_is_stored_with_its_schema_2_version(
    engine: sa.Engine,
) -> None:
    """After an upgrade the collector republishes the version its buffer kept as it was
    (schema 2, its id over {"order", "tags"}: contract.encode.DeviceMeta.from_body) and sends
    the buffered poll (device, value_list) in a schema-3 envelope, beside new polls."""
    from contract.encode import DeviceMeta, envelope

    tags = {t: {"unit": f"V{t}", "type": "float32"} for t in ORDER}
    old_body = orjson.dumps({"order": ORDER, "tags": tags}, option=orjson.OPT_SORT_KEYS)
    old = DeviceMeta.from_body("d", old_body)
    new = DeviceMeta("d", tags, tuple(ORDER))
    assert (old.schema, new.schema) == (2, 3)
    assert old.meta != new.meta
    buffered = orjson.dumps(
        {"seq": 1, "ts": "2026-11-21T10:15:01.5Z", "device": "d", "meta": old.meta,
         "station": "ft-2", "unit_serial": "S-1", "attempt": 1, "tag_index": 3,
         "value_list": [3.0, 4.0]}
    )  # fmt: skip
    fresh = b'{"seq":3,"ts":1795000000000,"meta":"%b","v":[0.5]}' % new.meta.encode()
    result = Writer(engine).write([
        Incoming(M_TOPIC, old.message("pc2")),
        Incoming(M_TOPIC, new.message("pc2")),
        Incoming(R_TOPIC, envelope("pc2", OUTBOX, buffered + b"," + fresh)),
    ])  # fmt: skip
    assert (result.quarantined, result.parked, result.readings_inserted) == ([], [], 3)
    assert devices_of(engine) == [(1, "d", "d"), (2, "d", "e"), (3, "d", "a")]
