"""``mqtt.delivery: store``: the buffer gives a row up only once the central store committed it.

The forwarder marks what the broker took (collector.delivery.sentmarks) instead of deleting
it; the store's acknowledgements on ``{base}/ack`` (store.acks, docs/guarantees.md) decide:

- **covered** ([from, through] minus holes): deleted, marked or not: the store has them.
- **resend**: the marks of those ranges are removed, so the forwarder takes them again, oldest
  first, the normal way (a mark younger than :data:`RESEND_MIN_AGE_S` stays: its message is
  most likely still on its way to the store).
- **a lost tail**: while acks keep coming (one within ``mqtt.store_resend_after_s``), a mark
  older than that which no ack covered, although the store has spoken at least half that
  long after it was sent, is removed too: the broker lost it after its PUBACK.

Acks arrive on paho's thread and are handed to the loop (:meth:`StoreSync.on_message`); only
the latest of each stream is kept (an ack is a state, and a later one covers at least what an
earlier one did); the delivery loop applies it (:meth:`StoreSync.settle`). A malformed or
forged ack is counted, logged once per episode, and deletes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson

from collector.config.base import MqttConfig
from collector.delivery.publisher import MqttStatus
from collector.delivery.storeack import BadAck, StoreAck, parse_ack
from collector.delivery.streams import Stream
from contract.ranges import intersect, subtract

log = logging.getLogger(__name__)

#: A resend asked for a message sent less than this long ago is not done: it is on its way.
RESEND_MIN_AGE_S = 2.0
#: How often a stream's marks are looked through for a lost tail.
TAIL_CHECK_S = 1.0
#: A resend of a range the collector does not hold is answered at most this often.
ANSWER_EVERY_S = 5.0

#: (stream, first, last) -> the seq ranges of that stream the buffer holds within.
Held = Callable[[str, int, int], list[tuple[int, int]]]


def gaps_message(
    collector: str, outbox: str, stream: str, **ranges: list[tuple[int, int]]
) -> bytes:
    """A ``{base}/gaps`` message (store.announce): seqs this outbox will never send."""
    body: dict[str, object] = {
        "schema": 2, "collector": collector, "outbox": outbox, "stream": stream,
    }  # fmt: skip
    body.update({kind: [list(r) for r in spans] for kind, spans in ranges.items() if spans})
    return orjson.dumps(body)


class StoreSync:
    def __init__(
        self,
        config: MqttConfig,
        outbox_id: Callable[[], str],
        streams: dict[str, Stream],
        status: MqttStatus,
        wake: Callable[[str], None],
        *,
        held: Held | None = None,
        jumps: Callable[[str], list[tuple[int, int]]] | None = None,
        answer: Callable[[str, list[tuple[int, int]], list[tuple[int, int]]], None] | None = None,
    ) -> None:
        self._config = config
        # What the buffer holds, the seq jumps it announced, and how to tell the store
        # (stream, never assigned, unavailable): for resends of what it does not hold.
        self._held = held
        self._jumps = jumps
        self._answer = answer
        self._answered: dict[tuple[str, int, int], float] = {}
        self._outbox_id = outbox_id
        self._streams = streams
        self.status = status
        self._wake = wake
        self._pending: dict[str, StoreAck] = {}
        self._done: dict[str, list[tuple[int, int]]] = {name: [] for name in streams}
        self._last_ack: dict[str, float] = {}  # monotonic
        self._tail_checked: dict[str, float] = {}
        self._bad_episode = False

    # paho's thread -> the loop (call_soon_threadsafe): never raises.
    def on_message(self, _topic: str, payload: bytes) -> None:
        last = {name: stream.last_assigned() for name, stream in self._streams.items()}
        try:
            ack = parse_ack(payload, self._outbox_id(), last)
        except BadAck as exc:
            reason = str(exc).split(":")[0].split(" ")[0] or "malformed"
            self.status.store_acks_refused[reason] += 1
            if not self._bad_episode:
                self._bad_episode = True
                log.warning(
                    "mqtt: ignored a store acknowledgement that is not one (%s); nothing "
                    "deleted (said once until a good one comes)",
                    exc,
                )
            return
        if ack is None:
            self.status.store_acks_other_outbox += 1
            return
        self._bad_episode = False
        self.status.store_acks += 1
        self.status.last_store_ack_ts = time.time()
        self._last_ack[ack.stream] = time.monotonic()
        self._pending[ack.stream] = ack
        self._wake(ack.stream)

    async def settle(self, name: str) -> bool:
        """Apply the stream's latest ack and look for a lost tail; True when marks were
        removed (the forwarder then starts over from the oldest row)."""
        stream = self._streams[name]
        marks = stream.marks
        now = time.monotonic()
        unmarked = False
        ack = self._pending.pop(name, None)
        if ack is not None:
            covered = ack.covered()
            fresh = subtract(covered, self._done[name])
            if fresh:
                await stream.store_acked(fresh)
            self._done[name] = covered
            marks.remove(covered)
            self._answer_unheld(name, ack.resend, now)
            for first, last in ack.resend:
                again = [
                    m for m in marks.overlapping(first, last) if m.sent_at < now - RESEND_MIN_AGE_S
                ]
                if again:
                    marks.discard(again)
                    self.status.store_resent += sum(m.items for m in again)
                    unmarked = True
        if now - self._tail_checked.get(name, 0.0) >= TAIL_CHECK_S:
            self._tail_checked[name] = now
            unmarked |= self._tail(name, now)
            self.status.store_waiting_since = self.waiting_since()
        self._show()
        return unmarked

    def _answer_unheld(self, name: str, resend: tuple[tuple[int, int], ...], now: float) -> None:
        """Asked for seqs the buffer no longer holds: say so, so the store stops waiting
        for them (never assigned: a jump it announced; unavailable: the rest)."""
        if self._held is None or self._answer is None:
            return
        unheld: list[tuple[int, int]] = []
        for first, last in resend:
            if now - self._answered.get((name, first, last), -ANSWER_EVERY_S) < ANSWER_EVERY_S:
                continue
            self._answered[(name, first, last)] = now
            unheld.extend(subtract([(first, last)], self._held(name, first, last)))
        if len(self._answered) > 10_000:
            self._answered.clear()
        if not unheld:
            return
        jumps = self._jumps(name) if self._jumps is not None else []
        never = intersect(unheld, jumps)
        gone = subtract(unheld, jumps)
        if gone:
            log.warning(
                "mqtt: the store asked again for %s seq %s that this buffer no longer holds "
                "(dropped at its cap, quarantined, or deleted on a broker's PUBACK); told it so",
                self._streams[name].name,
                ", ".join(f"{a}-{b}" for a, b in gone[:5]),
            )
        self._answer(name, never, gone)

    def _tail(self, name: str, now: float) -> bool:
        """Marks no ack covered, while acks keep coming: lost after the broker's PUBACK."""
        after = self._config.store_resend_after_s
        last_ack = self._last_ack.get(name)
        if last_ack is None or now - last_ack > after:
            return False  # the store is silent: it may be down; wait for it
        marks = self._streams[name].marks
        lost = marks.uncovered([], min(now - after, last_ack - after / 2))
        if not lost:
            return False
        marks.discard(lost)
        items = sum(m.items for m in lost)
        self.status.store_resent += items
        log.warning(
            "mqtt: the store has not acknowledged %d %s sent over %g s ago (seq %d-%d); "
            "sending them again",
            items,
            self._streams[name].name,
            after,
            lost[0].first,
            lost[-1].last,
        )
        return True

    def _show(self) -> None:
        readings, units = self._streams.get("readings"), self._streams.get("units")
        self.status.store_waiting_readings = readings.marks.items if readings else 0
        self.status.store_waiting_units = units.marks.items if units else 0
        deviations = self._streams.get("deviations")
        self.status.store_waiting_deviations = deviations.marks.items if deviations else 0
        if not (
            self.status.store_waiting_readings
            or self.status.store_waiting_units
            or self.status.store_waiting_deviations
        ):
            self.status.store_waiting_since = None

    def waiting_since(self) -> float | None:
        """When (epoch s) the oldest item waiting for the store was sent (None: none)."""
        oldest = min(
            (t for s in self._streams.values() if (t := s.marks.oldest_sent_at()) is not None),
            default=None,
        )
        return None if oldest is None else time.time() - (time.monotonic() - oldest)


def store_health(status: MqttStatus, config: MqttConfig, now: float) -> list[str]:
    """The /health problem of ``mqtt.delivery: store``: items wait for the store and no
    acknowledgement came for ``mqtt.store_ack_timeout_s``."""
    if config.delivery.value != "store":
        return []
    waiting = (
        status.store_waiting_readings + status.store_waiting_units + status.store_waiting_deviations
    )
    since = status.store_waiting_since
    last = status.last_store_ack_ts
    limit = config.store_ack_timeout_s
    if not waiting or since is None or now - since <= limit:
        return []
    if last is not None and now - last <= limit:
        return []
    heard = "never" if last is None else f"{now - last:.0f} s ago"
    return [
        f"waiting for the store: {waiting} item(s) the broker took are not acknowledged by "
        f"the central store (last store acknowledgement: {heard}; over "
        f"mqtt.store_ack_timeout_s = {limit:g}); they stay in the buffer"
    ]
