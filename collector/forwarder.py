"""MQTT forwarder: take the oldest batch, publish it (QoS 1), delete it only once accepted.

The only module that imports paho-mqtt. Three rules shape it:

- **A batch leaves the buffer only on a success PUBACK.** Each publish has a future resolved by
  paho's callback (handed to the asyncio loop with ``call_soon_threadsafe``, the aiomqtt
  pattern). With MQTT v5 a reason code >= 0x80 means *not accepted*.
- **The forwarder, not paho, owns retransmission.** Every connection uses a fresh paho client
  (paho's own reconnect is disabled). When a connection ends, the futures of the messages still
  in flight fail and those readings are sent again from the buffer on the next connection:
  duplicates stay within the in-flight window, and a message the broker can never take does
  not sit in paho's queue forever. (mosquitto 2.0 answers an oversized publish with PUBACK
  0x95, which MQTT v5 does not allow in a PUBACK; paho then drops the connection as a protocol
  error, and would resend the same message on every reconnect.)
- **A backlog does not starve live data.** On each (re)connect, rows up to the newest seq form
  the backlog lane, replayed oldest first; newer rows form the live lane. While both have rows,
  messages alternate between them.

A message is made of whole stored batches (a poll's readings each), joined as stored. A message
the broker refuses is kept and retried after a backoff; one refused as too large (or that
repeatedly kills the connection) is resent one reading per message (its batches split in the
buffer), and a single reading that still cannot be delivered is moved aside to the buffer's
quarantine table and counted.

Topics and payloads are documented in docs/messages.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector.backoff import Backoff
from collector.buffer import AsyncOutbox, Batch
from collector.config import Config, MqttVersion
from collector.histogram import Histogram
from collector.message import build_message, status_message, with_seq

log = logging.getLogger(__name__)

# PUBLISH packet bytes besides the payload and the topic: fixed header (<= 5), topic length
# (2), packet id (2), properties length (1), with room to spare.
PACKET_OVERHEAD_BYTES = 16
# Message bytes besides the readings: {"schema":1,"collector":"<id>","readings":[...]}.
MESSAGE_HEAD_BYTES = 64
# A batch whose connection died this many times in a row before its PUBACK is resent one
# reading per message; a single reading that still kills the connection is quarantined.
SUSPECT_SPLIT_AFTER = 2
SUSPECT_QUARANTINE_AFTER = 3
LEARNED_MIN_BYTES = 256
# How long the deletes of delivered readings wait for the buffer writer's next commit to take
# them along before they are committed on their own.
ACK_LINGER_S = 0.1
# A connection that lasted this long resets the reconnect backoff.
STABLE_CONNECTION_S = 10.0
# Reason codes after which the same message can never succeed: split it.
TOO_LARGE = {0x95}  # Packet too large

# Called with the payload of each accepted message, readings or unit records alike.
Delivered = Callable[[bytes], None]


# Unit records per message: they are few and small (one per unit per operation).
MAX_UNITS_PER_MESSAGE = 50


def topic_base(config: Config) -> str:
    c = config.collector
    return f"{config.mqtt.topic_prefix.rstrip('/')}/{c.site}/{c.line}/{c.id}"


def topics(config: Config) -> tuple[str, str]:
    """(readings topic, status topic) of this collector."""
    base = topic_base(config)
    return f"{base}/readings", f"{base}/status"


@dataclass
class MqttStatus:
    """What /status shows for MQTT. Mutated on the event loop only."""

    connected: bool = False
    last_connect_error: str | None = None
    last_accepted_ts: float | None = None
    messages_accepted: int = 0
    readings_delivered: int = 0
    units_delivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    in_flight: int = 0
    connects: int = 0
    max_packet_bytes: int | None = None
    #: Publish to PUBACK (seconds), for /metrics.
    publish_rtt: Histogram = field(default_factory=Histogram)
    #: The last seq of the current (or last) backlog replay; the next one it will send, or
    #: None once it is drained.
    backlog_until_seq: int | None = None
    backlog_next_seq: int | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "last_connect_error": self.last_connect_error,
            "last_accepted_ts": self.last_accepted_ts,
            "messages_accepted": self.messages_accepted,
            "readings_delivered": self.readings_delivered,
            "units_delivered": self.units_delivered,
            "rejected": dict(self.rejected),
            "quarantined": self.quarantined,
            "in_flight": self.in_flight,
            "connects": self.connects,
            "max_packet_bytes": self.max_packet_bytes,
            "backlog_until_seq": self.backlog_until_seq,
            "backlog_next_seq": self.backlog_next_seq,
        }


class ConnectionLost(Exception):
    """Set on in-flight futures when their connection ended before the PUBACK."""

    def __init__(self, connection: int) -> None:
        super().__init__(f"connection {connection} lost")
        self.connection = connection


@dataclass
class _InFlight:
    """A published message: seqs first_seq..last_seq (with gaps where readings were dropped),
    ``readings`` of them."""

    first_seq: int
    last_seq: int
    readings: int
    payload: bytes
    future: asyncio.Future[ReasonCode]
    backlog: bool
    sent_at: float = field(default_factory=time.perf_counter)

    @property
    def payload_bytes(self) -> int:
        return len(self.payload)


@dataclass
class _Lanes:
    """Where the next batch comes from: the backlog (oldest first, up to ``boundary``) and the
    live lane (newer than ``boundary``)."""

    backlog_cursor: int = 0
    boundary: int = 0
    live_cursor: int = 0
    turn_backlog: bool = True

    def restart(self, newest_seq: int) -> None:
        """Everything still buffered becomes backlog again (delivered rows are gone)."""
        self.backlog_cursor, self.boundary, self.live_cursor = 0, newest_seq, newest_seq

    @property
    def backlog_active(self) -> bool:
        return self.backlog_cursor < self.boundary


class Forwarder:
    """Drains the outbox to the broker until stopped."""

    def __init__(
        self,
        config: Config,
        outbox: AsyncOutbox,
        status: MqttStatus | None = None,
        on_delivered: Delivered | None = None,
    ) -> None:
        self._config = config
        self._mqtt = config.mqtt
        self._outbox = outbox
        self.status = status or MqttStatus()
        self._on_delivered = on_delivered
        self.readings_topic, self.status_topic = topics(config)
        self.units_topic = f"{topic_base(config)}/units"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._futures: dict[int, asyncio.Future[ReasonCode]] = {}
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = asyncio.Event()
        self._refused = False
        self._connection_id = 0
        self._suspect_noted = 0  # the connection loss already counted against a batch
        self._lanes_stale = True
        # A message that keeps dying with its connection: (first seq, times in a row).
        self._suspect: tuple[int, int] = (0, 0)
        # (max readings per message, until seq) after a split
        self._readings_cap: tuple[int, int] | None = None
        # A message size that broke connections, learned from a broker that drops large
        # messages without saying so; applies until the collector restarts.
        self._learned_max_bytes: int | None = None

    # ------------------------------------------------------------------ connections

    def _make_client(self) -> mqtt.Client:
        m = self._mqtt
        v5 = m.version is MqttVersion.V5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or self._config.collector.id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        # paho's own logger is not enabled: it reports a deliberate disconnect as an error, and
        # the forwarder logs every connection state change once. paho never reconnects by
        # itself (an hour's delay, and its thread is stopped first): the forwarder does.
        client.reconnect_delay_set(min_delay=3600, max_delay=3600)
        client.max_inflight_messages_set(m.max_inflight_messages + 2)  # + status messages
        client.will_set(
            self.status_topic, status_message(self._config.collector.id, "offline"), 1, True
        )
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

    async def _connections(self) -> None:
        """Connect, wait for the connection to end, back off, repeat, until closing."""
        loop = asyncio.get_running_loop()
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

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    def _fail_in_flight(self) -> None:
        self._connection_id += 1
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ConnectionLost(self._connection_id))
                future.exception()  # read by _settle, or moot if the forwarder is stopping
        self._futures.clear()
        self._lanes_stale = True
        self._wake.set()

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
        self._loop.call_soon_threadsafe(self._acknowledged, mid, reason)

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
                    self.status_topic,
                    status_message(self._config.collector.id, "online"),
                    qos=1,
                    retain=True,
                )
        else:
            if self._closing.is_set():
                log.info("mqtt: disconnected")
            elif was or self.status.last_connect_error != reason:
                log.warning("mqtt: not connected (%s); readings stay buffered", reason)
            self.status.last_connect_error = reason
        self._wake.set()

    def _acknowledged(self, mid: int, reason: ReasonCode) -> None:
        future = self._futures.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)
        self._wake.set()

    async def run(self, stop: asyncio.Event, grace_s: float | None = None) -> None:
        """Forward until ``stop`` is set, then for at most ``grace_s`` while rows remain."""
        grace = self._mqtt.shutdown_grace_s if grace_s is None else grace_s
        self._loop = asyncio.get_running_loop()
        connections = asyncio.create_task(self._connections(), name="mqtt-connections")
        units = asyncio.create_task(self._forward_units(stop, grace), name="mqtt-units")
        try:
            try:
                await self._forward(stop, grace)
            finally:
                await self._outbox.flush_acks()  # what was acknowledged is not sent again
            await units
        finally:
            units.cancel()
            await asyncio.gather(units, return_exceptions=True)
            await self._say_goodbye()
            self._closing.set()
            self._lost.set()
            await connections

    # ------------------------------------------------------------------ the forwarding loop

    async def _forward(self, stop: asyncio.Event, grace: float) -> None:
        loop = asyncio.get_running_loop()
        in_flight: deque[_InFlight] = deque()
        lanes = _Lanes()
        retry_at: float | None = None  # after a refusal: send nothing before then
        backoff = Backoff(1.0, 60.0)
        deadline: float | None = None
        while True:
            if stop.is_set() and deadline is None:
                deadline = loop.time() + grace
            if deadline is not None and loop.time() >= deadline:
                return
            self._wake.clear()
            self._outbox.appended.clear()
            # Settle what the broker answered (or what a lost connection took), oldest first.
            while in_flight and in_flight[0].future.done():
                item = in_flight.popleft()
                refused = await self._settle(item)
                if refused:
                    retry_at = loop.time() + backoff.next_delay()
                    self._lanes_stale = True
                elif refused is False:
                    backoff.reset()
            # The deletes of what the broker acknowledged ride along with the buffer writer's
            # next commit (one transaction, one fsync); when none comes soon, they go alone.
            waiting = self._outbox.acks_waiting_s
            if waiting is not None and waiting >= ACK_LINGER_S:
                await self._outbox.flush_acks()
            if retry_at is not None and loop.time() >= retry_at:
                retry_at = None
            self.status.in_flight = len(in_flight)
            if stop.is_set() and not in_flight and self._outbox.outbox.depth == 0:
                return
            # Start over from the oldest row once nothing of an older round is in flight.
            if self._lanes_stale and not in_flight and self.status.connected:
                lanes.restart((await self._outbox.stats()).last_seq)
                self._show_backlog(lanes)
                self._lanes_stale = False
            sent = False
            while (
                self.status.connected
                and not self._lanes_stale
                and retry_at is None
                and len(in_flight) < self._mqtt.max_inflight_messages
            ):
                published = await self._publish_next(lanes)
                if published is None:
                    break
                in_flight.append(published)
                sent = True
            if sent:
                continue
            limit = 1.0 if self._outbox.acks_waiting_s is None else ACK_LINGER_S
            for moment in (retry_at, deadline):
                if moment is not None:
                    limit = max(0.0, min(limit, moment - loop.time()))
            await self._wait_any(stop if deadline is None else None, limit)

    async def _forward_units(self, stop: asyncio.Event, grace: float) -> None:
        """Unit records: one message at a time, oldest first, deleted once accepted.

        They are few, so no lanes or splitting; a refused message is retried after a backoff,
        one lost with its connection is sent again on the next."""
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        backoff = Backoff(1.0, 60.0)
        delivered_through = 0  # delivered, even if their delete failed: not sent again
        deadline: float | None = None
        while True:
            if stop.is_set() and deadline is None:
                deadline = loop.time() + grace
            if deadline is not None and (loop.time() >= deadline or outbox.outbox.units_depth == 0):
                return
            outbox.units_appended.clear()
            rows = []
            if self.status.connected and self._client is not None:
                rows = await outbox.take_units(delivered_through, MAX_UNITS_PER_MESSAGE)
            if not rows:
                waiters = [outbox.units_appended] + ([stop] if deadline is None else [])
                await self._wait_events(waiters, 0.5)
                continue
            payload = build_message(self._config.collector.id, with_seq(rows), b"units")
            item = self._publish(
                payload,
                first_seq=rows[0][0],
                last_seq=rows[-1][0],
                readings=len(rows),
                backlog=False,
                topic=self.units_topic,
            )
            if item is None:  # the connection went away just now
                await self._wait_events([], 0.1)
                continue
            try:
                reason = await asyncio.wait_for(asyncio.shield(item.future), 30.0)
            except (ConnectionLost, TimeoutError):
                continue  # sent again on the next connection
            if reason.is_failure:
                self.status.rejected[str(reason)] += 1
                log.error(
                    "mqtt: broker refused unit records seq %d-%d (%s); kept and retried",
                    item.first_seq,
                    item.last_seq,
                    reason,
                )
                await self._wait_events([stop] if deadline is None else [], backoff.next_delay())
                continue
            backoff.reset()
            delivered_through = item.last_seq
            await outbox.ack_units(item.first_seq, item.last_seq)
            self.status.units_delivered += len(rows)
            self.status.last_accepted_ts = time.time()
            if self._on_delivered is not None:
                self._on_delivered(payload)

    async def _publish_next(self, lanes: _Lanes) -> _InFlight | None:
        """Take and publish the next batches: the lanes take turns; an empty lane passes."""
        for backlog in (True, False) if lanes.turn_backlog else (False, True):
            if backlog and not lanes.backlog_active:
                continue
            cursor = lanes.backlog_cursor if backlog else lanes.live_cursor
            max_readings, max_bytes = self._max_readings(cursor), self._max_bytes()
            batches = await self._outbox.take(
                cursor, max_readings, max_bytes, up_to=lanes.boundary if backlog else None
            )
            if not batches:
                if backlog:
                    lanes.backlog_cursor = lanes.boundary  # the backlog is drained
                    self._show_backlog(lanes)
                continue
            payload = build_message(self._config.collector.id, b",".join(b.body for b in batches))
            if len(batches) == 1 and await self._oversized(batches[0], len(payload), max_readings):
                return await self._publish_next(lanes)  # split or moved aside: look again
            if backlog:
                lanes.backlog_cursor = batches[-1].last_seq
            else:
                lanes.live_cursor = batches[-1].last_seq
            lanes.turn_backlog = not backlog
            self._show_backlog(lanes)
            return self._publish(
                payload,
                first_seq=batches[0].first_seq,
                last_seq=batches[-1].last_seq,
                readings=sum(b.count for b in batches),
                backlog=backlog,
            )
        return None

    async def _oversized(self, batch: Batch, payload_bytes: int, max_readings: int) -> bool:
        """One poll's batch alone is more than a message may carry: split it in the buffer,
        or move a single reading that can never go out aside. Returns whether it did either.
        (A single reading over only the size learned from a broker that drops large messages
        is sent anyway: learned limits are for batching, never a reason to give up.)"""
        if batch.count > 1:
            if batch.count <= max_readings and payload_bytes <= self._max_payload_bytes():
                return False
            # Into as many parts as the reading and byte limits need (with some margin).
            parts = max(-(-batch.count // max_readings), 2 * payload_bytes // self._max_bytes() + 1)
            return await self._outbox.split(
                batch.first_seq, batch.last_seq, max(1, batch.count // parts)
            )
        if payload_bytes > self._max_payload_bytes(learned=False):
            return await self._too_large(
                batch.last_seq, f"{payload_bytes} bytes, over the broker's limit"
            )
        return False

    def _show_backlog(self, lanes: _Lanes) -> None:
        self.status.backlog_until_seq = lanes.boundary or None
        self.status.backlog_next_seq = lanes.backlog_cursor + 1 if lanes.backlog_active else None

    def _max_readings(self, cursor: int) -> int:
        readings = self._mqtt.max_readings_per_message
        if self._readings_cap is not None:
            cap, until = self._readings_cap
            if cursor < until:
                return min(readings, cap)
        return readings

    def _max_payload_bytes(self, learned: bool = True) -> int:
        """The largest message payload: ours, what fits the broker's Maximum Packet Size, and
        (for batching only, never to give up on a reading) what we learned."""
        limit = self._mqtt.max_message_bytes
        if learned and self._learned_max_bytes is not None:
            limit = min(limit, self._learned_max_bytes)
        if self.status.max_packet_bytes:
            packet = PACKET_OVERHEAD_BYTES + len(self.readings_topic.encode())
            limit = min(limit, self.status.max_packet_bytes - packet)
        return limit

    def _max_bytes(self) -> int:
        """The budget for the readings' stored bodies in one message."""
        return max(
            1, self._max_payload_bytes() - MESSAGE_HEAD_BYTES - len(self._config.collector.id)
        )

    def _publish(
        self,
        payload: bytes,
        *,
        first_seq: int,
        last_seq: int,
        readings: int,
        backlog: bool,
        topic: str | None = None,
    ) -> _InFlight | None:
        assert self._loop is not None
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        client = self._client
        if client is None:
            return None
        info = client.publish(topic or self.readings_topic, payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            future.set_exception(ConnectionLost(self._connection_id + 1))
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # paho would not even queue it (e.g. over the broker's packet size limit).
            future.set_result(ReasonCode(4, identifier=0x95))
        else:
            # The PUBACK reaches the loop through call_soon_threadsafe, so it cannot be
            # processed before this registration, which runs in the same loop step.
            self._futures[info.mid] = future
        return _InFlight(first_seq, last_seq, readings, payload, future, backlog)

    async def _settle(self, item: _InFlight) -> bool | None:
        """Ack a delivered batch. Returns True if refused, False if delivered, None if its
        connection was lost (it will be sent again)."""
        exc = item.future.exception()
        if isinstance(exc, ConnectionLost):
            if exc.connection != self._suspect_noted:
                # Only the oldest batch of a lost connection is a suspect.
                self._suspect_noted = exc.connection
                await self._note_suspect(item)
            return None
        if exc is not None:
            raise exc
        reason = item.future.result()
        self.status.publish_rtt.observe(time.perf_counter() - item.sent_at)
        if not reason.is_failure:
            await self._delivered(item)
            if self._suspect[0] == item.first_seq:
                self._suspect = (0, 0)
            return False
        self.status.rejected[str(reason)] += 1
        if reason.value in TOO_LARGE:
            if item.readings > 1:
                await self._split(item, f"refused by broker: {reason}")
            else:
                await self._too_large(item.last_seq, f"refused by broker: {reason}")
            return True
        log.error(
            "mqtt: broker refused seq %d-%d (%s); kept in the buffer and retried after a backoff",
            item.first_seq,
            item.last_seq,
            reason,
        )
        return True

    async def _note_suspect(self, item: _InFlight) -> None:
        """A batch whose connection died before its PUBACK, several times in a row, is probably
        what kills the connection (a broker that drops oversized messages): split it, and move
        a single reading that still does it aside."""
        first, times = self._suspect
        times = times + 1 if first == item.first_seq else 1
        self._suspect = (item.first_seq, times)
        if times >= SUSPECT_SPLIT_AFTER and item.readings > 1:
            await self._split(item, f"connection lost {times} times before its acknowledgement")
            learned = max(LEARNED_MIN_BYTES, item.payload_bytes // 2)
            if learned < (self._learned_max_bytes or self._mqtt.max_message_bytes):
                self._learned_max_bytes = learned
                log.warning(
                    "mqtt: the broker seems to drop messages of %d bytes; sending at most %d "
                    "bytes from now on (set mqtt.max_message_bytes below the broker's limit)",
                    item.payload_bytes,
                    learned,
                )
        elif times >= SUSPECT_QUARANTINE_AFTER and item.readings == 1:
            await self._too_large(item.last_seq, f"connection lost {times} times while sending it")

    async def _too_large(self, seq: int, why: str) -> bool:
        """Move a single reading that can never be delivered aside (counted, kept). Returns
        whether it was moved."""
        if not await self._outbox.quarantine(seq, why):
            return False
        self.status.quarantined += 1
        self._suspect = (0, 0)
        log.error("mqtt: seq %d can never be delivered (%s): moved to quarantine", seq, why)
        return True

    async def _split(self, item: _InFlight, why: str) -> None:
        """Resend the message one reading per message, so the bad one is isolated quickly."""
        await self._outbox.split(item.first_seq, item.last_seq, 1)
        self._readings_cap = (1, item.last_seq)
        log.warning(
            "mqtt: seq %d-%d not accepted (%s); resending them one reading per message",
            item.first_seq,
            item.last_seq,
            why,
        )

    async def _wait_any(self, stop: asyncio.Event | None, limit_s: float) -> None:
        """Wait for an answer from paho, new rows, or stop, bounded by ``limit_s``."""
        events = [self._wake, self._outbox.appended] + ([stop] if stop is not None else [])
        await self._wait_events(events, limit_s)

    @staticmethod
    async def _wait_events(events: Sequence[asyncio.Event], limit_s: float) -> None:
        if not events:
            await asyncio.sleep(limit_s)
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _delivered(self, item: _InFlight) -> None:
        if self._readings_cap is not None and item.last_seq >= self._readings_cap[1]:
            self._readings_cap = None  # the split range went through
        self._outbox.delivered(item.first_seq, item.last_seq)
        self.status.messages_accepted += 1
        self.status.readings_delivered += item.readings
        self.status.last_accepted_ts = time.time()
        if self._on_delivered is not None:
            self._on_delivered(item.payload)

    async def _say_goodbye(self) -> None:
        """Publish the retained offline state (the Last Will covers a crash), then disconnect."""
        client = self._client
        if client is None or not self.status.connected:
            return
        assert self._loop is not None
        info = client.publish(
            self.status_topic, status_message(self._config.collector.id, "offline"), 1, True
        )
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._futures[info.mid] = future
        with contextlib.suppress(TimeoutError, ConnectionLost):
            await asyncio.wait_for(future, timeout=2.0)
        self._closing.set()
        client.disconnect()
