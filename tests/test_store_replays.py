"""One seq, one row (issue 23): the same seqs replayed with other content inside ONE batch
(two messages of a batch), and unit records replayed with other content, on real SQLite and
PostgreSQL. A replay across batches is tested in tests/test_store_acks.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from contract.decode import ContractError, decode_polls, decode_units
from contract.encode import PollEncoder, encode_unit, envelope, with_seq
from contract.records import UnitRecord
from store.db import connect, create_schema
from store.decode import Decoder
from store.ingest import Incoming, Writer
from store.replays import defer_overlaps
from store.status import gap_report
from tests.store_fixtures import pilot_unit_records
from tests.test_store_decode import CTX, OUTBOX, VERSION, collector_readings
from tests.test_store_ingest import R_TOPIC, U_TOPIC, schema1
from tests.test_store_positional import M_TOPIC, meta_message, positional
from tests.test_store_positional import R_TOPIC as P_TOPIC

BASE = R_TOPIC.rsplit("/", 1)[0]
#: How the second message of the batch differs from the first.
VARIANTS = ["other_ts", "other_value", "same_bytes"]


def other_version(variant: str) -> bytes:
    """schema1(1, 10) replayed: another time, another value of seq 4, or the same bytes."""
    if variant == "same_bytes":
        return schema1(1, 10)
    doc = orjson.loads(schema1(1, 10))
    if variant == "other_ts":
        for reading in doc["readings"]:
            reading["ts"], reading["value"] = "2030-01-01T00:00:00Z", 99.0
    else:
        doc["readings"][3]["value"] = 7.5
    return orjson.dumps(doc)


def table(engine: sa.Engine, sql: str) -> list[Any]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql).all()]


def conflicts(engine: sa.Engine) -> list[bytes]:
    return [bytes(p) for (p,) in table(engine, "SELECT payload FROM quarantine ORDER BY id")]


def writer_on(db_url: str) -> tuple[sa.Engine, Writer]:
    engine = connect(db_url)
    create_schema(engine)
    return engine, Writer(engine)


@pytest.mark.parametrize("variant", VARIANTS)
def test_readings_replayed_in_one_batch_are_one_row_a_seq(db_url: str, variant: str) -> None:
    """Two messages of one batch carry seqs 1-10: one row per seq, the first version; other
    content is quarantined (``conflict``, both versions in the reason) and counted; the
    same bytes are a duplicate. The gap audit and the acknowledgement see 1-10, no hole."""
    engine, writer = writer_on(db_url)
    second = other_version(variant)
    result = writer.write([Incoming(R_TOPIC, schema1(1, 10)), Incoming(R_TOPIC, second)])
    assert (result.messages, result.readings, result.readings_inserted) == (2, 20, 10)
    assert table(engine, "SELECT count(*), count(DISTINCT seq) FROM readings") == [(10, 10)]
    assert table(engine, "SELECT num FROM readings WHERE seq = 4") == [(3.25,)]
    if variant == "same_bytes":
        assert (result.quarantined, conflicts(engine)) == ([], [])
    else:
        [(kind, reason)] = result.quarantined
        assert kind == "conflict"
        assert conflicts(engine) == [second]
        expected = (
            "seq 4: stored value 3.25, replayed with value 7.5"
            if variant == "other_value"
            else "value 3.25, replayed with ts "
        )
        assert expected in reason
        if variant == "other_ts":
            assert "seq 4: stored ts " in reason
            assert "value 99.0" in reason
        [(what,)] = table(engine, "SELECT kind FROM quarantine")
        assert what == "conflict"
    (stream,) = gap_report(engine)
    assert (stream.low, stream.high, stream.missing) == (1, 10, [])
    assert stream.received == 20  # every seq received counts, as a redelivery's does
    [(_, state)] = result.streams.values()
    assert (state.low, state.high, state.holes) == (1, 10, ())


def test_three_versions_in_one_batch_and_new_seqs_beside_them(db_url: str) -> None:
    """The first version stays; each other one is a conflict; the new seqs a deferred
    message carries are stored (and acknowledged) all the same."""
    engine, writer = writer_on(db_url)
    doc = orjson.loads(schema1(1, 10))
    doc["readings"][3]["value"] = 7.5
    wider = orjson.loads(schema1(1, 15))
    for reading in wider["readings"]:
        reading["ts"] = "2030-01-01T00:00:00Z"
    batch = [schema1(1, 10), orjson.dumps(doc), orjson.dumps(wider), schema1(1, 10)]
    result = writer.write([Incoming(R_TOPIC, p) for p in batch])
    assert [kind for kind, _ in result.quarantined] == ["conflict", "conflict"]
    assert (result.readings, result.readings_inserted) == (45, 15)
    assert table(engine, "SELECT count(*), count(DISTINCT seq) FROM readings") == [(15, 15)]
    assert conflicts(engine) == batch[1:3]
    [(_, state)] = result.streams.values()
    assert state.high == 15


def test_schema3_runs_replayed_in_one_batch(db_url: str) -> None:
    """Runs of plain numbers (SQLite's JSON expansion, PostgreSQL's binary COPY): the same."""
    engine, writer = writer_on(db_url)

    def polls(values: list[Any]) -> bytes:
        body = PollEncoder().encode(1, "dev", collector_readings(values), [CTX] * len(values))
        return envelope("pc1", OUTBOX, body)

    context = Incoming(f"{BASE}/context/{VERSION.station_key}", VERSION.message("pc1"))
    first, other = polls([1.5, 2.5, 3.5]), polls([1.5, 9.5, 3.5])
    result = writer.write([context, Incoming(R_TOPIC, first), Incoming(R_TOPIC, other)])
    [(kind, reason)] = result.quarantined
    assert (kind, result.readings, result.readings_inserted) == ("conflict", 6, 3)
    assert "seq 2: stored value 2.5, replayed with value 9.5" in reason
    assert table(engine, "SELECT seq, num FROM readings ORDER BY seq") == [
        (1, 1.5), (2, 2.5), (3, 3.5)
    ]  # fmt: skip


def units_message(*records: tuple[int, UnitRecord]) -> bytes:
    body = with_seq([(seq, encode_unit(r)) for seq, r in records])
    return envelope("pc1", OUTBOX, body, b"units")


def unit_variant(record: UnitRecord, variant: str) -> UnitRecord:
    if variant == "other_ts":
        return dataclasses.replace(record, end_ts=record.end_ts + 5)
    if variant == "other_value":
        return dataclasses.replace(record, verdict="fail", failure_code=7)
    return record


@pytest.mark.parametrize("variant", VARIANTS)
def test_unit_records_replayed_in_one_batch(db_url: str, variant: str) -> None:
    """One units row (and its characteristics) for seq 1, the first version; other content
    quarantined as a conflict naming both versions, and counted; the same bytes a
    duplicate."""
    engine, writer = writer_on(db_url)
    record = pilot_unit_records()[0]
    other = units_message((1, unit_variant(record, variant)))
    result = writer.write([Incoming(U_TOPIC, units_message((1, record))), Incoming(U_TOPIC, other)])
    assert (result.units, result.units_inserted, result.duplicates) == (2, 1, 1)
    assert table(engine, "SELECT seq, verdict FROM units") == [(1, "pass")]
    assert table(engine, "SELECT count(*) FROM characteristics") == [(1,)]
    (stream,) = gap_report(engine)
    assert (stream.low, stream.high, stream.missing, stream.received) == (1, 1, [], 2)
    if variant == "same_bytes":
        assert (result.quarantined, conflicts(engine)) == ([], [])
        return
    [(kind, reason)] = result.quarantined
    assert (kind, conflicts(engine)) == ("conflict", [other])
    if variant == "other_value":
        assert (
            "seq 1: stored verdict 'pass', failure_code None, "
            "replayed with verdict 'fail', failure_code '7'"
        ) in reason
    else:
        assert "seq 1: stored end_ts datetime.datetime(2026, " in reason
        assert "replayed with end_ts datetime.datetime(2026, " in reason


@pytest.mark.parametrize("variant", VARIANTS)
def test_unit_records_replayed_in_a_later_batch(db_url: str, variant: str) -> None:
    """Across batches the same holds: the stored record stays, a second row never comes."""
    engine, writer = writer_on(db_url)
    record = pilot_unit_records()[0]
    writer.write([Incoming(U_TOPIC, units_message((1, record)))])
    other = units_message((1, unit_variant(record, variant)), (2, pilot_unit_records()[1]))
    result = writer.write([Incoming(U_TOPIC, other)])
    assert result.units_inserted == 1  # seq 2 is new: stored even beside a conflict
    assert table(engine, "SELECT seq, verdict FROM units ORDER BY seq") == [
        (1, "pass"), (2, "pass")
    ]  # fmt: skip
    rows = table(engine, "SELECT count(*) FROM characteristics WHERE unit_seq = 1")
    assert rows == [(1,)]
    if variant == "same_bytes":
        assert result.quarantined == []
    else:
        [(kind, reason)] = result.quarantined
        assert kind == "conflict"
        assert reason.startswith("conflicting replay (kept: the stored version): seq 1: stored ")


def test_overlaps_are_found_whatever_the_order_of_the_batch() -> None:
    """Back-filled ranges that do not overlap stay; one that overlaps is deferred."""
    decoder = Decoder()
    payloads = [schema1(1, 10), schema1(21, 10), schema1(11, 10), schema1(15, 10),
                schema1(31, 5), schema1(21, 10)]  # fmt: skip
    readings = [(p, decoder.decode(p)) for p in payloads]
    kept, deferred = defer_overlaps(readings, lambda p: p)
    assert [p for p, _ in kept] == [payloads[i] for i in (0, 1, 2, 4, 5)]
    assert deferred == [payloads[3]]


def test_parked_replays_released_together(db_url: str) -> None:
    """Two parked messages with the same seqs, released in one chunk when their meta
    version arrives: the second is written after the first (its parked row released with
    it), quarantined as a conflict; nothing stays parked."""
    engine, writer = writer_on(db_url)
    meta, meta_payload = meta_message()
    first = positional(meta, [(1, 0, [1.0, 2.0])])
    other = positional(meta, [(1, 0, [1.0, 5.0])])
    parked = writer.write([Incoming(P_TOPIC, first), Incoming(P_TOPIC, other)])
    assert len(parked.parked) == 2
    result = writer.write([Incoming(M_TOPIC, meta_payload)])
    assert (result.unparked, [k for k, _ in result.quarantined]) == (2, ["conflict"])
    assert "seq 2: stored value 2.0, replayed with value 5.0" in result.quarantined[0][1]
    assert table(engine, "SELECT seq, num FROM readings ORDER BY seq") == [(1, 1.0), (2, 2.0)]
    assert table(engine, "SELECT kind FROM quarantine") == [("conflict",)]
    assert table(engine, "SELECT count(*) FROM parked") == [(0,)]


def _seq_twice() -> bytes:
    """One schema-3 message whose second poll starts inside the first's seqs (1-3, then 3-5):
    seq 3 twice, with another time (a second row for one seq, if it were taken)."""
    values = [1.0, 2.0, 3.0]
    first = PollEncoder().encode(1, "dev", collector_readings(values), [CTX] * 3)
    later = [r._replace(ts=r.ts + 1) for r in collector_readings(values)]
    second = PollEncoder().encode(3, "dev", later, [CTX] * 3)
    return envelope("pc1", OUTBOX, first + b"," + second)


def test_one_message_with_a_seq_twice_is_refused_by_both_decoders() -> None:
    payload = _seq_twice()
    words = (
        "polls[1].seq: 3 repeats a seq of an earlier poll of this message (up to 3): seqs rise "
        "within a message"
    )
    with pytest.raises(ContractError) as reference:
        decode_polls(payload)
    with pytest.raises(ContractError) as store:
        Decoder().decode(payload)
    for raised in (reference.value, store.value):
        assert (str(raised), raised.kind) == (words, "field")
    records = with_seq([(5, encode_unit(pilot_unit_records()[0])),
                        (5, encode_unit(pilot_unit_records()[1]))])  # fmt: skip
    with pytest.raises(ContractError) as units:
        decode_units(envelope("pc1", OUTBOX, records, b"units"))
    assert str(units.value) == (
        "units[1].seq: 5 is not above the previous unit record's 5: seqs rise within a message"
    )


def test_one_message_with_a_seq_twice_is_quarantined_whole(db_url: str) -> None:
    engine, writer = writer_on(db_url)
    context = Incoming(f"{BASE}/context/ft-1/3", VERSION.message("pc1"))
    result = writer.write([context, Incoming(R_TOPIC, _seq_twice())])
    assert [kind for kind, _ in result.quarantined] == ["field"]
    assert table(engine, "SELECT count(*) FROM readings") == [(0,)]


def test_a_message_with_a_gap_between_its_polls_leaves_the_gap_free() -> None:
    """A message's touching polls count as one seq interval (store.replays._intervals joins
    them); a gap between its polls stays a gap: a message filling it is kept, one that
    overlaps either side is deferred."""
    from store.decode import FLOATS, Decoded, Run

    def message(*spans: tuple[int, int]) -> Decoded:
        runs = [Run(a, "2026-12-07T10:00:00Z", "d", "m", "c", None, 0, [0.5] * (b - a + 1),
                    FLOATS) for a, b in spans]  # fmt: skip
        return Decoded("pc1", "6f1d0c2a9b7e4e55", runs=runs)

    batch = [
        ("first", message((1, 3), (4, 6), (10, 12), (13, 15))),  # 1-6 and 10-15
        ("the gap", message((7, 9))),
        ("over the gap's end", message((9, 10))),
        ("after", message((16, 20))),
        ("inside", message((2, 2))),
    ]
    kept, deferred = defer_overlaps(batch, lambda name: name)
    assert [name for name, _ in kept] == ["first", "the gap", "after"]
    assert deferred == ["over the gap's end", "inside"]
