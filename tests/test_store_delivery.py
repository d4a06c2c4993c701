"""``mqtt.delivery: store`` end to end, with real parts: a collector (in this process) polling a
pymodbus simulator, a real mosquitto (SIGKILLed and restarted without persistence), a store
process on SQLite and on PostgreSQL. A reading leaves the collector's buffer only once the
store acknowledged it; what the broker lost after its PUBACK is sent again; a forged or
malformed acknowledgement deletes nothing."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from collector.config import Config
from collector.delivery.sentmarks import SentMarks
from collector.delivery.storeack import BadAck, parse_ack
from contract.ranges import intersect, subtract
from drivers.modbus.sim import SimulatedModbusServer
from store.db import connect
from tests import handover
from tests.handover import kill, store_config, stored_seqs
from tests.helpers import (
    Mosquitto,
    RunningService,
    Subscriber,
    async_wait_until,
    run_cli,
    set_tester,
)
from tests.store_fixtures import Publisher, StoreProcess

BASE = "collector/plant-a/line-1/pc1"


@pytest.fixture
def volatile_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto without persistence: a restart forgets every session and subscription."""
    with handover.broker(tmp_path / "mq", persistence=False) as broker:
        yield broker


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatedModbusServer]:
    server = SimulatedModbusServer(unit_ids=[1, 2])
    await server.start()
    yield server
    await server.stop()


async def test_broker_restart_without_persistence_and_a_stopped_store_lose_nothing(
    volatile_broker: Mosquitto, simulator: SimulatedModbusServer, db_url: str, tmp_path: Path
) -> None:
    broker = volatile_broker
    engine = connect(db_url)
    store = StoreProcess(
        tmp_path / "store", broker, db_url, acks={"resend_after_s": 1, "interval_s": 1}
    )
    store.start()
    config = store_config(broker, simulator, tmp_path)
    await set_tester(simulator, config, voltage=1.5, serial="SN-1", result=0)
    try:
        async with RunningService(config) as running:
            service = running.service
            outbox = service.outbox.outbox
            mqtt = service.mqtt
            await async_wait_until(lambda: stored_seqs(engine)[1] >= 200, 30, "readings stored")
            await async_wait_until(lambda: mqtt.store_acks > 0, 10, "store acknowledgements")

            # The store goes away: the broker still takes everything, the buffer keeps it.
            store.stop()
            delivered = mqtt.readings_delivered
            await async_wait_until(
                lambda: mqtt.readings_delivered >= delivered + 200, 30, "broker takes readings"
            )
            assert outbox.depth >= 200
            assert mqtt.store_waiting_readings >= 200

            # The broker dies and comes back without its sessions; the collector publishes
            # to nobody (the store's subscription is gone) until the store is back.
            kill(broker)
            broker.start()
            delivered = mqtt.readings_delivered
            await async_wait_until(
                lambda: mqtt.readings_delivered >= delivered + 200, 30, "delivered to nobody"
            )
            store.start()
            await async_wait_until(lambda: mqtt.store_resent > 0, 60, "a lost range sent again")

            # No more readings: everything assigned must reach the store and leave the buffer.
            await simulator.stop()
            await async_wait_until(
                lambda: outbox.depth == 0 and outbox.units_depth == 0, 90, "the buffer empties"
            )
            last = outbox.last_seq
            rows, distinct = stored_seqs(engine)
            assert (rows, distinct) == (last, last), "every seq stored exactly once"
            assert mqtt.store_waiting_readings == 0
            _status, reasons = service.health()
            assert not any("store" in r for r in reasons), reasons
        gaps = store.get("/gaps").json()
        readings = [g for g in gaps if g["collector"] == "pc1" and g["kind"] == "readings"]
        assert [(g["low_seq"], g["high_seq"], g["missing_seqs"]) for g in readings] == [
            (1, last, 0)
        ]
        # Resends and redeliveries are duplicates, never conflicts.
        assert store.metric("store_quarantined_total") == 0
    finally:
        store.stop()


async def test_forged_and_malformed_acks_are_counted_and_delete_nothing(
    mosquitto: Mosquitto, simulator: SimulatedModbusServer, tmp_path: Path
) -> None:
    config = store_config(mosquitto, simulator, tmp_path)
    await set_tester(simulator, config, voltage=1.5, serial="SN-1", result=0)
    forger = Publisher(mosquitto, "forger")
    try:
        async with RunningService(config) as running:
            service = running.service
            outbox = service.outbox.outbox
            mqtt = service.mqtt
            await async_wait_until(lambda: mqtt.readings_delivered >= 100, 30, "delivered")
            depth = outbox.depth
            assert depth >= 100  # no store: nothing acknowledged, nothing deleted
            oid = outbox.outbox_id
            good = {"schema": 2, "outbox": oid, "stream": "readings", "holes": [], "resend": []}
            forged: list[bytes] = [
                b"not json",
                b"[1, 2]",
                orjson.dumps({**good, "from": 10, "through": 5}),
                orjson.dumps({**good, "from": 1, "through": 10**12}),  # never assigned
                orjson.dumps({**good, "from": "1", "through": 5}),
                orjson.dumps({**good, "from": 1, "through": 5, "holes": [[3]]}),
                orjson.dumps({**good, "stream": "secrets", "from": 1, "through": 5}),
            ]
            for payload in forged:
                forger.publish(f"{BASE}/ack", payload)
            other = orjson.dumps({**good, "outbox": "someone-else", "from": 1, "through": 5})
            forger.publish(f"{BASE}/ack", other)
            await async_wait_until(
                lambda: (
                    sum(mqtt.store_acks_refused.values()) == len(forged)
                    and mqtt.store_acks_other_outbox == 1
                ),
                10,
                "every forged ack counted",
            )
            assert mqtt.store_acks == 0
            assert outbox.depth >= depth, "nothing deleted"
            assert _lowest_seq(config) == 1

            # A well-formed ack for this outbox deletes exactly what it covers.
            first_batch_last = _fourth_batch_end(config)
            forger.publish(
                f"{BASE}/ack", orjson.dumps({**good, "from": 1, "through": first_batch_last})
            )
            await async_wait_until(lambda: mqtt.store_acks == 1, 10, "the good ack")
            await async_wait_until(
                lambda: _lowest_seq(config) > first_batch_last, 10, "rows it covers deleted"
            )
            # Asked again for what it no longer holds, it says so (on {base}/gaps).
            answers = Subscriber(mosquitto, f"{BASE}/gaps", client_id="gaps-watcher")
            try:
                again = {**good, "from": 1, "through": first_batch_last}
                forger.publish(
                    f"{BASE}/ack", orjson.dumps({**again, "resend": [[1, first_batch_last]]})
                )
                await async_wait_until(lambda: answers.payloads("/gaps"), 10, "an answer")
                [answer] = answers.payloads("/gaps")
                assert answer["unavailable"] == [[1, first_batch_last]]
                assert (answer["collector"], answer["outbox"]) == ("pc1", oid)
            finally:
                answers.close()
    finally:
        forger.close()


def _fourth_batch_end(config: Config) -> int:
    with sqlite3.connect(f"file:{config.buffer.path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT last_seq FROM batches ORDER BY last_seq LIMIT 1 OFFSET 3")
        return int(row.fetchone()[0])


def _lowest_seq(config: Config) -> int:
    """The lowest seq in the buffer file, read through a connection of our own."""
    with sqlite3.connect(f"file:{config.buffer.path}?mode=ro", uri=True) as conn:
        value = conn.execute("SELECT min(first_seq) FROM batches").fetchone()[0]
    return int(value or 0)


async def test_a_power_cut_jump_is_never_assigned_not_missing(
    mosquitto: Mosquitto, simulator: SimulatedModbusServer, db_url: str, tmp_path: Path
) -> None:
    """buffer.synchronous normal: after a power cut the buffer continues above its fsynced
    reservation. The skipped seqs are announced; the store calls them never assigned, its
    /health stays ok and `collector store gaps` exits 0."""
    engine = connect(db_url)
    store = StoreProcess(tmp_path / "store", mosquitto, db_url, acks={"interval_s": 1})
    store.start()
    raw = store_config(mosquitto, simulator, tmp_path).model_dump(mode="json")
    raw["buffer"]["synchronous"] = "normal"
    config = Config.model_validate(raw)
    await set_tester(simulator, config, voltage=1.5, serial="SN-1", result=0)
    try:
        async with RunningService(config) as running:
            await async_wait_until(lambda: stored_seqs(engine)[1] >= 100, 30, "readings stored")
            last = running.service.outbox.outbox.last_seq
        # The power cut: the last commits are gone and the fsynced hint holds the reservation
        # ahead of them (what collector.buffer.store._reserve leaves; the clean stop above
        # wrote the exact values, so put the reservation back).
        hint = Path(f"{config.buffer.path}.seq")
        reserved = last + 100_000
        hint.write_text(f"{reserved} 1000\n")
        async with RunningService(config) as running:
            outbox = running.service.outbox.outbox
            assert outbox.jumps["readings"] == [(last + 1, reserved)]
            await async_wait_until(
                lambda: _high_seq(engine) > reserved + 50, 30, "readings above the jump"
            )

            def gaps() -> dict[str, object]:
                [readings] = [g for g in store.get("/gaps").json() if g["kind"] == "readings"]
                return dict(readings)

            # The backlog of the first run (seqs up to `last`) and the live readings above the
            # jump go out alternately: until the backlog is stored, its seqs are missing (not
            # yet delivered), rightly. Wait for both, not for a moment between them.
            await async_wait_until(
                lambda: (
                    gaps()["never_assigned_seqs"] == reserved - last and gaps()["missing_seqs"] == 0
                ),
                30,
                "jump recorded, the backlog stored",
            )
        readings = gaps()
        assert readings["missing_seqs"] == 0, readings
        assert readings["never_assigned"] == [{"first": last + 1, "last": reserved}]
        assert store.health()["status"] == "ok"
        assert store.metric("store_never_assigned_seqs") >= reserved - last
        done = run_cli("store", "gaps", "--config", str(store.config))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "never assigned (no error)" in done.stdout
    finally:
        store.stop()


def _high_seq(engine: sa.Engine) -> int:
    try:
        with engine.connect() as conn:
            value = conn.exec_driver_sql("SELECT max(seq) FROM readings").scalar()
    except sa.exc.SQLAlchemyError:
        return 0
    return int(value or 0)


# --- the pieces alone -----------------------------------------------------------------------


def test_an_ack_covers_from_through_minus_its_holes() -> None:
    payload = orjson.dumps(
        {"schema": 2, "outbox": "o", "stream": "readings", "from": 1, "through": 100,
         "holes": [[10, 19], [50, 50]], "resend": [[10, 19]]}
    )  # fmt: skip
    ack = parse_ack(payload, "o", {"readings": 100})
    assert ack is not None
    assert ack.covered() == [(1, 9), (20, 49), (51, 100)]
    assert parse_ack(payload, "other", {"readings": 100}) is None
    with pytest.raises(BadAck):
        parse_ack(payload, "o", {"readings": 99})  # reaches past the last seq assigned


def test_sent_marks_hold_until_removed_and_find_a_lost_tail() -> None:
    marks = SentMarks()
    marks.add(1, 10, 10, sent_at=0.0)
    marks.add(11, 20, 10, sent_at=5.0)
    marks.add(21, 30, 10, sent_at=50.0)
    assert marks.holds(15)
    assert not marks.holds(31)
    assert marks.items == 30
    marks.remove([(1, 15)])  # only whole messages go
    assert not marks.holds(5)
    assert marks.holds(15)
    assert [m.first for m in marks.uncovered([], older_than=10.0)] == [11]
    marks.discard(marks.overlapping(25, 25))
    assert marks.items == 10
    assert subtract([(1, 100)], [(1, 40), (60, 70)]) == [(41, 59), (71, 100)]
    assert subtract([(5, 9)], [(1, 20)]) == []
    assert intersect([(1, 100), (200, 210)], [(90, 205)]) == [(90, 100), (200, 205)]
