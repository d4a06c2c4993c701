"""The MQTT client (collector.delivery.publisher.Publisher on paho-mqtt): the only module that
imports paho.

- **A publish is a future resolved by paho's callback** (handed to the asyncio loop with
  ``call_soon_threadsafe``, the aiomqtt pattern). With MQTT v5 a reason code >= 0x80 means
  *not accepted*.
- **The forwarder, not paho, owns retransmission.** Every connection uses a fresh paho client
  (paho's own reconnect is disabled). When a connection ends, the futures of the messages
  still in flight fail with :class:`~collector.delivery.publisher.ConnectionLost` and the forwarder
  sends those readings again from the buffer on the next connection: duplicates stay within
  the in-flight window, and a message the broker can never take does not sit in paho's queue
  forever. (mosquitto 2.0 answers an oversized publish with PUBACK 0x95, which MQTT v5 does
  not allow in a PUBACK; paho then drops the connection as a protocol error, and would resend
  the same message on every reconnect.)
- The collector's state is retained on the status topic: ``online`` after each connect,
  ``offline`` on a clean stop, and as the Last Will after a crash or a lost network.
- **A broker that is back is used at once.** While the reconnect backs off (up to
  ``mqtt.reconnect_max_ms``), the broker's port is probed every half second
  (common.backoff); when it answers again after having been down, the reconnect runs at once.
- **A broker that takes messages but never acknowledges them is left.** A message without its
  PUBACK for ``mqtt.keepalive_s`` ends the connection (its readings go again on the next one);
  :attr:`MqttStatus.unacknowledged_since` lets /health say so, also across reconnects.
- **Topic aliases** (MQTT v5): the first non-retained message on a topic names it with a
  Topic Alias, later ones on that connection send the alias instead of the topic (2 bytes
  instead of about 30 a message: the readings topic carries a message every poll cycle), up
  to the Topic Alias Maximum the broker's CONNACK offers (none offered: none used). Retained
  messages (status, metadata, unit contexts: many topics, each published rarely) keep their
  topic. A new connection starts without aliases.
- **A refused connection says why, and what to set**: the TLS alert the broker sent (``certificate
  required``, ``unknown ca``: paho only says "Unspecified error"), a certificate the broker's
  does not verify against, a plaintext client at a TLS port (:func:`explain_failure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector import __version__
from collector.config import MqttConfig, MqttVersion, TlsConfig
from collector.delivery.publisher import PACKET_TOO_LARGE, Ack, ConnectionLost, MqttStatus
from common.backoff import Backoff, Probe, tcp_reachable, wait_or_back
from contract.encode import status_message

log = logging.getLogger(__name__)

# A connection that lasted this long resets the reconnect backoff.
STABLE_CONNECTION_S = 10.0
# Messages paho may have in flight besides the forwarder's window: the status messages.
EXTRA_IN_FLIGHT = 2


def _ack(reason: ReasonCode) -> Ack:
    return Ack(reason.value, str(reason))


def _varint_bytes(n: int) -> int:
    """Bytes of an MQTT variable byte integer."""
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_packet_bytes(topic_bytes: int, payload_bytes: int, v5: bool, alias: bool) -> int:
    """The bytes of a QoS-1 PUBLISH packet on the wire: fixed header, topic (empty when it
    travels as a Topic Alias), packet id, properties (v5: their length, and the alias, 3
    bytes), payload."""
    properties = (3 if alias else 0) if v5 else -1  # -1: no properties length either
    rest = 2 + topic_bytes + 2 + (properties + _varint_bytes(properties) if v5 else 0)
    rest += payload_bytes
    return 1 + _varint_bytes(rest) + rest


class _ErrorLines(logging.Handler):
    """Hands each error line paho logs to ``keep``."""

    def __init__(self, keep: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self._keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self._keep(record.getMessage())


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
        # When each in-flight message was published (loop time), for the PUBACK timeout.
        self._sent_at: dict[int, float] = {}
        # This connection: whether its CONNACK came, paho's last error line (the TLS alert),
        # and why we ended it ourselves.
        self._acked_connect = False
        self._last_error_line: str | None = None
        # paho's error lines (MQTT_LOG_ERR) -> _last_error_line. A logger of its own, not in
        # logging's tree: at ERROR, so paho's debug lines are never formatted, and nothing
        # reaches the collector's log through it (as with on_log before).
        self._paho_log = logging.Logger(f"{__name__}.paho", logging.ERROR)
        self._paho_log.propagate = False
        self._paho_log.addHandler(_ErrorLines(self._on_error_line))
        self._ended_by_us: str | None = None
        self._lost = asyncio.Event()
        self._closing = asyncio.Event()
        self._refused = False
        self._connection = 0
        # Whether the broker refused a publish and has accepted none of ours since. Kept across
        # connections: a broker that ends the connection after a refusal may lose that
        # refusal's PUBACK in the reset, so later lost connections are explained by it too.
        self._refusal_unresolved = False
        self._listener: Callable[[], None] = lambda: None
        # Subscribed on every connect (the store's acknowledgements); handed to the loop.
        self._topics: list[str] = []
        self._handler: Callable[[str, bytes], None] | None = None
        # Topic aliases of this connection (MQTT v5): topic -> alias, and how many the
        # broker takes (its CONNACK's Topic Alias Maximum).
        self._aliases: dict[str, int] = {}
        self._alias_max = 0
        self._alias_properties: dict[int, Properties] = {}
        #: PUBLISH packets handed to the client, per topic: [messages, bytes on the wire]
        #: (publish_packet_bytes): what bench.wire reports.
        self.sent: dict[str, list[int]] = {}

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

    def set_message_handler(
        self, topics: Sequence[str], handler: Callable[[str, bytes], None]
    ) -> None:
        self._topics, self._handler = list(topics), handler

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future[Ack]:
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        client = self._client
        if client is None:
            future.set_exception(ConnectionLost(self._connection + 1))
            return future
        alias, name = self._alias(topic, retain)
        if alias is None:
            info = client.publish(topic, payload, qos=1, retain=retain)
        else:
            # One per alias, reused (paho only reads it): building one costs about 16 µs of
            # Python a message (issue 28).
            properties = self._alias_properties.get(alias)
            if properties is None:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.TopicAlias = alias
                self._alias_properties[alias] = properties
            info = client.publish(name, payload, qos=1, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and alias is not None and name:
            # The message that was to name the alias never left: the broker does not know it,
            # so the next message on the topic names it again.
            del self._aliases[topic]
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            sent = self.sent.setdefault(topic, [0, 0])
            sent[0] += 1
            sent[1] += publish_packet_bytes(
                len(name.encode()), len(payload), self._mqtt.version is MqttVersion.V5,
                alias is not None,
            )  # fmt: skip
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            future.set_exception(ConnectionLost(self._connection + 1))
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # paho would not even queue it (e.g. over the broker's packet size limit).
            future.set_result(Ack(PACKET_TOO_LARGE, "Packet too large"))
        else:
            # The PUBACK reaches the loop through call_soon_threadsafe, so it cannot be
            # processed before this registration, which runs in the same loop step.
            self._futures[info.mid] = future
            now = asyncio.get_running_loop().time()
            self._sent_at[info.mid] = now
            if self.status.unacknowledged_since is None:
                self.status.unacknowledged_since = time.time()
        return future

    def _alias(self, topic: str, retain: bool) -> tuple[int | None, str]:
        """(Topic Alias or None, the topic to send: empty once the alias names it)."""
        if retain or not self._alias_max:
            return None, topic
        alias = self._aliases.get(topic)
        if alias is not None:
            return alias, ""
        if len(self._aliases) >= self._alias_max:
            return None, topic
        alias = self._aliases[topic] = len(self._aliases) + 1
        return alias, topic  # this message names it: the broker maps the alias from now on

    async def run(self) -> None:
        """Connect, wait for the connection to end, back off, repeat, until closing."""
        self._loop = loop = asyncio.get_running_loop()
        m = self._mqtt
        backoff = Backoff(m.reconnect_min_ms / 1000, m.reconnect_max_ms / 1000)

        async def probe() -> bool:
            return await tcp_reachable(m.host, m.port)

        while not self._closing.is_set():
            self._lost.clear()
            self._acked_connect, self._last_error_line, self._ended_by_us = False, None, None
            self._aliases, self._alias_max = {}, 0  # per connection
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
                reason = explain_failure(f"{exc}", m.tls is not None, m.tls)
                self._connected_changed(
                    False, self._episode_reason(f"cannot connect to {m.host}:{m.port}: {reason}")
                )
                # A refused connection: the broker is down (restarting), not refusing us.
                down = isinstance(exc, ConnectionRefusedError)
                await self._pause(backoff.next_delay(), probe, down)
                continue
            self._client = client
            started = loop.time()
            client.loop_start()
            await self._watch_acks(client, m.keepalive_s)
            await asyncio.to_thread(client.loop_stop)
            self._client = None
            self._fail_in_flight()
            if loop.time() - started >= STABLE_CONNECTION_S:
                backoff.reset()
            if not self._closing.is_set():
                await self._pause(backoff.next_delay(), probe)

    async def close(self) -> None:
        """Publish the retained offline state (the Last Will covers a crash), disconnect."""
        client = self._client
        if client is not None and self.status.connected:
            offline = status_message(self._id, "offline", __version__)
            future = self.publish(self._status_topic, offline, retain=True)
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
        offline = status_message(self._id, "offline", __version__)
        client.will_set(self._status_topic, offline, 1, True)
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
        client.on_message = self._on_message
        # paho's lines through a logger that takes only errors, not on_log: with on_log set
        # paho formats every debug line (each PUBLISH and PUBACK, its properties) for nothing
        # (issue 28).
        client.enable_logger(self._paho_log)
        return client

    async def _pause(self, seconds: float, probe: Probe, down: bool = False) -> None:
        """The backoff, cut short when the broker, down until now, answers again."""
        if await wait_or_back(seconds, probe, stop=self._closing, down=down):
            log.info("mqtt: broker reachable again; reconnecting")

    async def _watch_acks(self, client: mqtt.Client, timeout_s: float) -> None:
        """Wait for the connection to end; end it when a message waits longer than
        ``timeout_s`` for its PUBACK (a broker that takes messages and never answers)."""
        loop = asyncio.get_running_loop()
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), min(1.0, timeout_s / 4))
            oldest = min(self._sent_at.values(), default=None)
            if self._lost.is_set() or oldest is None or loop.time() - oldest < timeout_s:
                continue
            self._ended_by_us = (
                f"no PUBACK within {timeout_s:g} s (mqtt.keepalive_s): the broker takes "
                "messages but does not acknowledge them; connecting again"
            )
            self._connected_changed(False, self._ended_by_us)
            client.disconnect()
            self._lost.set()

    def _fail_in_flight(self) -> None:
        self._connection += 1
        self._sent_at.clear()
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ConnectionLost(self._connection, self._refusal_unresolved))
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
            if self._topics:
                # Every connect: the connection starts clean, so no subscription survives.
                _c.subscribe([(topic, 1) for topic in self._topics])
            limit = getattr(props, "MaximumPacketSize", None) if props is not None else None
            aliases = getattr(props, "TopicAliasMaximum", 0) if props is not None else 0
            self._loop.call_soon_threadsafe(
                self._connected_changed, True, str(reason), False, limit, aliases
            )

    def _on_disconnect(
        self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._disconnected, str(reason))
        self._loop.call_soon_threadsafe(self._lost.set)

    def _on_error_line(self, line: str) -> None:
        # paho's own words for a failed read or write ("failed to receive on socket: [SSL:
        # TLSV13_ALERT_CERTIFICATE_REQUIRED] ..."): its on_disconnect says only "Unspecified
        # error". A plain assignment: read on the loop after the disconnect it precedes.
        self._last_error_line = line

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        if self._handler is not None:
            payload = msg.payload if type(msg.payload) is bytes else bytes(msg.payload)
            self._loop.call_soon_threadsafe(self._handler, msg.topic, payload)

    def _on_publish(
        self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._acknowledged, mid, _ack(reason))

    # ------------------------------------------------------------------ on the event loop

    def _connected_changed(
        self,
        connected: bool,
        reason: str,
        refused: bool = False,
        max_packet: int | None = None,
        alias_max: int = 0,
    ) -> None:
        was = self.status.connected
        if not connected and not refused and self._refused and not was:
            # The disconnect that follows a refused CONNACK says less than the refusal did.
            return
        self._refused = refused
        self.status.connected = connected
        if connected:
            self._acked_connect = True
            self.status.connects += 1
            self.status.last_connect_error = None
            self.status.max_packet_bytes = max_packet
            self._alias_max = alias_max if self._mqtt.version is MqttVersion.V5 else 0
            m = self._mqtt
            log.info("mqtt: connected to %s:%d", m.host, m.port)
            if self._client is not None:
                online = status_message(self._id, "online", __version__)
                self._client.publish(self._status_topic, online, qos=1, retain=True)
        else:
            if self._closing.is_set():
                log.info("mqtt: disconnected")
            elif was or self.status.last_connect_error != reason:
                log.warning("mqtt: not connected (%s); readings stay buffered", reason)
            self.status.last_connect_error = reason
        self._listener()

    def _disconnected(self, reason: str) -> None:
        """A connection ended: say why in a technician's words, when paho's are not."""
        m = self._mqtt
        if self._ended_by_us is not None:
            reason = self._ended_by_us
        elif not self._acked_connect:
            # Ended before the CONNACK: a TLS alert, or a TLS port that took plaintext.
            detail = self._last_error_line or reason
            reason = self._episode_reason(
                f"cannot connect to {m.host}:{m.port}: "
                + explain_failure(detail, m.tls is not None, m.tls, before_connack=True)
            )
        self._connected_changed(False, reason)

    def _episode_reason(self, reason: str) -> str:
        """A refused TLS connection does not always show its alert (the broker may close the
        socket before we read it: "EOF occurred in violation of protocol"). Until a connect
        succeeds, such an attempt keeps the alert an earlier one showed, so that the reason
        (and the log line, once per episode) does not flap."""
        last = self.status.last_connect_error
        vague = "before answering CONNECT" in reason or "EOF occurred" in reason
        if vague and last is not None and "TLS alert" in last:
            return last
        return reason

    def _acknowledged(self, mid: int, ack: Ack) -> None:
        self._sent_at.pop(mid, None)
        status = self.status
        if not ack.is_failure:
            # Something got through: the wait for an acknowledgement starts again.
            status.unacknowledged_since = time.time() if self._sent_at else None
            status.refused_since_success = 0
        else:
            status.refused_since_success += 1
            self._refusal_unresolved = True
        future = self._futures.pop(mid, None)
        if future is not None and not ack.is_failure:
            self._refusal_unresolved = False  # one of ours got through (not just our status)
        if future is not None and not future.done():
            future.set_result(ack)
        self._listener()


# TLS alerts a broker sends (OpenSSL's names, lower case) -> what to set.
_TLS_ADVICE = (
    (
        "certificate required",
        "the broker requires a client certificate: set mqtt.tls.cert_file and mqtt.tls.key_file",
    ),
    (
        "unknown ca",
        "the broker does not trust the CA that signed our client certificate: use a "
        "certificate (mqtt.tls.cert_file) signed by a CA in the broker's cafile",
    ),
    (
        "bad certificate",
        "the broker rejected our client certificate (mqtt.tls.cert_file): expired, or not "
        "meant for a client?",
    ),
    (
        "certificate unknown",
        "the broker rejected our client certificate (mqtt.tls.cert_file)",
    ),
    (
        "certificate expired",
        "our client certificate (mqtt.tls.cert_file) has expired",
    ),
    (
        "certificate revoked",
        "our client certificate (mqtt.tls.cert_file) has been revoked",
    ),
    (
        "certificate_verify_failed",
        "the broker's certificate does not verify against mqtt.tls.ca_file (or its host name "
        "is not mqtt.host): set ca_file to the CA that signed the broker's certificate",
    ),
    (
        "wrong version number",
        "the broker's port does not speak TLS: a plaintext port? (remove mqtt.tls or use the "
        "broker's TLS port, often 8883)",
    ),
)


# Not alerts from the broker: what our side found wrong with the broker or its port.
_LOCAL_TLS_ERRORS = {"certificate_verify_failed", "wrong version number"}


def explain_failure(
    detail: str, tls: bool, tls_config: TlsConfig | None, before_connack: bool = False
) -> str:
    """A connect failure in a technician's words: the TLS alert and what to set. ``detail`` is
    what Python or paho said."""
    lowered = detail.lower().replace("_", " ")
    for alert, advice in _TLS_ADVICE:
        if alert.replace("_", " ") in lowered:
            text = advice
            if alert == "certificate required" and tls_config and tls_config.cert_file:
                text = "the broker did not accept mqtt.tls.cert_file as a client certificate"
            # The broker's alert, or our own verdict on the broker's certificate.
            kind = "TLS" if alert in _LOCAL_TLS_ERRORS else "TLS alert"
            return f"{kind} '{alert.replace('_', ' ')}': {text} ({_short(detail)})"
    if before_connack and not tls:
        return (
            "the broker closed the connection before answering CONNECT: a TLS port? (set "
            f"mqtt.tls with ca_file, and client certificates if it asks) ({_short(detail)})"
        )
    if before_connack and tls_config is not None and tls_config.cert_file:
        # A broker that refuses our certificate sends its alert and closes at once; bytes of
        # ours it has not read make that close a reset, which can discard the alert (seen as
        # an EOF, with TLS 1.2 and 1.3). The certificate is then the likely cause.
        return (
            "the broker closed the TLS connection before answering CONNECT: it most likely "
            "refused our client certificate (mqtt.tls.cert_file): is it signed by a CA in the "
            f"broker's cafile, and still valid? ({_short(detail)})"
        )
    if before_connack:
        return f"the broker closed the connection before answering CONNECT ({_short(detail)})"
    return detail


def _short(detail: str) -> str:
    return detail.removeprefix("failed to receive on socket: ").removeprefix(
        "failed to send on socket: "
    )
