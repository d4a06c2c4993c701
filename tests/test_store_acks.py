"""Store acknowledgements (store.acks): the book's rules alone, then a real store on a real
broker acknowledging what it committed, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from contract.encode import encode_unit, envelope, with_seq
from store.acks import AckBook
from store.config import AcksConfig
from store.db import connect, create_schema
from store.gaps import Hole, StreamState
from store.ingest import Incoming, Writer
from store.status import gap_report, old_gaps, stream_states
from tests.helpers import Mosquitto, Subscriber, wait_until
from tests.store_fixtures import Publisher, StoreProcess, pilot_unit_records
from tests.test_store_decode import OUTBOX, VERSION, keyed_message
from tests.test_store_ingest import R_TOPIC, schema1
from tests.test_store_service import PER_MESSAGE, TOPIC, message

KEY = ("pc1", "o1", "readings")
BASE = "collector/plant-a/line-1/pc1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def state(low: int, high: int, *holes: tuple[int, int], age_s: float = 60) -> StreamState:
    opened = T0 - timedelta(seconds=age_s)
    return StreamState(low, high, tuple(Hole(a, b, opened) for a, b in holes))


def test_an_ack_says_what_is_committed_and_asks_for_old_holes() -> None:
    book = AckBook(AcksConfig(resend_after_s=5))
    book.update({KEY: (BASE, state(1, 100, (10, 19), (30, 30)))}, now=0.0)
    [(topic, payload)] = book.due(0.0, T0)
    assert topic == f"{BASE}/ack"
    assert orjson.loads(payload) == {
        "schema": 2, "outbox": "o1", "stream": "readings", "from": 1, "through": 100,
        "holes": [[10, 19], [30, 30]], "resend": [[10, 19], [30, 30]],
    }  # fmt: skip


def test_young_holes_and_settled_ranges_are_not_asked_for() -> None:
    book = AckBook(AcksConfig(resend_after_s=5), settled=lambda _k: [(12, 15)])
    book.update({KEY: (BASE, state(1, 100, (10, 19)))}, now=0.0)
    assert orjson.loads(book.due(0.0, T0)[0][1])["resend"] == [[10, 11], [16, 19]]
    book = AckBook(AcksConfig(resend_after_s=5))
    book.update({KEY: (BASE, state(1, 100, (10, 19), age_s=1))}, now=0.0)
    assert orjson.loads(book.due(0.0, T0)[0][1])["resend"] == []


def test_acks_are_coalesced_and_repeated_on_the_interval() -> None:
    book = AckBook(AcksConfig(min_interval_ms=200, interval_s=10))
    book.update({KEY: (BASE, state(1, 10))}, now=0.0)
    assert len(book.due(0.0, T0)) == 1
    for i in range(5):  # five batches within 200 ms: one ack, the latest state
        book.update({KEY: (BASE, state(1, 20 + i))}, now=0.01 * i)
        assert book.due(0.01 * i, T0) == []
    [(_, payload)] = book.due(0.2, T0)
    assert orjson.loads(payload)["through"] == 24
    assert book.due(5.0, T0) == []
    assert len(book.due(10.3, T0)) == 1  # the periodic re-ack
    assert book.due(4000.0, T0) == []  # inactive for over an hour: forgotten


def test_a_capped_ack_never_claims_past_its_last_listed_hole() -> None:
    book = AckBook(AcksConfig(max_ranges=2))
    book.update({KEY: (BASE, state(1, 100, (10, 10), (20, 20), (30, 30)))}, now=0.0)
    ack = orjson.loads(book.due(0.0, T0)[0][1])
    assert ack["through"] == 29
    assert ack["holes"] == [[10, 10], [20, 20]]


def test_the_store_acknowledges_what_it_committed(
    mosquitto: Mosquitto, db_url: str, tmp_path: Path
) -> None:
    store = StoreProcess(
        tmp_path / "s", mosquitto, db_url, acks={"resend_after_s": 0, "interval_s": 1}
    )
    store.start()
    acks = Subscriber(mosquitto, f"{BASE}/ack", client_id="ack-watcher")
    feed = Publisher(mosquitto)
    try:
        for first in (1, 21, 61):  # 41-60 never sent
            feed.publish(TOPIC, message(first))

        def last() -> dict[str, object] | None:
            payloads = acks.payloads("/ack")
            return payloads[-1] if payloads else None

        wait_until(lambda: (last() or {}).get("through") == 60 + PER_MESSAGE, 20, "an ack")
        ack = last()
        assert ack is not None
        assert (ack["stream"], ack["from"], ack["holes"], ack["resend"]) == (
            "readings", 1, [[41, 60]], [[41, 60]],
        )  # fmt: skip
        count = len(acks.payloads("/ack"))
        wait_until(lambda: len(acks.payloads("/ack")) > count, 5, "the periodic re-ack")
        assert store.metric("store_collector_acks_total") >= 2
    finally:
        feed.close()
        acks.close()
        store.stop()


def test_gaps_in_three_kinds(db_url: str) -> None:
    """A collector's word splits a stream's holes: never assigned (no error), unavailable
    (lost at once), and the rest pending until gaps.alert_after_s."""

    engine = connect(db_url)
    create_schema(engine)
    writer = Writer(engine)
    writer.write([Incoming(R_TOPIC, schema1(1, 10)), Incoming(R_TOPIC, schema1(101, 10))])
    gaps_topic = R_TOPIC.rsplit("/", 1)[0] + "/gaps"
    said = {
        "schema": 2, "collector": "pc1", "outbox": "", "stream": "readings",
        "never_assigned": [[51, 100]], "unavailable": [[11, 20]],
    }  # fmt: skip
    result = writer.write([Incoming(gaps_topic, orjson.dumps(said))])
    assert [(n.kind, n.first, n.last) for n in result.notes] == [
        ("never_assigned", 51, 100), ("unavailable", 11, 20),
    ]  # fmt: skip
    (stream,) = gap_report(engine)
    assert [(a, b) for a, b, _ in stream.missing] == [(11, 50)]
    assert stream.never_assigned == [(51, 100)]
    assert stream.unavailable == [(11, 20)]
    now = stream.missing[0][2]
    shown = stream.as_dict(now, 600)
    assert (shown["missing_seqs"], shown["lost_seqs"], shown["never_assigned_seqs"]) == (40, 40, 50)
    assert old_gaps([stream], 600, now) == ["pc1/-/readings: seq 11-50 missing for 0 s"]
    # A forged gaps message is bad input: quarantined, nothing recorded.
    bad = writer.write([Incoming(gaps_topic, b'{"schema":2,"never_assigned":"all"}')])
    assert [kind for kind, _ in bad.quarantined] == ["field"]


def test_a_payload_naming_another_collector_is_quarantined(db_url: str) -> None:
    """Identity is the topic's: another line PC publishing the victim's id and next seqs
    under its own topic is quarantined and counted; the victim's readings stand."""
    engine = connect(db_url)
    create_schema(engine)
    writer = Writer(engine)
    writer.write([Incoming(R_TOPIC, schema1(1, 10))])  # pc1, under pc1's topic
    forged = R_TOPIC.replace("/pc1/", "/pc2/")
    result = writer.write([Incoming(forged, schema1(11, 10)), Incoming(forged, schema1(1, 10))])
    assert [kind for kind, _ in result.quarantined] == ["identity", "identity"]
    assert "'pc1' published under the topic of collector 'pc2'" in result.quarantined[0][1]
    assert result.readings == 0
    (stream,) = gap_report(engine)
    assert (stream.collector, stream.high, stream.received) == ("pc1", 10, 10)


def test_a_conflicting_replay_is_quarantined_never_a_second_row(db_url: str) -> None:
    """The same (collector, outbox, seq) replayed with another time would be a second row
    (ts is in the readings key): it is deleted, the message kept in quarantine with both
    versions, and counted. A plain redelivery is a duplicate, nothing more."""
    engine = connect(db_url)
    create_schema(engine)
    writer = Writer(engine)
    writer.write([Incoming(R_TOPIC, schema1(1, 10))])
    again = writer.write([Incoming(R_TOPIC, schema1(1, 10))])  # a redelivery
    assert (again.readings_inserted, again.quarantined) == (0, [])
    doc = orjson.loads(schema1(1, 10))
    for reading in doc["readings"]:  # the same seqs, another time and value
        reading["ts"], reading["value"] = "2030-01-01T00:00:00Z", 99.0
    other = orjson.dumps(doc)
    result = writer.write([Incoming(R_TOPIC, other)])
    assert result.readings_inserted == 0
    assert [kind for kind, _ in result.quarantined] == ["conflict"]
    assert "replayed with ts" in result.quarantined[0][1]
    with engine.connect() as conn:
        rows, seqs = conn.exec_driver_sql(
            "SELECT count(*), count(DISTINCT seq) FROM readings"
        ).one()
        kept = conn.exec_driver_sql(
            "SELECT kind, payload FROM quarantine WHERE kind = 'conflict'"
        ).all()
    assert (rows, seqs) == (10, 10)
    assert [(k, bytes(p)) for k, p in kept] == [("conflict", other)]
    # The same time, another value: insert-or-ignore keeps the first; counted all the same.
    doc = orjson.loads(schema1(1, 10))
    doc["readings"][3]["value"] = 7.5
    same_time = writer.write([Incoming(R_TOPIC, orjson.dumps(doc))])
    assert [kind for kind, _ in same_time.quarantined] == ["conflict"]
    assert "seq 4: stored value 3.25, replayed with value 7.5" in same_time.quarantined[0][1]
    assert writer.write([Incoming(R_TOPIC, schema1(1, 10))]).quarantined == []


def test_the_other_stream_of_an_outbox_is_looked_up_once(db_url: str) -> None:
    """A store process acknowledges the streams its batches touch; the first batch of an
    outbox also brings the other stream's state from the database (a restarted store would
    otherwise leave unit records committed before it waiting for the next one)."""
    engine = connect(db_url)
    create_schema(engine)
    writer = Writer(engine)
    units_topic = R_TOPIC.rsplit("/", 1)[0] + "/units"
    record = encode_unit(pilot_unit_records()[0])
    units = envelope("pc1", OUTBOX, with_seq([(1, record)]), b"units")
    writer.write([Incoming(units_topic, units)])
    readings = orjson.dumps(keyed_message())  # pc1, the same outbox
    # Its unit context first (schema 3), as the collector publishes it.
    context = Incoming(R_TOPIC.rsplit("/", 1)[0] + "/context/ft-1/3", VERSION.message("pc1"))
    result = writer.write([context, Incoming(R_TOPIC, readings)])
    book = AckBook(AcksConfig())
    book.update(result.streams, now=0.0)
    (key,) = result.streams
    assert key == ("pc1", OUTBOX, "readings")
    unknown = book.siblings_unknown([key])
    assert unknown == {("pc1", OUTBOX, "units"): result.streams[key][0]}
    states = stream_states(engine, [*unknown, ("pc9", OUTBOX, "units")])
    assert {k: (s.low, s.high, s.holes) for k, s in states.items()} == {
        ("pc1", OUTBOX, "units"): (1, 1, ())
    }
    book.looked_up(unknown)
    assert book.siblings_unknown([key]) == {}
