"""Schema 3 with real parts (issue 24): a scanner on a pty that writes two and three lines at
once, and a pymodbus tester, -> collector -> SQLite -> mosquitto -> the reference decoder and
the central store. Every line is a reading, in order (a repeated JSON key lost them before);
a consumer that subscribes late resolves every reading's unit context from the retained
context versions; the store keeps the versions and ingests what names them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from collector.config import Config
from contract.decode import ContextBook, ContractError, MetaBook, decode_readings
from drivers.modbus.sim import SimulatedModbusServer
from store.db import connect
from tests.helpers import (
    Mosquitto,
    PtyPort,
    RunningService,
    Subscriber,
    async_wait_until,
    wait_until,
)
from tests.store_fixtures import StoreProcess

LINE = "collector/plant-a/line-1/pc1"


def config(broker: Mosquitto, tmp_path: Path, modbus_port: int | None = None) -> Config:
    devices: list[dict[str, Any]] = [
        {
            "name": "scanner-1",
            "protocol": "barcode_scanner",
            "station": "ft-1",
            "port": str(tmp_path / "scanner"),
            "terminator": "cr",
            "serial_pattern": r"SN-\w+",
        }
    ]
    if modbus_port is not None:
        devices.append(
            {
                "name": "tester-1",
                "protocol": "modbus_tcp",
                "station": "ft-1",
                "host": "127.0.0.1",
                "port": modbus_port,
                "poll_interval_ms": 50,
                "tags": [
                    {"name": "coil", "table": "coil", "address": 0, "type": "bool"},
                    {"name": "v1", "table": "holding_register", "address": 0},
                    {"name": "v2", "table": "holding_register", "address": 1},
                    {"name": "far", "table": "holding_register", "address": 40},
                ],
            }
        )
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "plant-a", "line": "line-1"},
            "buffer": {"path": str(tmp_path / "b.db")},
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5,
                     "shutdown_grace_s": 5, "delivery": "broker"},
            "health": {"port": 0},
            "stations": [
                {"name": "ft-1", "operation": "functional-test",
                 "serial_source": {"device": "scanner-1", "tag": "serial"}, "unit_timeout_s": 600}
            ],
            "devices": devices,
        }
    )  # fmt: skip


@pytest.fixture
def scanner(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "scanner")
    yield port
    if port.master >= 0:
        port.vanish()


def serials(sub: Subscriber) -> list[tuple[int, str]]:
    return [(r["seq"], r["value"]) for r in sub.readings() if r["tag"] == "serial"]


async def test_lines_written_together_are_each_a_reading_in_order_decoded_and_stored(
    mosquitto: Mosquitto, tmp_path: Path, scanner: PtyPort
) -> None:
    db = tmp_path / "store.db"
    store = StoreProcess(tmp_path / "store", mosquitto, f"sqlite:///{db}")
    store.start()
    sub = Subscriber(mosquitto, f"{LINE}/#")
    try:
        async with RunningService(config(mosquitto, tmp_path)):
            # The port may open after the first write: a probe line until it is read.
            for _ in range(40):
                scanner.send(b"SN-0\r")
                try:
                    await async_wait_until(lambda: serials(sub), 0.5)
                    break
                except AssertionError:
                    continue
            scanner.send(b"SN-000106\rSN-000107\r")  # two lines in one write
            scanner.send(b"SN-000201\rSN-000202\rSN-000203\r")  # three
            wanted = ["SN-000106", "SN-000107", "SN-000201", "SN-000202", "SN-000203"]
            await async_wait_until(
                lambda: [v for _, v in serials(sub)][-5:] == wanted, 15, "the five lines"
            )
        got = serials(sub)
        assert [v for _, v in got if v != "SN-0"] == wanted  # every line, in order
        seqs = [s for s, _ in got]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        # They were sent as samples of one tag in one poll object, never as repeated keys.
        polls = sub.polls("scanner-1")
        assert any(len(p["value_list"]) >= 2 for p in polls), polls
        for poll in polls:  # the scanner's one tag, by position: index 0 once per sample
            assert "values" not in poll
            assert poll.get("tag_list", [0]) == [0] * len(poll["value_list"])
        # The store has each of them, with its unit.
        engine = connect(f"sqlite:///{db}")

        def stored() -> list[tuple[int, str, str | None]]:
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT r.seq, r.text, c.unit_serial FROM readings r "
                    "JOIN series s ON s.id = r.series JOIN contexts c ON c.id = r.context "
                    "WHERE s.tag = 'serial' ORDER BY r.seq"
                ).all()
            return [(seq, text, unit) for seq, text, unit in rows]

        wait_until(lambda: [t for _, t, _ in stored()][-5:] == wanted, 20, "stored")
        # The store has what the reference decoder has: values, seqs and unit context.
        decoded = [(r["seq"], r["value"], r["unit_serial"]) for r in sub.readings()
                   if r["tag"] == "serial"]  # fmt: skip
        assert stored() == decoded
        assert {u for *_, u in decoded} <= {"SN-0", *wanted}
        assert store.health()["ingest"]["quarantined"] == {}
        engine.dispose()
    finally:
        sub.close()
        store.stop()


async def test_a_consumer_that_subscribes_late_resolves_every_readings_context(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path, scanner: PtyPort
) -> None:
    """A consumer that was not there when the unit arrived gets its context version retained
    on context/ft-1 (and the tag metadata on meta/+), so it resolves every reading it gets;
    a unit that arrives while it listens is published before the readings that name it."""
    early = Subscriber(mosquitto, f"{LINE}/#", client_id="early")
    late: Subscriber | None = None
    try:
        async with RunningService(config(mosquitto, tmp_path, modbus_server.port)) as running:
            context = running.service.context
            for _ in range(40):
                scanner.send(b"SN-A1\r")
                try:
                    await async_wait_until(lambda: context.current_serial("ft-1") == "SN-A1", 0.5)
                    break
                except AssertionError:
                    continue
            await async_wait_until(
                lambda: any(r["unit_serial"] == "SN-A1" for r in early.readings()), 10, "SN-A1"
            )
            late = Subscriber(mosquitto, f"{LINE}/#", client_id="late")
            lat = late
            await async_wait_until(
                lambda: sum(r["tag"] == "v1" for r in lat.readings()) >= 5, 10, "late readings"
            )
            scanner.send(b"SN-B2\r")
            await async_wait_until(
                lambda: sum(r["unit_serial"] == "SN-B2" and r["tag"] == "v1"
                            for r in lat.readings()) >= 5,
                10, "SN-B2 at the late consumer",
            )  # fmt: skip
        # Every readings message the late consumer got resolves with what it got.
        metas, contexts = MetaBook(), ContextBook()
        unresolved = 0
        tagged: list[str | None] = []
        for topic, payload, _retained in list(late.messages):
            if "/meta/" in topic:
                metas.add(payload)
            elif "/context/" in topic:
                contexts.add(payload)
            elif topic.endswith("/readings"):
                try:
                    got = decode_readings(payload, metas, contexts)
                except ContractError:
                    unresolved += 1  # its context (or metadata) never reached this consumer
                    continue
                tagged += [r.unit_serial for r in got if r.device == "tester-1"]
        assert unresolved == 0
        assert tagged
        assert set(tagged) <= {"SN-A1", "SN-B2"}
        first = tagged.index("SN-B2")
        assert set(tagged[:first]) == {"SN-A1"}
        assert set(tagged[first:]) == {"SN-B2"}
        # SN-A1's context reached it retained (it was published before it subscribed).
        retained = [
            orjson.loads(p)["unit_serial"]
            for t, p, r in late.messages
            if t == f"{LINE}/context/ft-1" and r and p
        ]
        assert retained[:1] == ["SN-A1"]
        # The tester's coil and two register blocks: one poll object per cycle.
        polls = late.polls("tester-1")
        assert polls
        assert all(len(p["value_list"]) == 4 for p in polls)
    finally:
        early.close()
        if late is not None:
            late.close()


async def test_the_store_parks_a_poll_whose_context_it_has_not_seen_and_ingests_it_later(
    tmp_path: Path,
) -> None:
    from contract.encode import PollEncoder, envelope
    from contract.records import Context, Reading
    from store.db import create_schema
    from store.ingest import Incoming, Writer

    engine = connect(f"sqlite:///{tmp_path / 's.db'}")
    create_schema(engine)
    encoder = PollEncoder()
    unit = Context("ft-1", "SN-9", "functional-test", 1, phase="test")
    readings = [Reading(1.0, "serial", "SN-9"), Reading(1.0, "serial", "SN-10")]
    body = encoder.encode(1, "scanner-1", readings, [unit, unit])
    ((version, _),) = encoder.used
    writer = Writer(engine)
    first = writer.write([Incoming(f"{LINE}/readings", envelope("pc1", "0" * 16, body))])
    assert first.parked
    assert first.readings == 0
    second = writer.write([Incoming(f"{LINE}/context/ft-1", version.message("pc1"))])
    assert second.unparked == 1
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT r.seq, r.text, c.unit_serial, c.phase FROM readings r "
            "JOIN contexts c ON c.id = r.context ORDER BY r.seq"
        ).all()
        kept = conn.execute(sa.text("SELECT collector, ctx FROM context_versions")).all()
    assert [tuple(r) for r in rows] == [(1, "SN-9", "SN-9", "test"), (2, "SN-10", "SN-9", "test")]
    assert [tuple(k) for k in kept] == [("pc1", version.ctx)]
    writer.close()
    engine.dispose()


def test_a_message_with_a_repeated_key_is_quarantined_not_half_stored(tmp_path: Path) -> None:
    from store.db import create_schema
    from store.ingest import Incoming, Writer

    engine = connect(f"sqlite:///{tmp_path / 's.db'}")
    create_schema(engine)
    payload = (
        b'{"schema":2,"collector":"pc1","outbox":"0123456789abcdef","polls":[{"seq":1,'
        b'"ts":"2026-11-21T10:15:02.25Z","device":"scanner-1","station":"ft-1",'
        b'"values":{"serial":"PV-000106","serial":"PV-000107"}}]}'
    )
    writer = Writer(engine)
    result = writer.write([Incoming(f"{LINE}/readings", payload)])
    assert result.readings == 0
    assert [kind for kind, _ in result.quarantined] == ["duplicate_key"]
    assert '"serial" appears twice' in result.quarantined[0][1]
    writer.close()
    engine.dispose()


def test_a_real_schema_2_message_is_still_ingested(tmp_path: Path) -> None:
    """Bytes as the schema-2 collector wrote them (its meta message and a message with a
    positional and a keyed poll, context members in each poll)."""
    from store.db import create_schema
    from store.ingest import Incoming, Writer

    engine = connect(f"sqlite:///{tmp_path / 's.db'}")
    create_schema(engine)
    meta = (
        b'{"schema":2,"collector":"pc1","device":"tester-1","meta":"21c215b7",'
        b'"order":["voltage","result"],"tags":{"voltage":{"unit":"V","type":"float32",'
        b'"scale":1.0,"offset":0.0,"station":"ft-1"},"result":{"unit":null,"type":"uint16",'
        b'"scale":1.0,"offset":0.0,"station":"ft-1"}}}'
    )
    readings = (
        b'{"schema":2,"collector":"pc1","outbox":"6f1d0c2a9b7e4e55","polls":['
        b'{"seq":41,"ts":"2026-11-21T10:15:02.250113Z","device":"tester-1","meta":"21c215b7",'
        b'"station":"ft-1","unit_serial":"PV-000106","operation":"functional-test",'
        b'"attempt":1,"phase":"test","tag_index":0,"value_list":[12.03,0]},'
        b'{"seq":43,"ts":"2026-11-21T10:15:02.3Z","device":"scanner-1","station":"ft-1",'
        b'"unit_serial":"PV-000106","operation":"functional-test","attempt":1,"phase":"test",'
        b'"values":{"serial":"PV-000106"}}]}'
    )
    writer = Writer(engine)
    result = writer.write(
        [Incoming(f"{LINE}/meta/tester-1", meta), Incoming(f"{LINE}/readings", readings)]
    )
    assert (result.quarantined, result.parked, result.readings_inserted) == ([], [], 3)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT r.seq, s.tag, r.num, r.text, c.unit_serial FROM readings r "
            "JOIN series s ON s.id = r.series JOIN contexts c ON c.id = r.context ORDER BY r.seq"
        ).all()
    assert [tuple(r) for r in rows] == [
        (41, "voltage", 12.03, None, "PV-000106"),
        (42, "result", 0.0, None, "PV-000106"),
        (43, "serial", None, "PV-000106", "PV-000106"),
    ]
    writer.close()
    engine.dispose()
