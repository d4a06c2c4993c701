"""Bytes per reading on the wire at four shapes of line (issue 24), with real parts: pymodbus
and asyncua servers, the collector's service, a real mosquitto and a subscriber that decodes
every message with the reference decoder (its MetaBook and ContextBook fed from the meta and
context topics).

    .venv/bin/python -m bench.wire [--seconds 20] [--only tester]

Shapes: ``grid`` (10 devices x 10 uint16 holding registers every second, no station),
``tester`` (a functional tester at a station with a unit: a coil and two register blocks of 8
registers, 17 values, every 200 ms), ``rack`` (a 32-slot OPC-UA burn-in rack, each slot a
station with a unit, every node subscribed, 5 nodes a slot: temperature, voltage, current
and power changing every cycle, the serial), ``wide`` (10 devices x 100 registers every
second: the reference workload's shape).
Register values change every cycle, from 0 to 999 (three digits, as a scaled process value).
On the wire: the PUBLISH packets of the readings messages as the collector sent them, per
reading (collector.delivery.mqtt.publish_packet_bytes: header, topic or its alias,
properties, payload); ``as_received`` counts each message's payload and full topic plus
collector.delivery.forwarder.PACKET_OVERHEAD_BYTES, the rounder figure this bench reported
before topic aliases; ``with context`` adds the context and metadata messages (retained,
sent once per change), counted that way.
The buffer: the stored body bytes per buffered reading, with the broker down for the last
third of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from asyncua import ua

from collector.config import Config
from collector.delivery.forwarder import PACKET_OVERHEAD_BYTES
from collector.delivery.mqtt import MqttPublisher
from contract.decode import ContextBook, MetaBook, decode_readings
from drivers.modbus.sim import SimulatedModbusServer, codecs
from drivers.opcua.sim import RACK_NAMESPACE, SimulatedBurnInRack
from tests.helpers import Mosquitto, RunningService, Subscriber, async_wait_until

BASE = "collector/lab/bench/pc1"


def _config(work: Path, broker: Mosquitto, devices: list[dict[str, Any]],
            stations: list[dict[str, Any]]) -> Config:  # fmt: skip
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "lab", "line": "bench"},
            "buffer": {"path": str(work / "buffer.db"), "max_readings": 5_000_000},
            "mqtt": {"host": broker.host, "port": broker.port, "delivery": "broker",
                     "shutdown_grace_s": 5},
            # The tester's serial comes over HTTP (collector.context: set_serial), which
            # needs a token to be on.
            "health": {"port": 0, "token_env": "BENCH_WIRE_TOKEN"},
            "stations": stations,
            "devices": devices,
        }
    )  # fmt: skip


def _registers(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"name": f"r{start + i}", "table": "holding_register", "address": start + i,
         "type": "uint16"}
        for i in range(count)
    ]  # fmt: skip


async def _modbus(work: Path, broker: Mosquitto, shape: str) -> tuple[Config, Any]:
    devices, stations = [], []
    if shape == "tester":
        server = SimulatedModbusServer(unit_ids=[1], size=200)
        tags = [{"name": "ready", "table": "coil", "address": 0, "type": "bool"},
                *_registers(8), *_registers(8, start=100)]  # fmt: skip
        devices.append({"name": "tester-1", "protocol": "modbus_tcp", "host": "127.0.0.1",
                        "port": 0, "unit_id": 1, "station": "ft-1", "poll_interval_ms": 200,
                        "tags": tags})  # fmt: skip
        stations.append({"name": "ft-1", "operation": "functional-test",
                         "serial_source": "http", "unit_timeout_s": 3600})  # fmt: skip
    else:
        count, registers = 10, 10 if shape == "grid" else 100
        server = SimulatedModbusServer(unit_ids=range(1, count + 1), size=200)
        for d in range(count):
            devices.append({"name": f"dev-{d:03d}", "protocol": "modbus_tcp",
                            "host": "127.0.0.1", "port": 0, "unit_id": d + 1,
                            "poll_interval_ms": 1000, "tags": _registers(registers)})  # fmt: skip
    await server.start()
    for device in devices:
        device["port"] = server.port
    config = _config(work, broker, devices, stations)

    async def change(cycle: int) -> None:
        for d, device in enumerate(config.devices):
            unit = d + 1
            for i, (_name, codec) in enumerate(codecs(device).items()):
                value = (cycle * 7 + i * 13 + d * 101) % 1000
                await server.set_value(unit, codec, bool(value % 2) if i == 0 and shape == "tester"
                                       else value)  # fmt: skip

    return config, (server, change)


async def _power_nodes(rack: SimulatedBurnInRack) -> dict[int, Any]:
    """A fifth node in each slot, ``SlotNN.Power`` (the simulator has four): the rack of issue
    24 has five."""
    assert rack.server is not None
    ns, nodes = rack.namespace_index, {}
    for slot in range(1, 33):
        name = f"Rack1.Slot{slot:02d}"
        parent = rack.server.get_node(ua.NodeId.from_string(f"ns={ns};s={name}"))
        nodes[slot] = await parent.add_variable(
            ua.NodeId.from_string(f"ns={ns};s={name}.Power"),
            ua.QualifiedName("Power", ns),
            ua.Variant(6.0, ua.VariantType.Double),
        )
    return nodes


async def _rack(work: Path, broker: Mosquitto) -> tuple[Config, Any]:
    rack = SimulatedBurnInRack(slots=32)
    await rack.start()
    power = await _power_nodes(rack)
    tags = [
        {"name": f"slot{{slot:02d}}.{v.lower()}", "slots": {"first": 1, "last": 32},
         "namespace_uri": RACK_NAMESPACE, "id": f"s=Rack1.Slot{{slot:02d}}.{v}",
         "collect": "subscribe"}
        for v in ("Temp", "Voltage", "Current", "Power", "Serial")
    ]  # fmt: skip
    devices = [{"name": "rack-a", "protocol": "opcua", "station": "rack-a",
                "endpoint": rack.endpoint, "poll_interval_ms": 1000,
                "sampling_interval_ms": 100, "publishing_interval_ms": 200,
                "tags": tags}]  # fmt: skip
    stations = [{"name": "rack-a", "operation": "burn-in", "slots": {"first": 1, "last": 32},
                 "serial_source": {"device": "rack-a", "tag": "slot{slot:02d}.serial"},
                 "unit_timeout_s": 180000}]  # fmt: skip
    config = _config(work, broker, devices, stations)
    for slot in range(1, 33):
        await rack.set(f"Slot{slot:02d}.Serial", f"PV-{slot:06d}")

    async def change(cycle: int) -> None:
        for slot in range(1, 33):
            # As a sensor reports them: two or three decimals.
            await rack.set(f"Slot{slot:02d}.Temp", round(80 + (cycle + slot) % 10 / 10, 1))
            await rack.set(f"Slot{slot:02d}.Voltage", round(12 + (cycle * 3 + slot) % 10 / 100, 2))
            await rack.set(f"Slot{slot:02d}.Current", round(0.5 + (cycle * 7 + slot) % 10 / 100, 2))
            now: Any = datetime.now(UTC)  # as SimulatedBurnInRack.set stamps its nodes
            watts = ua.Variant(round(6 + (cycle * 11 + slot) % 10 / 100, 2), ua.VariantType.Double)
            await power[slot].write_value(
                ua.DataValue(watts, SourceTimestamp=now, ServerTimestamp=now)
            )

    return config, (rack, change)


def _measure(sub: Subscriber, sent: tuple[int, int]) -> dict[str, float]:
    """Figures from what the subscriber received, and ``sent``: (messages, PUBLISH bytes) the
    collector sent on the readings topic."""
    with sub._lock:
        messages = list(sub.messages)
    metas, contexts = MetaBook(), ContextBook()
    wire = other = readings = polls = 0
    for topic, payload, _ in messages:
        size = len(payload) + len(topic) + PACKET_OVERHEAD_BYTES
        if "/meta/" in topic:
            metas.add(payload)
            other += size
        elif "/context/" in topic:
            contexts.add(payload)
            other += size
        elif topic.endswith("/readings"):
            got = decode_readings(payload, metas, contexts)
            readings += len(got)
            polls += len(orjson.loads(payload)["polls"])
            wire += size
    received = sum(t.endswith("/readings") for t, _, _ in messages)
    if sent[0] != received:  # the bytes sent would not be those of the readings counted
        raise RuntimeError(f"{sent[0]} readings messages sent, {received} received")
    return {
        "readings": readings,
        "polls": polls,
        "messages": received,
        "wire_bytes_per_reading": round(sent[1] / max(readings, 1), 2),
        "as_received": round(wire / max(readings, 1), 2),
        "with_context_and_meta": round((sent[1] + other) / max(readings, 1), 2),
    }


def _received(sub: Subscriber) -> int:
    with sub._lock:
        return sum(t.endswith("/readings") for t, _, _ in sub.messages)


def _stored_bytes(path: Path) -> float:
    """Stored body bytes per buffered reading (what a row holds besides its keys; the file's
    pages at this small a depth say little: bench.bytes measures the file at scale)."""
    with sqlite3.connect(path) as db:
        body, count = db.execute(
            "SELECT coalesce(sum(length(body)), 0), coalesce(sum(last_seq - first_seq + 1), 0) "
            "FROM batches"
        ).fetchone()
    return round(body / count, 2) if count else float("nan")


async def run_shape(shape: str, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        sub = Subscriber(broker, f"{BASE}/#", client_id=f"bench-{shape}")
        if shape == "rack":
            config, (server, change) = await _rack(work, broker)
        else:
            config, (server, change) = await _modbus(work, broker, shape)
        try:
            async with RunningService(config) as running:
                if shape == "tester":
                    running.service.context.set_serial("ft-1", "PV-000106")
                period = 0.2 if shape in ("tester", "rack") else 1.0
                cycle, end = 0, time.monotonic() + seconds
                while time.monotonic() < end:
                    await change(cycle)
                    cycle += 1
                    await asyncio.sleep(period)
                publisher = running.service.forwarder.publisher  # type: ignore[union-attr]
                assert isinstance(publisher, MqttPublisher)
                # What was published has arrived once the subscriber holds as many readings
                # messages as were sent (QoS 1, one broker on loopback).
                sent = publisher.sent.get(f"{BASE}/readings", [0, 0])
                count = (sent[0], sent[1])
                await async_wait_until(lambda: _received(sub) >= count[0], 10, "received")
                figures = _measure(sub, count)
                broker.stop()  # the rest goes into the buffer: its bytes per reading
                outbox = running.service.outbox.outbox
                start = outbox.depth
                end = time.monotonic() + seconds / 2
                while time.monotonic() < end:
                    await change(cycle)
                    cycle += 1
                    await asyncio.sleep(period)
                buffered = outbox.depth - start
                figures["buffer_body_bytes_per_reading"] = _stored_bytes(work / "buffer.db")
                figures["buffered"] = buffered
        finally:
            sub.close()
            await server.stop()
            broker.stop()
        return {"shape": shape, **figures}


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("BENCH_WIRE_TOKEN", "bench-token-not-secret")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--only", choices=("grid", "tester", "rack", "wide"))
    args = parser.parse_args(argv)
    shapes = [args.only] if args.only else ["grid", "tester", "rack", "wide"]
    for shape in shapes:
        print(asyncio.run(run_shape(shape, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
