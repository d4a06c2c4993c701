"""The MQTT client (collector.publisher.Publisher on paho-mqtt): the only module that imports
paho.

- **A publish is a future resolved by paho's callback** (handed to the asyncio loop with
  ``call_soon_threadsafe``, the aiomqtt pattern). With MQTT v5 a reason code >= 0x80 means
  *not accepted*.
- **The forwarder, not paho, owns retransmission.** Every connection uses a fresh paho client
  (paho's own reconnect is disabled). When a connection ends, the futures of the messages
  still in flight fail with :class:`~collector.publisher.ConnectionLost` and the forwarder
  sends those readings again from the buffer on the next connection: duplicates stay within
  the in-flight window, and a message the broker can never take does not sit in paho's queue
  forever. (mosquitto 2.0 answers an oversized publish with PUBACK 0x95, which MQTT v5 does
  not allow in a PUBACK; paho then drops the connection as a protocol error, and would resend
  the same message on every reconnect.)
- The collector's state is retained on the status topic: ``online`` after each connect,
  ``offline`` on a clean stop, and as the Last Will after a crash or a lost network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.backoff import Backoff
from collector.config import MqttConfig, MqttVersion
from collector.message import status_message
from collector.publisher import PACKET_TOO_LARGE, Ack, ConnectionLost, MqttStatus

log = logging.getLogger(__name__)

# A connection that lasted this long resets the reconnect backoff.
STABLE_CONNECTION_S = 10.0
# Messages paho may have in flight besides the forwarder's window: the status messages.
EXTRA_IN_FLIGHT = 2


def _ack(reason: ReasonCode) -> Ack:
    return Ack(reason.value, str(reason))


class MqttPublisher:
    """Connects, reconnects with backoff, publishes; keeps the connection part of
    :class:`MqttStatus`."""

    def __init__(
        self, mqtt_config: MqttConfig, collector_id: str, status_topic: str, status: MqttStatus
    ) -> None:
        self._mqtt = mqtt_config
        self._id = collector_id
        self._status_topic = status_topic
        self.status = status
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._futures: dict[int, asyncio.Future[Ack]] = {}
        self._lost = asyncio.Event()
        self._closing = asyncio.Event()
        self._refused = False
        self._connection = 0
        self._listener: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ Publisher

    @property
    def connected(self) -> bool:
        return self.status.connected

    @property
    def connection(self) -> int:
        return self._connection

    @property
    def max_packet_bytes(self) -> int | None:
        return self.status.max_packet_bytes

    def set_listener(self, listener: Callable[[], None]) -> None:
        self._listener = listener

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[Ack]:
        return self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future[Ack]:
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        client = self._client
        if client is None:
            future.set_exception(ConnectionLost(self._connection + 1))
            return future
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            future.set_exception(ConnectionLost(self._connection + 1))
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # paho would not even queue it (e.g. over the broker's packet size limit).
            future.set_result(Ack(PACKET_TOO_LARGE, "Packet too large"))
        else:
            # The PUBACK reaches the loop through call_soon_threadsafe, so it cannot be
            # processed before this registration, which runs in the same loop step.
            self._futures[info.mid] = future
        return future

    async def run(self) -> None:
        """Connect, wait for the connection to end, back off, repeat, until closing."""
        self._loop = loop = asyncio.get_running_loop()
        m = self._mqtt
        backoff = Backoff(m.reconnect_min_ms / 1000, m.reconnect_max_ms / 1000)
        while not self._closing.is_set():
            self._lost.clear()
            try:
                # A TLS file can go missing while running: that is a failed attempt, too.
                client = self._make_client()
                # Blocking connect (TCP and TLS handshake), bounded by paho's connect timeout.
                await asyncio.to_thread(
                    client.connect,
                    m.host,
                    m.port,
                    m.keepalive_s,
                    clean_start=(
                        True if m.version is MqttVersion.V5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
                    ),
                )
            except (OSError, ValueError) as exc:
                self._connected_changed(False, f"cannot connect to {m.host}:{m.port}: {exc}")
                await self._pause(backoff.next_delay())
                continue
            self._client = client
            started = loop.time()
            client.loop_start()
            await self._lost.wait()
            await asyncio.to_thread(client.loop_stop)
            self._client = None
            self._fail_in_flight()
            if loop.time() - started >= STABLE_CONNECTION_S:
                backoff.reset()
            if not self._closing.is_set():
                await self._pause(backoff.next_delay())

    async def close(self) -> None:
        """Publish the retained offline state (the Last Will covers a crash), disconnect."""
        client = self._client
        if client is not None and self.status.connected:
            offline = status_message(self._id, "offline")
            future = self._publish(self._status_topic, offline, retain=True)
            with contextlib.suppress(TimeoutError, ConnectionLost):
                await asyncio.wait_for(future, timeout=2.0)
            self._closing.set()
            client.disconnect()
        self._closing.set()
        self._lost.set()

    # ------------------------------------------------------------------ connections

    def _make_client(self) -> mqtt.Client:
        m = self._mqtt
        v5 = m.version is MqttVersion.V5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or self._id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        # paho's own logger is not enabled: it reports a deliberate disconnect as an error, and
        # the publisher logs every connection state change once. paho never reconnects by
        # itself (an hour's delay, and its thread is stopped first): run() does.
        client.reconnect_delay_set(min_delay=3600, max_delay=3600)
        client.max_inflight_messages_set(m.max_inflight_messages + EXTRA_IN_FLIGHT)
        client.will_set(self._status_topic, status_message(self._id, "offline"), 1, True)
        if m.username is not None:
            password = m.password()
            client.username_pw_set(m.username, password.get_secret_value() if password else None)
        if m.tls is not None:
            # Verify the broker's certificate and host name; there is no plaintext fall-back.
            context = ssl.create_default_context(
                cafile=str(m.tls.ca_file) if m.tls.ca_file else None
            )
            if m.tls.cert_file is not None and m.tls.key_file is not None:
                context.load_cert_chain(str(m.tls.cert_file), str(m.tls.key_file))
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _fail_in_flight(self) -> None:
        self._connection += 1
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ConnectionLost(self._connection))
                future.exception()  # read by the forwarder, or moot if it is stopping
        self._futures.clear()
        self._listener()

    # paho thread -> event loop. These only hand over with call_soon_threadsafe.

    def _on_connect(
        self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        assert self._loop is not None
        if reason.is_failure:
            # The broker refused the connection (bad credentials, not authorised, ...).
            self._loop.call_soon_threadsafe(
                self._connected_changed, False, f"refused by broker: {reason}", True
            )
        else:
            limit = getattr(props, "MaximumPacketSize", None) if props is not None else None
            self._loop.call_soon_threadsafe(
                self._connected_changed, True, str(reason), False, limit
            )

    def _on_disconnect(
        self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected_changed, False, str(reason))
        self._loop.call_soon_threadsafe(self._lost.set)

    def _on_publish(
        self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._acknowledged, mid, _ack(reason))

    # ------------------------------------------------------------------ on the event loop

    def _connected_changed(
        self, connected: bool, reason: str, refused: bool = False, max_packet: int | None = None
    ) -> None:
        was = self.status.connected
        if not connected and not refused and self._refused and not was:
            # The disconnect that follows a refused CONNACK says less than the refusal did.
            return
        self._refused = refused
        self.status.connected = connected
        if connected:
            self.status.connects += 1
            self.status.last_connect_error = None
            self.status.max_packet_bytes = max_packet
            m = self._mqtt
            log.info("mqtt: connected to %s:%d", m.host, m.port)
            if self._client is not None:
                self._client.publish(
                    self._status_topic, status_message(self._id, "online"), qos=1, retain=True
                )
        else:
            if self._closing.is_set():
                log.info("mqtt: disconnected")
            elif was or self.status.last_connect_error != reason:
                log.warning("mqtt: not connected (%s); readings stay buffered", reason)
            self.status.last_connect_error = reason
        self._listener()

    def _acknowledged(self, mid: int, ack: Ack) -> None:
        future = self._futures.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(ack)
        self._listener()
