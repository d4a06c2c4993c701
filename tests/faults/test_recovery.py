"""Recovery after an outage of any length: data flows again as soon as the broker, the Modbus
device or the OPC-UA server is back, not when a backoff grown to ``reconnect_max_ms`` ends.

Each test sets the reconnect backoff to 300 s at its shortest (a retry waits 150-300 s), so
a reconnect within the wait below can only have been started by the reachability probe
(common.backoff). The time from the peer being back to the first reading is measured in
bench/recovery.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from collector.acquisition.poller import DeviceStatus, Poller
from collector.config import Config
from common.backoff import Backoff
from contract.records import Reading
from drivers.modbus.sim import SimulatedModbusServer
from drivers.opcua.config import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.sim import SimulatedBurnInRack, rack_tags
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    async_wait_until,
    config_dict,
    set_tester,
)

# A retry after a failure waits at least half of this (the backoff's jitter).
LONG_BACKOFF_MS = 300_000
# Far under the 150 s the backoff alone would wait: only the probe reconnects this soon.
SOON_S = 30.0
OUTAGE_S = 2.0


async def test_broker_back_after_a_long_backoff_is_used_at_once(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    raw = config_dict(
        mosquitto,
        modbus_server.port,
        tmp_path / "b.db",
        reconnect_min_ms=LONG_BACKOFF_MS,
        reconnect_max_ms=LONG_BACKOFF_MS,
    )
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    sub = Subscriber(mosquitto, TOPIC)
    try:
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(sub.seqs, 10, "readings before the outage")
            mosquitto.stop()
            await async_wait_until(lambda: not service.mqtt.connected, 10, "the outage seen")
            await asyncio.sleep(OUTAGE_S)  # the outage itself
            polled = (await service.outbox.stats()).last_seq
            mosquitto.start()
            await async_wait_until(lambda: service.mqtt.connected, SOON_S, "reconnected")
            await async_wait_until(lambda: sub.has_all(polled), 20, "the backlog delivered")
            assert service.mqtt.connects == 2
    finally:
        sub.close()


async def test_modbus_device_back_after_a_long_backoff_is_polled_at_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    server = SimulatedModbusServer(unit_ids=[1, 2])
    await server.start()
    raw = config_dict(mosquitto, server.port, tmp_path / "b.db")
    for device in raw["devices"]:
        device.update(reconnect_min_ms=LONG_BACKOFF_MS, reconnect_max_ms=LONG_BACKOFF_MS)
    config = Config.model_validate(raw)
    await set_tester(server, config, voltage=1.0, serial="SN1", result=0)
    again: SimulatedModbusServer | None = None
    try:
        async with RunningService(config) as running:
            status = running.service.devices["tester-1"]
            await async_wait_until(lambda: status.good_polls > 0, 10, "first polls")
            await server.stop()
            await async_wait_until(lambda: not status.connected, 10, "the outage seen")
            await asyncio.sleep(OUTAGE_S)
            again = SimulatedModbusServer(unit_ids=[1, 2], port=server.port)
            await again.start()
            await set_tester(again, config, voltage=7.5, serial="SN2", result=0)
            good = status.good_polls
            await async_wait_until(lambda: status.good_polls > good, SOON_S, "polled again")
            assert status.connects == 2
            assert status.last_readings["voltage"].value == 7.5
    finally:
        await server.stop()
        if again is not None:
            await again.stop()


async def test_opcua_server_back_after_a_long_backoff_is_read_at_once() -> None:
    first = SimulatedBurnInRack(slots=1)
    await first.start()
    config = OpcUaDevice.model_validate(
        {
            "name": "rack-1",
            "protocol": "opcua",
            "endpoint": first.endpoint,
            "timeout_ms": 2000,
            "keepalive_s": 0.5,
            "tags": rack_tags([1]),
        }
    )
    status = DeviceStatus("rack-1", "opcua", None)
    readings: list[Reading] = []
    seconds = LONG_BACKOFF_MS / 1000
    poller = Poller(
        OpcUaDriver(config),
        status,
        0.1,
        lambda _device, polled: readings.extend(polled),
        Backoff(seconds, seconds),
    )
    task = asyncio.create_task(poller.run())
    second: SimulatedBurnInRack | None = None
    try:
        await async_wait_until(lambda: status.connected and readings, 10, "first readings")
        await first.stop()
        await async_wait_until(lambda: not status.connected, 10, "the loss seen")
        await asyncio.sleep(OUTAGE_S)
        second = SimulatedBurnInRack(slots=1, port=first.port)
        await second.start()
        await second.set("Slot01.Temp", 71.25)
        back = time.monotonic()
        await async_wait_until(
            lambda: any(r.tag == "slot01_temp" and r.value == 71.25 for r in readings),
            SOON_S,
            "readings from the server that is back",
        )
        print(f"OPC-UA server back -> first reading: {time.monotonic() - back:.2f} s")
        assert status.connects == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if second is not None:
            await second.stop()
