"""Faults between the collector and the broker. A consumer checks seq for gaps and duplicates.

Pass: no gap in seq except drops and quarantines the collector itself counted; duplicates only
within the in-flight window; health shows the fault and recovers after it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.buffer import Outbox, export_rows
from collector.config import Config
from contract.decode import decode_readings
from drivers.modbus.config import ModbusTable
from drivers.modbus.sim import SimulatedModbusServer
from tests.faults.conftest import SilentProxy
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    assert_no_gaps,
    async_wait_until,
    config_dict,
    first_arrival_order,
    set_tester,
)


def stored_counts(path: Path) -> dict[str, int]:
    """Counters from a buffer file, after the service stopped."""
    box = Outbox(path, 5_000_000)
    try:
        return {"quarantined_total": box.quarantined_total, "dropped_total": box.dropped_total}
    finally:
        box.close()


FAST_RECONNECT = {"reconnect_min_ms": 100, "reconnect_max_ms": 500}


def make_config(
    broker: Mosquitto, modbus: SimulatedModbusServer, tmp_path: Path, **mqtt: Any
) -> Config:
    raw = config_dict(broker, modbus.port, tmp_path / "b.db", **{**FAST_RECONNECT, **mqtt})
    return Config.model_validate(raw)


TRACE_TAG = {
    "name": "trace",
    "table": "holding_register",
    "address": 100,
    "type": "string",
    "count": 125,
}


async def with_trace_tag(
    broker: Mosquitto,
    modbus: SimulatedModbusServer,
    tmp_path: Path,
    poll_ms: int,
    tester_only: bool,
    trace_word: int = 0x4142,
    **mqtt: Any,
) -> Config:
    """The tester with one more tag: 250 characters of text, larger than small brokers take
    (``trace_word``: the two characters of each register, "AB"; 0x5C5C, two backslashes,
    doubles its bytes in JSON)."""
    raw = config_dict(broker, modbus.port, tmp_path / "b.db", **{**FAST_RECONNECT, **mqtt})
    raw["devices"][0]["tags"].append(TRACE_TAG)
    raw["devices"][0]["poll_interval_ms"] = poll_ms
    if tester_only:
        raw["devices"].pop()
    config = Config.model_validate(raw)
    await set_tester(modbus, config, voltage=1.0, serial="SN1", result=0)
    await modbus.set_registers(1, ModbusTable.HOLDING_REGISTER, 100, [trace_word] * 125)
    return config


def durable_broker(tmp_path: Path, extra: str = "") -> Mosquitto:
    """Saves its state on every change, so the test consumer's session survives a SIGKILL."""
    broker = Mosquitto(
        tmp_path / "durable", "autosave_interval 1\nautosave_on_changes true\n" + extra
    )
    broker.start()
    return broker


async def test_broker_killed_and_restarted(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    broker = durable_broker(tmp_path)
    config = make_config(broker, modbus_server, tmp_path)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    sub = Subscriber(broker, TOPIC)
    try:
        async with RunningService(config) as running:
            service = running.service
            for _ in range(2):
                await async_wait_until(lambda: len(set(sub.seqs())) >= 40, 10, "readings")
                assert broker.process is not None
                broker.process.send_signal(signal.SIGKILL)
                broker.process.wait(10)
                await async_wait_until(lambda: not service.mqtt.connected, 10, "outage seen")
                assert service.health()[0] == "degraded"
                buffered = (await service.outbox.stats()).last_seq
                broker.start()
                await async_wait_until(
                    lambda b=buffered: sub.has_all(b),
                    20,
                    "everything polled during the outage",
                )
                await async_wait_until(lambda: service.health()[0] == "ok", 10, "recovery")
    finally:
        sub.close()
        broker.stop()
    seqs = sub.seqs()
    assert_no_gaps(seqs)
    window = config.mqtt.max_inflight_messages * config.mqtt.max_readings_per_message
    assert len(seqs) - len(set(seqs)) <= 2 * window  # two outages


async def test_silent_network_is_detected_and_nothing_is_lost(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    proxy_to: type[SilentProxy],
) -> None:
    proxy = proxy_to(mosquitto.port)
    await proxy.start()
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db", **FAST_RECONNECT)
    raw["mqtt"]["port"] = proxy.port
    keepalive = raw["mqtt"]["keepalive_s"]
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    sub = Subscriber(mosquitto, TOPIC)  # the consumer is not behind the proxy
    try:
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(lambda: len(sub.seqs()) >= 40, 10, "readings before")
            proxy.go_silent()
            silent_at = time.monotonic()
            # Published into the void now; detected by the MQTT keep-alive (no PINGRESP).
            await async_wait_until(
                lambda: not service.mqtt.connected, 3 * keepalive, "the silent connection detected"
            )
            detected_after = time.monotonic() - silent_at
            assert service.health()[0] == "degraded"
            blind = (await service.outbox.stats()).last_seq
            proxy.recover()
            await async_wait_until(
                lambda: max(sub.seqs()) >= blind + 20, 30, "readings of the blind window and after"
            )
    finally:
        sub.close()
    print(f"silent network detected after {detected_after:.1f} s (keepalive {keepalive} s)")
    assert_no_gaps(sub.seqs())


async def test_broker_packet_size_limit_is_respected(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    """A v5 broker announces its Maximum Packet Size: messages are cut to fit, and a reading
    that alone is too large is quarantined (counted, kept) without blocking the others."""
    broker = Mosquitto(tmp_path / "small-packets", "max_packet_size 1500\n")
    broker.start()
    config = await with_trace_tag(broker, modbus_server, tmp_path, 500, False)
    sub = Subscriber(broker, TOPIC)
    try:
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(lambda: len(sub.seqs()) >= 60, 15, "small messages delivered")
            assert service.mqtt.max_packet_bytes == 1500
            assert service.mqtt.quarantined == 0  # the 250-character reading still fits
    finally:
        sub.close()
        broker.stop()
    sizes = [len(p) for t, p, _ in sub.messages if t.endswith("/readings")]
    assert max(sizes) <= 1500
    assert_no_gaps(sub.seqs())


async def test_a_reading_too_large_for_the_broker_is_quarantined(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path / "tiny-packets", "max_packet_size 400\n")
    broker.start()
    config = await with_trace_tag(broker, modbus_server, tmp_path, 500, True)
    sub = Subscriber(broker, TOPIC)
    try:
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(lambda: service.mqtt.quarantined >= 3, 15, "quarantines")
            await async_wait_until(lambda: len(set(sub.seqs())) >= 9, 15, "the others delivered")
            state, reasons = service.health()
            status = await service.status()
    finally:
        sub.close()
        broker.stop()
    assert state == "degraded"
    assert any("quarantined since start" in r for r in reasons)
    assert status["buffer"]["quarantined_total"] >= 3
    tags = {r["tag"] for r in sub.readings()}
    assert "trace" not in tags
    assert {"voltage", "serial", "result"} <= tags
    # Every seq is either delivered or quarantined: nothing else is missing.
    delivered = set(sub.seqs())
    missing = set(range(1, max(delivered) + 1)) - delivered
    assert len(missing) <= status["buffer"]["quarantined_total"]


async def test_a_broker_that_drops_oversized_messages_and_disconnects(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    """mosquitto's legacy message_size_limit answers with an illegal PUBACK and the connection
    drops. The collector isolates the offending reading, quarantines it, delivers the rest."""
    # The trace reading alone makes a message of about 690 bytes (its 250 backslashes are 500
    # bytes of JSON), over the limit; the tag metadata message (447 bytes) and the other
    # readings' messages are under it.
    broker = Mosquitto(tmp_path / "drops", "message_size_limit 450\n")
    broker.start()
    config = await with_trace_tag(
        broker, modbus_server, tmp_path, 2000, True, trace_word=0x5C5C,
        max_readings_per_message=200,
    )  # fmt: skip
    sub = Subscriber(broker, TOPIC)
    try:
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(lambda: service.mqtt.quarantined >= 2, 60, "isolated")
            await async_wait_until(
                lambda: {"voltage", "serial"} <= {r["tag"] for r in sub.readings()},
                30,
                "the other readings delivered",
            )
    finally:
        sub.close()
        broker.stop()
    assert "trace" not in {r["tag"] for r in sub.readings()}
    # Every seq not delivered is quarantined (a trace reading, each) or still in the buffer (a
    # later trace reading still being isolated when the service stopped, or behind it).
    quarantined = [orjson.loads(r) for r in export_rows(tmp_path / "b.db", "quarantine")]
    assert len(quarantined) >= 2
    assert {r["tag"] for r in quarantined} == {"trace"}
    buffered = {orjson.loads(r)["seq"] for r in export_rows(tmp_path / "b.db", "readings")}
    delivered = set(sub.seqs())
    missing = set(range(1, max(delivered) + 1)) - delivered
    assert missing <= {r["seq"] for r in quarantined} | buffered


# Its three waits (drops, drained, deletes) are 60 s each: the test's own timeout must be above
# their sum, or a slow machine ends it with pytest-timeout's stack dump instead of the step.
@pytest.mark.timeout(240)
async def test_cap_reached_during_a_long_outage_drops_the_oldest_and_counts_exactly(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    sub = Subscriber(mosquitto, TOPIC)  # a durable session, subscribed before the outage
    mosquitto.stop()  # down from the start: nothing is in flight when readings are dropped
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db", **FAST_RECONNECT)
    raw["buffer"]["max_readings"] = 1000
    raw["devices"][0]["poll_interval_ms"] = 10
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    async with RunningService(config) as running:
        service = running.service
        await async_wait_until(lambda: service.outbox.outbox.dropped_total >= 500, 60, "drops")
        state, reasons = service.health()
        assert state == "degraded"
        assert any("dropped since start (buffer full)" in r for r in reasons)
        # Whole polls are dropped: the cap holds, with less than a poll's room left.
        poll = len(config.devices[0].tags)
        assert 1000 - poll < service.outbox.outbox.depth <= 1000
        mosquitto.start()
        try:
            # Stop polling once the broker is back, and commit what was polled, so the count
            # below is final. (Each step waits for its condition: a machine under load is
            # slower, not wrong.)
            polling = [t for t in asyncio.all_tasks() if t.get_name().startswith("poll:")]
            for task in polling:
                task.cancel()
            await asyncio.gather(*polling, return_exceptions=True)
            await service.writer.flush()
            last = (await service.outbox.stats()).last_seq
            await async_wait_until(lambda: max(sub.seqs(), default=0) >= last, 60, "drained")
            # No poll, so no commit to take the deletes along: the forwarder commits them alone.
            await async_wait_until(lambda: service.outbox.outbox.depth == 0, 60, "deletes")
            dropped = (await service.outbox.stats()).dropped_total
        finally:
            sub.close()
    delivered = set(sub.seqs())
    missing = sorted(set(range(1, last + 1)) - delivered)
    # Exactly the oldest ones, exactly as many as reported.
    assert len(missing) == dropped
    assert missing == list(range(1, dropped + 1))


async def test_backlog_drains_oldest_first_while_live_readings_keep_flowing(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    sub = Subscriber(mosquitto, TOPIC)  # a durable session, subscribed before the outage
    mosquitto.stop()
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db", **FAST_RECONNECT)
    raw["mqtt"].update(max_readings_per_message=20, max_inflight_messages=1)
    raw["devices"][0]["poll_interval_ms"] = 10
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    async with RunningService(config) as running:
        service = running.service
        await async_wait_until(lambda: service.outbox.outbox.depth >= 3000, 30, "a backlog")
        mosquitto.start()
        try:
            boundary = await async_wait_until(
                lambda: service.mqtt.backlog_until_seq, 10, "the backlog replay started"
            )
            await async_wait_until(
                lambda: set(range(1, boundary + 1)) <= set(sub.seqs()), 60, "the whole backlog"
            )
        finally:
            sub.close()
    order = first_arrival_order(sub.seqs())
    backlog = [s for s in order if s <= boundary]
    assert backlog == sorted(backlog)  # oldest first
    last_backlog_at = order.index(backlog[-1])
    live_before_end = [s for s in order[:last_backlog_at] if s > boundary]
    # Live readings did not wait for the end of the drain: they went out as they were read,
    # in messages between the backlog's (how many depends on how fast the drain is).
    book, contexts = sub.meta_book(), sub.context_book()
    live_messages = [
        seqs
        for seqs in (
            [r.seq for r in decode_readings(payload, book, contexts)]
            for topic, payload, _ in sub.messages
            if topic.endswith("/readings")
        )
        if seqs and min(seqs) > boundary and max(seqs) <= max(live_before_end, default=0)
    ]
    # At least one: a drain that made live readings wait for its end has none. (How many
    # more depends on how fast the drain goes; a helper's run at load 9 had one.)
    assert len(live_messages) >= 1
    assert live_before_end == list(range(boundary + 1, boundary + 1 + len(live_before_end)))
    assert json.loads(sub.messages[-1][1])  # messages are still well-formed JSON
