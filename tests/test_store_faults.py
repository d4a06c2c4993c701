"""The hand-over under faults (issue 23), with real parts: a collector polling a pymodbus
simulator with ``mqtt.delivery: store``, a real mosquitto without persistence, store processes
on a shared subscription and a PostgreSQL of the test's own (so that stopping it touches no
other test). Whatever the broker, a store or the database does, every seq the collector
assigned ends up stored exactly once, the gap report is clean and the buffer empties.

Slow tier: each test runs for minutes (a database outage of 60 and 90 s is the point)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.modbus.sim import SimulatedModbusServer
from store.db import connect
from tests.handover import FLOW_S, Line, broker, kill, store_config
from tests.helpers import Mosquitto, RunningService, async_wait_until, set_tester
from tests.postgres import PostgresServer
from tests.store_fixtures import StoreProcess, running_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: The shared subscription's group.
GROUP = "store"


@pytest.fixture
def volatile_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with broker(tmp_path / "mq", persistence=False) as mq:
        yield mq


@pytest.fixture
def queue_limited_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """mosquitto's default ``max_queued_messages`` (1000): a store that stops taking messages
    loses what comes after them."""
    with broker(tmp_path / "mq", queue_limit=True) as mq:
        yield mq


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL for this test alone: it is stopped in the middle of the test."""
    yield from running_postgres()


async def test_broker_restarts_a_store_kill_and_a_database_outage_lose_nothing(
    volatile_broker: Mosquitto,
    modbus_server: SimulatedModbusServer,
    own_postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    """Two stores on a shared subscription; the broker SIGKILLed and restarted twice without
    persistence (the second time while the database is down and the broker holds everything
    of the last 20 s); one store SIGKILLed and back later; PostgreSQL stopped for 60 s."""
    mq = volatile_broker
    db_url = own_postgres.create_database("faults")
    engine = connect(db_url)
    acks = {"resend_after_s": 1, "interval_s": 1}
    shared = {"shared_group": GROUP}
    stores = [
        StoreProcess(tmp_path / name, mq, db_url, client_id=name, mqtt=shared, acks=acks)
        for name in ("store-a", "store-b")
    ]
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in stores))
    config = store_config(mq, modbus_server, tmp_path)
    await set_tester(modbus_server, config, voltage=1.5, serial="SN-1", result=0)
    try:
        async with RunningService(config) as running:
            line = Line(running.service, modbus_server, engine)
            mqtt = running.service.mqtt
            await line.flows(200, "two stores share the stream")

            kill(mq)  # the first restart without persistence
            mq.start()
            await line.next_unit()
            await line.flows(200, "after the first broker restart")

            stores[1].kill()
            await line.next_unit()
            await line.flows(200, "one store left")

            await asyncio.to_thread(own_postgres.stop)
            await asyncio.sleep(20)  # the outage itself, not a wait for a condition
            await line.next_unit()
            kill(mq)  # the second restart: what it queued for the store is gone
            mq.start()
            await asyncio.sleep(40)  # the rest of the 60 s outage
            await asyncio.to_thread(own_postgres.start)
            await line.flows(200, "the database is back")
            await async_wait_until(lambda: mqtt.store_resent > 0, FLOW_S, "lost ranges resent")

            await asyncio.to_thread(stores[1].start)
            await line.next_unit()
            await line.flows(200, "both stores again")
            await line.drained()
            await line.assert_stored_exactly_once(stores[0])
            _status, reasons = running.service.health()
            assert not any("store" in r for r in reasons), reasons
    finally:
        for store in stores:
            await asyncio.to_thread(store.stop)


async def test_the_broker_default_queue_limit_and_a_90_s_database_outage_lose_nothing(
    queue_limited_broker: Mosquitto,
    modbus_server: SimulatedModbusServer,
    own_postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    """A store whose database is down for 90 s keeps its connection and stops acknowledging:
    the broker queues for it up to its default limit, then drops (issue 23 lost 14,288
    readings so). The collector still holds them and sends them again."""
    mq = queue_limited_broker
    db_url = own_postgres.create_database("queue")
    engine = connect(db_url)
    store = StoreProcess(
        tmp_path / "store", mq, db_url, acks={"resend_after_s": 1, "interval_s": 1}
    )
    await asyncio.to_thread(store.start)
    config = store_config(mq, modbus_server, tmp_path)
    await set_tester(modbus_server, config, voltage=1.5, serial="SN-1", result=0)
    try:
        async with RunningService(config) as running:
            line = Line(running.service, modbus_server, engine)
            mqtt = running.service.mqtt
            await line.flows(200, "the store takes the stream")
            await line.next_unit()

            await asyncio.to_thread(own_postgres.stop)
            sent = mqtt.messages_accepted
            await asyncio.sleep(45)  # the outage itself, not a wait for a condition
            await line.next_unit()
            await asyncio.sleep(45)
            # The broker took them all (PUBACK) and dropped what went past the store's Receive
            # Maximum (200) and its own default queue (1000).
            print(f"messages the broker took during the outage: {mqtt.messages_accepted - sent}")
            log = (mq.workdir / "mosquitto.log").read_text()
            assert "Outgoing messages are being dropped for client store-1" in log
            await asyncio.to_thread(own_postgres.start)
            await line.flows(200, "the database is back")
            await async_wait_until(lambda: mqtt.store_resent > 0, FLOW_S, "dropped ones resent")
            await line.next_unit()
            await line.drained()
            await line.assert_stored_exactly_once(store)
    finally:
        await asyncio.to_thread(store.stop)
