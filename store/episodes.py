"""At most one log line per key (a collector; a collector and a quarantine kind) a minute.

A flood of bad input (a broken or hostile publisher: 100,000 forged metadata messages) must
not become a flood of log lines. The first event of a key is logged at once; the next ones
are gathered until ``interval_s`` has passed since that key's last line, then one line says
how many came and since when: with the next event, or at :meth:`Episodes.due` called by the
service's idle tick, so the count of a flood that stopped is still said. The counters on
/health and /metrics have every event; the log has the episodes. One helper times every such
log of the store (store.parking's ParkLog, store.quarantine's QuarantineLog); what a line
says is theirs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")

#: Keys whose last line is remembered; past it the ones older than the interval are
#: forgotten (a new event of such a key is logged at once anyway).
_KEYS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Due(Generic[K, P]):
    """One line to log now: what was gathered for ``key``."""

    key: K
    pending: P
    #: Wall-clock time (time.time()) of the first event gathered.
    since: float
    #: Seconds since the key's last line; None for its first line.
    elapsed_s: float | None


class Episodes(Generic[K, P]):
    """Gathers events per key (``pending(key)`` returns the key's accumulator, made by
    ``make``) and says which keys may have their line now (:meth:`due`)."""

    def __init__(
        self,
        make: Callable[[], P],
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.interval_s = interval_s
        self._make = make
        self._clock = clock
        self._wall = wall
        self._pending: dict[K, tuple[P, float]] = {}
        self._last: dict[K, float] = {}

    def pending(self, key: K) -> P:
        """The accumulator of ``key``'s events since its last line (made on first use)."""
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = (self._make(), self._wall())
        return entry[0]

    def due(self) -> list[Due[K, P]]:
        """The keys with gathered events whose last line is ``interval_s`` old (or that never
        had one), in the order their events began; they count as logged now."""
        now = self._clock()
        out: list[Due[K, P]] = []
        for key in list(self._pending):
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                continue
            pending, since = self._pending.pop(key)
            out.append(Due(key, pending, since, None if last is None else now - last))
            self._last[key] = now
        if len(self._last) > _KEYS_KEPT:
            self._last = {
                k: t
                for k, t in self._last.items()
                if now - t < self.interval_s or k in self._pending
            }
        return out
