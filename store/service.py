"""The store service: MQTT subscriber -> batches -> one transaction each -> PUBACKs.

One asyncio loop. paho's network thread hands each message to the loop (a queue that the
broker's Receive Maximum bounds); the ingest task takes up to ``ingest.max_batch_messages``
(waiting at most ``ingest.max_batch_wait_ms`` for more), writes them in a worker thread in one
transaction, and only then acknowledges them to the broker. A database error acknowledges
nothing: the batch is retried with exponential backoff until the database takes it, and
/health says why meanwhile. The prune task deletes raw readings past the retention age; the
HTTP server (store.api) reads state and the database and cannot stop ingest. When no message
comes for a second, the ingest task does the bounds' look that no batch brought (the parking
age bound and the quarantine's, store.ingest.Writer.maintain) and logs the counts gathered
since a minute (store.episodes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from common import systemd
from store.acks import AckBook
from store.config import StoreConfig
from store.db import connect, error_reason
from store.ingest import BatchResult, Incoming, Writer, topic_kind
from store.migrate import SchemaRefused, migrate
from store.mqtt import Delivery, Subscriber
from store.parking import ParkingLimits, ParkLog
from store.quarantine import QuarantineLimits, QuarantineLog
from store.record import line as line_deviations
from store.retention import prune_readings
from store.status import Stats, stream_states

log = logging.getLogger("store")


def database_engine(config: StoreConfig) -> sa.Engine:
    password = config.database.password()
    return connect(
        config.database.url,
        None if password is None else password.get_secret_value(),
        config.database.sqlite_synchronous,
    )


class StoreService:
    def __init__(self, config: StoreConfig, engine: sa.Engine | None = None) -> None:
        self.config = config
        self.engine = engine or database_engine(config)
        self.stats = Stats()
        ingest = config.ingest
        self.writer = Writer(
            self.engine,
            ingest.quarantine_max_bytes,
            ParkingLimits(
                ingest.parked_max_messages, ingest.parked_max_bytes, ingest.parked_max_age_s
            ),
            QuarantineLimits(
                ingest.quarantine_max_rows,
                ingest.quarantine_max_total_bytes,
                ingest.quarantine_max_age_days,
            ),
        )
        self.http_port: int | None = None
        #: The HTTP server's connection figures (common.httpserver.ConnectionGuard.stats),
        #: once it serves.
        self.http_stats: Callable[[], dict[str, int]] | None = None
        # Bounded even if a broker ignores the Receive Maximum it was sent (mosquitto 2.0
        # resends a resumed session's whole queue at once): when full, paho's thread waits,
        # so it stops reading the socket and TCP holds the broker back.
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=config.mqtt.receive_maximum)
        self._closing = False
        self._park_log = ParkLog()
        self._quarantine_log = QuarantineLog()
        self._idle_after = -math.inf  # the idle work waits until then after a database error
        # Ranges collectors said they will never send (store.announce): not asked for again.
        self._settled: dict[tuple[str, str, str], set[tuple[int, int]]] = {}
        self.acks = AckBook(config.acks, settled=lambda key: self._settled.get(key, ()))
        self._acks_changed = asyncio.Event()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set; then finish the batch in hand and disconnect."""
        from store.api import StoreHttpServer  # noqa: PLC0415 - FastAPI only when serving

        loop = asyncio.get_running_loop()
        server = None
        serving = None
        if self.config.http.enabled:
            server = StoreHttpServer(self, self.config.http.host, self.config.http.port)
            self.http_port = server.bound_port
            self.http_stats = server.guard.stats
            serving = asyncio.create_task(server.run_until_exit())
        try:
            await self._migrate(stop)
        except SchemaRefused:
            if server is not None and serving is not None:
                server.should_exit = True
                await serving
            raise
        subscriber = Subscriber(
            self.config.mqtt, lambda d: self._enqueue(loop, d), self._on_mqtt_state
        )
        if not stop.is_set():
            subscriber.start()
        pruning = asyncio.create_task(self._prune_loop(stop))
        acking = asyncio.create_task(self._ack_loop(subscriber, stop))
        interval = systemd.watchdog_interval()
        watchdog = (
            None if interval is None else asyncio.create_task(systemd.feed_watchdog(interval))
        )
        systemd.notify("READY=1", "STATUS=storing")
        if ready is not None:
            ready.set()
        try:
            await self._ingest_loop(subscriber, stop)
        finally:
            systemd.notify("STOPPING=1")
            self._closing = True  # a message waiting for room is dropped: the broker keeps it
            subscriber.stop()
            for task in (pruning, acking, watchdog):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if server is not None and serving is not None:
                server.should_exit = True
                await serving
            await asyncio.to_thread(self.writer.close)
            log.info("stopped; messages not committed stay with the broker")

    def _enqueue(self, loop: asyncio.AbstractEventLoop, delivery: Delivery) -> None:
        """Called in paho's thread: hand a message to the loop, waiting while the queue is
        full (bounded: every 0.5 s it checks whether the service is stopping)."""
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(delivery), loop)
        except RuntimeError:  # the loop is closed: the message stays with the broker
            return
        while True:
            try:
                future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self._closing:
                    future.cancel()
                    return
            else:
                return

    def _on_mqtt_state(self, connected: bool, why: str) -> None:
        self.stats.mqtt_connected = connected
        self.stats.mqtt_state = why or "connected"

    async def _migrate(self, stop: asyncio.Event) -> None:
        """Bring the schema to the head (store.migrate; database.migrate: off only checks);
        a database that is down at start-up is waited for. A schema this store must not run
        on raises store.migrate.SchemaRefused."""
        delay = self.config.ingest.retry_min_ms / 1000
        database = self.config.database
        while not stop.is_set():
            try:
                await asyncio.to_thread(
                    migrate, self.engine, database.migrate, database.timescaledb
                )
            except sa.exc.SQLAlchemyError as exc:
                self._db_failed(exc)
                await _wait(stop, delay)
                delay = min(delay * 2, self.config.ingest.retry_max_ms / 1000)
            else:
                self._db_recovered()
                return

    async def _next_batch(self, stop: asyncio.Event) -> list[Delivery]:
        """The next batch; empty when stopping, or when nothing came within _IDLE_TICK_S."""
        queue = self._queue
        getting = asyncio.ensure_future(queue.get())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait(
            [getting, stopping], timeout=_IDLE_TICK_S, return_when=asyncio.FIRST_COMPLETED
        )
        stopping.cancel()
        if not getting.done():
            getting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getting
            if not getting.cancelled():  # it completed while being cancelled: keep it
                return [getting.result()]
            return []
        batch = [getting.result()]
        limit = self.config.ingest.max_batch_messages
        deadline = time.monotonic() + self.config.ingest.max_batch_wait_ms / 1000
        while len(batch) < limit:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _ingest_loop(self, subscriber: Subscriber, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await self._next_batch(stop)
            if not batch:
                if not stop.is_set():
                    await self._idle()
                continue
            self.stats.queued = self._queue.qsize()
            # Deviations recorded on the line PC go to the record (store.record.line), the rest
            # to the writer; both are committed before any of the batch is acknowledged.
            line = [(d.topic, d.payload) for d in batch if d.topic.endswith(LINE_DEVIATIONS)]
            incoming = [
                Incoming(d.topic, d.payload) for d in batch if not d.topic.endswith(LINE_DEVIATIONS)
            ]
            delay = self.config.ingest.retry_min_ms / 1000
            while True:
                started = time.perf_counter()
                try:
                    if line:
                        from_line = await asyncio.to_thread(
                            line_deviations.ingest,
                            self.engine,
                            line,
                            self.config.ingest.quarantine_max_bytes,
                        )
                        line = []  # committed: a retry of the rest does not redo them
                        self._took_line(from_line)
                    result = await asyncio.to_thread(self.writer.write_isolating, incoming)
                except Exception as exc:  # every failure: retry, never ack
                    self._db_failed(exc)
                    await asyncio.to_thread(self.writer.reset)
                    if stop.is_set():
                        return  # nothing acknowledged: the broker redelivers after restart
                    await _wait(stop, delay)
                    delay = min(delay * 2, self.config.ingest.retry_max_ms / 1000)
                    continue
                break
            self._db_recovered()
            s = self.stats
            s.batch_seconds = time.perf_counter() - started
            s.batches += 1
            s.last_commit = time.time()
            for d in batch:
                kind = topic_kind(d.topic) or (
                    "deviations" if d.topic.endswith(LINE_DEVIATIONS) else "other"
                )
                s.messages[kind] += 1
            s.readings_received += result.readings
            s.readings_inserted += result.readings_inserted
            s.units_received += result.units
            s.units_inserted += result.units_inserted
            for kind, _reason in result.quarantined:
                s.quarantined[kind] += 1
            s.parked += len(result.parked)
            s.unparked += result.unparked
            self._count_bounds(result)
            s.acked += subscriber.ack(batch)
            for note in result.notes:
                key = (note.collector, note.outbox, note.stream)
                self._settled.setdefault(key, set()).add((note.first, note.last))
            if result.streams:
                self.acks.update(result.streams, time.monotonic())
                await self._load_siblings(list(result.streams))
                self._acks_changed.set()

    def _count_bounds(self, result: BatchResult) -> None:
        """What the bounds did (parking drops, quarantine prunes) counted, and the log lines
        of the quarantined and parked messages, at most one a minute per collector (and
        kind)."""
        s = self.stats
        s.parked_dropped += len(result.dropped)
        for pruned in result.pruned:
            s.quarantine_pruned.update(pruned.kinds)
            s.quarantine_pruned_bytes += pruned.bytes
            s.quarantine_pruned_why = pruned.why
            s.quarantine_pruned_last = time.time()
            if s.quarantine_pruned_first is None:
                s.quarantine_pruned_first = s.quarantine_pruned_last
        self._quarantine_log.note(result.kept)
        self._park_log.note(result.parked_keys, result.dropped)

    async def _idle(self) -> None:
        """No message for a second: the bounds' look that no batch brought, when due (an
        idle store drops a parked message past its age too), and the log lines of counts
        gathered since a minute. After a database error it waits ingest.retry_max_ms."""
        result = BatchResult()
        if time.monotonic() >= self._idle_after and self.writer.maintenance_due():
            try:
                result = await asyncio.to_thread(self.writer.maintain)
            except Exception as exc:  # said on /health; a batch retries on its own
                self._db_failed(exc)
                await asyncio.to_thread(self.writer.reset)
                self._idle_after = time.monotonic() + self.config.ingest.retry_max_ms / 1000
            else:
                self._db_recovered()
        self._count_bounds(result)

    def _took_line(self, result: line_deviations.LineResult) -> None:
        s = self.stats
        s.deviations_received += result.received
        s.deviations_inserted += result.inserted
        for kind, _reason in result.quarantined:
            s.quarantined[kind] += 1
        self._quarantine_log.note(result.kept)  # once per collector and kind a minute
        if result.streams:
            self.acks.update(result.streams, time.monotonic())
            self._acks_changed.set()

    async def _load_siblings(self, keys: list[tuple[str, str, str]]) -> None:
        """Acknowledge the other stream of a collector's outbox too, from the database,
        the first time this process sees the outbox (store.acks.AckBook.siblings_unknown)."""
        bases = self.acks.siblings_unknown(keys)
        if not bases:
            return
        try:
            states = await asyncio.to_thread(stream_states, self.engine, bases)
        except sa.exc.SQLAlchemyError:
            return  # the next batch fails too and says why; asked again after it
        self.acks.looked_up(bases)
        found = {key: (bases[key], state) for key, state in states.items()}
        if found:
            self.acks.update(found, time.monotonic())

    async def _ack_loop(self, subscriber: Subscriber, stop: asyncio.Event) -> None:
        """Publish the store acknowledgements the book says are due (store.acks). Not while
        the database fails: an ack says the store commits, and a collector resends a tail
        only while acks come."""
        if not self.config.acks.enabled:
            return
        while not stop.is_set():
            self._acks_changed.clear()
            wait = 0.5  # not connected, or the database fails: look again soon
            if subscriber.connected and self.stats.db_ok:
                for topic, payload in self.acks.due(time.monotonic()):
                    if subscriber.publish(topic, payload):
                        self.stats.acks_published += 1
                wait = max(0.01, self.acks.next_due_s(time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acks_changed.wait(), wait)

    def _db_failed(self, exc: BaseException) -> None:
        s = self.stats
        reason = error_reason(exc)
        text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
        s.db_errors[reason] += 1
        if s.db_ok or s.db_reason != reason:
            if reason == "other" and not isinstance(exc, sa.exc.SQLAlchemyError):
                log.error("writing a batch failed; retrying", exc_info=exc)
            else:
                log.error("database %s: %s; nothing acknowledged, retrying", reason, text)
            s.db_error_since = time.time()
        s.db_ok, s.db_reason, s.db_error = False, reason, text

    def _db_recovered(self) -> None:
        s = self.stats
        if not s.db_ok:
            down = time.time() - (s.db_error_since or time.time())
            log.info("database back after %.1f s (%s)", down, s.db_reason)
        s.db_ok, s.db_reason, s.db_error, s.db_error_since = True, "", "", None

    async def _prune_loop(self, stop: asyncio.Event) -> None:
        retention = self.config.retention
        if retention.readings_max_age_days is None:
            return
        while not stop.is_set():
            cutoff = datetime.now(UTC) - timedelta(days=retention.readings_max_age_days)
            try:
                pruned = await asyncio.to_thread(prune_readings, self.engine, cutoff)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("pruning failed, trying again later: %s", exc)
            else:
                self.stats.pruned += pruned
                if pruned:
                    log.info("pruned %d reading(s) older than %s", pruned, cutoff.isoformat())
            await _wait(stop, retention.prune_interval_s)


#: How long the ingest task waits for a message before its idle work (Writer.maintain).
_IDLE_TICK_S = 1.0
#: The last topic level of deviations recorded on the line PC.
LINE_DEVIATIONS = f"/{line_deviations.STREAM}"


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
