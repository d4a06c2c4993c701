"""The writer stage: pollers' readings -> numbered, encoded batches -> one commit per interval.

The only writer of readings: it hands out ``seq`` (counting on from the highest ever stored)
and encodes each poll as it is submitted, on the event loop, so the outbox thread only inserts
rows. A poll with more readings than a message may carry is cut into parts here, at encode
time, so the forwarder never has to split it in the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from collector.buffer.handover import AsyncOutbox
from collector.buffer.schema import Batch, ContextRow, MetaUpdate
from contract.encode import ContextVersion, DeviceMeta, PollEncoder, by_context
from contract.records import Context, ContextChanges, Reading

log = logging.getLogger(__package__)

_ts = operator.attrgetter("ts")


def make_batches(
    encoder: PollEncoder,
    first_seq: int,
    device: str,
    readings: Sequence[Reading],
    contexts: Sequence[Context],
    *,
    per_batch: int | None = None,
    meta: DeviceMeta | None = None,
    positional: bool = True,
) -> list[Batch]:
    """One poll's readings, numbered from ``first_seq``, as the batches the outbox stores: one,
    or as few parts of even size as keep each at most ``per_batch`` readings (a message never
    carries more: mqtt.max_readings_per_message)."""
    count = len(readings)
    parts = 1 if per_batch is None or count <= per_batch else -(-count // per_batch)
    size = -(-count // parts)
    return [
        make_batch(
            encoder,
            first_seq + i,
            device,
            readings[i : i + size],
            contexts[i : i + size],
            meta=meta,
            positional=positional,
        )
        for i in range(0, count, size)
    ]


def make_batch(
    encoder: PollEncoder,
    first_seq: int,
    device: str,
    readings: Sequence[Reading],
    contexts: Sequence[Context],
    *,
    meta: DeviceMeta | None = None,
    positional: bool = True,
) -> Batch:
    """Readings numbered from ``first_seq`` as one batch."""
    return Batch(
        first_seq,
        first_seq + len(readings) - 1,
        min(map(_ts, readings)),
        encoder.encode(first_seq, device, readings, contexts, meta, positional=positional),
    )


def context_rows(
    encoder: PollEncoder, current: dict[str, tuple[str, int]], last_seq: int
) -> list[ContextRow]:
    """The context versions the encoder's polls named since the last call (taken from it),
    as rows for the buffer's ``contexts`` table; ``last_seq``: the polls' last seq.
    ``current``: each station key's latest version and the seq it became so at, kept by the
    caller from call to call (a version named again without a change keeps that seq)."""
    rows: list[ContextRow] = []
    for version, seq in encoder.used:
        key = version.station_key
        known = current.get(key)
        if known is None or known[0] != version.ctx:
            known = current[key] = (version.ctx, seq)
        rows.append((version.ctx, key, version.body, known[1], last_seq))
    encoder.used.clear()
    return rows


@dataclass(frozen=True, slots=True)
class _Contexts:
    """The context versions a poll names (stored in the commit that stores the poll)."""

    rows: list[ContextRow]


@dataclass(frozen=True, slots=True)
class _Rekey:
    """The broker refused this version of a device's metadata: its stored positional polls
    are to be keyed by tag (collector.buffer.store.Outbox.append)."""

    device: str
    meta: str


class BufferWriter:
    """Moves the pollers' readings into the outbox, many polls per transaction.

    The only writer: it numbers the readings (``seq``) and encodes each poll as it is
    submitted, on the event loop, so the outbox thread only inserts rows: one :class:`Batch`
    per poll, or even parts of at most ``max_readings_per_batch`` readings for a poll larger
    than a message may carry (so the forwarder never rewrites it in the buffer).

    Commits are at least ``commit_interval_s`` apart: each one is an fsync, and pollers
    on spread phases would otherwise each get their own. A poll after a quiet spell waits only
    for the polls under way with it (pollers say when one starts and ends:
    :meth:`poll_started`, :meth:`poll_ended`), and never longer than ``commit_interval_s``:
    the devices of a phase group start at one wake-up, so their polls share one commit and
    one message instead of the first one going alone and the rest a commit interval later.
    Pollers call :meth:`submit` (never blocks). The queue is bounded in
    bytes; if the outbox cannot keep up for long (e.g. the disk is full) and the queue
    overflows, the overflowing poll is dropped and counted in ``overflow_dropped`` rather than
    growing memory without bound. Its seqs are used up, so consumers see the drop as a gap.
    Pollers ask :meth:`can_take` first and skip a poll while the queue is at its bound, so under
    sustained overload readings are not read rather than read and dropped; the polls already
    under way then are still taken, up to twice the bound.

    The devices' tag metadata (:meth:`set_meta`) goes into the buffer's ``metas`` table in the
    commit that holds the polls queued after it, so a stored poll's version is always stored
    too, and the versions current change only once the polls encoded before are stored.
    """

    MAX_READINGS_PER_COMMIT = 50_000

    def __init__(
        self,
        outbox: AsyncOutbox,
        max_pending_bytes: int = 4 << 20,  # at saturation RSS holds it (issue 28)
        changes: Callable[[], ContextChanges] | None = None,
        commit_interval_s: float = 0.02,  # buffer.commit_interval_ms
        max_readings_per_batch: int | None = None,  # mqtt.max_readings_per_message
        *,
        positional: bool = True,  # mqtt.value_keys: position
    ) -> None:
        self._per_batch = max_readings_per_batch
        self._outbox = outbox
        self._commit_interval = commit_interval_s
        # Batches, pokes (None), metadata changes and refusals, in the order they came.
        self._queue: deque[Batch | MetaUpdate | _Rekey | _Contexts | None] = deque()
        self._queued = 0  # bytes in the queue
        self._max_pending = max_pending_bytes
        self._held_back = False
        self._ready = asyncio.Event()
        self._encoder = PollEncoder(positional)
        #: Each device's tag metadata: the id polls refer to, float32 tags (set_meta).
        self.metas: Mapping[str, DeviceMeta] = {}
        #: (device, meta) versions the broker refused to take: encoded keyed (meta_refused).
        self._keyed: set[tuple[str, str]] = set()
        self._next_seq: int | None = None
        # Each station's (key: station or station/slot) latest context version and the seq it
        # became so at: a version named again without a change keeps that seq, so the
        # forwarder publishes a version again only when it becomes current again.
        self._current: dict[str, tuple[str, int]] = {}
        # What the station context wants stored along with the readings it tagged.
        self._changes = changes
        self.overflow_dropped = 0
        #: Readings handed to the writer since start (for /metrics).
        self.collected = 0
        self.last_error: str | None = None
        # Polls under way (poll_started .. poll_ended); set when the last of them ended.
        self._under_way = 0
        self._settled = asyncio.Event()

    def submit(self, device: str, readings: Sequence[Reading], contexts: Sequence[Context]) -> None:
        """Number and encode one poll's readings (``contexts[i]`` is that of ``readings[i]``)
        and queue them for the next commit."""
        count = len(readings)
        if not count:
            return
        self.collected += count
        if self._next_seq is None:
            self._next_seq = self._outbox.outbox.last_seq + 1
        first = self._next_seq
        self._next_seq += count
        if self._queued > 2 * self._max_pending:
            # Pollers stop at the bound (can_take); past twice that, polls that were already
            # under way when it was reached have come in too, and something is stuck.
            self.overflow_dropped += count
            return
        meta = self.metas.get(device)
        readings, contexts = by_context(readings, contexts)
        parts = make_batches(
            self._encoder,
            first,
            device,
            readings,
            contexts,
            per_batch=self._per_batch,
            meta=meta,
            positional=meta is None or (device, meta.meta) not in self._keyed,
        )
        rows = self._context_rows(first + count - 1)
        if rows:
            self._queue.append(rows)
        for batch in parts:
            self._queue.append(batch)
            self._queued += len(batch.body)
        self._ready.set()

    def _context_rows(self, last_seq: int) -> _Contexts | None:
        """The context versions the poll just encoded names, as rows to keep with it."""
        rows = context_rows(self._encoder, self._current, last_seq)
        return _Contexts(rows) if rows else None

    def context_versions(self) -> list[ContextVersion]:
        """The unit-context versions its polls named lately (for an in-process view of the
        delivered messages: the demo's)."""
        return self._encoder.known_versions()

    @property
    def keeping_up(self) -> bool:
        """False while pollers are held back because the queue is at its bound."""
        return not self._held_back

    def can_take(self) -> bool:
        """Whether the queue has room for another poll."""
        room = self._queued <= self._max_pending
        if room is self._held_back:  # a change of state: say it once
            self._held_back = not room
            if room:
                log.info("buffer: keeping up again; polling resumed")
            else:
                log.warning(
                    "buffer: more offered than it can store; polls are skipped until it "
                    "catches up (skipped_polls on /status)"
                )
        return room

    def poll_started(self) -> None:
        """A poller starts a poll: its readings are to go in the commit of those queued
        meanwhile (if it ends within the commit interval)."""
        self._under_way += 1

    def poll_ended(self) -> None:
        """The poll :meth:`poll_started` announced is over (submitted, held or failed)."""
        self._under_way -= 1
        if not self._under_way:
            self._settled.set()

    def set_meta(self, metas: Mapping[str, DeviceMeta]) -> None:
        """The devices' tag metadata (at start and after a reload): polls from now on refer
        to it, and it is stored with them."""
        self.metas = metas
        self._queue.append(
            MetaUpdate(
                tuple((d, m.meta, m.body) for d, m in metas.items()),
                frozenset((d, m.meta) for d, m in metas.items()),
            )
        )
        self._ready.set()

    def meta_refused(self, device: str, meta: str | None) -> None:
        """The broker refused that version of the device's metadata: its consumers cannot
        resolve positional polls, so its polls are keyed by tag from now on (until a reload
        brings another version)."""
        if meta is not None and (device, meta) not in self._keyed:
            self._keyed.add((device, meta))
            # Its polls already encoded, stored or queued, are rewritten keyed (the polls
            # queued behind this are encoded keyed already).
            self._queue.append(_Rekey(device, meta))
            self._ready.set()

    def set_changes(self, changes: Callable[[], ContextChanges]) -> None:
        """Take the context's changes from here on (a new context after a reload)."""
        self._changes = changes

    def poke(self) -> None:
        """Commit soon even without new readings (the context has changes to store)."""
        self._queue.append(None)
        self._ready.set()

    @property
    def pending(self) -> int:
        """Polls waiting for their commit."""
        return sum(isinstance(item, Batch) for item in self._queue)

    async def run(self) -> None:
        """Commit until cancelled; on cancel, what is already queued is committed first."""
        loop = asyncio.get_running_loop()
        last_commit = -self._commit_interval
        try:
            while True:
                await self._ready.wait()
                if self._under_way and self._commit_interval > 0:
                    # The polls started with this one (a phase group's) come in within a few
                    # milliseconds: one commit, one message for them all, with no timer per poll.
                    self._settled.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._commit_interval):
                            await self._settled.wait()
                wait = last_commit + self._commit_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # more polls join this commit meanwhile
                self._ready.clear()
                while self._queue:
                    batches, metas, rekey, contexts = self._drain()
                    await self._commit(batches, metas, rekey, contexts)
                last_commit = loop.time()
        except asyncio.CancelledError:
            await self.flush()
            raise

    async def flush(self) -> None:
        """Commit everything queued so far, and the context's changes."""
        while True:
            batches, metas, rekey, contexts = self._drain()
            changes = self._changes() if self._changes is not None else None
            if not batches and not changes and metas is None and not rekey:
                return
            await self._commit(batches, metas, rekey, contexts, changes)

    def _drain(
        self,
    ) -> tuple[list[Batch], MetaUpdate | None, list[tuple[str, str]], list[ContextRow]]:
        """The next commit's batches, the metadata versions to store with them (every version
        of the changes drained, current: the last one's), the refused versions and the
        context versions the batches name (one row each, its highest seqs)."""
        batches: list[Batch] = []
        metas: MetaUpdate | None = None
        rekey: list[tuple[str, str]] = []
        contexts: dict[str, ContextRow] = {}
        readings = 0
        while self._queue and readings < self.MAX_READINGS_PER_COMMIT:
            item = self._queue.popleft()
            if isinstance(item, Batch):
                batches.append(item)
                readings += item.count
                self._queued -= len(item.body)
            elif isinstance(item, MetaUpdate):
                metas = item if metas is None else MetaUpdate(metas.rows + item.rows, item.current)
            elif isinstance(item, _Contexts):
                for row in item.rows:
                    old = contexts.get(row[0])
                    contexts[row[0]] = (
                        row if old is None else (*row[:3], max(old[3], row[3]), row[4])
                    )
            elif item is not None:
                rekey.append((item.device, item.meta))
        return batches, metas, rekey, list(contexts.values())

    async def _commit(
        self,
        batches: list[Batch],
        metas: MetaUpdate | None = None,
        rekey: Sequence[tuple[str, str]] = (),
        contexts: Sequence[ContextRow] = (),
        changes: ContextChanges | None = None,
    ) -> None:
        if changes is None and self._changes is not None and not self._queue:
            # Taken only once every queued poll is in this commit: the stored state then
            # describes exactly the readings stored with it.
            changes = self._changes()
        delay = 0.1
        while True:
            try:
                await self._outbox.append(batches, changes, metas, rekey, contexts)
            except sa.exc.OperationalError as exc:
                # e.g. "database or disk is full": keep the batches, retry, say so once.
                message = str(exc.orig) if exc.orig is not None else str(exc)
                if self.last_error != message:
                    log.error(  # noqa: TRY400 - one clear line; the cause is in the message
                        "buffer: cannot write (%s); retrying, readings kept in memory", message
                    )
                self.last_error = message
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self.last_error is not None:
                log.warning("buffer: writing again after: %s", self.last_error)
                self.last_error = None
            return
