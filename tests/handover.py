"""The collector's side of the store hand-over tests (tests/test_store_faults.py,
tests/test_store_heal.py, tests/test_broker_consumers.py): a collector in this process with
``mqtt.delivery: store``, new units on demand, and waits on what the store's database holds."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector.config import Config
from collector.service import Service
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    Mosquitto,
    async_wait_until,
    config_dict,
    mosquitto_binary,
    run_cli,
    set_tester,
)
from tests.store_fixtures import StoreProcess

#: Generous bounds for recovery on a crowded 2-core machine; a failure names its step.
FLOW_S = 60
DRAIN_S = 240


@contextmanager
def broker(
    folder: Path, *, persistence: bool = True, queue_limit: bool = False
) -> Iterator[Mosquitto]:
    """A mosquitto as the hand-over tests need it: without persistence (a restart forgets
    every session and subscription: what lost 14 % of the readings in issue 23), and with
    mosquitto's default ``max_queued_messages`` (1000) instead of the tests' bound of a million."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    mq = Mosquitto(folder, max_queued=None if queue_limit else 1_000_000)
    if not persistence:
        mq.conf.write_text(mq.conf.read_text().replace("persistence true\n", "persistence false\n"))
    mq.start()
    try:
        yield mq
    finally:
        if mq.process is not None:
            mq.process.kill()
            mq.process.wait(10)


def store_config(broker: Mosquitto, modbus: SimulatedModbusServer, tmp_path: Path) -> Config:
    raw = config_dict(
        broker,
        modbus.port,
        tmp_path / "b.db",
        delivery="store",
        reconnect_min_ms=100,
        reconnect_max_ms=500,
        store_resend_after_s=3,
    )
    return Config.model_validate(raw)


def stored_seqs(engine: sa.Engine) -> tuple[int, int]:
    """(rows, distinct seqs) of the collector's readings."""
    sql = (
        "SELECT count(*), count(DISTINCT r.seq) FROM readings r "
        "JOIN streams s ON s.id = r.stream WHERE s.collector = 'pc1'"
    )
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(sql).one()
    except sa.exc.SQLAlchemyError:
        return 0, 0  # the store makes its tables when it starts
    return int(row[0]), int(row[1])


def kill(broker: Mosquitto) -> None:
    assert broker.process is not None
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    broker.process = None


def stored_units(engine: sa.Engine) -> tuple[int, int]:
    """(rows, distinct seqs) of the collector's unit records."""
    sql = "SELECT count(*), count(DISTINCT seq) FROM units WHERE collector = 'pc1'"
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(sql).one()
    except sa.exc.SQLAlchemyError:
        return 0, 0
    return int(row[0]), int(row[1])


class Line:
    """The collector's side of a test: new units on demand, and waits on what is stored."""

    def __init__(self, service: Service, simulator: SimulatedModbusServer, engine: sa.Engine):
        self.service = service
        self.simulator = simulator
        self.engine = engine
        self._serials = itertools.count(2)

    async def next_unit(self) -> None:
        """A new serial at the tester: the running unit's record is made."""
        serial = f"SN-{next(self._serials)}"
        await set_tester(self.simulator, self.service.config, serial=serial)

    async def stored(self) -> int:
        return (await asyncio.to_thread(stored_seqs, self.engine))[1]

    async def flows(self, more: int, what: str) -> None:
        """``more`` readings beyond what is stored now reach the database."""
        start = await self.stored()
        await async_wait_until(
            lambda: self._more(start + more), FLOW_S, f"{more} more readings stored: {what}"
        )

    async def broker_takes(self, more: int, what: str) -> None:
        """The broker acknowledges ``more`` readings beyond what it took so far."""
        mqtt = self.service.mqtt
        target = mqtt.readings_delivered + more
        await async_wait_until(lambda: mqtt.readings_delivered >= target, FLOW_S, what)

    async def _more(self, target: int) -> bool:
        return await self.stored() >= target

    async def drained(self) -> None:
        """No more polls; everything assigned reaches the store and leaves the buffer."""
        await self.simulator.stop()
        outbox = self.service.outbox.outbox
        await async_wait_until(
            lambda: outbox.depth == 0 and outbox.units_depth == 0, DRAIN_S, "the buffer empties"
        )

    async def assert_stored_exactly_once(self, store: StoreProcess) -> None:
        outbox = self.service.outbox.outbox
        last, last_unit = outbox.last_seq, outbox.last_unit_seq
        assert outbox.jumps.get("readings", []) == []  # every seq up to last was assigned
        assert await asyncio.to_thread(stored_seqs, self.engine) == (last, last), (
            "every reading stored exactly once"
        )
        assert last_unit >= 2
        assert await asyncio.to_thread(stored_units, self.engine) == (last_unit, last_unit)
        assert self.service.mqtt.store_waiting_readings == 0
        assert self.service.mqtt.store_waiting_units == 0
        done = await asyncio.to_thread(run_cli, "store", "gaps", "--config", str(store.config))
        assert done.returncode == 0, done.stdout + done.stderr
        gaps = (await asyncio.to_thread(store.get, "/gaps")).json()
        shown = sorted((g["kind"], g["low_seq"], g["high_seq"], g["missing_seqs"]) for g in gaps)
        assert shown == [("readings", 1, last, 0), ("units", 1, last_unit, 0)]
        # Resends and redeliveries were duplicates, never conflicts.
        assert await asyncio.to_thread(store.metric, "store_quarantined_total") == 0
