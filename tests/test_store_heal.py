"""A hole heals itself, and unit records leave the buffer on the store's word (issue 23), with
real parts: a collector polling a pymodbus simulator (``mqtt.delivery: store``), a real
mosquitto, a store process on SQLite.

The hole is made on purpose: while the store is stopped the broker takes the collector's
messages (PUBACK) into the store's session, and that session is then dropped, so the store
never receives them, while the collector still holds them. The store sees the hole, asks for
it after its grace period (``resend``), the collector sends it again, the hole closes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from collector.config import Config
from drivers.modbus.sim import SimulatedModbusServer
from store.db import connect
from tests.handover import Line, store_config, stored_units
from tests.helpers import Mosquitto, RunningService, Subscriber, async_wait_until, set_tester
from tests.store_fixtures import StoreProcess, forget_session
from tests.test_store_delivery import BASE, _lowest_seq

#: A hole younger than this is not asked for (a message on its way).
GRACE_S = 2


def heal_config(broker: Mosquitto, simulator: SimulatedModbusServer, tmp_path: Path) -> Config:
    """delivery: store; the collector's own lost-tail resend so late that only the store's
    request can heal the hole."""
    raw = store_config(broker, simulator, tmp_path).model_dump(mode="json")
    raw["mqtt"]["store_resend_after_s"] = 3600
    return Config.model_validate(raw)


def acks_of(watcher: Subscriber, stream: str) -> list[dict[str, Any]]:
    return [a for a in watcher.payloads("/ack") if a["stream"] == stream]


async def test_unit_records_leave_on_the_store_ack_and_a_hole_is_asked_for_and_filled(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = connect(db_url)
    folder = tmp_path / "store"
    # First a store that commits but never acknowledges.
    silent = StoreProcess(folder, mosquitto, db_url, acks={"enabled": False})
    await asyncio.to_thread(silent.start)
    config = heal_config(mosquitto, modbus_server, tmp_path)
    await set_tester(modbus_server, config, voltage=1.5, serial="SN-1", result=0)
    watcher = Subscriber(mosquitto, f"{BASE}/ack", client_id="ack-watcher")
    store = StoreProcess(
        folder, mosquitto, db_url, acks={"resend_after_s": GRACE_S, "interval_s": 1}
    )
    try:
        async with RunningService(config) as running:
            service = running.service
            outbox, mqtt = service.outbox.outbox, service.mqtt
            line = Line(service, modbus_server, engine)

            # A unit record the broker acknowledged and the store committed stays in the
            # buffer: only the store's acknowledgement deletes it.
            await line.flows(50, "SN-1 is read")
            await line.next_unit()
            await async_wait_until(lambda: stored_units(engine) == (1, 1), 30, "unit 1 stored")
            await async_wait_until(lambda: mqtt.units_delivered == 1, 10, "its PUBACK")
            await line.flows(100, "readings after the unit record")
            assert (outbox.units_depth, mqtt.store_waiting_units) == (1, 1)
            assert _lowest_seq(config) == 1, "no reading deleted without the store's ack"

            # The store acknowledges: the unit record and the readings leave. (The new store
            # process receives only readings: it reads the unit records' state from the
            # database when it first sees this outbox.)
            await asyncio.to_thread(silent.stop)
            await asyncio.to_thread(store.start)
            await async_wait_until(lambda: outbox.units_depth == 0, 30, "unit record 1 acked")
            assert mqtt.units_delivered == 1  # acknowledged, not sent again
            await line.next_unit()
            await async_wait_until(lambda: mqtt.units_delivered == 2, 30, "unit record 2 sent")
            await async_wait_until(lambda: outbox.units_depth == 0, 30, "unit record 2 acked")
            await async_wait_until(lambda: _lowest_seq(config) > 1, 30, "readings acked")
            assert mqtt.store_waiting_units == 0

            # The hole: what the broker takes for the stopped store is dropped with its
            # session. A unit record (seq 3) falls into it too.
            await asyncio.to_thread(store.stop)
            delivered = mqtt.readings_delivered
            await line.next_unit()
            await async_wait_until(
                lambda: mqtt.readings_delivered >= delivered + 200 and mqtt.units_delivered == 3,
                30,
                "the broker takes readings and unit record 3 for the stopped store",
            )
            await asyncio.to_thread(forget_session, mosquitto, "store-1")
            await asyncio.to_thread(store.start)
            await line.next_unit()  # unit record 4, after the hole
            await line.flows(100, "the store is back")

            # Seen, asked for after the grace period, sent again, filled.
            def asked(stream: str) -> list[list[int]]:
                return [r for a in acks_of(watcher, stream) for r in a["resend"]]

            await async_wait_until(lambda: asked("readings"), 30, "readings asked for")
            await async_wait_until(lambda: [3, 3] in asked("units"), 30, "unit 3 asked for")
            hole = asked("readings")[0]
            assert any(hole in a["holes"] for a in acks_of(watcher, "readings"))
            await async_wait_until(
                lambda: any(
                    a["holes"] == [] and a["through"] > hole[1]
                    for a in acks_of(watcher, "readings")[-3:]
                ),
                30,
                "the readings hole filled",
            )
            assert mqtt.store_resent >= hole[1] - hole[0] + 1  # sent again, not late
            # Unit record 3 too: the buffer empties only once the store has it.
            await line.drained()
            await line.assert_stored_exactly_once(store)
    finally:
        watcher.close()
        for process in (silent, store):
            await asyncio.to_thread(process.stop)
