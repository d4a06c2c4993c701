"""The SQLite outbox on real files: order, seq that never repeats, the cap, persistence."""

from __future__ import annotations

import json
from pathlib import Path

from collector.buffer import SEQ_JUMP_AFTER_RESET, SPLICE_BYTES, Outbox, open_outbox
from collector.config import Synchronous
from collector.errors import ErrorCode
from collector.forwarder import build_message
from collector.reading import ContextChanges, Reading, Record, UnitRecord


def records(n: int, start: int = 0, serial: str | None = "SN1") -> list[Record]:
    return [
        Record(Reading(1_700_000_000.0 + i, f"t{i}", float(i), "V"), "st", "dev", serial, "op")
        for i in range(start, start + n)
    ]


def test_append_take_ack_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    box.append(records(5))
    box.append(records(3, start=5))
    rows = box.take(0, 100, 1 << 20)
    assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads(rows[0][1])["tag"] == "t0"
    assert box.depth == 8
    assert box.ack(1, 4) == 4
    assert [seq for seq, _ in box.take(0, 100, 1 << 20)] == [5, 6, 7, 8]
    assert [seq for seq, _ in box.take(6, 100, 1 << 20)] == [7, 8]
    assert box.depth == 4
    box.close()


def test_seq_never_repeats_after_delete_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000)
    box.append(records(10))
    box.ack(1, 10)  # everything delivered: the table is empty
    box.close()
    box = Outbox(path, 10_000)
    assert box.depth == 0
    box.append(records(2))
    assert [seq for seq, _ in box.take(0, 10, 1 << 20)] == [11, 12]
    assert box.stats().last_seq == 12
    box.close()


def test_rows_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000, Synchronous.NORMAL)
    box.append(records(7))
    box.close()
    box = Outbox(path, 10_000)
    assert box.depth == 7
    assert [seq for seq, _ in box.take(0, 100, 1 << 20)] == list(range(1, 8))
    box.close()


def test_cap_drops_the_oldest_and_counts_them_persistently(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 1000)
    assert box.append(records(900)) == 0
    assert box.append(records(250, start=900)) == 150
    assert box.depth == 1000
    assert box.dropped_total == 150
    assert box.take(0, 1, 1 << 20)[0][0] == 151  # seq 1..150 were the oldest
    box.close()
    box = Outbox(path, 1000)
    assert box.dropped_total == 150
    assert box.stats().dropped_total == 150
    box.close()


def test_take_respects_the_byte_budget_but_always_returns_one(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    box.append(records(100))
    one = len(box.take(0, 1, 1 << 20)[0][1]) + SPLICE_BYTES
    assert len(box.take(0, 100, one * 10)) == 10
    assert len(box.take(0, 100, 1)) == 1
    box.close()


def test_oldest_timestamp_for_the_unsent_age(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    assert box.stats().oldest_ts is None
    box.append(records(3))
    assert box.stats().oldest_ts == 1_700_000_000.0
    box.close()


def test_message_splices_seq_into_each_reading(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 10_000)
    bad = Record(
        Reading.bad(1_700_000_000.5, "temp", ErrorCode.TIMEOUT, "degC"), "st", "dev", None, "op"
    )
    box.append([*records(2), bad])
    message = json.loads(build_message("pc1", box.take(0, 10, 1 << 20)))
    assert message["schema"] == 1
    assert message["collector"] == "pc1"
    assert message["readings"] == [
        {
            "seq": 1,
            "ts": "2023-11-14T22:13:20Z",
            "station": "st",
            "device": "dev",
            "tag": "t0",
            "value": 0.0,
            "unit": "V",
            "quality": "good",
            "error": None,
            "unit_serial": "SN1",
            "operation": "op",
            "attempt": None,
        },
        {
            "seq": 2,
            "ts": "2023-11-14T22:13:21Z",
            "station": "st",
            "device": "dev",
            "tag": "t1",
            "value": 1.0,
            "unit": "V",
            "quality": "good",
            "error": None,
            "unit_serial": "SN1",
            "operation": "op",
            "attempt": None,
        },
        {
            "seq": 3,
            "ts": "2023-11-14T22:13:20.500000Z",
            "station": "st",
            "device": "dev",
            "tag": "temp",
            "value": None,
            "unit": "degC",
            "quality": "bad",
            "error": "timeout",
            "unit_serial": None,
            "operation": "op",
            "attempt": None,
        },
    ]
    box.close()


async def test_rows_awaiting_a_retried_delete_are_never_taken_again(tmp_path: Path) -> None:
    """After a failed delete (a full disk) the delivered range is kept for a retry; takes skip
    it, and look past it when a whole batch would be skipped."""
    import sqlalchemy as sa

    from collector.buffer import AsyncOutbox

    box = AsyncOutbox(tmp_path / "b.db", 10_000)
    await box.open()
    await box.append(records(30))
    real_ack = box.outbox.ack

    def full_disk(first: int, last: int) -> int:
        raise sa.exc.OperationalError("DELETE", {}, Exception("database or disk is full"))

    box.outbox.ack = full_disk  # type: ignore[method-assign]
    await box.ack(1, 10)
    assert box.ack_error == "database or disk is full"
    rows = await box.take(0, 10, 1 << 20)
    assert [seq for seq, _ in rows] == list(range(11, 21))  # past the whole skipped batch
    box.outbox.ack = real_ack  # type: ignore[method-assign]
    assert [seq for seq, _ in await box.take(0, 5, 1 << 20)] == [11, 12, 13, 14, 15]
    assert box.ack_error is None  # the retry went through on that take
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
    box.append(records(3), changes)
    box.append([], ContextChanges([unit("SN3")], {}, {"ft-1": b'{"x":1}'}))
    assert (box.depth, box.units_depth) == (3, 3)
    rows = box.take_units(0, 10)
    assert [seq for seq, _ in rows] == [1, 2, 3]  # their own seq, not the readings'
    message = json.loads(build_message("pc1", rows[:1], b"units"))
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


def test_after_a_corrupt_file_unit_seqs_also_continue_above_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    box = Outbox(path, 10_000)
    box.append(records(2), ContextChanges([unit("SN1")] * 5, {}, {}))
    box.close()
    path.write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    box = open_outbox(path, 10_000)
    box.append(records(1), ContextChanges([unit("SN2")], {}, {}))
    assert box.take(0, 10, 1 << 20)[0][0] == 5 + SEQ_JUMP_AFTER_RESET + 1
    assert box.take_units(0, 10)[0][0] == 5 + SEQ_JUMP_AFTER_RESET + 1
    box.close()


def test_one_batch_larger_than_the_room_left_still_keeps_the_cap(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "b.db", 1000)
    assert box.append(records(1005)) == 5
    rows = box.take(0, 5000, 1 << 30)
    assert len(rows) == box.depth == 1000
    assert rows[0][0] == 6  # the batch's own oldest five were dropped
    assert box.dropped_total == 5
    box.close()
