"""The store's MQTT subscriber: the only module of store/ that imports paho.

MQTT v5, a persistent session (clean start off, a session expiry), QoS 1, optionally a shared
subscription (``$share/GROUP/...``), and MANUAL acknowledgements: paho does not send PUBACK
when a message arrives; :meth:`Subscriber.ack` sends it once the message's rows are committed.
So the broker keeps every message the store has not committed, across a crash of the store.

Packet ids are only meaningful on the connection that delivered them: a message received
before a disconnect is never acknowledged on a later connection (the broker redelivers it on
the resumed session and that copy is acknowledged instead). Each connection is a
``generation``; :meth:`ack` drops acks of older generations, under the same lock as the
disconnect callback, so an ack can never reach a new connection with an old packet id.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from store.config import MqttConfig

log = logging.getLogger("store.mqtt")


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


def topic_filters(config: MqttConfig) -> list[str]:
    share = f"$share/{config.shared_group}/" if config.shared_group else ""
    prefix = config.topic_prefix.rstrip("/")
    return [
        f"{share}{prefix}/+/+/+/readings",
        f"{share}{prefix}/+/+/+/units",
        # Retained tag metadata: brokers send no retained messages to shared subscriptions,
        # and writing it twice is harmless, so every store process takes all of it.
        f"{prefix}/+/+/+/meta/+",
    ]


class Subscriber:
    """Runs paho's network loop in its thread; hands each message to ``on_message``."""

    def __init__(
        self,
        config: MqttConfig,
        on_message: Callable[[Delivery], None],
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.config = config
        self._on_message_cb = on_message
        self._on_state = on_state
        self._lock = threading.Lock()
        self.generation = 0
        self.connected = False
        self.last_error = "not connected yet"
        self._logged: tuple[bool, str] | None = None
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        # paho takes seconds and works with fractions, though it annotates int.
        client.reconnect_delay_set(
            config.reconnect_min_ms / 1000,  # type: ignore[arg-type]
            config.reconnect_max_ms / 1000,  # type: ignore[arg-type]
        )
        if config.username is not None:
            password = config.password()
            client.username_pw_set(
                config.username, None if password is None else password.get_secret_value()
            )
        if config.tls is not None:
            client.tls_set(
                ca_certs=str(config.tls.ca_file),
                certfile=None if config.tls.cert_file is None else str(config.tls.cert_file),
                keyfile=None if config.tls.key_file is None else str(config.tls.key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry_s
        # The broker sends at most this many unacknowledged messages: the store's queue bound.
        props.ReceiveMaximum = self.config.receive_maximum
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect without acknowledging anything more; the session stays on the broker."""
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish with QoS 1 (a store acknowledgement to a collector); False when not
        connected (the next one says as much: acks are states, not events)."""
        with self._lock:
            if not self.connected:
                return False
            info = self._client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def ack(self, deliveries: Sequence[Delivery]) -> int:
        """PUBACK each message (committed by the caller) received on the current connection;
        the number sent."""
        sent = 0
        with self._lock:
            if not self.connected:
                return 0
            for d in deliveries:
                if d.qos > 0 and d.generation == self.generation:
                    self._client.ack(d.mid, d.qos)
                    sent += 1
        return sent

    # --- paho callbacks (its network thread) ----------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._set_state(False, f"broker refused the connection: {reason}")
            return
        with self._lock:
            self.generation += 1
            self.connected = True
        client.subscribe([(topic, 1) for topic in topic_filters(self.config)])
        self._set_state(
            True, "" if flags.session_present else "connected (new session on the broker)"
        )

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        with self._lock:
            self.generation += 1
            self.connected = False
        self._set_state(False, f"disconnected: {reason}")

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload if type(msg.payload) is bytes else bytes(msg.payload)
        self._on_message_cb(Delivery(msg.topic, payload, msg.mid, msg.qos, self.generation))

    def _set_state(self, connected: bool, why: str) -> None:
        """Log state changes only: a broker that stays down is one warning, not one a try."""
        if self._logged != (connected, why):
            self._logged = (connected, why)
            log.log(
                logging.INFO if connected else logging.WARNING,
                "broker %s:%d: %s",
                self.config.host,
                self.config.port,
                why or "connected (session resumed)",
            )
        self.last_error = why
        if self._on_state is not None:
            self._on_state(connected, why)
