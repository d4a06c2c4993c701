"""One task per device: fixed-rate schedule, bounded reads, reconnect with backoff, statistics.

A dead device only ever waits in its own task, so it never delays another device's schedule.
While it is down, a device with a TCP address is probed on a short period and reconnected as
soon as it answers again (common.backoff), whatever the backoff has grown to. Data a driver
receives between polls (OPC-UA subscriptions, drivers.base.Pushes) is handed over as it
arrives, not at the next poll.
Polls are planned on a fixed grid (start + phase + k * interval): the next poll is scheduled
from the planned time, not from when the last one ended; slots missed because a poll overran
are skipped and counted, never bunched up. Devices get phases (:func:`phase_s`) in small
groups, so that many devices with the same interval do not all fall due at the same instant
and queue behind each other on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.backoff import Backoff, Probe, tcp_reachable, wait_or_back
from common.histogram import Histogram
from contract.codes import ErrorCode
from contract.records import Quality, Reading
from drivers.base import CountsInputErrors, DeviceError, Driver, Pushes, Reachable

log = logging.getLogger(__name__)


@dataclass
class DeviceStatus:
    """What /status shows for one device. Mutated only by its poller."""

    name: str
    protocol: str
    station: str | None
    connected: bool = False
    polls: int = 0
    good_polls: int = 0
    last_poll_ts: float | None = None
    last_good_poll_ts: float | None = None
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_error_ts: float | None = None
    skipped_polls: int = 0
    connects: int = 0
    #: When ``connected`` last changed (at first: when the poller was made), for "since when".
    state_since_ts: float = field(default_factory=time.time)
    #: Each tag's last reading (good or bad), so a technician sees every value and its quality.
    #: Bounded by the device's tags; replaced in place, never accumulated.
    last_readings: dict[str, Reading] = field(default_factory=dict)
    #: How late the last polls started against their schedule (seconds), for /status.
    start_late_s: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    #: How long polls took (seconds), for /metrics.
    poll_seconds: Histogram = field(default_factory=Histogram)
    # Codes already logged in the current bad episode: log once, not every poll.
    _logged_codes: set[str] = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "station": self.station,
            "connected": self.connected,
            "polls": self.polls,
            "good_polls": self.good_polls,
            "last_poll_ts": self.last_poll_ts,
            "last_good_poll_ts": self.last_good_poll_ts,
            "errors": dict(self.errors),
            "last_error": self.last_error,
            "last_error_ts": self.last_error_ts,
            "skipped_polls": self.skipped_polls,
            "connects": self.connects,
            "state_since_ts": self.state_since_ts,
            "poll_start_late_ms": _percentiles_ms(self.start_late_s),
            # Unpacked rather than read by name, and the enums left as they are (they are
            # strings): a big line has thousands of tags, and this runs every second while a
            # live page is open. NaN and infinities become text: JSON has no such numbers.
            "tags": {
                tag: {
                    "value": value
                    if type(value) is not float or math.isfinite(value)
                    else str(value),
                    "unit": unit,
                    "quality": quality,
                    "error": error,
                    "ts": ts,
                }
                for ts, tag, value, unit, quality, error in self.last_readings.values()
            },
        }


def _percentiles_ms(samples: Iterable[float]) -> dict[str, float] | None:
    """p50/p99/max of the recent samples, in milliseconds (None before the first poll)."""
    ordered = sorted(samples)
    if not ordered:
        return None

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": at(1.0), "samples": len(ordered)}


Sink = Callable[[str, Sequence[Reading]], None]

# Phases are spread over at most this much: enough to take the bursts apart, and a slow device
# does not wait long for its first poll.
MAX_PHASE_S = 1.0
# Devices share a phase in groups of this many. One wake-up of the event loop then starts a
# group's polls together, and waking up is much of what a poll costs (a tenth of a
# millisecond or more on a small PC); a group's last poll starts about a millisecond after
# its first. Spreading every device apart costs a third more CPU; one burst of 50 devices
# delays the last by several milliseconds (docs/performance.md).
PHASE_GROUP = 10


def phase_s(index: int, devices: int, interval_s: float) -> float:
    """The offset of device ``index`` of ``devices`` into its poll grid: its group's, the
    groups evenly spread."""
    groups = -(-devices // PHASE_GROUP)
    return min(interval_s, MAX_PHASE_S) * (index // PHASE_GROUP) / max(groups, 1)


def _nothing() -> None:
    pass


_tag = operator.attrgetter("tag")
_quality = operator.attrgetter("quality")


class Poller:
    def __init__(
        self,
        driver: Driver,
        status: DeviceStatus,
        interval_s: float,
        sink: Sink,
        backoff: Backoff,
        *,
        phase_s: float = 0.0,
        can_take: Callable[[], bool] = lambda: True,
        under_way: tuple[Callable[[], None], Callable[[], None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._driver = driver
        self._phase = phase_s
        self._can_take = can_take
        # Told when a poll starts and when it has ended (the buffer writer commits the polls
        # of a phase group together: collector.buffer.writer).
        self._started, self._ended = under_way or (_nothing, _nothing)
        self.status = status
        self._interval = interval_s
        self._sink = sink
        self._backoff = backoff
        self._clock = clock
        self._probe: Probe | None = None
        if isinstance(driver, Reachable):
            host, port = driver.peer_address()
            self._probe = lambda: tcp_reachable(host, port)
        # Set by a driver that received data between polls.
        self._changed: asyncio.Event | None = None
        if isinstance(driver, Pushes):
            self._changed = asyncio.Event()
            driver.set_on_change(self._changed.set)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            next_at = loop.time() + self._phase
            first = True
            while True:
                if not self.status.connected:
                    # After any failure (connect, or a read that found the device gone),
                    # wait; the delay grows until a poll succeeds. Reconnecting can be instant
                    # (a shared RS-485 bus), so success of connect proves nothing. A dead peer
                    # is probed meanwhile: once it is back, the wait ends.
                    if not first and await wait_or_back(self._backoff.next_delay(), self._probe):
                        log.info("device %s: reachable again; reconnecting", self.status.name)
                    first = False
                    if not await self._connect():
                        continue
                    # Re-join the grid at the next slot that is not in the past.
                    now = loop.time()
                    if next_at < now:
                        next_at += -((next_at - now) // self._interval) * self._interval
                await self._wait_for(next_at)
                self.status.start_late_s.append(max(0.0, loop.time() - next_at))
                if self._can_take():
                    self._started()
                    try:
                        await self._poll_once()
                    finally:
                        self._ended()
                else:
                    # More offered than the buffer can take (it says so, once): a reading not
                    # read is better than one read and then dropped.
                    self.status.skipped_polls += 1
                next_at += self._interval
                now = loop.time()
                if next_at < now:
                    missed = int((now - next_at) // self._interval) + 1
                    self.status.skipped_polls += missed
                    next_at += missed * self._interval
        finally:
            await self._driver.close()

    async def _wait_for(self, moment: float) -> None:
        """Sleep until ``moment`` (loop time), handing over pushed data as it arrives."""
        loop = asyncio.get_running_loop()
        changed = self._changed
        while (delay := moment - loop.time()) > 0:
            if changed is None:
                await asyncio.sleep(delay)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), delay)
            if changed.is_set():
                changed.clear()
                self._hand_over()

    def _hand_over(self) -> None:
        """Pass on what the driver received since the last poll (not counted as a poll)."""
        assert isinstance(self._driver, Pushes)
        readings = self._driver.take_changes()
        if not readings:
            return
        self.status.last_readings.update(zip(map(_tag, readings), readings, strict=True))
        self._sink(self.status.name, readings)

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self._driver.max_read_seconds):
                await self._driver.connect()
        except Exception as exc:
            self._down(exc, "connect timed out")
            await self._driver.close()
            return False
        self.status.connected = True
        self.status.state_since_ts = self._clock()
        if self.status.connects:
            log.warning("device %s: connected again", self.status.name)
        else:
            log.info("device %s: connected", self.status.name)
        self.status.connects += 1
        self.status._logged_codes.clear()
        return True

    async def _poll_once(self) -> None:
        status = self.status
        status.polls += 1
        status.last_poll_ts = self._clock()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._driver.max_read_seconds):
                readings = await self._driver.read()
        except Exception as exc:
            status.poll_seconds.observe(time.perf_counter() - started)
            self._down(exc, "read timed out")
            await self._driver.close()
            return
        status.poll_seconds.observe(time.perf_counter() - started)
        if isinstance(self._driver, CountsInputErrors):  # e.g. serial lines matching nothing
            status.errors.update(self._driver.take_input_errors())
        # In C, not a Python loop per reading: 7 µs for 100 tags instead of 22 (issue 28).
        status.last_readings.update(zip(map(_tag, readings), readings, strict=True))
        bad = (
            Counter(r.error.value for r in readings if r.quality is Quality.BAD and r.error)
            if Quality.BAD in map(_quality, readings)
            else None
        )
        if bad:
            status.errors.update(bad)
            for code in bad.keys() - status._logged_codes:
                log.warning(
                    "device %s: %d tag(s) read with error %s (logged once until a good poll)",
                    status.name,
                    bad[code],
                    code,
                )
            status._logged_codes.update(bad)
            status.last_error = ", ".join(sorted(bad))
            status.last_error_ts = status.last_poll_ts
        else:
            if status._logged_codes:
                log.info("device %s: all tags good again", status.name)
                status._logged_codes.clear()
            self._backoff.reset()
            status.good_polls += 1
            status.last_good_poll_ts = status.last_poll_ts
        self._sink(status.name, readings)

    def _down(self, exc: Exception, timeout_text: str) -> None:
        if isinstance(exc, DeviceError):
            code, message = exc.code, str(exc)
        elif isinstance(exc, TimeoutError):
            code, message = ErrorCode.TIMEOUT, timeout_text
        else:
            code, message = ErrorCode.INTERNAL, repr(exc)
        status = self.status
        status.errors[code.value] += 1
        status.last_error = f"{code.value}: {message}"
        status.last_error_ts = self._clock()
        if status.connected or code.value not in status._logged_codes:
            # Log the state change (or a new kind of failure), not every retry.
            log.error(
                "device %s: down (%s: %s); reconnecting with backoff",
                status.name,
                code.value,
                message,
                exc_info=exc if code is ErrorCode.INTERNAL else None,
            )
            status._logged_codes = {code.value}
        if status.connected:
            status.state_since_ts = self._clock()
        status.connected = False
