"""Deviations recorded on the line PC (docs/pilot-record.md, "Deviations on the line PC";
contract/deviations.py): ``POST /deviations`` on the collector, through its outbox, a real
mosquitto (stopped while the deviation is recorded) and a store process on SQLite and
PostgreSQL, into the record's deviations, the run's report and the unit's genealogy; exactly
once, also when the message comes twice. And the endpoint's refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
import sqlalchemy as sa
import yaml
from alembic import command

import contract
from collector.config import Config
from contract.deviations import Deviation, decode_deviations, deviation_fields, encode_deviation
from contract.encode import encode_unit, envelope, with_seq
from contract.fields import ContractError
from contract.records import UnitRecord
from drivers.modbus.sim import SimulatedModbusServer
from store.announce import Note, parse_gaps
from store.db import connect
from store.migrate import alembic_config, migrate
from store.record.audit import verify
from store.record.bodies import DeviationIn
from store.record.deviations import of_run as deviations_of
from store.record.deviations import record as record_deviation
from store.record.people import Person
from store.record.runs import open_run
from tests.helpers import (
    Mosquitto,
    RunningService,
    async_wait_until,
    config_dict,
    set_tester,
)
from tests.store_fixtures import PILOT_PROTOCOL, Publisher, StoreProcess

LINE_TOKEN = "line-token-7"
OFFICE_TOKEN = "quality-token-8"
TOPIC = "collector/plant-a/line-1/pc1/deviations"
DEVIATION = {
    "description": "Fixture clamp re-seated after a jam\n(operator saw the clamp open)",
    "severity": "major",
    "operation": "functional-test",
    "station": "ft-1",
    "device": "fixture-1",
    "serials": ["SN-1", "SN-2"],
    "action": "Units set aside for retest",
    "who": "night shift, station ft-1",
}


def line_config(
    broker: Mosquitto, modbus: SimulatedModbusServer, tmp_path: Path, token: bool = True
) -> Config:
    raw = config_dict(
        broker, modbus.port, tmp_path / "b.db", delivery="store",
        reconnect_min_ms=100, reconnect_max_ms=500,
    )  # fmt: skip
    if token:
        raw["health"]["token_env"] = "LINE_DEV_TOKEN"
    return Config.model_validate(raw)


def store_with_people(tmp_path: Path, broker: Mosquitto, db_url: str) -> StoreProcess:
    store = StoreProcess(tmp_path / "store", broker, db_url, acks={"interval_s": 1})
    config = yaml.safe_load(store.config.read_text())
    digest = hashlib.sha256(OFFICE_TOKEN.encode()).hexdigest()
    config["people"] = [{"name": "Alice Q", "functions": ["Quality"], "token_sha256": digest}]
    store.config.write_text(yaml.safe_dump(config))
    return store


async def post(
    port: int, body: Any, token: str | None = LINE_TOKEN, path: str = "/deviations"
) -> httpx.Response:
    """A POST from the test's own loop (the collector's server runs on it: never block it)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if isinstance(body, (bytes, str)):
        content: Any = {"content": body}
    else:
        content = {"json": body}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"http://127.0.0.1:{port}{path}", headers=headers, **content)


def line_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT run_id, collector, outbox, seq, station, severity, person, who, "
                    "serials FROM record_deviations WHERE collector IS NOT NULL"
                )
            ).mappings()
            return [dict(r) for r in rows]
    except sa.exc.SQLAlchemyError:
        return []


def publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    publisher = Publisher(broker, "deviation-test")
    try:
        publisher.publish(topic, payload)
    finally:
        publisher.close()


async def test_a_deviation_recorded_while_the_broker_is_down_arrives_once(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LINE_DEV_TOKEN", LINE_TOKEN)
    engine = connect(db_url)
    store = store_with_people(tmp_path, mosquitto, db_url)
    store.start()
    protocol = {**PILOT_PROTOCOL, "run": {"name": "Line run", "serial_pattern": "SN-\\d+"},
                "max_open_deviations": {"critical": 0, "major": 0}}  # fmt: skip
    opened = await post(store.port, yaml.safe_dump(protocol), OFFICE_TOKEN, "/runs")
    assert opened.status_code == 201, opened.text
    run_id = opened.json()["id"]
    # A unit record of SN-2 (from another line PC), for its genealogy.
    record = UnitRecord(
        serial="SN-2", station="ft-1", operation="functional-test", attempt=1,
        start_ts=1_796_630_000.0, end_ts=1_796_630_030.0, ended_by="verdict", verdict="pass",
        failure_code=None, readings=0, characteristics={},
    )  # fmt: skip
    units = envelope("pc9", "fedcba9876543210", with_seq([(1, encode_unit(record))]), b"units")
    publish(mosquitto, "collector/plant-a/line-1/pc9/units", units)
    config = line_config(mosquitto, modbus_server, tmp_path)
    await set_tester(modbus_server, config, voltage=1.5, serial="SN-1", result=0)
    try:
        async with RunningService(config) as running:
            service = running.service
            assert service.health_server is not None
            port = service.health_server.bound_port
            outbox = service.outbox.outbox
            await async_wait_until(lambda: service.mqtt.store_acks > 0, 30, "store acks")

            mosquitto.stop()  # the broker goes away; the line PC records a deviation
            await async_wait_until(lambda: not service.mqtt.connected, 10, "disconnected")
            answer = await post(port, DEVIATION)
            assert answer.status_code == 201, answer.text
            made = answer.json()
            assert (made["seq"], made["outbox"], made["station"]) == (1, outbox.outbox_id, "ft-1")
            assert outbox.deviations_depth == 1  # committed before the 201
            assert line_rows(engine) == []

            mosquitto.start()
            await async_wait_until(lambda: len(line_rows(engine)) == 1, 60, "stored")
            # The store's acknowledgement, not the broker's PUBACK, deletes it.
            await async_wait_until(lambda: outbox.deviations_depth == 0, 30, "acknowledged")
            assert service.mqtt.deviations_delivered == 1
            metrics = (await service.metrics()).decode()
            assert "collector_deviations_delivered_total 1.0" in metrics
            assert "collector_buffer_deviations 0.0" in metrics
            status = await service.status()
            assert status["buffer"]["deviations_depth"] == 0
        [row] = line_rows(engine)
        assert row == {
            "run_id": run_id, "collector": "pc1", "outbox": made["outbox"], "seq": 1,
            "station": "ft-1", "severity": "major", "person": "line PC pc1",
            "who": "night shift, station ft-1", "serials": '["SN-1","SN-2"]',
        }  # fmt: skip
        # The same message again (a redelivery): stored once.
        payload = envelope("pc1", made["outbox"], with_seq([(1, encode_deviation(
            deviation_fields(DEVIATION, 1_800_000_000.0)))]), b"deviations")  # fmt: skip
        publish(mosquitto, TOPIC, payload)
        await async_wait_until(
            lambda: store.health()["ingest"]["deviations_received"] >= 2, 30, "the copy received"
        )
        assert len(line_rows(engine)) == 1
        assert store.health()["ingest"]["deviations_inserted"] == 1
        assert (store.metric("store_deviations_received_total"),
                store.metric("store_deviations_inserted_total")) == (2, 1)  # fmt: skip
        report = store.get(f"/runs/{run_id}/report?format=json").json()
        [item] = report["deviations"]["items"]
        assert item["description"] == DEVIATION["description"]
        assert (item["collector"], item["station"], item["device"], item["open"]) == (
            "pc1", "ft-1", "fixture-1", True,
        )  # fmt: skip
        assert report["deviations"]["open_by_severity"] == {"minor": 0, "major": 1, "critical": 0}
        judged = {c["name"]: c["result"] for c in report["run_criteria"]}
        assert judged["open_deviations major"] == "fail"
        assert report["audit"]["verified"] is True
        genealogy = store.get("/units/SN-2", headers={"Accept": "application/json"})
        assert genealogy.status_code == 200, genealogy.text
        assert [d["id"] for d in genealogy.json()["deviations"]] == [item["id"]]
        # The office closes it like its own.
        closed = await post(
            store.port,
            {"cause": "worn clamp pad", "action": "pad replaced"},
            OFFICE_TOKEN,
            f"/runs/{run_id}/deviations/{item['id']}/close",
        )
        assert closed.status_code == 200, closed.text
    finally:
        store.stop()


async def test_the_endpoint_checks_the_token_first_and_names_the_bad_field(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LINE_DEV_TOKEN", LINE_TOKEN)
    config = line_config(mosquitto, modbus_server, tmp_path)
    async with RunningService(config) as running:
        service = running.service
        assert service.health_server is not None
        port = service.health_server.bound_port
        assert (await post(port, DEVIATION, token=None)).status_code == 401
        assert (await post(port, DEVIATION, token="wrong")).status_code == 401
        # The token before the body: a huge body without one is a 401, with one a 413.
        huge = b"x" * (70 * 1024)
        assert (await post(port, huge, token=None)).status_code == 401
        assert (await post(port, huge)).status_code == 413

        async def refused(body: Any) -> str:
            answer = await post(port, body)
            assert answer.status_code == 422, answer.text
            detail: str = answer.json()["detail"]
            return detail

        assert await refused({**DEVIATION, "severity": "bad"}) == (
            'body.severity: must be one of minor, major, critical, got "bad"'
        )
        no_description = {k: v for k, v in DEVIATION.items() if k != "description"}
        assert await refused(no_description) == "body.description: missing (must be a string)"
        assert await refused({**DEVIATION, "station": "ft-9"}) == (
            "body.station: no station 'ft-9' on this line PC; stations: ft-1"
        )
        assert await refused({**DEVIATION, "serials": [], "window": None}) == (
            "body.serials: name the units: serials, or a time window {start, end}"
        )
        assert await refused({**DEVIATION, "serials": ["SN-1\u202e"]}) == (
            "body.serials[0]: contains the control or format character U+202E"
        )
        assert await refused({**DEVIATION, "action": "ok\x1b[2J"}) == (
            "body.action: contains the control or format character U+001B"
        )
        assert (await refused({**DEVIATION, "colour": "red"})).startswith(
            "body.colour: unknown field"
        )
        assert await refused({**DEVIATION, "seq": 5}) == (
            "body.seq: unknown field (the collector sets it)"
        )
        assert (await refused(b"{")).startswith("body: not valid JSON")
        window = {"start": "2026-12-07T10:00:00Z", "end": "2026-12-07T09:00:00Z"}
        assert await refused({**DEVIATION, "serials": [], "window": window}) == (
            "body.window: start must be before end"
        )
        assert service.outbox.outbox.deviations_depth == 0  # nothing refused was kept
        good = await post(
            port, {**DEVIATION, "serials": [], "window": {**window, "end": "2026-12-07T11:00Z"}}
        )
        assert good.status_code == 201, good.text
        assert service.outbox.outbox.deviations_depth == 1


async def test_without_a_token_configured_the_endpoint_is_off(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    config = line_config(mosquitto, modbus_server, tmp_path, token=False)
    async with RunningService(config) as running:
        assert running.service.health_server is not None
        answer = await post(running.service.health_server.bound_port, DEVIATION)
        assert answer.status_code == 403
        assert "set health.token_env or health.token_file" in answer.json()["detail"]


def test_the_message_round_trips_and_matches_its_json_schema() -> None:
    deviation = deviation_fields(
        {**DEVIATION, "window": {"start": "2026-12-07T10:00:00Z", "end": "2026-12-07T11:00:00Z"}},
        1_796_630_400.25,
    )
    payload = envelope("pc1", "0123456789abcdef",
                       with_seq([(7, encode_deviation(deviation))]), b"deviations")  # fmt: skip
    jsonschema.validate(orjson.loads(payload), contract.json_schema("deviations"))
    [flat] = decode_deviations(payload)
    assert (flat.collector, flat.outbox, flat.seq) == ("pc1", "0123456789abcdef", 7)
    assert flat.deviation == deviation
    assert flat.deviation.window == (1_796_637_600.0, 1_796_641_200.0)
    bare = Deviation(1.0, "d", "minor", "ft-1", "a", serials=("X",))
    assert orjson.loads(encode_deviation(bare)) == {
        "ts": "1970-01-01T00:00:01Z", "description": "d", "severity": "minor",
        "station": "ft-1", "serials": ["X"], "action": "a",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"severity": "huge"}, 'deviations[0].severity: must be one of minor, major, critical, '
                               'got "huge"'),
        ({"seq": -1}, "deviations[0].seq: must be an integer >= 0, got -1"),
        ({"ts": "yesterday"}, 'deviations[0].ts: must be an RFC 3339 time with offset, got '
                              '"yesterday"'),
        ({"station": ""}, "deviations[0].station: must not be empty"),
        ({"serials": "SN-1"}, 'deviations[0].serials: must be an array of at most 1000 serials, '
                              'got "SN-1"'),
    ],
)  # fmt: skip
def test_the_decoder_names_the_field(change: dict[str, Any], problem: str) -> None:
    item = {"seq": 1, "ts": "2026-12-07T10:00:00Z", **DEVIATION, **change}
    payload = orjson.dumps(
        {"schema": 2, "collector": "pc1", "outbox": "0123456789abcdef", "deviations": [item]}
    )
    with pytest.raises(ContractError) as raised:
        decode_deviations(payload)
    assert str(raised.value) == problem


def test_revision_0006_keeps_the_deviations_written_before_it(db_url: str) -> None:
    """A database at 0003 with an office deviation: after 0006 the row reads back the same,
    with the new columns null, and the audit chain (whose content has no such keys) holds."""
    engine = connect(db_url)
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
    alice = Person("Alice Q", ("Quality",), b"")
    _created, run = open_run(engine, alice, yaml.safe_dump(PILOT_PROTOCOL))
    body = DeviationIn(description="d", severity="minor", serials=["PILOT-01"], action="a")
    written = record_deviation(engine, alice, run["id"], body)
    migrate(engine)
    with engine.connect() as conn:
        [found] = deviations_of(conn, run["id"])
        row = conn.execute(
            sa.text("SELECT collector, outbox, seq, recorded_at FROM record_deviations")
        ).one()
    new = {"recorded_at": None, "collector": None, "outbox": None, "seq": None}
    assert found == {**written, **new}
    assert tuple(row) == (None, None, None, None)
    assert verify(engine).ok


def test_a_collector_may_say_it_no_longer_holds_deviations() -> None:
    """The store asks for a hole in a deviations stream again like in any other; the
    collector's answer (``.../gaps``, stream deviations) is taken, not quarantined, so the
    store stops asking."""
    payload = orjson.dumps(
        {"schema": 2, "collector": "pc1", "outbox": "0123456789abcdef",
         "stream": "deviations", "unavailable": [[2, 3]]}
    )  # fmt: skip
    assert parse_gaps(payload) == [
        Note("pc1", "0123456789abcdef", "deviations", "unavailable", 2, 3)
    ]
    with pytest.raises(ContractError) as raised:
        parse_gaps(payload.replace(b"deviations", b"remarks"))
    assert str(raised.value) == "stream: 'remarks' is not readings, units or deviations"
