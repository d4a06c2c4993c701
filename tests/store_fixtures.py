"""Fixtures and helpers of the central store's tests: a real PostgreSQL for the session
(tests/postgres.py), a fresh database per test on SQLite or PostgreSQL (``db_url`` is
parametrised), the store as a subprocess, and a QoS 1 publisher."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from contract.encode import encode_unit, envelope, with_seq
from contract.records import Spec, UnitRecord
from tests.helpers import Mosquitto, free_port, port_open, wait_until
from tests.postgres import PostgresServer, require_postgres

_names = itertools.count(1)


def running_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster in a temporary folder, started, removed afterwards."""
    require_postgres()
    server = PostgresServer()
    server.init()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    yield from running_postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database: a SQLite file, or a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"t{next(_names)}")


class StoreProcess:
    """``collector store run`` in a subprocess (so a test can SIGKILL it), with its config
    written to a file and its HTTP API on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        broker: Mosquitto,
        db_url: str,
        client_id: str = "store-1",
        **sections: dict[str, Any],
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "database": {"url": db_url},
            "mqtt": {
                "host": broker.host, "port": broker.port, "client_id": client_id,
                "keepalive_s": 5, "reconnect_min_ms": 100, "reconnect_max_ms": 1000,
            },
            "ingest": {"retry_min_ms": 100, "retry_max_ms": 1000},
            "http": {"port": self.port},
        }  # fmt: skip
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        self.config = workdir / "store.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "store.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "collector", "store", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # A start-up imports SQLAlchemy, Alembic and FastAPI and migrates: about 1.5 s on an
        # idle machine, over 20 s seen on a crowded one; the bound only catches a hang.
        wait_until(self._up, 60, f"store HTTP on {self.port}")
        wait_until(lambda: self.health()["mqtt"]["connected"], 20, "store connected to broker")

    def _up(self) -> bool:
        """The HTTP port answers; a process that died says so at once, with its log."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"store exited with {self.process.returncode}: {self.log.read_text()[-2000:]}"
            )
        return port_open(self.port)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10, **kwargs)

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/health").json()
        return body

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on /metrics (0 when absent)."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert self.process.wait(20) == 0, self.log.read_text()[-2000:]
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                self.process = None


def forget_session(broker: Mosquitto, client_id: str) -> None:
    """Make the broker drop a stopped client's session and everything queued for it (a
    connect with clean start and no session expiry): a range the broker took (PUBACK) that
    the store will never receive, without restarting the broker."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(broker.host, broker.port, keepalive=5, clean_start=True)
    client.loop_start()
    try:
        wait_until(connected.is_set, 10, f"a clean connect as {client_id}")
    finally:
        client.disconnect()
        client.loop_stop()


class Publisher:
    """Publishes messages at QoS 1 like a collector: each is sent until the broker
    acknowledged it (again after a broker restart), so a redelivery may happen."""

    def __init__(self, broker: Mosquitto, client_id: str = "test-publisher") -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.client.publish(topic, payload, qos=1)
            try:
                info.wait_for_publish(2)
            except (RuntimeError, ValueError):
                time.sleep(0.1)  # not connected: the broker is restarting
                continue
            if info.is_published():
                return
        raise AssertionError(f"could not publish to {topic} within {timeout} s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# A small pilot run for the report's tests: PILOT-01..12 at functional-test (PILOT-03 fails,
# code 204, and passes its retest), each with a critical characteristic `current` in
# [1.0, 2.0], in work orders WO-1..WO-4, and the golden sample GOLD-1 measured twice.
PILOT_PROTOCOL = {
    "run": {"name": "Pilot run T", "serial_pattern": "PILOT-\\d{2}"},
    "sample_sizes": {
        "min_units": 10, "min_pieces": 10, "min_subgroups": 3, "subgroup_by": "work_order",
    },
    "operations": [
        {"name": "functional-test", "min_first_pass_yield": 0.9, "min_cpk_critical": 1.0,
         "takt_s": 40, "cycle_time_p95_within_takt": True},
    ],
}  # fmt: skip
PILOT_T0 = 1_795_255_200.0


def pilot_unit_records() -> list[UnitRecord]:
    spec = Spec(lsl=1.0, usl=2.0, target=1.5, critical=True, in_spec=True)
    records = []
    plan = [(f"PILOT-{i:02d}", 1, "pass", 1.5 + 0.02 * ((i * 7) % 5 - 2)) for i in range(1, 13)]
    plan[2] = ("PILOT-03", 1, "fail", 1.46)
    plan.insert(3, ("PILOT-03", 2, "pass", 1.5))
    plan[6:6] = [("GOLD-1", 1, "pass", 1.51)]
    plan.append(("GOLD-1", 2, "pass", 1.52))
    for index, (serial, attempt, verdict, value) in enumerate(plan):
        start = PILOT_T0 + 60 * index
        records.append(
            UnitRecord(
                serial=serial, station="ft-1", operation="functional-test", attempt=attempt,
                start_ts=start, end_ts=start + 30, ended_by="verdict", verdict=verdict,
                failure_code=204 if verdict == "fail" else None, readings=0,
                characteristics={"current": (value, value - 0.01, value + 0.01)},
                takt_s=40.0, golden=serial.startswith("GOLD"),
                work_order=f"WO-{1 + index // 4}", specs={"current": spec},
            )
        )  # fmt: skip
    return records


def publish_pilot_run(broker: Mosquitto, collector: str = "pc1") -> int:
    """Publishes the pilot run's unit records as a collector does; returns how many."""
    records = pilot_unit_records()
    publisher = Publisher(broker, "pilot-publisher")
    try:
        bodies = [(seq, encode_unit(r)) for seq, r in enumerate(records, 1)]
        payload = envelope(collector, "0123456789abcdef", with_seq(bodies), b"units")
        publisher.publish(f"collector/site/line/{collector}/units", payload)
    finally:
        publisher.close()
    return len(records)
