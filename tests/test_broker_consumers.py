"""A consumer that reads only the broker (a plain paho subscriber, no store) gets every reading
at least once, whatever ``mqtt.delivery`` says (issue 23): duplicates are allowed and carry
the same dedupe key (collector, outbox, seq) and the same content. It decodes with the
contract's reference decoder (``contract.decode``), as docs/messages.md tells consumers to.

With ``delivery: store`` the store's session is dropped in the middle (tests/test_store_heal.py
does the same), so the collector sends a range again: the consumer sees it twice."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from collector.config import Config
from contract.decode import ContextBook, FlatReading, MetaBook, decode_readings
from drivers.modbus.sim import SimulatedModbusServer
from store.db import connect
from tests.handover import Line, store_config
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    async_wait_until,
    set_tester,
)
from tests.store_fixtures import StoreProcess, forget_session


def received(consumer: Subscriber) -> list[FlatReading]:
    """Every reading of every readings message, in arrival order, positional polls resolved
    through the tag metadata and unit contexts received on the same subscription (the
    collector publishes both before the readings that name them)."""
    book, contexts = MetaBook(), ContextBook()
    out: list[FlatReading] = []
    for topic, payload, _retained in list(consumer.messages):
        if "/meta/" in topic and payload:
            book.add(payload)
        elif "/context/" in topic and payload:
            contexts.add(payload)
        elif topic.endswith("/readings"):
            out.extend(decode_readings(payload, book, contexts))
    return out


def assert_every_reading_at_least_once(readings: list[FlatReading], last: int) -> int:
    """Every seq 1..last arrived; copies of a seq are one reading. Returns the copies."""
    by_key: dict[tuple[str, str, int], list[FlatReading]] = defaultdict(list)
    for reading in readings:
        by_key[reading.collector, reading.outbox, reading.seq].append(reading)
    assert {key[:2] for key in by_key} == {("pc1", readings[0].outbox)}
    seqs = {key[2] for key in by_key}
    missing = sorted(set(range(1, last + 1)) - seqs)
    assert not missing, f"{len(missing)} seq(s) never reached the consumer: {missing[:10]}"
    copies = 0
    for copies_of_one in by_key.values():
        first = copies_of_one[0]
        for other in copies_of_one[1:]:
            assert other == first, (first, other)  # the same reading, not just the same key
            copies += 1
    return copies


@pytest.mark.parametrize("delivery", ["broker", "store"])
async def test_a_broker_only_consumer_gets_every_reading_at_least_once(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path, delivery: str
) -> None:
    raw = store_config(mosquitto, modbus_server, tmp_path).model_dump(mode="json")
    raw["mqtt"]["delivery"] = delivery
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.5, serial="SN-1", result=0)
    consumer = Subscriber(mosquitto, TOPIC, client_id="plain-consumer")
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = StoreProcess(tmp_path / "store", mosquitto, db_url, acks={"resend_after_s": 1})
    if delivery == "store":
        await asyncio.to_thread(store.start)
    try:
        async with RunningService(config) as running:
            service = running.service
            mqtt = service.mqtt
            line = Line(service, modbus_server, connect(db_url))
            if delivery == "store":
                await line.flows(100, "the store takes the stream")
                await asyncio.to_thread(store.stop)
                await line.broker_takes(100, "the broker takes readings for the stopped store")
                await asyncio.to_thread(forget_session, mosquitto, "store-1")
                await asyncio.to_thread(store.start)
                await line.flows(100, "the store is back")
            else:
                await line.broker_takes(300, "the broker takes readings")
            await line.drained()
            last = service.outbox.outbox.last_seq
        # Every reading, and every one sent again, once more.
        await async_wait_until(
            lambda: len(received(consumer)) >= last + mqtt.store_resent, 30, "the consumer"
        )
        copies = assert_every_reading_at_least_once(received(consumer), last)
        if delivery == "store":
            assert mqtt.store_resent > 0
            assert copies >= mqtt.store_resent  # what went again reached the consumer again
    finally:
        consumer.close()
        await asyncio.to_thread(store.stop)
