"""A broker that takes the connection and the messages but never acknowledges them.

The peer is a tiny MQTT v5 server on raw TCP written here (CONNACK, PINGRESP, and never a
PUBACK): a test peer that misbehaves as a real overloaded or broken broker can, not a mock of
paho.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from collector.config import Config
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    LoopbackTcpServer,
    Mosquitto,
    RunningService,
    async_wait_until,
    config_dict,
    set_tester,
)

CONNACK_V5 = b"\x20\x03\x00\x00\x00"  # session present 0, reason Success, no properties
PINGRESP = b"\xd0\x00"


class SilentAckBroker(LoopbackTcpServer):
    """Accepts MQTT v5 connections, answers CONNECT and PINGREQ, swallows every PUBLISH."""

    def __init__(self) -> None:
        super().__init__()
        self.connections = 0
        self.publishes = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # the connection's own task: stop() cancels it
        self.connections += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while True:
                header = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:  # the remaining length, a variable byte integer
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                await reader.readexactly(length)
                kind = header >> 4
                if kind == 1:  # CONNECT
                    writer.write(CONNACK_V5)
                elif kind == 12:  # PINGREQ
                    writer.write(PINGRESP)
                elif kind == 3:  # PUBLISH: taken, never acknowledged
                    self.publishes += 1
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        writer.close()
        self._tasks.discard(task)


async def test_a_broker_that_never_acknowledges_is_left_and_health_says_so(
    modbus_server: SimulatedModbusServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = SilentAckBroker()
    await broker.start()
    raw = config_dict(
        broker,  # type: ignore[arg-type]  # host and port are all config_dict reads
        modbus_server.port,
        tmp_path / "b.db",
        keepalive_s=5,
        reconnect_min_ms=100,
        reconnect_max_ms=500,
    )
    raw["health"]["max_unsent_age_s"] = 3
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    try:
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(lambda: broker.publishes > 0, 10, "messages published")
            # No PUBACK within mqtt.keepalive_s: the collector ends the connection itself.
            await async_wait_until(lambda: broker.connections >= 2, 20, "the connection redone")
            assert "mqtt: not connected (no PUBACK within 5 s (mqtt.keepalive_s)" in caplog.text
            # Nothing was delivered, so everything is still buffered.
            assert service.mqtt.readings_delivered == 0
            assert service.outbox.outbox.depth > 0

            def reasons() -> list[str]:
                return service.health()[1]

            await async_wait_until(
                lambda: any("oldest unsent reading is" in r for r in reasons()),
                10,
                "health: the unsent age",
            )
            # Across the reconnects, the wait for an acknowledgement is seen as one.
            await async_wait_until(
                lambda: any("no acknowledgement from the broker for" in r for r in reasons()),
                20,
                "health: nothing acknowledged for over 2 x keepalive",
            )
            assert service.health()[0] == "degraded"
    finally:
        await broker.stop()


async def test_refused_publishes_degrade_health_until_one_is_accepted(
    tmp_path: Path, modbus_server: SimulatedModbusServer
) -> None:
    """A broker that denies the topic by ACL (MQTT v5: PUBACK 0x87) while connected."""
    acl = tmp_path / "acl"
    status_topic = "collector/plant-a/line-1/pc1/status"
    acl.write_text(f"topic write {status_topic}\n")
    broker = Mosquitto(tmp_path / "acl-broker", f"acl_file {acl}\n")
    broker.start()
    raw = config_dict(
        broker, modbus_server.port, tmp_path / "b.db", reconnect_min_ms=100, reconnect_max_ms=500
    )
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    try:
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(lambda: service.mqtt.rejected, 10, "a refused publish")
            # (mosquitto also closes the connection after a refusal.) The unit context was
            # refused too, and is not published at every connect: the readings get through.
            assert (service.forwarder.contexts_refused or "").startswith(
                "collector/plant-a/line-1/pc1/context/ft-1"
            )
            state, reasons = service.health()
            assert state == "degraded"
            assert any("the broker refused" in r for r in reasons), reasons
            acl.write_text(f"topic write {status_topic}\ntopic write collector/#\n")
            broker.reload()
            await async_wait_until(
                lambda: service.mqtt.readings_delivered > 0, 90, "delivered once allowed"
            )
            await async_wait_until(lambda: service.health()[0] == "ok", 10, "health recovers")
    finally:
        broker.stop()
