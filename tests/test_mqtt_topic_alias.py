"""MQTT v5 topic aliases (collector.delivery.mqtt): the readings topic is sent once per
connection, then as its alias, and a consumer still gets every message on its full topic;
against a real mosquitto (its CONNACK offers a Topic Alias Maximum of 10)."""

from __future__ import annotations

import asyncio

from collector.config import MqttConfig, MqttVersion
from collector.delivery.mqtt import MqttPublisher, publish_packet_bytes
from collector.delivery.publisher import Ack, ConnectionLost, MqttStatus
from tests.helpers import Mosquitto, Subscriber, async_wait_until

BASE = "collector/lab/bench/pc1"
READINGS = f"{BASE}/readings"


async def _publish_all(
    publisher: MqttPublisher, topic: str, payloads: list[bytes], retain: bool = False
) -> list[Ack]:
    return list(await asyncio.gather(*(publisher.publish(topic, p, retain) for p in payloads)))


def _publisher(broker: Mosquitto, version: MqttVersion) -> MqttPublisher:
    config = MqttConfig(host=broker.host, port=broker.port, version=version)
    return MqttPublisher(config, "pc1", f"{BASE}/status", MqttStatus())


async def test_a_topic_goes_once_per_connection_then_as_its_alias(mosquitto: Mosquitto) -> None:
    sub = Subscriber(mosquitto, f"{BASE}/#")
    publisher = _publisher(mosquitto, MqttVersion.V5)
    running = asyncio.create_task(publisher.run())
    try:
        await async_wait_until(lambda: publisher.connected, 10, "connected")
        payloads = [b'{"n":%d}' % i for i in range(4)]
        acks = await _publish_all(publisher, READINGS, payloads)
        assert not any(a.is_failure for a in acks)
        # Retained messages keep their topic (many topics, each published rarely).
        await _publish_all(publisher, f"{BASE}/meta/dev", [b"{}", b"{}"], retain=True)
        await async_wait_until(lambda: len(sub.messages) >= 6, 10, "every message received")
        with sub._lock:
            got = [(t, p) for t, p, _ in sub.messages if t == READINGS]
        assert got == [(READINGS, p) for p in payloads]  # each on its full topic, in order
        topic = len(READINGS)
        first = publish_packet_bytes(topic, 7, v5=True, alias=True)
        later = publish_packet_bytes(0, 7, v5=True, alias=True)
        assert later == first - topic
        assert publisher.sent[READINGS] == [4, first + 3 * later]
        meta = publish_packet_bytes(len(f"{BASE}/meta/dev"), 2, v5=True, alias=False)
        assert publisher.sent[f"{BASE}/meta/dev"] == [2, 2 * meta]

        # A new connection knows no alias: the topic goes again first.
        mosquitto.stop()
        await async_wait_until(lambda: not publisher.connected, 10, "disconnected")
        mosquitto.start()
        await async_wait_until(lambda: publisher.connected, 30, "connected again")
        acks = await _publish_all(publisher, READINGS, [b'{"n":8}', b'{"n":9}'])
        assert not any(a.is_failure for a in acks)
        again = [b'{"n":8}', b'{"n":9}']

        def received() -> list[bytes]:
            with sub._lock:
                return [p for t, p, _ in sub.messages if t == READINGS]

        # The test's subscriber is a durable QoS 1 session: the restarted broker may deliver it
        # an earlier message again (one it had not seen acknowledged), so wait for these two.
        await async_wait_until(lambda: set(again) <= set(received()), 10, "received")
        assert publisher.sent[READINGS] == [6, 2 * first + 4 * later]
        assert [p for p in received() if p in again] == again  # each once, in order
    finally:
        await publisher.close()
        await running
        sub.close()


async def test_mqtt_3_1_1_has_no_aliases(mosquitto: Mosquitto) -> None:
    publisher = _publisher(mosquitto, MqttVersion.V311)
    running = asyncio.create_task(publisher.run())
    try:
        await async_wait_until(lambda: publisher.connected, 10, "connected")
        await _publish_all(publisher, READINGS, [b"{}", b"{}"])
        full = publish_packet_bytes(len(READINGS), 2, v5=False, alias=False)
        assert publisher.sent[READINGS] == [2, 2 * full]
    finally:
        await publisher.close()
        await running


def test_packet_bytes_count_every_header_byte() -> None:
    # v5, 100-byte topic, 20-byte payload: 2 + 100 (topic) + 2 (id) + 1 (no properties) + 20.
    assert publish_packet_bytes(100, 20, v5=True, alias=False) == 1 + 1 + 125
    # With the alias property (3 bytes) and an empty topic.
    assert publish_packet_bytes(0, 20, v5=True, alias=True) == 1 + 1 + 2 + 2 + 4 + 20
    # 3.1.1 has no properties; a remaining length of 128 or more takes two bytes.
    assert publish_packet_bytes(30, 200, v5=False, alias=False) == 1 + 2 + 234


async def test_an_alias_whose_message_never_left_is_named_again() -> None:
    """paho did not take the message that was to name the alias (here: a client that never
    connected answers MQTT_ERR_NO_CONN): the broker never learned the alias, so it is
    forgotten and the next message on the topic names it again instead of sending an alias
    the broker would refuse as a protocol error."""
    config = MqttConfig(host="127.0.0.1", port=1, version=MqttVersion.V5)
    publisher = MqttPublisher(config, "pc1", f"{BASE}/status", MqttStatus())
    publisher._client = publisher._make_client()  # a real paho client, never connected
    publisher._alias_max = 10
    future = publisher.publish(READINGS, b"{}")
    assert future.done()
    assert isinstance(future.exception(), ConnectionLost)
    assert publisher._aliases == {}
    assert publisher._alias(READINGS, retain=False) == (1, READINGS)  # named again
