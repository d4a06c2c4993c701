"""MQTT forwarder: take the oldest batch, publish it (QoS 1), delete it only once accepted.

The only module that imports paho-mqtt. paho runs its network loop on its own thread; every
callback is handed to the asyncio loop with ``call_soon_threadsafe``, where each publish has a
future resolved by its PUBACK (the aiomqtt pattern). With MQTT v5 a PUBACK whose reason code is
>= 0x80 means *not accepted*: the batch stays in the buffer and is retried after a backoff.

paho keeps unacknowledged QoS 1 messages across a reconnect and sends them again (with DUP)
once connected, so the futures of in-flight messages stay valid through a reconnect; the
forwarder never re-publishes them itself, which would double the duplicates.

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
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from collector import __version__
from collector.buffer import AsyncOutbox
from collector.config import Config, MqttVersion

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

Delivered = Callable[[Sequence[tuple[int, bytes]]], None]


def topics(config: Config) -> tuple[str, str]:
    """(readings topic, status topic) of this collector."""
    c = config.collector
    base = f"{config.mqtt.topic_prefix.rstrip('/')}/{c.site}/{c.line}/{c.id}"
    return f"{base}/readings", f"{base}/status"


def build_message(collector_id: str, rows: Sequence[tuple[int, bytes]]) -> bytes:
    """The readings message: ``seq`` is spliced into each stored body (no decode)."""
    head = orjson.dumps({"schema": SCHEMA_VERSION, "collector": collector_id})
    items = b",".join(b'{"seq":%d,%s' % (seq, body[1:]) for seq, body in rows)
    return head[:-1] + b',"readings":[' + items + b"]}"


def status_message(collector_id: str, state: str) -> bytes:
    return orjson.dumps(
        {
            "schema": SCHEMA_VERSION,
            "collector": collector_id,
            "state": state,
            "ts": datetime.now(UTC),
            "version": __version__,
        },
        option=orjson.OPT_UTC_Z,
    )


@dataclass
class MqttStatus:
    """What /status shows for MQTT. Mutated on the event loop only."""

    connected: bool = False
    last_connect_error: str | None = None
    last_accepted_ts: float | None = None
    messages_accepted: int = 0
    readings_delivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "last_connect_error": self.last_connect_error,
            "last_accepted_ts": self.last_accepted_ts,
            "messages_accepted": self.messages_accepted,
            "readings_delivered": self.readings_delivered,
            "rejected": dict(self.rejected),
            "in_flight": self.in_flight,
        }


@dataclass
class _InFlight:
    first_seq: int
    last_seq: int
    rows: Sequence[tuple[int, bytes]]
    future: asyncio.Future[ReasonCode | None]


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._futures: dict[int, asyncio.Future[ReasonCode | None]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._refused = False
        self._client = self._make_client()

    # ------------------------------------------------------------------ paho set-up

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
        # the forwarder already logs every connection state change once.
        client.max_inflight_messages_set(m.max_inflight_messages + 2)  # + status messages
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.will_set(
            self.status_topic,
            status_message(self._config.collector.id, "offline"),
            qos=1,
            retain=True,
        )
        if m.username is not None:
            password = m.password()
            client.username_pw_set(m.username, password.get_secret_value() if password else None)
        if m.tls is not None:
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

    # paho thread -> event loop. Nothing below runs anything but call_soon_threadsafe.

    def _on_connect(
        self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        assert self._loop is not None
        if reason.is_failure:
            # The broker refused the connection (bad credentials, not authorised, ...).
            text = f"refused by broker: {reason}"
            self._loop.call_soon_threadsafe(self._connected_changed, False, text, True)
        else:
            self._loop.call_soon_threadsafe(self._connected_changed, True, str(reason))

    def _on_disconnect(
        self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Properties | None
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected_changed, False, str(reason))

    def _on_publish(
        self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._acknowledged, mid, reason)

    # ------------------------------------------------------------------ on the event loop

    def _connected_changed(self, connected: bool, reason: str, refused: bool = False) -> None:
        was = self.status.connected
        if not connected and not refused and self._refused:
            # The disconnect that follows a refused CONNACK says less than the refusal did.
            return
        self._refused = refused
        self.status.connected = connected
        if connected:
            self.status.last_connect_error = None
            m = self._mqtt
            log.info("mqtt: connected to %s:%d", m.host, m.port)
            self._client.publish(
                self.status_topic,
                status_message(self._config.collector.id, "online"),
                qos=1,
                retain=True,
            )
        else:
            if self._closing:
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
        m = self._mqtt
        self._client.connect_async(
            m.host,
            m.port,
            keepalive=m.keepalive_s,
            clean_start=True if m.version is MqttVersion.V5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        )
        self._client.loop_start()
        try:
            await self._forward(stop, grace)
        finally:
            await self._say_goodbye()

    async def _forward(self, stop: asyncio.Event, grace: float) -> None:
        loop = asyncio.get_running_loop()
        in_flight: deque[_InFlight] = deque()
        cursor = 0  # highest seq handed to paho; 0 = start from the oldest row
        retry_at: float | None = None  # set after a refusal: send nothing before then
        backoff = 1.0
        deadline: float | None = None
        while True:
            if stop.is_set() and deadline is None:
                deadline = loop.time() + grace
            if deadline is not None and loop.time() >= deadline:
                return
            self._wake.clear()
            self._outbox.appended.clear()
            # Settle what the broker answered, oldest first.
            while in_flight and in_flight[0].future.done():
                item = in_flight.popleft()
                reason = item.future.result()
                if reason is None or not reason.is_failure:
                    await self._delivered(item)
                    backoff = 1.0
                    continue
                self.status.rejected[str(reason)] += 1
                log.error(
                    "mqtt: broker refused seq %d-%d (%s); kept in the buffer, retry in %.0f s",
                    item.first_seq,
                    item.last_seq,
                    reason,
                    backoff,
                )
                retry_at = loop.time() + backoff
                backoff = min(backoff * 2, 60.0)
            # After a refusal, wait for the window to drain and the backoff to pass, then
            # start again from the oldest row still buffered (delivered rows are gone).
            if retry_at is not None and not in_flight and loop.time() >= retry_at:
                retry_at, cursor = None, 0
            self.status.in_flight = len(in_flight)
            if stop.is_set() and not in_flight and self._outbox.outbox.depth == 0:
                return
            sent = False
            while (
                self.status.connected
                and retry_at is None
                and len(in_flight) < self._mqtt.max_inflight_messages
            ):
                rows = await self._outbox.take(
                    cursor, self._mqtt.max_readings_per_message, self._mqtt.max_message_bytes
                )
                published = self._publish(rows) if rows else None
                if published is None:
                    break
                in_flight.append(published)
                cursor = published.last_seq
                sent = True
            if sent:
                continue
            timeout = 1.0
            for limit in (retry_at, deadline):
                if limit is not None:
                    timeout = max(0.0, min(timeout, limit - loop.time()))
            await self._wait_any(stop if deadline is None else None, timeout)

    async def _wait_any(self, stop: asyncio.Event | None, limit_s: float) -> None:
        """Wait for an answer from paho, new rows, or stop, bounded by ``limit_s``."""
        events = [self._wake, self._outbox.appended] + ([stop] if stop is not None else [])
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _publish(self, rows: Sequence[tuple[int, bytes]]) -> _InFlight | None:
        payload = build_message(self._config.collector.id, rows)
        info = self._client.publish(self.readings_topic, payload, qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # Not queued by paho at all (e.g. its queue is full): try again later.
            log.error("mqtt: publish not queued: %s", mqtt.error_string(info.rc))
            return None
        future = self._register(info.mid)
        return _InFlight(rows[0][0], rows[-1][0], rows, future)

    def _register(self, mid: int) -> asyncio.Future[ReasonCode | None]:
        assert self._loop is not None
        future: asyncio.Future[ReasonCode | None] = self._loop.create_future()
        # The PUBACK reaches the loop through call_soon_threadsafe, so it cannot be processed
        # before this registration, which runs in the same loop step as publish().
        self._futures[mid] = future
        return future

    async def _delivered(self, item: _InFlight) -> None:
        await self._outbox.ack(item.first_seq, item.last_seq)
        self.status.messages_accepted += 1
        self.status.readings_delivered += len(item.rows)
        self.status.last_accepted_ts = time.time()
        if self._on_delivered is not None:
            self._on_delivered(item.rows)

    async def _say_goodbye(self) -> None:
        """Publish the retained offline state (the Last Will covers a crash), then disconnect."""
        try:
            if self.status.connected:
                info = self._client.publish(
                    self.status_topic,
                    status_message(self._config.collector.id, "offline"),
                    qos=1,
                    retain=True,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._register(info.mid), timeout=2.0)
            self._closing = True
            self._client.disconnect()
        finally:
            self._client.loop_stop()
