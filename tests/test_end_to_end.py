"""End to end with real parts: pymodbus server -> collector -> SQLite -> mosquitto -> subscriber."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from collector.config import Config
from drivers.modbus.config import ModbusTable
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    assert_no_gaps,
    assert_valid,
    async_wait_until,
    config_dict,
    first_arrival_order,
    set_tester,
    start_collector,
    write_config,
)


@pytest.fixture
async def line(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> AsyncIterator[tuple[Config, Subscriber]]:
    config = Config.model_validate(config_dict(mosquitto, modbus_server.port, tmp_path / "b.db"))
    await set_tester(modbus_server, config, voltage=12.25, serial="SN0001", result=0)
    subscriber = Subscriber(mosquitto, TOPIC)
    yield config, subscriber
    subscriber.close()


async def test_values_and_tags_arrive_at_a_real_subscriber(
    line: tuple[Config, Subscriber], modbus_server: SimulatedModbusServer
) -> None:
    config, sub = line
    async with RunningService(config) as running:
        await async_wait_until(lambda: len(sub.readings()) >= 20, 10, "20 readings")
        await set_tester(modbus_server, config, serial="SN0002", voltage=11.5)
        await async_wait_until(
            lambda: any(r["unit_serial"] == "SN0002" for r in sub.readings()), 10, "new serial"
        )
        port = running.service.health_server.bound_port  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            health = (await http.get("/health")).json()
            status = (await http.get("/status")).json()
    message = sub.payloads()[0]
    assert message["schema"] == 3
    assert message["collector"] == "pc1"
    assert re.fullmatch("[0-9a-f]{16}", message["outbox"])
    with sub._lock:
        sent = list(sub.messages)
    for topic, payload, _ in sent:  # every real message against the published JSON Schema
        if topic.endswith("/readings"):
            assert_valid(payload, "readings-3.json")
        elif "/meta/" in topic:
            assert_valid(payload, "meta-3.json")
        elif "/context/" in topic and payload:
            assert_valid(payload, "context-3.json")
    metas = {t.rsplit("/", 1)[1]: json.loads(p) for t, p, retained in sent if "/meta/" in t}
    assert set(metas) == {"tester-1", "fixture-1"}
    assert metas["tester-1"]["tags"]["voltage"] == {
        "unit": "V",
        "type": "float32",
        "scale": 1.0,
        "offset": 0.0,
        "station": "ft-1",
    }
    poll = next(p for p in sub.polls("tester-1"))  # by position: its meta names the device
    assert poll["meta"] == metas["tester-1"]["meta"]
    readings = [r for r in sub.readings() if r["device"] == "tester-1"]
    first = {r["tag"]: r for r in readings if r["seq"] < readings[0]["seq"] + 3}
    assert first["voltage"]["value"] == 12.25
    assert first["voltage"]["quality"] == "good"
    assert first["voltage"]["error"] is None
    assert first["voltage"]["station"] == "ft-1"
    assert first["voltage"]["operation"] == "functional-test"
    assert first["voltage"]["unit_serial"] == "SN0001"
    assert first["voltage"]["ts"].endswith("Z")
    assert first["serial"]["value"] == "SN0001"
    fixture = [r for r in sub.readings() if r["device"] == "fixture-1"]
    assert fixture
    assert fixture[0]["station"] is None
    assert fixture[0]["unit_serial"] is None
    assert fixture[0]["value"] is False
    # The serial change: readings after it carry the new serial and the new values.
    later = [r for r in sub.readings() if r["unit_serial"] == "SN0002" and r["tag"] == "voltage"]
    assert later[-1]["value"] == 11.5
    seqs = sub.seqs()
    assert first_arrival_order(seqs) == sorted(set(seqs))
    assert_no_gaps(seqs)
    # Health and status while running.
    assert health == {"status": "ok", "reasons": []}
    assert status["devices"]["tester-1"]["connected"] is True
    assert status["devices"]["tester-1"]["last_good_poll_ts"] is not None
    assert status["devices"]["tester-1"]["errors"] == {}
    station = status["stations"]["ft-1"]
    assert station["operation"] == "functional-test"
    assert (station["unit_serial"], station["attempt"]) == ("SN0002", 1)
    assert station["last_unit"]["serial"] == "SN0001"
    assert station["last_unit"]["ended_by"] == "next_serial"
    assert status["mqtt"]["connected"] is True
    assert status["mqtt"]["last_accepted_ts"] is not None
    assert status["buffer"]["dropped_total"] == 0
    assert set(status["buffer"]) >= {"depth", "oldest_unsent_age_s", "dropped_total"}
    # The retained online/offline state: last word is "offline" after a clean stop.
    states = [json.loads(p)["state"] for t, p, _ in sub.messages if t.endswith("/status")]
    assert states[0] == "online"
    assert states[-1] == "offline"


async def test_broker_outage_loses_nothing_and_keeps_order(
    line: tuple[Config, Subscriber], mosquitto: Mosquitto
) -> None:
    config, sub = line
    async with RunningService(config) as running:
        service = running.service
        await async_wait_until(lambda: len(sub.readings()) >= 20, 10, "readings before outage")
        mosquitto.stop()
        await async_wait_until(lambda: not service.mqtt.connected, 10, "forwarder sees outage")
        assert service.health()[0] == "degraded"
        assert any("mqtt not connected" in r for r in service.health()[1])
        depth_at_outage = service.outbox.outbox.depth
        await async_wait_until(
            lambda: service.outbox.outbox.depth >= depth_at_outage + 60,
            15,
            "readings buffered during the outage",
        )
        last_seq_during_outage = (await service.outbox.stats()).last_seq
        mosquitto.start()
        await async_wait_until(
            lambda: max(sub.seqs(), default=0) >= last_seq_during_outage + 20,
            40,
            "backlog and live readings after the outage",
        )
        await async_wait_until(lambda: service.health()[0] == "ok", 10, "health recovers")
    seqs = sub.seqs()
    assert_no_gaps(seqs)
    # The backlog is replayed oldest first (live readings may be interleaved with it).
    backlog = [s for s in first_arrival_order(seqs) if s <= last_seq_during_outage]
    assert backlog == sorted(backlog)
    # Duplicates can only come from the in-flight window at the moment the broker died.
    window = config.mqtt.max_inflight_messages * config.mqtt.max_readings_per_message
    assert len(seqs) - len(set(seqs)) <= window


async def test_sigkill_mid_stream_then_restart_leaves_no_gap(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.yaml", mosquitto, modbus_server.port, tmp_path / "b.db")
    sub = Subscriber(mosquitto, TOPIC)
    rng = random.Random(2)
    try:
        for _ in range(3):
            before = len(set(sub.seqs()))
            process = await start_collector(path)
            await async_wait_until(
                lambda b=before: len(set(sub.seqs())) >= b + 30, 20, "readings from this run"
            )
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # kill at a random point mid-stream
            process.kill()
            await process.wait()
        before = len(set(sub.seqs()))
        process = await start_collector(path)
        await async_wait_until(lambda: len(set(sub.seqs())) >= before + 30, 20, "last run")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
        sub.close()
    assert_no_gaps(sub.seqs())


async def test_sigterm_with_broker_down_keeps_the_buffer_for_the_next_start(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    mosquitto.stop()
    buffer = tmp_path / "b.db"
    path = write_config(tmp_path / "c.yaml", mosquitto, modbus_server.port, buffer)
    process = await start_collector(path)
    from collector.buffer import Outbox

    def buffered() -> int:
        if not buffer.exists():
            return 0
        box = Outbox(buffer, 5_000_000)
        try:
            return box.depth
        finally:
            box.close()

    await async_wait_until(lambda: buffered() >= 30, 20, "readings buffered with no broker")
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 20) == 0
    assert process.stderr is not None
    log = (await process.stderr.read()).decode()
    assert "stay buffered for the next start" in log
    kept = buffered()
    assert kept >= 30
    # Next start, broker back: everything buffered arrives, starting at seq 1.
    mosquitto.start()
    sub = Subscriber(mosquitto, TOPIC)
    process = await start_collector(path)
    try:
        await async_wait_until(lambda: len(set(sub.seqs())) >= kept + 10, 20, "backlog delivered")
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        sub.close()
    assert_no_gaps(sub.seqs())


async def test_unreachable_device_is_degraded_and_others_keep_flowing(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
    raw["devices"][1]["port"] = 1  # nothing listens there
    config = Config.model_validate(raw)
    await modbus_server.set_registers(1, ModbusTable.HOLDING_REGISTER, 10, [0x534E, 0x3031])
    sub = Subscriber(mosquitto, TOPIC)
    try:
        async with RunningService(config) as running:
            await async_wait_until(lambda: len(sub.readings()) >= 30, 10, "tester readings")
            state, reasons = running.service.health()
            status = await running.service.status()
    finally:
        sub.close()
    assert state == "degraded"
    assert any(r.startswith("device fixture-1 not connected: connection") for r in reasons)
    assert status["devices"]["fixture-1"]["connected"] is False
    assert status["devices"]["fixture-1"]["errors"]["connection"] >= 1
    assert {r["device"] for r in sub.readings()} == {"tester-1"}
    assert sub.readings()[0]["unit_serial"] == "SN01"


async def test_metrics_endpoint_exports_the_status_counters(
    line: tuple[Config, Subscriber], mosquitto: Mosquitto
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    config, sub = line
    async with RunningService(config) as running:
        await async_wait_until(lambda: len(sub.readings()) >= 30, 10, "readings delivered")
        port = running.service.health_server.bound_port  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            answer = await http.get("/metrics")
            status = (await http.get("/status")).json()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("collector_device_connected", device="tester-1", protocol="modbus_tcp") == 1
    assert value("collector_device_polls_total", device="tester-1") > 5
    assert value("collector_poll_duration_seconds_count", device="tester-1") > 5
    assert value("collector_poll_duration_seconds_bucket", device="tester-1", le="+Inf") == value(
        "collector_poll_duration_seconds_count", device="tester-1"
    )
    assert value("collector_readings_collected_total") >= value(
        "collector_readings_delivered_total"
    )
    assert value("collector_readings_delivered_total") >= 30
    assert value("collector_mqtt_connected") == 1
    assert value("collector_mqtt_publish_rtt_seconds_count") >= 1
    assert value("collector_buffer_dropped_total") == 0
    assert value("collector_buffer_bytes") > 0
    assert value("collector_buffer_max_readings") == config.buffer.max_readings
    assert value("collector_info", id="pc1", version=status["collector"]["version"]) == 1
