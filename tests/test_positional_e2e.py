"""Positional values end to end with real parts (pymodbus server -> collector -> SQLite ->
mosquitto -> a consumer): the consumer is the reference decoder with a MetaBook fed from the
meta topic, parking a message whose meta version it has not seen yet. It reconstructs every
reading with the right tag name, also across a reload that changed a device's tags while
readings of the old version were still buffered: the old version is republished (not
retained) on connect, before the readings that need it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import yaml

from collector.config import load_config
from contract.decode import (
    ContextBook,
    ContractError,
    FlatReading,
    MetaBook,
    decode_readings,
    expand_polls,
)
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    assert_no_gaps,
    async_wait_until,
    config_dict,
    set_tester,
    wait_until,
)


class Consumer:
    """What docs/messages.md tells a consumer to do: every meta message into the MetaBook,
    every unit-context message into the ContextBook; each readings message decoded with
    them, or parked (``unknown_meta``) until the version it waits for arrives."""

    def __init__(self) -> None:
        self.book = MetaBook()
        self.contexts = ContextBook()
        self.parked: list[bytes] = []
        self.readings: list[FlatReading] = []
        self.polls_by_meta: dict[str, list[list[str]]] = {}

    def take(self, topic: str, payload: bytes) -> None:
        if "/context/" in topic:
            self.contexts.add(payload)
        elif "/meta/" in topic:
            self.book.add(payload)
            parked, self.parked = self.parked, []
            for message in parked:
                self.take("readings", message)
        elif topic.endswith("readings"):
            try:
                got = decode_readings(payload, self.book, self.contexts)
            except ContractError as exc:
                if exc.kind != "unknown_meta":
                    raise
                self.parked.append(payload)
                return
            self.readings += got
            polls = orjson.loads(payload)["polls"]
            expand_polls(polls)  # a poll after the first may leave out its seq and ts
            for poll in polls:
                if "tags" not in poll:  # by position
                    self.polls_by_meta.setdefault(poll["meta"], []).append(
                        [
                            r.tag
                            for r in got
                            if poll["seq"] <= r.seq < poll["seq"] + len(poll["value_list"])
                        ]
                    )


def with_current(raw: dict[str, Any]) -> dict[str, Any]:
    """tester-1 gets a tag between voltage and serial: its order, and so the meaning of a
    tag_index, changes."""
    changed = copy.deepcopy(raw)
    tags = changed["devices"][0]["tags"]
    tags.insert(1, {"name": "current", "table": "holding_register", "address": 2, "type": "uint16"})
    return changed


async def test_a_consumer_reconstructs_every_reading_across_a_reload_with_a_backlog(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert config.mqtt.value_keys.value == "position"  # the default
    changed = with_current(raw)
    await set_tester(modbus_server, config, voltage=12.25, serial="SN0001", result=0)
    await set_tester(modbus_server, load_config_from(changed, tmp_path), current=7)
    sub = Subscriber(mosquitto, TOPIC)  # a durable session: it gets what came meanwhile
    try:
        mosquitto.stop()  # the line runs cut off from the broker: everything is buffered
        async with RunningService(config) as running:
            service = running.service
            service.config_path = path
            v1 = service.writer.metas["tester-1"]
            assert v1.order == ("voltage", "serial", "result")
            await async_wait_until(lambda: service.outbox.outbox.depth >= 60, 15, "backlog v1")
            path.write_text(yaml.safe_dump(changed))
            assert await service.reload() is True
            v2 = service.writer.metas["tester-1"]
            assert v2.order == ("voltage", "current", "serial", "result")
            assert v2.meta != v1.meta
            depth = service.outbox.outbox.depth
            await async_wait_until(
                lambda: service.outbox.outbox.depth >= depth + 60, 15, "backlog v2"
            )
            kept = {m for d, m, _ in service.outbox.stored_metas() if d == "tester-1"}
            assert kept == {v1.meta, v2.meta}  # v1's readings are still pending
            mosquitto.start()
            last = (await service.outbox.stats()).last_seq
            await async_wait_until(lambda: sub.has_all(last), 40, "the backlog delivered")
            await async_wait_until(
                lambda: (
                    {m for d, m, _ in service.outbox.stored_metas() if d == "tester-1"} == {v2.meta}
                ),
                10,
                "v1 pruned once no pending reading can need it (the line keeps running)",
            )
    finally:
        sub.close()

    with sub._lock:
        arrived = list(sub.messages)
    consumer = Consumer()
    for topic, payload, _ in arrived:
        consumer.take(topic, payload)
    assert consumer.parked == []  # every message resolved
    assert_no_gaps([r.seq for r in consumer.readings])
    # The old version came again after the reconnect, before the readings that need it.
    topics = [(t, orjson.loads(p).get("meta") if "/meta/" in t else None) for t, p, _ in arrived]
    v1_meta_at = topics.index(("collector/plant-a/line-1/pc1/meta/tester-1", v1.meta))
    first_v1_poll_at = next(
        i
        for i, (t, p, _) in enumerate(arrived)
        if t.endswith("/readings") and v1.meta.encode() in p
    )
    assert v1_meta_at < first_v1_poll_at
    # Each version's polls carry its own tags, and every value sits under its right name.
    assert consumer.polls_by_meta[v1.meta]
    assert consumer.polls_by_meta[v2.meta]
    assert {tag for poll in consumer.polls_by_meta[v1.meta] for tag in poll} <= set(v1.order)
    assert "current" in {tag for poll in consumer.polls_by_meta[v2.meta] for tag in poll}
    tester = [r for r in consumer.readings if r.device == "tester-1"]
    by_tag: dict[str, set[object]] = {}
    for r in tester:
        by_tag.setdefault(r.tag, set()).add(r.value)
    assert by_tag == {"voltage": {12.25}, "serial": {"SN0001"}, "result": {0}, "current": {7}}
    assert {r.value for r in consumer.readings if r.device == "fixture-1"} == {False}
    # A consumer that comes later gets only the current version, retained.
    late = Subscriber(mosquitto, "collector/plant-a/line-1/pc1/meta/#", client_id="late")
    try:
        wait_until(lambda: len(late.metas()) >= 2, 10, "the retained metadata")
        metas = {m["device"]: m["meta"] for m in late.metas()}
        assert metas["tester-1"] == v2.meta
        assert all(retained for _, _, retained in late.messages)
    finally:
        late.close()


def load_config_from(raw: dict[str, Any], folder: Path) -> Any:
    path = folder / "changed.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


async def test_value_keys_name_gives_keyed_polls_a_consumer_reads_without_metadata(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db", value_keys="name")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    await set_tester(modbus_server, config, voltage=3.5, serial="SN9", result=1)
    sub = Subscriber(mosquitto, "collector/plant-a/line-1/pc1/#")
    try:
        async with RunningService(config):
            await async_wait_until(lambda: len(sub.payloads()) >= 3, 10, "readings")
    finally:
        sub.close()
    polls = [p for m in sub.payloads() for p in m["polls"]]
    assert all("tags" in p and "tag_index" not in p and "tag_list" not in p for p in polls)
    with sub._lock:
        payloads = [p for t, p, _ in sub.messages if t.endswith("/readings")]
    contexts = sub.context_book()  # the unit contexts, on context/ft-1
    readings = [r for p in payloads for r in decode_readings(p, None, contexts)]  # no MetaBook
    assert {r.unit_serial for r in readings if r.device == "tester-1"} == {"SN9"}
    assert {(r.tag, r.value) for r in readings if r.device == "tester-1"} == {
        ("voltage", 3.5),
        ("serial", "SN9"),
        ("result", 1),
    }
