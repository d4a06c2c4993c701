"""The store service with real parts: mosquitto, SQLite files and a real PostgreSQL, the store
as a subprocess (SIGKILLed in the middle of ingest), the broker stopped in the middle, two
store processes on one shared subscription, bad messages, a database that goes away."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from contract.encode import ReadingEncoder, build_message
from contract.records import Context, Reading
from store.db import connect
from tests.helpers import Mosquitto, wait_until
from tests.postgres import PostgresServer
from tests.store_fixtures import Publisher, StoreProcess

TOPIC = "collector/plant-a/line-1/pc1/readings"
PER_MESSAGE = 20


def message(first_seq: int, serial: str = "PILOT-1") -> bytes:
    """A schema-1 readings message from the collector's own encoder: one poll of 20 tags."""
    ctx = Context("ft-1", serial, "functional-test", 1)
    ts = 1_795_000_000 + first_seq / 1000
    polls = [Reading(ts, f"t{i}", first_seq + i) for i in range(PER_MESSAGE)]
    return build_message(
        "pc1", ReadingEncoder().encode(first_seq, "tester-1", polls, [ctx] * PER_MESSAGE)
    )


def stored(engine: sa.Engine) -> tuple[int, int, int | None, int | None]:
    """(rows, distinct seqs, lowest, highest) of the readings table."""
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM readings"
        ).one()
    return int(row[0]), int(row[1]), row[2], row[3]


def rows(engine: sa.Engine) -> int:
    try:
        return stored(engine)[0]
    except sa.exc.SQLAlchemyError:
        return 0  # the tables are made by the store when it starts


class Feed:
    """Publishes ``count`` messages (seqs 1..count*20) in a background thread."""

    def __init__(self, broker: Mosquitto, count: int, start: int = 0, topic: str = TOPIC) -> None:
        self.publisher = Publisher(broker, f"feed-{start}")
        self.count, self.start, self.topic = count, start, topic
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for i in range(self.start, self.start + self.count):
                self.publisher.publish(self.topic, message(i * PER_MESSAGE + 1))
        except BaseException as exc:
            self.error = exc
        self.done.set()

    def join(self) -> None:
        assert self.done.wait(120), "the feed did not finish"
        self.publisher.close()
        assert self.error is None, self.error


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[list[StoreProcess]]:
    started: list[StoreProcess] = []
    yield started
    for store in started:
        store.kill()


@pytest.mark.slow_on_postgresql
def test_kills_of_store_and_broker_lose_and_duplicate_nothing(
    mosquitto: Mosquitto, db_url: str, tmp_path: Path, stores: list[StoreProcess]
) -> None:
    engine = connect(db_url)
    store = StoreProcess(tmp_path / "s1", mosquitto, db_url, ingest={"max_batch_messages": 10})
    stores.append(store)
    store.start()
    total = 400
    feed = Feed(mosquitto, total)
    wait_until(lambda: rows(engine) >= 40 * PER_MESSAGE, 60, "ingest under way")
    store.kill()  # SIGKILL in the middle of ingest
    store.start()
    wait_until(lambda: rows(engine) >= 150 * PER_MESSAGE, 60, "ingest under way again")
    mosquitto.stop()  # the broker goes away in the middle of ingest
    mosquitto.start()
    wait_until(lambda: rows(engine) >= 250 * PER_MESSAGE, 60, "ingest after the broker came back")
    store.kill()
    store.start()
    feed.join()
    n = total * PER_MESSAGE
    wait_until(lambda: rows(engine) >= n, 90, "every reading")
    assert stored(engine) == (n, n, 1, n)
    health = store.health()
    assert health["status"] == "ok", health
    gaps = store.get("/gaps").json()
    assert [(g["collector"], g["high_water"], g["missing_seqs"]) for g in gaps] == [("pc1", n, 0)]
    store.stop()


@pytest.mark.slow_on_postgresql
def test_two_stores_on_a_shared_subscription(
    mosquitto: Mosquitto, db_url: str, tmp_path: Path, stores: list[StoreProcess]
) -> None:
    engine = connect(db_url)
    for name in ("a", "b"):
        store = StoreProcess(
            tmp_path / name, mosquitto, db_url, client_id=f"store-{name}",
            mqtt={"shared_group": "stores"}, ingest={"max_batch_messages": 5},
        )  # fmt: skip
        stores.append(store)
        store.start()
    total = 200
    Feed(mosquitto, total).join()
    n = total * PER_MESSAGE
    wait_until(lambda: rows(engine) >= n, 60, "every reading")
    assert stored(engine) == (n, n, 1, n)
    shares = [s.metric("store_messages_total") for s in stores]
    assert sum(shares) == total, shares
    assert min(shares) > 0, f"one store got nothing: {shares}"
    for s in stores:
        s.stop()


def test_bad_messages_are_quarantined_counted_and_acknowledged(
    mosquitto: Mosquitto, tmp_path: Path, stores: list[StoreProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = StoreProcess(tmp_path / "s", mosquitto, url)
    stores.append(store)
    store.start()
    publisher = Publisher(mosquitto)
    bad = [
        b"\xff not json",
        orjson.dumps({"schema": 9, "collector": "pc1", "readings": []}),
        orjson.dumps({"schema": 1, "collector": "pc1", "readings": [{"seq": 1, "ts": 5}]}),
    ]
    for payload in bad:
        publisher.publish(TOPIC, payload)
    publisher.publish(TOPIC, message(1))
    engine = connect(url)
    wait_until(lambda: rows(engine) == PER_MESSAGE, 20, "the good message")
    wait_until(lambda: store.metric("store_quarantined_total") == 3, 20, "3 quarantined")
    assert store.health()["ingest"]["quarantined"] == {"json": 1, "schema": 1, "field": 1}
    # Acknowledged: a restarted store gets none of them again.
    store.stop()
    store.start()
    publisher.publish(TOPIC, message(PER_MESSAGE + 1))
    wait_until(lambda: rows(engine) == 2 * PER_MESSAGE, 20, "the next message")
    with engine.connect() as conn:
        kinds = conn.exec_driver_sql("SELECT kind, reason FROM quarantine ORDER BY id").all()
    assert [k for k, _ in kinds] == ["json", "schema", "field"]
    assert kinds[2][1] == "readings[0].ts: must be an RFC 3339 string, got 5"
    assert store.metric("store_quarantined_total") == 0  # the new process counts afresh
    publisher.close()
    store.stop()


def test_database_down_acknowledges_nothing_and_recovers(
    mosquitto: Mosquitto, postgres: PostgresServer, tmp_path: Path, stores: list[StoreProcess]
) -> None:
    url = postgres.create_database("downtest")
    engine = connect(url)
    store = StoreProcess(tmp_path / "s", mosquitto, url)
    stores.append(store)
    store.start()
    Feed(mosquitto, 10).join()
    wait_until(lambda: rows(engine) == 10 * PER_MESSAGE, 30, "first messages")
    acked = store.metric("store_acks_total")
    postgres.stop()
    try:
        feed = Feed(mosquitto, 20, start=10)
        feed.join()
        wait_until(lambda: store.health()["database"]["reason"] == "down", 30, "health says down")
        health = store.health()
        assert health["status"] == "degraded"
        assert health["problems"][0].startswith("database down: ")
        assert store.get("/health").status_code == 503
        assert store.metric("store_acks_total") == acked  # nothing acknowledged meanwhile
        assert store.metric('store_db_errors_total{reason="down"}') >= 1
    finally:
        postgres.start()
    wait_until(lambda: rows(engine) == 30 * PER_MESSAGE, 60, "every message after recovery")
    assert stored(engine) == (600, 600, 1, 600)
    wait_until(lambda: store.health()["status"] == "ok", 20, "healthy again")
    store.stop()


def test_an_old_gap_is_flagged_on_health_and_metrics_until_it_closes(
    mosquitto: Mosquitto, tmp_path: Path, stores: list[StoreProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = StoreProcess(tmp_path / "s", mosquitto, url, gaps={"alert_after_s": 0.5})
    stores.append(store)
    store.start()
    publisher = Publisher(mosquitto)
    publisher.publish(TOPIC, message(1))
    publisher.publish(TOPIC, message(2 * PER_MESSAGE + 1))  # seqs 21-40 never sent (yet)
    wait_until(lambda: store.health()["status"] == "degraded", 20, "the gap flagged")
    health = store.health()
    assert health["old_gaps"][0].startswith("pc1/-/readings: seq 21-40 missing for ")
    assert store.metric("store_missing_seqs") == 20
    assert store.metric("store_missing_ranges") == 1
    assert store.metric("store_high_water_seq") == 20
    publisher.publish(TOPIC, message(PER_MESSAGE + 1))  # the late message closes it
    wait_until(lambda: store.health()["status"] == "ok", 20, "the gap closed")
    assert store.metric("store_missing_seqs") == 0
    assert store.metric("store_high_water_seq") == 60
    publisher.close()
    store.stop()


def test_read_only_database_is_reported_and_nothing_acknowledged(
    mosquitto: Mosquitto, postgres: PostgresServer, tmp_path: Path, stores: list[StoreProcess]
) -> None:
    url = postgres.create_database("rotest")
    engine = connect(url)
    admin = connect(postgres.url("postgres"))

    def set_read_only(on: bool) -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f"ALTER DATABASE rotest SET default_transaction_read_only = {'on' if on else 'off'}"
            )
            # The setting applies to new sessions: end the store's.
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'rotest'"
            )
            conn.commit()

    store = StoreProcess(tmp_path / "s", mosquitto, url)
    stores.append(store)
    store.start()
    Feed(mosquitto, 5).join()
    wait_until(lambda: rows(engine) == 5 * PER_MESSAGE, 30, "first messages")
    acked = store.metric("store_acks_total")
    set_read_only(True)
    try:
        Feed(mosquitto, 5, start=5).join()
        wait_until(
            lambda: store.health()["database"]["reason"] == "read-only", 30, "health: read-only"
        )
        assert store.health()["problems"][0].startswith("database read-only: ")
        assert store.metric("store_acks_total") == acked
    finally:
        set_read_only(False)
    engine.dispose()
    wait_until(lambda: rows(engine) == 10 * PER_MESSAGE, 60, "every message afterwards")
    assert stored(engine) == (200, 200, 1, 200)
    admin.dispose()
    store.stop()


def test_idle_connections_cannot_lock_the_store_api_out(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The store's HTTP API is bounded like the collector's health port: 100 connections that
    never send a byte are held open; /health still answers (each new connection at the bound
    replaces the oldest idle one), the overload is counted there and logged once."""
    store = StoreProcess(tmp_path / "store", mosquitto, f"sqlite:///{tmp_path / 's.db'}")
    store.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", store.port), timeout=5))

        def health() -> dict[str, Any] | None:
            try:
                return store.health()
            except httpx.HTTPError:
                return None

        http = wait_until(health, 20, "/health while 100 idle connections are held")["http"]
    finally:
        for sock in idle:
            sock.close()
        store.stop()
    assert http["max_connections"] == 64
    assert http["closed_idle_total"] > 0, http
    assert http["accept_failures_total"] == 0
    log = store.log.read_text()
    assert log.count("http: 64 connections open, the limit") == 1, log
    assert "Traceback" not in log
