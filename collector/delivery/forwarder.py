"""The forwarder: the delivery policy. Take the oldest rows of each stream, publish them (QoS 1)
through a :class:`~collector.delivery.publisher.Publisher`, delete them only once accepted.

One loop (:meth:`Forwarder._forward`) serves every stream (collector.delivery.streams: readings and
unit records); the publisher (collector.delivery.mqtt on paho, or a fake in tests) only moves
messages. The rules:

- **A row leaves the buffer only on a success PUBACK.** A message lost with its connection is
  sent again from the buffer on the next one (duplicates stay within the in-flight window).
- **A window of messages in flight**, settled oldest first; one alone while a message that
  was in flight when a connection ended has not been answered (it may be what ends them).
- **A backlog does not starve live data.** On each (re)connect, rows up to the newest seq form
  the backlog lane, replayed oldest first; newer rows form the live lane. While both have rows,
  messages alternate between them.
- **A message is made of whole stored batches** (a poll's readings each, cut at encode time to
  at most ``mqtt.max_readings_per_message``: collector.buffer.writer), joined as stored, never
  decoded. It fits ``mqtt.max_message_bytes``, the broker's announced Maximum Packet Size, and
  a size learned from a broker that drops large messages without saying so.
- **Tag metadata before readings.** On every connect, before any readings: every version of a
  device's tag metadata still kept in the buffer that is not current (readings encoded with
  it may still be pending), non-retained, then the current one, retained. A device whose
  metadata the broker refuses has its polls encoded keyed by tag from then on.
- **Unit contexts before the readings that name them.** The context versions a poll names
  (``ctx``) are published retained on ``context/{station}`` when they change, before the
  first message of readings that names them, and all that are kept on every connect.
- **A message the broker refuses** is kept and retried after a backoff; one refused as too
  large (or that repeatedly kills the connection, unless a refusal explains that) is resent one
  reading per message (its batches split in the buffer), and a single reading that still
  cannot be delivered is moved aside to the buffer's quarantine table and counted.

Topics and payloads are documented in docs/messages.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from collector.buffer import AsyncOutbox, Batch
from collector.config import Config
from collector.config.base import Delivery
from collector.delivery.mqtt import MqttPublisher
from collector.delivery.publisher import (
    PACKET_TOO_LARGE,
    Ack,
    ConnectionLost,
    MqttStatus,
    Publisher,
)
from collector.delivery.storesync import StoreSync, gaps_message
from collector.delivery.streams import DeviationsStream, ReadingsStream, Stream, UnitsStream
from common.backoff import Backoff
from contract.encode import DeviceMeta, context_message, envelope, join_polls

__all__ = ["Delivered", "Forwarder", "MqttStatus", "topic_base", "topics"]

log = logging.getLogger(__name__)

# PUBLISH packet bytes besides the payload and the topic: fixed header (<= 5), topic length
# (2), packet id (2), properties length (1), with room to spare.
PACKET_OVERHEAD_BYTES = 16
# Message bytes besides the polls: {"schema":2,"collector":"<id>","outbox":"<16 hex>",
# "polls":[...]}, with room to spare.
MESSAGE_HEAD_BYTES = 96
# A batch whose connection died this many times in a row before its PUBACK is resent one
# reading per message; a single reading that still kills the connection is quarantined.
SUSPECT_SPLIT_AFTER = 2
SUSPECT_QUARANTINE_AFTER = 3
LEARNED_MIN_BYTES = 256
# How long the deletes of delivered readings wait for the buffer writer's next commit to take
# them along before they are committed on their own.
ACK_LINGER_S = 0.1
# Reason codes after which the same message can never succeed: split it.
TOO_LARGE = {PACKET_TOO_LARGE}

# Called with the payload of each accepted message, readings or unit records alike.
Delivered = Callable[[bytes], None]


def topic_base(config: Config) -> str:
    c = config.collector
    return f"{config.mqtt.topic_prefix.rstrip('/')}/{c.site}/{c.line}/{c.id}"


def ack_topic(config: Config) -> str:
    """Where the central store acknowledges what it committed (store.acks)."""
    return f"{topic_base(config)}/ack"


def topics(config: Config) -> tuple[str, str]:
    """(readings topic, status topic) of this collector."""
    base = topic_base(config)
    return f"{base}/readings", f"{base}/status"


@dataclass
class _InFlight:
    """A published message: seqs first_seq..last_seq (with gaps where readings were dropped),
    ``items`` of them."""

    first_seq: int
    last_seq: int
    items: int
    payload: bytes
    future: asyncio.Future[Ack]
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


@dataclass
class _Delivery:
    """One stream's delivery state, kept by its loop."""

    stream: Stream
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: deque[_InFlight] = field(default_factory=deque)
    lanes: _Lanes = field(default_factory=_Lanes)
    #: Start over from the oldest row (after a lost connection or a refusal).
    stale: bool = True
    #: The connection the lanes were started on.
    connection: int = -1
    #: The connection loss already counted against a message.
    suspect_noted: int = 0
    #: A message that keeps dying with its connection: (first seq, times in a row).
    suspect: tuple[int, int] = (0, 0)
    #: (max items per message, until seq) after a split.
    cap: tuple[int, int] | None = None


class Forwarder:
    """Drains the outbox's streams to the broker until stopped."""

    def __init__(
        self,
        config: Config,
        outbox: AsyncOutbox,
        status: MqttStatus | None = None,
        on_delivered: Delivered | None = None,
        *,
        publisher: Publisher | None = None,
        refusal_backoff_s: tuple[float, float] | None = None,
    ) -> None:
        self._config = config
        self._mqtt = config.mqtt
        self._outbox = outbox
        self.status = status or MqttStatus()
        self._on_delivered = on_delivered
        self.readings_topic, self.status_topic = topics(config)
        self.units_topic = f"{topic_base(config)}/units"
        self._publisher = publisher or MqttPublisher(
            self._mqtt, config.collector.id, self.status_topic, self.status
        )
        # After a refusal, nothing more of that stream is sent for a backoff: the broker
        # reconnect's (mqtt.reconnect_min_ms ... reconnect_max_ms), as a retry of the broker.
        self._refusal_backoff_s = refusal_backoff_s or (
            self._mqtt.reconnect_min_ms / 1000,
            self._mqtt.reconnect_max_ms / 1000,
        )
        self._streams: list[Stream] = [
            ReadingsStream(
                outbox,
                self.readings_topic,
                self._mqtt.max_inflight_messages,
                self._mqtt.max_readings_per_message,
            ),
            UnitsStream(outbox, self.units_topic),
            DeviationsStream(outbox, f"{topic_base(config)}/deviations"),
        ]
        self._stream_keys = {id(self._streams[0]): "readings", id(self._streams[1]): "units",
                             id(self._streams[2]): "deviations"}  # fmt: skip
        self._deliveries: list[_Delivery] = []
        # mqtt.delivery store: rows leave the buffer on the store's acknowledgement.
        self.store_sync: StoreSync | None = None
        if self._mqtt.delivery is Delivery.STORE:
            self.store_sync = StoreSync(
                self._mqtt,
                lambda: self._outbox.outbox.outbox_id,
                {self._stream_keys[id(s)]: s for s in self._streams},
                self.status,
                self._wake_stream,
                held=self._outbox.held_ranges,
                jumps=lambda stream: self._outbox.outbox.jumps.get(stream, []),
                answer=self._answer_unheld,
            )
            self._publisher.set_message_handler([ack_topic(config)], self.store_sync.on_message)
        self._connection_seen: tuple[bool, int] | None = None
        # device -> its retained tag metadata message (set_meta) and its version; the devices
        # whose current metadata the broker refused.
        self._meta: dict[str, bytes] = {}
        self._meta_ids: dict[str, str] = {}
        self._meta_refused: set[str] = set()
        # (device, meta) of versions no longer current the broker refused.
        self._old_refused: set[tuple[str, str]] = set()
        #: Told (device, meta version) when the broker refuses a version of a device's
        #: metadata (the buffer writer then keys that version's polls by tag).
        self.on_meta_refused: Callable[[str, str | None], None] | None = None
        # The highest changed_seq of the context versions published on this connection
        # (collector.buffer.schema: contexts_table).
        self._contexts_through = -1
        # The broker refused a context version (its ACL): why, and none is published again
        # until the collector restarts (mosquitto drops the connection after a refusal, so
        # publishing them at every connect would keep the readings from ever flowing).
        self.contexts_refused: str | None = None
        self._publisher.set_listener(self._changed)
        # A message size that broke connections, learned from a broker that drops large
        # messages without saying so; applies until the collector restarts.
        self._learned_max_bytes: int | None = None

    @property
    def publisher(self) -> Publisher:
        return self._publisher

    def _changed(self) -> None:
        """The publisher's news: a connect or disconnect wakes every stream. (An answer wakes
        only the stream it belongs to, through its future: the unit records' loop need not
        look for work at every PUBACK of the readings.)"""
        state = (self._publisher.connected, self._publisher.connection)
        if state != self._connection_seen:
            self._connection_seen = state
            if self._publisher.connected:
                self._announce_jumps()
                self._contexts_through = -1
                self._publish_contexts(None)
                self._publish_old_metas()
                for device, message in self._meta.items():
                    if device not in self._meta_refused:
                        self._publish_meta(device, message)
            for delivery in self._deliveries:
                delivery.wake.set()

    def _announce_jumps(self) -> None:
        """Seq ranges this outbox skipped (a reservation jump after a power cut, a reset
        buffer), on every connect, not awaited (one lost with its connection goes on the
        next): the store's gap report then calls them never assigned, not missing."""
        for stream, spans in self._outbox.outbox.jumps.items():
            if spans:
                self._publish_gaps(stream, never_assigned=spans)

    def _answer_unheld(
        self, stream: str, never: list[tuple[int, int]], gone: list[tuple[int, int]]
    ) -> None:
        """The answer to a resend of seqs this buffer does not hold."""
        self._publish_gaps(stream, never_assigned=never, unavailable=gone)

    def _publish_gaps(self, stream: str, **ranges: list[tuple[int, int]]) -> None:
        if not self._publisher.connected:
            return
        payload = gaps_message(
            self._config.collector.id, self._outbox.outbox.outbox_id, stream, **ranges
        )
        future = self._publisher.publish(f"{topic_base(self._config)}/gaps", payload)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _wake_stream(self, name: str) -> None:
        """A store acknowledgement for a stream ("readings", "units", "deviations") arrived."""
        for delivery in self._deliveries:
            if delivery.stream.topic.endswith(f"/{name}"):
                delivery.wake.set()

    def context_topic(self, station_key: str) -> str:
        return f"{topic_base(self._config)}/context/{station_key}"

    def _publish_contexts(self, through: int | None) -> None:
        """The unit-context versions readings up to seq ``through`` name and that were not
        published on this connection yet, retained on ``context/{station}``, before those
        readings (one connection, QoS 1: they arrive first). ``through`` None (a connect):
        every kept version, oldest change first, so each station's retained message ends as
        its latest. Not awaited, like the metadata: one lost with its connection goes again
        on the next connect."""
        done = self._contexts_through
        if self.contexts_refused is not None:
            return
        if through is not None and (
            through <= done or self._outbox.outbox.context_changed_seq <= done
        ):
            return
        collector_id = self._config.collector.id
        rows = self._outbox.stored_contexts(done, through)
        for ctx, station_key, body, _changed, _last in rows:
            message = context_message(collector_id, ctx, body)
            topic = self.context_topic(station_key)
            future = self._publisher.publish(topic, message, retain=True)
            future.add_done_callback(functools.partial(self._context_answered, topic=topic))
        if through is None:
            self._contexts_through = max([done, *(row[3] for row in rows)])
        else:
            self._contexts_through = max(done, through)

    def _context_answered(self, future: asyncio.Future[Ack], *, topic: str) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # lost with its connection: published again on the next connect
        ack = future.result()
        if ack.is_failure and self.contexts_refused is None:
            self.contexts_refused = f"{topic}: {ack}"
            log.error(
                "mqtt: the broker refused the unit context on %s (%s); no context is "
                "published any more until the collector restarts, and consumers cannot resolve "
                "the unit of the readings that name one: allow the collector to publish on "
                "%s/context/# (docs/store.md)",
                topic,
                ack,
                topic_base(self._config),
            )

    def meta_topic(self, device: str) -> str:
        return f"{topic_base(self._config)}/meta/{device}"

    def set_meta(self, metas: Mapping[str, DeviceMeta]) -> None:
        """The devices' tag metadata, retained on ``meta/{device}``: published on every
        connect, and at once for the devices whose metadata changed (a reload); a device no
        longer configured has its retained message cleared."""
        collector_id = self._config.collector.id
        new = {device: meta.message(collector_id) for device, meta in metas.items()}
        changed = {d: m for d, m in new.items() if self._meta.get(d) != m}
        gone = {d: b"" for d in self._meta if d not in new}
        self._meta = new
        self._meta_ids = {device: meta.meta for device, meta in metas.items()}
        self._meta_refused -= set(changed) | set(gone)  # a new version is tried again
        if self._publisher.connected:
            for device, message in {**changed, **gone}.items():
                self._publish_meta(device, message)

    def _publish_old_metas(self) -> None:
        """The versions kept in the buffer that are not current, non-retained: a consumer can
        then resolve the positional polls of readings buffered before a reload changed the
        metadata (a retained message holds only the current one). Not awaited, like the
        current one. One the broker refuses is not sent again, and its buffered polls are
        keyed by tag instead (on_meta_refused), as for a refused current version."""
        stored = self._outbox.stored_metas()
        collector_id = self._config.collector.id
        limit = self._publisher.max_packet_bytes
        for device, meta, body in stored:
            if self._meta_ids.get(device) == meta or (device, meta) in self._old_refused:
                continue
            message = DeviceMeta.from_body(device, body).message(collector_id)
            topic = self.meta_topic(device)
            if limit and len(message) + len(topic) + PACKET_OVERHEAD_BYTES > limit:
                self._old_meta_refused(device, meta, f"{len(message)} bytes, over its limit")
                continue
            future = self._publisher.publish(topic, message, retain=False)

            def answered(f: asyncio.Future[Ack], device: str = device, meta: str = meta) -> None:
                if not f.cancelled() and f.exception() is None and f.result().is_failure:
                    self._old_meta_refused(device, meta, str(f.result()))

            future.add_done_callback(answered)

    def _old_meta_refused(self, device: str, meta: str, why: str) -> None:
        if (device, meta) in self._old_refused:
            return
        self._old_refused.add((device, meta))
        if self.on_meta_refused is not None:
            self.on_meta_refused(device, meta)
        log.warning(
            "mqtt: the broker refused tag metadata %s of %s (%s); its buffered readings are "
            "sent keyed by tag name instead",
            meta,
            device,
            why,
        )

    def _publish_meta(self, device: str, message: bytes) -> None:
        """Not awaited: one lost with its connection goes again on the next connect. One the
        broker refuses (its ACL, its packet size) is not sent again until it changes, so that
        a broker that drops the connection on a refusal cannot keep the readings from flowing:
        consumers then lack the metadata, not the readings (said once in the log)."""
        limit = self._publisher.max_packet_bytes
        topic = self.meta_topic(device)
        if limit and len(message) + len(topic) + PACKET_OVERHEAD_BYTES > limit:
            self._meta_refused_as(device, f"{len(message)} bytes, over the broker's limit")
            return
        future = self._publisher.publish(topic, message, retain=True)

        def answered(f: asyncio.Future[Ack]) -> None:
            if not f.cancelled() and f.exception() is None and f.result().is_failure:
                self._meta_refused_as(device, str(f.result()))

        future.add_done_callback(answered)

    def _meta_refused_as(self, device: str, why: str) -> None:
        if device not in self._meta_refused:
            self._meta_refused.add(device)
            if self.on_meta_refused is not None and device in self._meta_ids:
                self.on_meta_refused(device, self._meta_ids[device])
            log.warning(
                "mqtt: tag metadata of %s not published (%s); its readings go on without it, "
                "keyed by tag name: allow the collector to publish on %s",
                device,
                why,
                self.meta_topic(device),
            )

    async def run(self, stop: asyncio.Event, grace_s: float | None = None) -> None:
        """Forward until ``stop`` is set, then for at most ``grace_s`` while rows remain."""
        grace = self._mqtt.shutdown_grace_s if grace_s is None else grace_s
        self._deliveries = [_Delivery(stream) for stream in self._streams]
        publishing = asyncio.create_task(self._publisher.run(), name="mqtt-connections")
        try:
            async with asyncio.TaskGroup() as group:
                for delivery in self._deliveries:
                    group.create_task(
                        self._forward(delivery, stop, grace), name=f"forward:{delivery.stream.name}"
                    )
        finally:
            for delivery in self._deliveries:
                # What was acknowledged is not sent again.
                await delivery.stream.flush_deletes()
            await self._publisher.close()
            await publishing

    # ------------------------------------------------------------------ the forwarding loop

    async def _forward(self, d: _Delivery, stop: asyncio.Event, grace: float) -> None:
        loop = asyncio.get_running_loop()
        stream, in_flight, lanes, publisher = d.stream, d.in_flight, d.lanes, self._publisher
        retry_at: float | None = None  # after a refusal: send nothing before then
        backoff = Backoff(*self._refusal_backoff_s)
        deadline: float | None = None
        while True:
            if stop.is_set() and deadline is None:
                deadline = loop.time() + grace
            if deadline is not None and loop.time() >= deadline:
                return
            d.wake.clear()
            stream.appended.clear()
            if publisher.connection != d.connection:
                d.stale = True  # a lost connection: what is buffered is backlog again
            # Settle what the broker answered (or what a lost connection took), oldest first.
            while in_flight and in_flight[0].future.done():
                refused = await self._settle(d, in_flight.popleft())
                if refused:
                    retry_at = loop.time() + backoff.next_delay()
                    d.stale = True
                elif refused is False:
                    backoff.reset()
            if self.store_sync is not None:
                key = self._stream_keys[id(stream)]
                if await self.store_sync.settle(key):
                    d.stale = True  # asked for again: taken again, oldest first
            # The deletes of what the broker acknowledged ride along with the buffer writer's
            # next commit (one transaction, one fsync); when none comes soon, they go alone.
            waiting = stream.deletes_waiting_s()
            if waiting is not None and waiting >= ACK_LINGER_S:
                await stream.flush_deletes()
            if retry_at is not None and loop.time() >= retry_at:
                retry_at = None
            if stream.shown:
                self.status.in_flight = len(in_flight)
            if stop.is_set() and not in_flight and stream.depth == 0:
                return
            # Start over from the oldest row once nothing of an older round is in flight.
            if d.stale and not in_flight and publisher.connected:
                d.connection = publisher.connection
                lanes.restart(await stream.newest_seq())
                self._show_backlog(d)
                d.stale = False
            sent = False
            window = 1 if self._isolating(d) else stream.window
            while (
                publisher.connected and not d.stale and retry_at is None and len(in_flight) < window
            ):
                published = await self._publish_next(d)
                if published is None:
                    break
                in_flight.append(published)
                sent = True
            if sent:
                continue
            limit = 1.0 if stream.deletes_waiting_s() is None else ACK_LINGER_S
            for moment in (retry_at, deadline):
                if moment is not None:
                    limit = max(0.0, min(limit, moment - loop.time()))
            events = [d.wake, stream.appended] + ([stop] if deadline is None else [])
            await self._wait_events(events, limit)

    async def _publish_next(self, d: _Delivery) -> _InFlight | None:
        """Take and publish the next batches: the lanes take turns; an empty lane passes."""
        stream, lanes = d.stream, d.lanes
        for backlog in (True, False) if lanes.turn_backlog else (False, True):
            if backlog and not lanes.backlog_active:
                continue
            cursor = lanes.backlog_cursor if backlog else lanes.live_cursor
            max_items, max_bytes = self._max_items(d, cursor), self._max_bytes(stream)
            batches = await stream.take(
                cursor, max_items, max_bytes, lanes.boundary if backlog else None
            )
            if not batches:
                if backlog:
                    lanes.backlog_cursor = lanes.boundary  # the backlog is drained
                    self._show_backlog(d)
                continue
            if stream.key == b"polls":  # seq and ts left out where the previous poll implies them
                items = join_polls((b.first_seq, b.count, b.body) for b in batches)
            else:
                items = b",".join(b.body for b in batches)
            payload = envelope(
                self._config.collector.id, self._outbox.outbox.outbox_id, items, stream.key
            )
            if len(batches) == 1 and await self._oversized(d, batches[0], len(payload), max_items):
                return await self._publish_next(d)  # split or moved aside: look again
            if backlog:
                lanes.backlog_cursor = batches[-1].last_seq
            else:
                lanes.live_cursor = batches[-1].last_seq
            lanes.turn_backlog = not backlog
            self._show_backlog(d)
            if stream.key == b"polls":
                self._publish_contexts(batches[-1].last_seq)
            future = self._publisher.publish(stream.topic, payload)
            future.add_done_callback(lambda _: d.wake.set())
            return _InFlight(
                batches[0].first_seq,
                batches[-1].last_seq,
                sum(b.count for b in batches),
                payload,
                future,
                backlog,
            )
        return None

    async def _oversized(
        self, d: _Delivery, batch: Batch, payload_bytes: int, max_items: int
    ) -> bool:
        """One batch alone is more than a message may carry: split it in the buffer (a batch
        stored before polls were cut at encode time, or over the byte limit), or move a single
        reading that can never go out aside. Returns whether it did either. (A single reading
        over only the size learned from a broker that drops large messages is sent anyway:
        learned limits are for batching, never a reason to give up.)"""
        stream = d.stream
        if batch.count > 1:
            if batch.count <= max_items and payload_bytes <= self._max_payload_bytes(stream):
                return False
            # Into as many parts as the item and byte limits need (with some margin).
            parts = max(
                -(-batch.count // max_items), 2 * payload_bytes // self._max_bytes(stream) + 1
            )
            return await stream.split(batch.first_seq, batch.last_seq, max(1, batch.count // parts))
        if payload_bytes > self._max_payload_bytes(stream, learned=False):
            return await self._too_large(
                d, batch.last_seq, f"{payload_bytes} bytes, over the broker's limit"
            )
        return False

    def _show_backlog(self, d: _Delivery) -> None:
        if not d.stream.shown:
            return
        lanes = d.lanes
        self.status.backlog_until_seq = lanes.boundary or None
        self.status.backlog_next_seq = lanes.backlog_cursor + 1 if lanes.backlog_active else None

    @staticmethod
    def _isolating(d: _Delivery) -> bool:
        """Whether one message at a time goes out: while the message a connection died with is
        unanswered, and while a split range is resent one reading per message. A lost
        connection then points at the one message in flight, and a broker that refuses it and
        hangs up has no unread data to reset the connection with, so its refusal's PUBACK
        arrives (mosquitto 2.0.11 with max_queued_messages 0 loses it otherwise)."""
        if d.suspect[1]:
            return True
        if d.cap is None:
            return False
        until, lanes = d.cap[1], d.lanes
        return lanes.live_cursor < until or (lanes.backlog_active and lanes.backlog_cursor < until)

    @staticmethod
    def _max_items(d: _Delivery, cursor: int) -> int:
        items = d.stream.max_items
        if d.cap is not None:
            cap, until = d.cap
            if cursor < until:
                return min(items, cap)
        return items

    def _max_payload_bytes(self, stream: Stream, learned: bool = True) -> int:
        """The largest message payload: ours, what fits the broker's Maximum Packet Size, and
        (for batching only, never to give up on a reading) what we learned."""
        limit = self._mqtt.max_message_bytes
        if learned and self._learned_max_bytes is not None:
            limit = min(limit, self._learned_max_bytes)
        packet_limit = self._publisher.max_packet_bytes
        if packet_limit:
            packet = PACKET_OVERHEAD_BYTES + len(stream.topic.encode())
            limit = min(limit, packet_limit - packet)
        return limit

    def _max_bytes(self, stream: Stream) -> int:
        """The budget for the stored bodies in one message."""
        head = MESSAGE_HEAD_BYTES + len(self._config.collector.id)
        return max(1, self._max_payload_bytes(stream) - head)

    async def _settle(self, d: _Delivery, item: _InFlight) -> bool | None:
        """Ack a delivered message. Returns True if refused, False if delivered, None if its
        connection was lost (it will be sent again)."""
        exc = item.future.exception()
        if isinstance(exc, ConnectionLost):
            if exc.after_refusal:
                # The broker ended the connection after refusing a message (perhaps another
                # stream's, or tag metadata): not a sign that this one is too large.
                return None
            if exc.connection != d.suspect_noted:
                # Only the oldest message of a lost connection is a suspect.
                d.suspect_noted = exc.connection
                await self._note_suspect(d, item)
            return None
        if exc is not None:
            raise exc
        reason = item.future.result()
        self.status.publish_rtt.observe(time.perf_counter() - item.sent_at)
        # Answered: the connection carries messages again. (Normally the suspect itself, sent
        # first and alone after the loss; if something else went first, judge afresh.)
        d.suspect = (0, 0)
        if not reason.is_failure:
            await self._delivered(d, item)
            return False
        self.status.rejected[str(reason)] += 1
        if reason.value in TOO_LARGE:
            if item.items > 1:
                await self._split(d, item, f"refused by broker: {reason}")
            else:
                await self._too_large(d, item.last_seq, f"refused by broker: {reason}")
            return True
        log.error(
            "mqtt: broker refused %s seq %d-%d (%s); kept in the buffer and retried after a "
            "backoff",
            d.stream.name,
            item.first_seq,
            item.last_seq,
            reason,
        )
        return True

    async def _note_suspect(self, d: _Delivery, item: _InFlight) -> None:
        """A message whose connection died before its PUBACK, several times in a row, is
        probably what kills the connection (a broker that drops oversized messages): split it,
        and move a single reading that still does it aside."""
        first, times = d.suspect
        times = times + 1 if first == item.first_seq else 1
        d.suspect = (item.first_seq, times)
        if times >= SUSPECT_SPLIT_AFTER and item.items > 1:
            await self._split(d, item, f"connection lost {times} times before its acknowledgement")
            learned = max(LEARNED_MIN_BYTES, item.payload_bytes // 2)
            if learned < (self._learned_max_bytes or self._mqtt.max_message_bytes):
                self._learned_max_bytes = learned
                log.warning(
                    "mqtt: the broker seems to drop messages of %d bytes; sending at most %d "
                    "bytes from now on (set mqtt.max_message_bytes below the broker's limit)",
                    item.payload_bytes,
                    learned,
                )
        elif times >= SUSPECT_QUARANTINE_AFTER and item.items == 1:
            await self._too_large(
                d, item.last_seq, f"connection lost {times} times while sending it"
            )

    async def _too_large(self, d: _Delivery, seq: int, why: str) -> bool:
        """Move a single item that can never be delivered aside (counted, kept). Returns
        whether it was moved."""
        if not await d.stream.quarantine(seq, why):
            return False
        self.status.quarantined += 1
        d.suspect = (0, 0)
        log.error("mqtt: seq %d can never be delivered (%s): moved to quarantine", seq, why)
        return True

    async def _split(self, d: _Delivery, item: _InFlight, why: str) -> None:
        """Resend the message one item per message, so the bad one is isolated quickly."""
        await d.stream.split(item.first_seq, item.last_seq, 1)
        d.cap = (1, item.last_seq)
        log.warning(
            "mqtt: %s seq %d-%d not accepted (%s); resending them one per message",
            d.stream.name,
            item.first_seq,
            item.last_seq,
            why,
        )

    @staticmethod
    async def _wait_events(events: Sequence[asyncio.Event], limit_s: float) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _delivered(self, d: _Delivery, item: _InFlight) -> None:
        if d.cap is not None and item.last_seq >= d.cap[1]:
            d.cap = None  # the split range went through
        if self.store_sync is None:
            await d.stream.delivered(item.first_seq, item.last_seq)
        else:  # kept (never taken again) until the store acknowledges it
            d.stream.marks.add(item.first_seq, item.last_seq, item.items, time.monotonic())
        d.stream.count_delivered(self.status, item.items)
        self.status.last_accepted_ts = time.time()
        if self._on_delivered is not None:
            self._on_delivered(item.payload)
