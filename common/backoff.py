"""Exponential backoff with jitter, shared by device reconnects and broker reconnects, and the
reachability probe that cuts a long backoff short once the peer is back.

A full reconnect (an MQTT CONNECT with TLS, an OPC-UA secure channel and session) is what a
dead peer must not be hammered with, so it backs off up to ``reconnect_max_ms``. But waiting
that long after the peer is back is what a line notices (issue 14: 10-20 s of no data after a
broker or server restart). So while the reconnect backs off, a cheap check runs on a short
period (:data:`PROBE_PERIOD_S`): a TCP connect to the peer's port, closed at once. When a probe
that failed succeeds, the wait ends and the reconnect runs at once. Only that edge counts: a
peer that accepts TCP but refuses the session (a bad password, an untrusted certificate) is
reachable all along and keeps the plain backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

#: How often a peer that is down is probed while the reconnect backs off.
PROBE_PERIOD_S = 0.5
#: How long one probe may take.
PROBE_TIMEOUT_S = 1.0

Probe = Callable[[], Awaitable[bool]]


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


async def tcp_reachable(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` can be opened (it is closed at once, before
    a byte is sent: the peer sees a connection that ends, nothing it has to parse)."""
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    return True


async def wait_or_back(
    delay_s: float,
    probe: Probe | None,
    period_s: float = PROBE_PERIOD_S,
    stop: asyncio.Event | None = None,
    down: bool = False,
) -> bool:
    """Wait ``delay_s``, or less: until a ``probe`` that failed succeeds (the peer is back) or
    ``stop`` is set. Returns True when the probe ended the wait. ``down``: the caller has just
    seen the peer down (its connection was refused), so the first probe that succeeds ends the
    wait: a peer back before this wait's first probe would otherwise wait the whole delay."""
    loop = asyncio.get_running_loop()
    until = loop.time() + delay_s
    seen_down = down
    while True:
        left = until - loop.time()
        if left <= 0 or (stop is not None and stop.is_set()):
            return False
        step = left if probe is None else min(left, period_s)
        if stop is None:
            await asyncio.sleep(step)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), step)
            if stop.is_set():
                return False
        if probe is None or loop.time() >= until:
            continue
        if await probe():
            if seen_down:
                return True
        else:
            seen_down = True
