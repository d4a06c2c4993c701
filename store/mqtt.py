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

Reconnects are ours, not paho's (issue 23: the store came back 6.6-15.4 s after the broker
did, on paho's plain doubling to 30 s): a thread of its own runs the connect loop with a
capped backoff with jitter (common.backoff) and, while it waits, probes the broker's port
every 0.5 s; when a broker that was down answers again, the store reconnects at once, so data
flows within about a second of the broker's return. Every connect subscribes again, whatever
the session flag says: a broker restarted without persistence forgot the subscription, and
the flag says nothing about shared subscriptions (Debian's mosquitto does not restore them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from common.backoff import Backoff, tcp_reachable, wait_or_back
from store.config import MqttConfig

log = logging.getLogger("store.mqtt")

#: A connection that lasted this long resets the reconnect backoff.
STABLE_CONNECTION_S = 10.0


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
        # Deviations recorded on the line PC (store.record.line).
        f"{share}{prefix}/+/+/+/deviations",
        # A collector's word about seqs it will never send (store.announce).
        f"{share}{prefix}/+/+/+/gaps",
        # Retained tag metadata: brokers send no retained messages to shared subscriptions,
        # and writing it twice is harmless, so every store process takes all of it.
        f"{prefix}/+/+/+/meta/+",
        # Retained unit-context versions (schema 3), the same way.
        f"{prefix}/+/+/+/context/#",
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
            # Our thread reconnects (:meth:`_supervise`); paho's network loop ends with its
            # connection.
            reconnect_on_failure=False,
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
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        # Set (with _wake) by paho's thread when the connection ended.
        self._lost = False

    def start(self) -> None:
        """Connect in the background, and again after each loss, until :meth:`stop`."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._supervise()), name="store-mqtt", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Disconnect without acknowledging anything more; the session stays on the broker."""
        self._stopping.set()
        self._wake_supervisor()
        self._client.disconnect()
        if self._thread is not None:
            self._thread.join(10)

    async def _supervise(self) -> None:
        """Connect; wait for the connection to end; back off (cut short when the broker,
        down until now, answers again); repeat."""
        config = self.config
        self._aloop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        backoff = Backoff(config.reconnect_min_ms / 1000, config.reconnect_max_ms / 1000)

        async def probe() -> bool:
            return await tcp_reachable(config.host, config.port)

        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = config.session_expiry_s
        # The broker sends at most this many unacknowledged messages: the store's queue bound.
        props.ReceiveMaximum = config.receive_maximum
        while not self._stopping.is_set():
            wake.clear()
            self._lost = False
            try:
                await asyncio.to_thread(
                    self._client.connect,
                    config.host,
                    config.port,
                    keepalive=config.keepalive_s,
                    clean_start=False,
                    properties=props,
                )
            except (OSError, ValueError) as exc:
                self._set_state(False, f"cannot connect: {exc}")
                refused = isinstance(exc, ConnectionRefusedError)  # the port is closed: down
                await wait_or_back(backoff.next_delay(), probe, stop=wake, down=refused)
                continue
            started = time.monotonic()
            self._client.loop_start()
            while not self._stopping.is_set() and not self._lost:
                await wake.wait()
                wake.clear()
            await asyncio.to_thread(self._client.loop_stop)
            if time.monotonic() - started >= STABLE_CONNECTION_S:
                backoff.reset()
            stopping = self._stopping.is_set()
            if not stopping and await wait_or_back(backoff.next_delay(), probe, stop=wake):
                log.info("broker %s:%d reachable again; reconnecting", config.host, config.port)

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
        # Always, whatever flags.session_present says (see the module's docstring).
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
        self._lost = True
        self._wake_supervisor()

    def _wake_supervisor(self) -> None:
        loop, wake = self._aloop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended: nothing to wake
                loop.call_soon_threadsafe(wake.set)

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
