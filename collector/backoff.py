"""Exponential backoff with jitter, shared by device reconnects and broker reconnects."""

from __future__ import annotations

import random


class Backoff:
    """Delays double from ``minimum_s`` up to ``maximum_s``; each is drawn from the upper half
    of its range, so many collectors restarted together do not reconnect in lock-step."""

    def __init__(self, minimum_s: float, maximum_s: float, rng: random.Random | None = None):
        self.minimum_s, self.maximum_s = minimum_s, maximum_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.maximum_s, self.minimum_s * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return float(ceiling * self._rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        self._attempt = 0
