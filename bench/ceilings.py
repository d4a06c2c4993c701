"""Stage ceilings on this machine, each stage alone and as fast as it goes, so the pipeline's
figure can be read as a fraction of its slowest stage:

- SQLite: SQLAlchemy Core inserts into the collector's own batches table, WAL,
  synchronous=FULL (the collector's defaults), 1000 readings per transaction: once as one row
  per reading (what storing each reading as a row could reach at most) and once as 100-reading
  batches, the way the collector stores a poll;
- MQTT: paho QoS 1 publishes of 500-reading messages to the local mosquitto, 8 in flight,
  counted when acknowledged;
- Modbus: sequential 125-register reads through the collector's Modbus TCP driver (pymodbus
  underneath) from a simulator in another process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from collector.buffer import batches_table
from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.driver import ModbusTcpDriver

BODY = b'{"ts":"2026-11-21T10:15:02.250113Z","station":"ft-1","device":"tester-1",' + b"x" * 130
READINGS_PER_MESSAGE = 500
READINGS_PER_TRANSACTION = 1000


def sqlite_inserts(path: Path, seconds: float, per_row: int = 1) -> float:
    """Readings per second stored, ``per_row`` readings in each row."""
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
    body = b",".join([BODY] * per_row)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.exec_driver_sql("PRAGMA synchronous=FULL")
        conn.commit()
        batches_table.create(conn)  # the collector's own table definition
        conn.commit()
        rows_per_transaction = READINGS_PER_TRANSACTION // per_row
        seq, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            rows = []
            for _ in range(rows_per_transaction):
                rows.append(
                    {"last_seq": seq + per_row, "first_seq": seq + 1, "ts": 1.0, "body": body}
                )
                seq += per_row
            with conn.begin():
                conn.execute(batches_table.insert(), rows)
        elapsed = time.perf_counter() - start
    engine.dispose()
    path.unlink()
    return seq / elapsed


def paho_qos1(port: int, seconds: float) -> float:
    """Readings per second carried in acknowledged 500-reading QoS 1 messages."""
    payload = b"[" + b",".join([BODY] * READINGS_PER_MESSAGE) + b"]"
    acked = 0
    window = threading.Semaphore(8)
    lock = threading.Lock()

    def on_publish(*_: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
        window.release()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-ceiling", protocol=mqtt.MQTTv5
    )
    client.on_publish = on_publish
    client.max_inflight_messages_set(8)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        window.acquire(timeout=5)
        client.publish("bench/ceiling", payload, qos=1)
    for _ in range(8):  # the last ones in flight
        window.acquire(timeout=5)
    elapsed = time.perf_counter() - start
    client.loop_stop()
    client.disconnect()
    return acked * READINGS_PER_MESSAGE / elapsed


def modbus_reads(seconds: float) -> float:
    sim = subprocess.Popen(
        [sys.executable, "-m", "bench.sim", "--servers", "1", "--units", "1"],
        stdout=subprocess.PIPE,
        env={**os.environ},
    )
    try:
        assert sim.stdout is not None
        port = json.loads(sim.stdout.readline())[0]
        device = ModbusTcpDevice.model_validate(
            {
                "name": "ceiling",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "port": port,
                "tags": [
                    {"name": f"r{i}", "table": "holding_register", "address": i, "type": "uint16"}
                    for i in range(125)
                ],
            }
        )

        async def run() -> float:
            driver = ModbusTcpDriver(device)
            await driver.connect()
            done, start = 0, time.perf_counter()
            try:
                while time.perf_counter() - start < seconds:
                    done += len(await driver.read())
            finally:
                await driver.close()
            return done / (time.perf_counter() - start)

        return asyncio.run(run())
    finally:
        sim.terminate()
        sim.wait(10)
