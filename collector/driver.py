"""The driver contract: connect, read, close. Nothing else.

Scheduling, timeouts around ``read``, reconnect with backoff, statistics, buffering and
forwarding all live in the core (collector.poller and friends), never in a driver.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from collector.reading import Reading


class Driver(Protocol):
    """One configured device.

    - ``connect`` opens the link; raises :class:`collector.errors.NotConnectedError` on failure.
    - ``read`` performs one poll and returns one reading per configured tag. A failed request
      yields bad-quality readings for the tags it covered; a lost link raises
      :class:`~collector.errors.NotConnectedError` and the core reconnects with backoff.
    - ``close`` releases the link; it must not raise.
    - ``describe`` gives a one-line summary for ``collector check`` (e.g. the request plan).
    - ``max_read_seconds`` bounds one ``connect`` or ``read``; the core enforces it.
    - ``details`` is what a technician needs on /status beyond the core's counters (the
      request plan, recent raw lines); plain JSON values.
    """

    @property
    def max_read_seconds(self) -> float: ...

    async def connect(self) -> None: ...

    async def read(self) -> Sequence[Reading]: ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...

    def details(self) -> dict[str, Any]: ...


@runtime_checkable
class Reachable(Protocol):
    """A driver whose peer listens on TCP: while it is down, the poller probes that address
    on a short period and reconnects as soon as it answers (collector.backoff), instead of
    waiting out a long backoff."""

    def peer_address(self) -> tuple[str, int]: ...


@runtime_checkable
class Pushes(Protocol):
    """A driver that receives data between polls (OPC-UA subscriptions): it calls the
    callback given to ``set_on_change`` when data arrived, and the poller then takes it with
    ``take_changes`` at once instead of at the next poll."""

    def set_on_change(self, callback: Callable[[], None]) -> None: ...

    def take_changes(self) -> Sequence[Reading]: ...


@runtime_checkable
class CountsInputErrors(Protocol):
    """A driver that also meets input no reading stands for (a serial line that matches no
    pattern, or is too long, or did not fit the pending bound): the core adds these counts,
    by error code, to the device's error counts after each read (/status, /metrics)."""

    def take_input_errors(self) -> Counter[str]:
        """The counts since the last call (and reset them)."""
        ...
