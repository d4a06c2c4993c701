"""A bounded quarantine, its log, and the bounds' look on an idle store (issue 24, item 6).

A flood of bad messages (forged metadata, readings naming versions nobody publishes, dropped
from parking) must not grow the database without end, nor give a log line per message: the
quarantine keeps ``ingest.quarantine_max_*`` (rows, payload bytes, age), the oldest pruned
first, counted per kind on /health (a warning, with since when) and /metrics; every kind is
logged at most once per collector a minute. Real SQLite files, a real PostgreSQL, a real
broker and the store as a process."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from bench.parking import publish_all
from store.db import connect, create_schema
from store.episodes import Episodes
from store.ingest import BatchResult, Incoming, Writer
from store.parking import DROPPED, ParkingLimits
from store.quarantine import (
    PARKED_KINDS,
    Kept,
    QuarantineBook,
    QuarantineLimits,
    QuarantineLog,
    collector_of,
)
from store.schema import parked, quarantine, readings
from tests.helpers import Mosquitto, wait_until
from tests.store_fixtures import StoreProcess
from tests.test_store_decode import VERSION, keyed_message
from tests.test_store_metas import TEMP_FIRST, meta_payload, unknown
from tests.test_store_positional import M_TOPIC, R_TOPIC, count


@pytest.fixture
def engine(db_url: str) -> sa.Engine:
    engine = connect(db_url)
    create_schema(engine)
    return engine


def bad(i: int) -> Incoming:
    """A readings message that is not JSON, numbered in its payload."""
    return Incoming(R_TOPIC, f"not json {i:06d}".encode())


def kept_rows(engine: sa.Engine) -> list[tuple[str, bytes]]:
    """(kind, payload) of every quarantined message but the parked ones, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine.c.kind, quarantine.c.payload)
            .where(quarantine.c.kind.not_in(PARKED_KINDS))
            .order_by(quarantine.c.id)
        ).all()
    return [(kind, bytes(payload)) for kind, payload in rows]


def pruned(results: list[BatchResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for result in results:
        for p in result.pruned:
            for kind, n in p.kinds.items():
                out[kind] = out.get(kind, 0) + n
    return out


def test_the_quarantine_keeps_its_row_bound_the_oldest_pruned(engine: sa.Engine) -> None:
    writer = Writer(engine, quarantine=QuarantineLimits(max_rows=40))
    results = []
    for start in range(0, 300, 20):
        results.append(writer.write([bad(i) for i in range(start, start + 20)]))
        assert count(engine, quarantine) <= 40
    # Past the bound it prunes down to 95 % of it (38): a look per twentieth of the bound.
    rows = kept_rows(engine)
    assert [payload for _, payload in rows] == [bad(i).payload for i in range(262, 300)]
    assert pruned(results) == {"json": 262}
    assert "over ingest.quarantine_max_rows = 40" in results[-1].pruned[0].why
    # Within the bound, a batch does not read the table's totals (a running figure).
    assert not writer.quarantine.due()
    assert writer.quarantine.rows == 38


def test_the_quarantine_keeps_its_byte_bound(engine: sa.Engine) -> None:
    size = len(bad(0).payload)
    writer = Writer(engine, quarantine=QuarantineLimits(max_bytes=10 * size + size // 2))
    result = writer.write([bad(i) for i in range(30)])
    assert [payload for _, payload in kept_rows(engine)] == [bad(i).payload for i in range(21, 30)]
    assert pruned([result]) == {"json": 21}
    assert "over ingest.quarantine_max_total_bytes" in result.pruned[0].why


def test_parked_messages_are_not_pruned_but_those_dropped_from_parking_are(
    engine: sa.Engine,
) -> None:
    writer = Writer(
        engine, parking=ParkingLimits(max_messages=10), quarantine=QuarantineLimits(max_rows=20)
    )
    results = [writer.write([unknown(i) for i in range(s, s + 10)]) for s in range(0, 100, 10)]
    assert count(engine, parked) == 10
    with engine.connect() as conn:
        kinds = dict(
            conn.execute(
                sa.select(quarantine.c.kind, sa.func.count()).group_by(quarantine.c.kind)
            ).all()
        )
    assert kinds == {"unknown_meta": 10, DROPPED: 19}  # 90 dropped from parking; 71 of them pruned
    assert pruned(results) == {DROPPED: 71}


def test_a_message_waiting_for_its_unit_context_outlives_a_pruned_flood(
    engine: sa.Engine,
) -> None:
    """A schema-3 message parked for its context version is no settled quarantine: a flood
    that prunes the quarantine leaves it, and it is stored when the version comes."""
    writer = Writer(engine, quarantine=QuarantineLimits(max_rows=20))
    base = "collector/site/line1/pc1"  # keyed_message's collector
    writer.write([Incoming(f"{base}/readings", orjson.dumps(keyed_message()))])
    with engine.connect() as conn:
        assert conn.execute(sa.select(quarantine.c.kind)).scalars().all() == ["unknown_context"]
    assert count(engine, parked) == 1
    results = [writer.write([bad(i) for i in range(s, s + 20)]) for s in range(0, 100, 20)]
    assert pruned(results) == {"json": 81}
    writer.write([Incoming(f"{base}/context/ft-1/3", VERSION.message("pc1"))])
    assert (count(engine, parked), count(engine, readings)) == (0, 8)


def test_old_quarantined_messages_are_pruned_by_the_idle_look(engine: sa.Engine) -> None:
    Writer(engine).write([bad(i) for i in range(5)])
    with engine.begin() as conn:  # the first three received two days ago
        conn.execute(
            sa.update(quarantine)
            .where(quarantine.c.id <= 3)
            .values(received_at=datetime.now(UTC) - timedelta(days=2))
        )
    writer = Writer(engine, quarantine=QuarantineLimits(max_age_days=1))
    assert writer.maintenance_due()
    result = writer.maintain()  # no batch: what the service's idle tick calls
    assert pruned([result]) == {"json": 3}
    assert result.pruned[0].why == "older than ingest.quarantine_max_age_days = 1"
    assert [p for _, p in kept_rows(engine)] == [bad(3).payload, bad(4).payload]
    assert writer.maintain().pruned == []  # nothing more to do


def test_only_committed_rows_count_and_are_logged() -> None:
    book = QuarantineBook(QuarantineLimits(max_rows=10), sqlite=True)
    book.rows = 4  # as a look read it
    book.begin()
    book.added(R_TOPIC, "json", "not JSON", 100)
    book.added(R_TOPIC, "unknown_meta", "parked: not counted here", 50)
    book.rollback()
    assert (book.rows, book.bytes, book.take()) == (4, 0, ([], []))
    book.begin()
    book.added(M_TOPIC, "meta_hash", "forged", 100)
    book.commit()
    assert (book.rows, book.bytes) == (5, 100)
    assert book.take() == ([Kept("pc2", "meta_hash", "forged")], [])


def test_a_refused_batch_is_kept_once_and_its_split_logged_once_a_minute(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch the database refuses is written one by one: each message is kept (and
    logged) once, and the split itself is logged once a minute, not once a batch."""
    writer = Writer(engine, quarantine=QuarantineLimits(max_rows=100))
    results = []
    for seq in range(1, 4):
        huge = {  # a seq beyond the signed 64-bit column: the driver refuses it
            "schema": 2, "collector": "pc2", "outbox": "6f1d0c2a9b7e4e55",
            "polls": [{"seq": 2**63 + seq, "ts": "2026-11-21T10:15:02Z", "device": "d",
                       "values": {"v": 1.5}}],
        }  # fmt: skip
        too_big = Incoming(R_TOPIC, orjson.dumps(huge))
        with caplog.at_level(logging.WARNING, logger="store.ingest"):
            results.append(writer.write_isolating([bad(seq), too_big]))
    kept = [k for r in results for k in r.kept]
    assert sorted(k.kind for k in kept) == ["database"] * 3 + ["json"] * 3
    assert [k.kind for r in results for k in r.kept] == [
        kind for r in results for kind, _ in r.quarantined
    ]
    assert len(kept) == count(engine, quarantine) == writer.quarantine.rows == 6
    split = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(split) == 1, split
    assert split[0].startswith("the database refused 1 batch(es) (the last: ")


# ------------------------------------------------------------------------------- the log


def test_each_kind_is_logged_at_most_once_a_minute_per_collector() -> None:
    clock = [0.0]
    start = 1_796_630_400.0  # 2026-12-07 08:00:00 UTC
    book = QuarantineLog(clock=lambda: clock[0], wall=lambda: start + clock[0])
    lines = []
    for i in range(10_000):  # 10,000 forged metas over 100 s, from one collector
        clock[0] = i / 100
        lines += book.note([Kept("pc9", "meta_hash", f"meta: is {i:08x}, but ...")])
    lines += book.note([Kept("pc9", "json", "not JSON"), Kept("pc8", "meta_hash", "x")])
    assert lines == [
        "collector pc9: quarantined a message (meta_hash): meta: is 00000000, but ...",
        "collector pc9: quarantined a message (meta_hash): meta: is 00001770, but ...; and "
        "5,999 more since 08:00:00 UTC (at most one line a minute per collector and kind)",
        "collector pc9: quarantined a message (json): not JSON",
        "collector pc8: quarantined a message (meta_hash): x",
    ]
    assert book.flush() == []  # the 3,999 gathered since 60 s wait for their minute
    clock[0] = 120.0
    assert book.flush() == [
        "collector pc9: quarantined a message (meta_hash): meta: is 0000270f, but ...; and "
        "3,998 more since 08:01:00 UTC (at most one line a minute per collector and kind)"
    ]


def test_one_helper_times_every_log() -> None:
    clock = [0.0]
    episodes: Episodes[str, list[int]] = Episodes(list, 60.0, lambda: clock[0], lambda: 5.0)
    episodes.pending("a").append(1)
    assert [(d.key, d.pending, d.elapsed_s) for d in episodes.due()] == [("a", [1], None)]
    episodes.pending("a").append(2)
    clock[0] = 59.0
    assert episodes.due() == []
    clock[0] = 61.0
    assert [(d.key, d.pending, d.elapsed_s) for d in episodes.due()] == [("a", [2], 61.0)]


@pytest.mark.parametrize(
    ("topic", "collector"),
    [
        ("collector/site/line1/pc2/readings", "pc2"),
        ("collector/site/line1/pc2/meta/d", "pc2"),
        ("readings", "?"),
        ("a/pc\n9/units", "pc?9"),
    ],
)
def test_the_collector_of_a_topic(topic: str, collector: str) -> None:
    assert collector_of(topic) == collector


# -------------------------------------------------------------------- the store process


def _flood(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood", protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        for topic in dict.fromkeys(t for t, _ in messages):
            publish_all(client, topic, (p for t, p in messages if t == topic))
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_flood_keeps_the_quarantine_bounded_counted_and_quiet(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    """1,000 forged metadata messages and 1,000 readings naming unknown versions: the
    quarantine stays at its bound, what was pruned is counted per kind on /health (a
    warning) and /metrics, and the log has a line per collector and kind."""
    store = StoreProcess(
        tmp_path / "s", mosquitto, db_url,
        ingest={"quarantine_max_rows": 100, "parked_max_messages": 50,
                "max_batch_messages": 200},
    )  # fmt: skip
    store.start()
    try:
        order, tags = TEMP_FIRST
        forged = [(M_TOPIC, meta_payload(order, tags, f"{i:08x}")) for i in range(1000)]
        _flood(mosquitto, forged + [(R_TOPIC, unknown(i).payload) for i in range(1000)])
        wait_until(lambda: store.metric("store_parked_total") == 1000, 120, "all parked")
        wait_until(lambda: store.metric("store_quarantined_total") == 1000, 60, "all forged")
        health = store.health()
        kept = health["quarantine"]
        assert 95 <= kept["rows"] <= 100
        assert kept["rows"] == store.metric("store_quarantine_rows")
        assert kept["bytes"] == store.metric("store_quarantine_bytes") > 0
        total_pruned = sum(kept["pruned"].values())
        assert total_pruned == 1000 + 950 - kept["rows"]  # 950 dropped from parking
        assert total_pruned == store.metric("store_quarantine_pruned_total")
        assert set(kept["pruned"]) <= {"meta_hash", DROPPED}
        assert kept["first_pruned_at"] <= kept["last_pruned_at"]
        assert [w for w in health["warnings"] if w.startswith("quarantine: ")] == [
            f"quarantine: {total_pruned} quarantined message(s) pruned since "
            f"{kept['first_pruned_at']} (the last at {kept['last_pruned_at']}: over "
            "ingest.quarantine_max_rows = 100), oldest first, at a bound of "
            "ingest.quarantine_max_*; by kind: "
            + ", ".join(f"{k} {n}" for k, n in sorted(kept["pruned"].items()))
        ]
        engine = connect(db_url)
        assert count(engine, quarantine) == kept["rows"] + 50  # and the 50 parked
        log = store.log.read_text()
        forged_lines = log.count("quarantined a message (meta_hash)")
        assert 1 <= forged_lines <= 2, log[-3000:]  # 2 only if the flood took over a minute
        assert log.count("quarantined a message") == forged_lines
    finally:
        store.stop()


def test_an_idle_store_drops_a_parked_message_past_its_age(
    mosquitto: Mosquitto, tmp_path: Path, db_url: str
) -> None:
    """The age bound is looked at with no traffic at all: a message parked once, and then
    nothing, is dropped into quarantine once it is older than parked_max_age_s."""
    store = StoreProcess(tmp_path / "s", mosquitto, db_url, ingest={"parked_max_age_s": 2})
    store.start()
    try:
        _flood(mosquitto, [(R_TOPIC, unknown(7).payload)])
        wait_until(lambda: store.metric("store_parked_total") == 1, 30, "parked")
        wait_until(lambda: store.metric("store_parked_dropped_total") == 1, 30, "dropped")
        assert store.metric("store_parked_messages") == 0
        engine = connect(db_url)
        with engine.connect() as conn:
            kind, reason = conn.execute(sa.select(quarantine.c.kind, quarantine.c.reason)).one()
        assert kind == DROPPED
        assert reason.endswith("(parked longer than ingest.parked_max_age_s = 2)")
    finally:
        store.stop()
