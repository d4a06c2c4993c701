"""Store acknowledgements: what the store tells each collector it has committed.

After each committed batch the store knows, per stream (collector, outbox, kind), the gap
audit's state: every seq in [low, high] outside the holes is in the database. It publishes
that on the collector's own topic ``{base}/ack`` (QoS 1, not retained)::

    {"schema":2,"outbox":O,"stream":"readings","from":low,"through":high,
     "holes":[[a,b],...],"resend":[[a,b],...]}

and the collector deletes exactly what an ack covers (docs/guarantees.md). The book here
decides what to send and when, and is pure (no MQTT, no database), so its rules are tested
alone:

- **Bounded rate.** A stream is acknowledged at most once per ``acks.min_interval_ms`` (the
  latest state wins), and again every ``acks.interval_s`` while it was active in the last hour:
  a collector learns the store is alive, and that a tail it sent never arrived.
- **Bounded size.** At most ``acks.max_ranges`` holes. When there are more, ``through`` stops
  before the first hole not listed, so the ack never claims a seq the store does not have.
- **resend** lists the holes open for ``acks.resend_after_s`` (a hole that young is usually a
  message still on its way) that the collector has not already said it cannot send
  (``settled``: never assigned, unavailable; see store.announce).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from contract.ranges import subtract
from store.config import AcksConfig
from store.gaps import StreamState

#: (collector, outbox, kind)
StreamKey = tuple[str, str, str]
#: A stream the book has not heard of for this long is no longer re-acknowledged.
ACTIVE_S = 3600.0
ACK_SCHEMA = 2


@dataclass(slots=True)
class _Entry:
    base: str
    state: StreamState
    changed_at: float
    sent_at: float | None = None
    dirty: bool = True


@dataclass
class AckBook:
    config: AcksConfig
    #: Ranges a collector said it cannot send, per stream: not asked for again.
    settled: Callable[[StreamKey], Iterable[tuple[int, int]]] = field(default=lambda _k: ())
    _streams: dict[StreamKey, _Entry] = field(default_factory=dict)
    _looked_up: set[StreamKey] = field(default_factory=set)

    def update(self, streams: dict[StreamKey, tuple[str, StreamState]], now: float) -> None:
        """The states a committed batch left (store.ingest.BatchResult.streams)."""
        for key, (base, state) in streams.items():
            entry = self._streams.get(key)
            if entry is None:
                self._streams[key] = _Entry(base, state, now)
            else:
                entry.base, entry.state, entry.changed_at, entry.dirty = base, state, now, True

    def siblings_unknown(self, keys: Iterable[StreamKey]) -> dict[StreamKey, str]:
        """The other stream (readings or units) of each (collector, outbox) just touched,
        when this book has not heard of it, with its topic base, until :meth:`looked_up`. A
        store process acknowledges what its batches touch, so after a restart a collector's
        unit records committed before it (their ack lost with the process) would otherwise
        wait for the next unit record: the caller reads their state from the database."""
        out: dict[StreamKey, str] = {}
        for key in keys:
            collector, outbox, kind = key
            other = (collector, outbox, "units" if kind == "readings" else "readings")
            if other not in self._streams and other not in self._looked_up:
                out[other] = self._streams[key].base
        return out

    def looked_up(self, keys: Iterable[StreamKey]) -> None:
        """These streams were read from the database (found or not): not asked for again."""
        self._looked_up.update(keys)

    def due(self, now: float, wall: datetime | None = None) -> list[tuple[str, bytes]]:
        """(topic, payload) of each ack to publish now; marks them sent."""
        wall = wall or datetime.now(UTC)
        out = []
        min_gap = self.config.min_interval_ms / 1000
        for key in [k for k, e in self._streams.items() if now - e.changed_at > ACTIVE_S]:
            del self._streams[key]
        for key, entry in self._streams.items():
            since = None if entry.sent_at is None else now - entry.sent_at
            if entry.dirty and (since is None or since >= min_gap):
                pass
            elif since is None or since < self.config.interval_s:
                continue
            entry.sent_at, entry.dirty = now, False
            payload = self.payload(key, entry.state, wall)
            if payload:
                out.append((f"{entry.base}/ack", payload))
        return out

    def next_due_s(self, now: float) -> float:
        """Seconds until :meth:`due` may have something (at most the re-ack interval)."""
        wait = self.config.interval_s
        min_gap = self.config.min_interval_ms / 1000
        for entry in self._streams.values():
            if entry.sent_at is None:
                return 0.0
            gap = min_gap if entry.dirty else self.config.interval_s
            wait = min(wait, max(0.0, entry.sent_at + gap - now))
        return wait

    def payload(self, key: StreamKey, state: StreamState, wall: datetime) -> bytes:
        _collector, outbox, kind = key
        if state.low is None or state.high is None:
            return b""
        limit = self.config.max_ranges
        holes = state.holes[:limit]
        through = state.high
        if len(state.holes) > limit:
            through = state.holes[limit].first - 1
        settled = list(self.settled(key))
        resend = []
        for hole in holes:
            if (wall - hole.opened_at).total_seconds() < self.config.resend_after_s:
                continue
            resend.extend(subtract([(hole.first, hole.last)], settled))
        return orjson.dumps(
            {
                "schema": ACK_SCHEMA,
                "outbox": outbox,
                "stream": kind,
                "from": state.low,
                "through": through,
                "holes": [[h.first, h.last] for h in holes],
                "resend": [list(r) for r in resend[:limit]],
            }
        )
