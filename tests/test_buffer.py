"""The SQLite outbox on real files: order, seq that never repeats, the cap, persistence, and
the batches (one row per poll) split or moved aside when the broker will not take them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import orjson
import pytest

from collector.buffer import SEQ_JUMP_AFTER_RESET, Batch, Outbox, make_batch, open_outbox
from collector.buffer.inspection import readings_of
from collector.buffer.schema import HINT_RESERVE_UNITS, SeqHint
from collector.config import Synchronous
from contract.codes import ErrorCode
from contract.decode import ContextBook
from contract.encode import PollEncoder, ReadingEncoder, build_message, envelope, with_seq
from contract.records import Context, ContextChanges, Reading, UnitRecord

ENCODER = PollEncoder()
#: The unit-context versions ENCODER's polls named (what a consumer gets on context/#).
CONTEXTS = ContextBook()


def poll(box: Outbox, n: int, start: int = 0, serial: str | None = "SN1") -> list[Batch]:
    """n readings as one poll: one batch, numbered on from the box (as BufferWriter does)."""
    readings = [
        Reading(1_700_000_000.0 + i, f"t{i}", float(i), "V") for i in range(start, start + n)
    ]
    contexts = [Context("st", serial, "op")] * n
    return [make_batch(ENCODER, box.last_seq + 1, "dev", readings, contexts)]


def seqs(batches: list[Batch]) -> list[tuple[int, int]]:
    return [(b.first_seq, b.last_seq) for b in batches]


def objects(batches: list[Batch]) -> list[dict[str, object]]:
    """One dict per reading of the batches (the stored poll objects, flattened)."""
    for version, _ in ENCODER.used:
        CONTEXTS.add(version.message("buffer"))
    ENCODER.used.clear()
    return [o for b in batches for o in readings_of(b.body, contexts=CONTEXTS)]


def test_append_take_ack_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    box.append(poll(box, 5))
    box.append(poll(box, 3, start=5))
    batches = box.take(0, 100, 1 << 20)
    assert seqs(batches) == [(1, 5), (6, 8)]
    assert [o["seq"] for o in objects(batches)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert objects(batches)[0]["tag"] == "t0"
    assert box.depth == 8
    assert box.ack(1, 5) == 5
    assert seqs(box.take(0, 100, 1 << 20)) == [(6, 8)]
    assert box.take(8, 100, 1 << 20) == []
    assert box.depth == 3
    box.close()


def test_take_stops_at_the_reading_and_byte_budgets_but_always_returns_one(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    for _ in range(10):
        box.append(poll(box, 10))
    assert seqs(box.take(0, 35, 1 << 20)) == [(1, 10), (11, 20), (21, 30)]
    four = sum(len(b.body) + 1 for b in box.take(0, 40, 1 << 20))
    assert len(box.take(0, 1000, four)) == 4
    assert seqs(box.take(0, 1, 1)) == [(1, 10)]  # larger than both: the caller splits it
    assert seqs(box.take(0, 100, 1 << 20, up_to=25)) == [(1, 10), (11, 20)]
    box.close()


def test_seq_never_repeats_after_delete_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000)
    box.append(poll(box, 10))
    box.ack(1, 10)  # everything delivered: the table is empty
    box.close()
    box = Outbox(path, 10_000)
    assert box.depth == 0
    assert box.last_seq == 10
    box.append(poll(box, 2))
    assert seqs(box.take(0, 10, 1 << 20)) == [(11, 12)]
    assert box.stats().last_seq == 12
    box.close()


def test_rows_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000, Synchronous.NORMAL)
    box.append(poll(box, 7))
    box.close()
    box = Outbox(path, 10_000)
    assert box.depth == 7
    assert [o["seq"] for o in objects(box.take(0, 100, 1 << 20))] == list(range(1, 8))
    box.close()


def test_cap_drops_the_oldest_polls_and_counts_their_readings_persistently(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 1000)
    for _ in range(9):
        assert box.append(poll(box, 100)) == 0
    assert box.append(poll(box, 250)) == 200  # the two oldest polls make room for 150
    assert box.depth == 950
    assert box.dropped_total == 200
    assert box.take(0, 1, 1 << 20)[0].first_seq == 201  # seq 1..200 were the oldest
    box.close()
    box = Outbox(path, 1000)
    assert box.dropped_total == 200
    assert box.stats().dropped_total == 200
    assert box.depth == 950
    box.close()


def test_oldest_timestamp_for_the_unsent_age(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    assert box.stats().oldest_ts is None
    box.append(poll(box, 3))
    assert box.stats().oldest_ts == 1_700_000_000.0
    box.close()


def test_message_joins_the_stored_readings_with_their_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    readings = [
        Reading(1_700_000_000.0, "t0", 0.0, "V"),
        Reading(1_700_000_001.0, "t1", 1.0, "V"),
        Reading.bad(1_700_000_000.5, "temp", ErrorCode.TIMEOUT, "degC"),
    ]
    unit = Context("st", "SN1", "op")
    contexts = [unit, unit, Context("st", None, "op")]
    box.append([make_batch(ENCODER, 1, "dev", readings, contexts)])
    body = b",".join(b.body for b in box.take(0, 10, 1 << 20))
    message = json.loads(envelope("pc1", box.outbox_id, body))
    assert message["schema"] == 3
    assert message["collector"] == "pc1"
    assert message["outbox"] == box.outbox_id
    assert len(box.outbox_id) == 16
    # One object for the whole poll: each value's time as an offset (ms) where it differs
    # from the poll's ts, each one's context by its version id; null members left out.
    with_unit, without = ENCODER.version(unit), ENCODER.version(contexts[2])
    assert with_unit is not None
    assert without is not None
    assert message["polls"] == [
        {
            "seq": 1,
            "ts": 1_700_000_000_000,  # epoch milliseconds: 2023-11-14T22:13:20Z
            "device": "dev",
            "ctx": [[0, with_unit.ctx], [2, without.ctx]],
            "tags": ["t0", "t1", "temp"],
            "dt": [[1, 1000], [2, 500]],
            "v": [0.0, 1.0, {"value": None, "quality": "bad", "error": "timeout"}],
        },
    ]
    assert [
        (r["seq"], r["ts"], r["tag"], r["unit_serial"]) for r in objects(box.take(0, 9, 1 << 20))
    ] == [
        (1, "2023-11-14T22:13:20Z", "t0", "SN1"),
        (2, "2023-11-14T22:13:21Z", "t1", "SN1"),
        (3, "2023-11-14T22:13:20.500Z", "temp", None),
    ]
    box.close()


def test_the_outbox_id_is_made_with_the_file_and_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    made = box.outbox_id
    box.close()
    box = Outbox(tmp_path / "b.db", 10_000)
    assert box.outbox_id == made
    box.close()
    other = Outbox(tmp_path / "other.db", 10_000)
    assert other.outbox_id != made
    assert all(c in "0123456789abcdef" for c in other.outbox_id)
    other.close()


def test_seq_is_never_reused_after_a_power_cut_loses_published_commits(tmp_path: Path) -> None:
    """buffer.synchronous normal: a power cut can take commits whose readings were already
    published. The seqs they used are reserved in the fsynced hint, read at every open, so
    the restarted collector never hands them out again."""
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000, Synchronous.NORMAL)
    box.append(poll(box, 5))
    with sqlite3.connect(path) as live, sqlite3.connect(tmp_path / "snapshot.db") as snapshot:
        live.backup(snapshot)  # the file as the disk kept it
    box.append(poll(box, 5))  # seqs 6-10: committed, published, then lost
    box._conn.close()  # the power cut: no clean close
    box._engine.dispose()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    (tmp_path / "snapshot.db").replace(path)
    box = Outbox(path, 10_000, Synchronous.NORMAL)
    assert box.depth == 5  # the commit of seqs 6-10 is gone...
    box.append(poll(box, 1))
    assert box.last_seq > 10  # ...but its seqs are not handed out again
    box.close()
    box = Outbox(path, 10_000, Synchronous.NORMAL)  # a clean restart leaves no gap
    last = box.last_seq
    box.append(poll(box, 1))
    assert box.last_seq == last + 1
    box.close()


def test_a_buffer_of_schema_1_batches_is_converted_to_poll_objects(tmp_path: Path) -> None:
    """Batches stored by the version before schema 2 (one object per reading) are rewritten
    as poll objects at start-up: same readings, same seqs; the quarantine too."""
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000)
    old = ReadingEncoder()
    readings = [Reading(1_700_000_000.0, f"t{i}", i * 1.5, "V") for i in range(3)]
    readings.append(Reading.bad(1_700_000_000.0, "temp", ErrorCode.TIMEOUT, "degC"))
    contexts = [Context("st", "SN1", "op", 2)] * 4
    body = old.encode(1, "dev", readings, contexts)
    box._conn.exec_driver_sql("INSERT INTO batches VALUES (4, 1, 1.7e9, ?)", (body,))
    box._conn.exec_driver_sql(
        "INSERT INTO quarantine VALUES (9, 1.7e9, ?, 'too large', 1.7e9)",
        (old.encode(9, "dev", readings[:1], contexts[:1]),),
    )
    box._conn.exec_driver_sql("UPDATE meta SET value = 1 WHERE key = 'body_schema'")
    box._conn.commit()
    box.close()
    before = json.loads(build_message("pc1", body))["readings"]
    box = Outbox(path, 10_000)
    (batch,) = box.take(0, 100, 1 << 20)
    polls = orjson.loads(b"[" + batch.body + b"]")
    assert polls == [
        {
            "seq": 1,
            "ts": "2023-11-14T22:13:20Z",
            "device": "dev",
            "station": "st",
            "unit_serial": "SN1",
            "operation": "op",
            "attempt": 2,
            "values": {
                "t0": 0.0,
                "t1": 1.5,
                "t2": 3.0,
                "temp": {"value": None, "quality": "bad", "error": "timeout"},
            },
        }
    ]
    after = objects([batch])
    assert [(r["seq"], r["tag"], r["value"], r["quality"]) for r in after] == [
        (r["seq"], r["tag"], r["value"], r["quality"]) for r in before
    ]
    quarantined = box._conn.exec_driver_sql("SELECT body FROM quarantine").scalar_one()
    assert orjson.loads(quarantined)["values"] == {"t0": 0.0}
    box.close()


async def test_rows_awaiting_a_retried_delete_are_never_taken_again(tmp_path: Path) -> None:
    """After a failed delete (a full disk) the delivered range is kept for a retry; takes skip
    it, and look past it when a whole batch would be skipped."""
    import sqlalchemy as sa

    from collector.buffer import AsyncOutbox

    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    for _ in range(30):
        await box.append(poll(box.outbox, 1))
    real_ack = box.outbox.ack_ranges

    def full_disk(ranges: object) -> int:
        raise sa.exc.OperationalError("DELETE", {}, Exception("database or disk is full"))

    box.outbox.ack_ranges = full_disk  # type: ignore[method-assign]
    await box.ack(1, 10)
    assert box.ack_error == "database or disk is full"
    batches = await box.take(0, 10, 1 << 20)
    assert [b.last_seq for b in batches] == list(range(11, 21))  # past the whole skipped take
    box.outbox.ack_ranges = real_ack  # type: ignore[method-assign]
    await box.flush_acks()
    assert box.ack_error is None  # the retry went through
    assert [b.last_seq for b in await box.take(0, 5, 1 << 20)] == [11, 12, 13, 14, 15]
    assert box.outbox.depth == 20
    await box.close()


def unit(serial: str, readings: int = 3) -> UnitRecord:
    return UnitRecord(
        serial,
        "ft-1",
        "op",
        1,
        1_700_000_000.0,
        1_700_000_030.5,
        "verdict",
        "pass",
        None,
        readings,
        {"leak": (1.0, 0.5, 2.0)},
    )


def test_unit_records_and_station_state_go_in_with_the_readings(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    changes = ContextChanges([unit("SN1"), unit("SN2")], {("op", "SN1"): 2}, {"ft-1": b"{}"})
    box.append(poll(box, 3), changes)
    box.append([], ContextChanges([unit("SN3")], {}, {"ft-1": b'{"x":1}'}))
    assert (box.depth, box.units_depth) == (3, 3)
    rows = box.take_units(0, 10)
    assert [seq for seq, _ in rows] == [1, 2, 3]  # their own seq, not the readings'
    message = json.loads(build_message("pc1", with_seq(rows[:1]), b"units"))
    assert message["units"] == [
        {
            "seq": 1,
            "serial": "SN1",
            "station": "ft-1",
            "operation": "op",
            "attempt": 1,
            "start": "2023-11-14T22:13:20Z",
            "end": "2023-11-14T22:13:50.500000Z",
            "cycle_time_s": 30.5,
            "verdict": "pass",
            "failure_code": None,
            "ended_by": "verdict",
            "readings": 3,
            "characteristics": {"leak": {"last": 1.0, "min": 0.5, "max": 2.0}},
            # Schema 2's unit-record fields (docs/messages.md), at their defaults here.
            "slot": None,
            "takt_s": None,
            "golden": False,
            "work_order": None,
        }
    ]
    box.ack_units(1, 2)
    box.close()
    box = Outbox(tmp_path / "b.db", 10_000)
    assert box.units_depth == 1
    assert box.load_context() == ({"ft-1": b'{"x":1}'}, {("op", "SN1"): 2})
    box.append([], ContextChanges([unit("SN4")], {}, {}))
    assert [seq for seq, _ in box.take_units(0, 10)] == [3, 4]
    box.close()


def test_unit_seqs_are_never_reused_after_a_power_cut_loses_published_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """buffer.synchronous normal: unit records are published by seq like readings, and a power
    cut that loses their commit must not make the restarted collector hand the same unit seqs
    out again (the store would take the new unit records for duplicates and drop them).

    The power cut keeps what was fsynced and nothing else: the database as a backup taken
    before the lost commit, and the seq hint as of its last fsynced write (an unsynced hint
    write would be lost with the page cache, so it must not be what saves the seqs)."""
    path = tmp_path / "b.db"
    synced: dict[str, str] = {}
    original_write = SeqHint.write

    def write(
        self: SeqHint, readings: int, units: int, force: bool = True, sync: bool = False
    ) -> None:
        original_write(self, readings, units, force, sync)
        if sync:
            synced["hint"] = self.path.read_text()

    monkeypatch.setattr(SeqHint, "write", write)
    box = Outbox(path, 10_000, Synchronous.NORMAL)
    # More unit records than one reservation step, so that a reservation that forgot the unit
    # stream is exceeded by the seqs in use, not covered by accident.
    many = HINT_RESERVE_UNITS + 500
    box.append(poll(box, 2), ContextChanges([unit("SN1")] * many, {}, {}))
    assert box.last_unit_seq == many
    with sqlite3.connect(path) as live, sqlite3.connect(tmp_path / "snapshot.db") as snapshot:
        live.backup(snapshot)  # the file as the disk kept it
    box.append(
        poll(box, 1), ContextChanges([unit("SN2")] * 5, {}, {})
    )  # committed, published, lost
    lost = [seq for seq, _ in box.take_units(many, 10)]
    assert lost == list(range(many + 1, many + 6))
    box._conn.close()  # the power cut: no clean close
    box._engine.dispose()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    (tmp_path / "snapshot.db").replace(path)
    assert "hint" in synced  # the reservation was fsynced before the seqs were committed
    SeqHint(path).path.write_text(synced["hint"])

    box = Outbox(path, 10_000, Synchronous.NORMAL)
    assert box.units_depth == many  # the commit of the five unit records is gone...
    box.append([], ContextChanges([unit("SN3")], {}, {}))
    (after,) = [seq for seq, _ in box.take_units(many, 10)]
    assert after > max(lost)  # ...but their seqs are not handed out again
    box.close()
    box = Outbox(path, 10_000, Synchronous.NORMAL)  # a clean restart leaves no gap
    box.append([], ContextChanges([unit("SN4")], {}, {}))
    assert [seq for seq, _ in box.take_units(after, 10)] == [after + 1]
    box.close()


def test_after_a_corrupt_file_unit_seqs_also_continue_above_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000)
    box.append(poll(box, 2), ContextChanges([unit("SN1")] * 5, {}, {}))
    box.close()
    path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    box = open_outbox(path, 10_000)
    box.append(poll(box, 1), ContextChanges([unit("SN2")], {}, {}))
    assert box.take(0, 10, 1 << 20)[0].first_seq == 5 + SEQ_JUMP_AFTER_RESET + 1
    assert box.take_units(0, 10)[0][0] == 5 + SEQ_JUMP_AFTER_RESET + 1
    box.close()


def test_one_poll_larger_than_the_whole_buffer_is_dropped_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 1000)
    box.append(poll(box, 10))
    assert box.append(poll(box, 1005)) == 1015  # the cap holds whatever the poll's size
    assert box.depth == 0
    assert box.dropped_total == 1015
    box.append(poll(box, 5))
    assert seqs(box.take(0, 100, 1 << 20)) == [(1016, 1020)]  # the gap shows the drop
    box.close()


def test_split_rewrites_a_batch_into_smaller_ones_with_the_same_readings(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    box.append(poll(box, 10))
    box.append(poll(box, 3))
    before = objects(box.take(0, 100, 1 << 20))
    assert box.split(1, 13, 4) == 1  # the 3-reading batch is small enough already
    assert seqs(box.take(0, 100, 1 << 20)) == [(1, 4), (5, 8), (9, 10), (11, 13)]
    assert objects(box.take(0, 100, 1 << 20)) == before
    assert box.depth == 13
    assert box.split(1, 4, 1) == 1
    assert seqs(box.take(0, 3, 1 << 20)) == [(1, 1), (2, 2), (3, 3)]
    box.close()


def test_quarantine_moves_a_reading_aside_with_its_seq_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000)
    box.append(poll(box, 3))
    box.split(1, 3, 1)
    assert box.quarantine(2, "too large") == 1
    assert box.quarantine(2, "too large") == 0  # gone already
    assert seqs(box.take(0, 100, 1 << 20)) == [(1, 1), (3, 3)]
    assert (box.depth, box.quarantined_total) == (2, 1)
    box.close()
    with sqlite3.connect(path) as db:
        seq, body, reason = db.execute("SELECT seq, body, reason FROM quarantine").fetchone()
    assert (seq, orjson.loads(body)["seq"], reason) == (2, 2, "too large")


def test_a_buffer_of_the_one_row_per_reading_format_is_converted_with_nothing_lost(
    tmp_path: Path,
) -> None:
    """A line PC upgraded with readings still buffered: they are converted at start-up, keep
    their seqs, and seq continues above the highest one the old version handed out."""
    path = tmp_path / "b.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE readings (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts FLOAT NOT NULL,
                                   body BLOB NOT NULL);
            CREATE TABLE quarantine (seq INTEGER PRIMARY KEY, ts FLOAT NOT NULL,
                                     body BLOB NOT NULL, reason VARCHAR NOT NULL,
                                     moved_ts FLOAT NOT NULL);
            CREATE TABLE meta (key VARCHAR PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO meta VALUES ('dropped_total', 7);
            """
        )

        def old_body(tag: str) -> bytes:
            """A reading object as that version stored it: without its seq."""
            reading = ReadingEncoder().encode(
                1, "dev", [Reading(1.7e9, tag, 1.5, "V")], [Context("st", None, "op")]
            )
            return b"{" + reading[reading.index(b",") + 1 :]

        for seq in (41, 42, 50):
            db.execute("INSERT INTO readings VALUES (?, 1.7e9, ?)", (seq, old_body(f"t{seq}")))
        db.execute(
            "INSERT INTO quarantine VALUES (30, 1.7e9, ?, 'too large', 1.7e9)", (old_body("big"),)
        )
        db.execute("UPDATE sqlite_sequence SET seq = 60 WHERE name = 'readings'")
    box = Outbox(path, 10_000)
    assert (box.depth, box.last_seq, box.dropped_total) == (3, 60, 7)
    assert [(o["seq"], o["tag"]) for o in objects(box.take(0, 100, 1 << 20))] == [
        (41, "t41"),
        (42, "t42"),
        (50, "t50"),
    ]
    box.append(poll(box, 2))
    assert seqs(box.take(50, 100, 1 << 20)) == [(61, 62)]
    box.close()
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        quarantined = db.execute("SELECT body FROM quarantine").fetchone()[0]
    assert "readings" not in tables
    assert orjson.loads(quarantined)["seq"] == 30
    assert orjson.loads(quarantined)["values"] == {"big": 1.5}
    box = Outbox(path, 10_000)  # a second start finds nothing to convert
    assert (box.depth, box.last_seq) == (5, 62)
    box.close()


async def test_deletes_of_delivered_readings_go_in_with_the_next_commit(tmp_path: Path) -> None:
    from collector.buffer import AsyncOutbox

    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    await box.append(poll(box.outbox, 10))
    box.delivered(1, 10)
    assert box.acks_waiting_s is not None
    assert await box.take(0, 100, 1 << 20) == []  # delivered: never taken again
    await box.append(poll(box.outbox, 5))  # one transaction: the delete and the new poll
    assert box.acks_waiting_s is None
    assert box.outbox.depth == 5
    assert seqs(box.outbox.take(0, 100, 1 << 20)) == [(11, 15)]
    await box.close()


async def test_writer_numbers_polls_and_an_overflow_leaves_a_counted_gap(tmp_path: Path) -> None:
    """The writer's queue is bounded; a poll that does not fit is dropped and counted, and its
    seqs are used up, so consumers see the drop as a gap."""
    from collector.buffer import AsyncOutbox, BufferWriter

    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    context = Context("st", None, "op")

    def submit(ts: float) -> None:
        readings = [Reading(ts, f"t{i}", i) for i in range(3)]
        writer.submit("dev", readings, [context] * 3)

    one = len(
        PollEncoder().encode(1, "dev", [Reading(1.0, f"t{i}", i) for i in range(3)], [context] * 3)
    )
    writer = BufferWriter(box, max_pending_bytes=one)  # one poll while nothing is committed
    submit(1.0)
    assert writer.can_take()
    submit(2.0)
    assert not writer.can_take()  # pollers skip their polls now (back-pressure)
    assert not writer.keeping_up  # and /health says so
    submit(3.0)  # one already under way when the bound was reached is still taken
    submit(4.0)  # past twice the bound: dropped
    assert (writer.overflow_dropped, writer.collected, writer.pending) == (3, 12, 3)
    await writer.flush()
    assert writer.can_take()
    assert writer.keeping_up
    submit(5.0)
    await writer.flush()
    stored = box.outbox.take(0, 100, 1 << 20)
    assert seqs(stored) == [(1, 3), (4, 6), (7, 9), (13, 15)]
    assert [o["ts"] for o in objects(stored)][-1] == "1970-01-01T00:00:05Z"
    await box.close()


async def test_a_poll_larger_than_a_message_is_cut_when_it_is_encoded(tmp_path: Path) -> None:
    """A poll with more readings than a message carries is stored as even parts, each one
    message's worth, with the same readings and seqs as one batch would have had: the
    forwarder then never has to decode, split and rewrite it in the buffer."""
    from collector.buffer import AsyncOutbox, BufferWriter

    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    writer = BufferWriter(box, max_readings_per_batch=500)
    readings = [Reading(1_700_000_000.0 + i % 7, f"t{i}", i, "V") for i in range(1201)]
    contexts = [Context("st", "SN1", "op")] * 1201
    writer.submit("dev", readings, contexts)
    writer.submit("dev", readings[:500], contexts[:500])  # exactly a message: one batch
    await writer.flush()
    stored = box.outbox.take(0, 10_000, 1 << 30)
    assert seqs(stored) == [(1, 401), (402, 802), (803, 1201), (1202, 1701)]
    assert [b.ts for b in stored][:3] == [1_700_000_000.0] * 3  # each part's oldest reading
    whole = objects([make_batch(ENCODER, 1, "dev", readings, contexts)])
    assert objects(stored[:3]) == whole
    await box.close()


def test_a_failed_commit_with_deletes_changes_nothing(tmp_path: Path) -> None:
    import pytest
    import sqlalchemy as sa

    box = Outbox(tmp_path / "b.db", 10_000)
    box.append(poll(box, 5))
    pages = box._conn.exec_driver_sql("PRAGMA page_count").scalar_one()
    box._conn.exec_driver_sql(f"PRAGMA max_page_count={pages}")  # a full disk
    box._conn.commit()
    big = poll(box, 2000)
    with pytest.raises(sa.exc.OperationalError, match="full"):
        box.append(big, acks=[(1, 5)])
    assert (box.depth, box.last_seq) == (5, 5)
    assert seqs(box.take(0, 100, 1 << 20)) == [(1, 5)]  # the delete was rolled back too
    box._conn.exec_driver_sql("PRAGMA max_page_count=1000000")
    box._conn.commit()
    box.append(big, acks=[(1, 5)])
    assert (box.depth, box.last_seq) == (2000, 2005)
    box.close()
