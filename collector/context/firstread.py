"""Nothing untagged at start-up: readings of a station wait for its first serial read.

At start-up the collector does not know which unit is at a station until it has read the
serial. Readings can come first: an OPC-UA subscription delivers every monitored item's
value at once, in batches of its own, while the serial is polled or in another batch; a
Modbus tester's temperatures are read in a request before the one holding the serial; and a
subscription's first values carry their source time, which may be older than the serial's.
Tagged by their own time, all of those would go out with no unit (or, after a restart, with
the unit stored before it, which may have left meanwhile), although a serial was shown.

So for every station whose serial is a polled device tag (it shows the unit for as long as it
is there; tagging.StationContext.first_read_stations), readings that arrive before the
station's first serial read of this run are **held**, in arrival order. The first read
releases them, tagged with what it shows, as of the read: a reading taken before it is tagged
as if taken at it (its own ``ts`` is kept in the message). What the first read shows is what
was at the station when the collector started; an empty serial releases them with no unit.

The wait is bounded: a held reading waits at most ``tagging.first_serial_wait_s`` (from the
station's first held reading: a slow connect does not eat into it), and
``tagging.first_serial_max_readings`` bounds all stations together (then the station whose
readings have waited longest goes first). A station none of whose devices delivers anything
costs nothing while it waits; only its devices' readings take the slower path. At a bound
the station's held readings go out tagged by their own time (no unit, or the stored one),
counted as ``released_untagged`` and logged once per station; the station then waits no
longer. A scanner, an instrument in listen mode and the HTTP endpoint say nothing until a
unit comes: their stations never hold. Counted on /status, /health and /metrics: held,
released (by the first read) and released untagged (at a bound).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from collector.context.tagging import StationContext
from contract.records import Context, Reading

log = logging.getLogger(__name__)

#: Hands readings and their contexts on (the buffer writer's submit).
Submit = Callable[[str, Sequence[Reading], list[Context]], None]


@dataclass(frozen=True, slots=True)
class HoldLimits:
    wait_s: float = 30.0
    max_readings: int = 50_000


class FirstReadHold:
    """Between the pollers and the buffer writer: tags what it can at once, holds what waits
    for a first serial read (see the module's docstring)."""

    def __init__(
        self,
        context: StationContext,
        submit: Submit,
        limits: HoldLimits,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._context = context
        self._submit = submit
        self.limits = limits
        self._monotonic = monotonic
        #: Stations still waiting for their first serial read.
        self._waiting = context.first_read_stations()
        #: Stations whose wait is over (read, or released at a bound).
        self._done: set[str] = set()
        #: station -> its held (device, reading) in arrival order
        self._held: dict[str, list[tuple[str, Reading]]] = {}
        #: station -> when its first held reading came (monotonic): how long it has waited
        self._since: dict[str, float] = {}
        #: Devices whose readings may concern a waiting station (the others pass at once).
        self._devices: set[str] = set()
        self._find_devices()
        self.holding = 0
        self.held_total = 0
        self.released_total = 0
        self.released_untagged_total = 0
        self.untagged_stations: list[str] = []

    def sink(self, device: str, readings: Sequence[Reading]) -> None:
        """A device's readings, as a poller hands them over."""
        context = self._context
        if device not in self._devices:  # the usual case after the first seconds
            self._submit(device, readings, context.tag(device, readings))
            return
        context.apply_signals(device, readings)
        stations = context.stations_of(device, readings)
        waiting = self._waiting
        if any(s in waiting for s in stations):
            now = self._monotonic()
            passing: list[Reading] = []
            for station, reading in zip(stations, readings, strict=True):
                if station is None or station not in waiting:
                    passing.append(reading)
                    continue
                held = self._held.get(station)
                if held is None:
                    held = self._held[station] = []
                    self._since[station] = now
                held.append((device, reading))
                self.holding += 1
                self.held_total += 1
            readings = passing
        for station in [s for s in waiting if context.first_read_ts(s) is not None]:
            self._release(station, untagged=None)
        if readings:
            self._submit(device, readings, context.contexts(device, readings))
        while self.holding > self.limits.max_readings:
            oldest = min(self._since, key=self._since.__getitem__)
            self._release(
                oldest, untagged=f"tagging.first_serial_max_readings = {self.limits.max_readings}"
            )

    def tick(self) -> None:
        """Release the stations whose first held reading has waited ``wait_s`` (called twice
        a second by the service, whether or not readings come)."""
        if not self._since:
            return
        now = self._monotonic()
        for station, since in list(self._since.items()):
            if now - since >= self.limits.wait_s:
                self._release(
                    station, untagged=f"tagging.first_serial_wait_s = {self.limits.wait_s:g}"
                )

    def release_all(self, why: str) -> None:
        """Release everything held, tagged by its own time (the service stops)."""
        for station in list(self._held):
            self._release(station, untagged=why)

    def set_context(self, context: StationContext) -> None:
        """A new context after a config reload: stations read already stay read; held
        readings wait on in it (those of a station it no longer has go out first)."""
        for station in [s for s in self._held if s not in context.first_read_stations()]:
            self._release(station, untagged="the station was removed by a config reload")
        self._context = context
        self._waiting = context.first_read_stations() - self._done
        self._find_devices()

    def _find_devices(self) -> None:
        waiting = self._waiting
        self._devices = {
            device
            for device, stations in self._context.stations_by_device().items()
            if stations & waiting
        }

    def _release(self, station: str, untagged: str | None) -> None:
        """The station's wait is over: its first serial was read (``untagged`` None: held
        readings tagged as of that read), or a bound was reached (``untagged`` names it)."""
        self._waiting.discard(station)
        self._done.add(station)
        self._find_devices()
        self._since.pop(station, None)
        held = self._held.pop(station, [])
        if not held:
            return
        self.holding -= len(held)
        floor = None if untagged is not None else self._context.first_read_ts(station)
        if untagged is None:
            self.released_total += len(held)
        else:
            self.released_untagged_total += len(held)
            self.untagged_stations.append(station)
            log.warning(
                "station %s: %d reading(s) held for the first serial read released tagged by "
                "their own time (no unit unless one was stored): %s reached",
                station,
                len(held),
                untagged,
            )
        # One submit per run of one device's readings, in arrival order.
        start = 0
        while start < len(held):
            device = held[start][0]
            end = start + 1
            while end < len(held) and held[end][0] == device:
                end += 1
            batch = [r for _, r in held[start:end]]
            if floor is None:
                contexts = self._context.contexts(device, batch)
            else:
                # Taken before the first read, tagged as of it: what it showed was there.
                contexts = self._context.contexts(
                    device, [r if r.ts >= floor else r._replace(ts=floor) for r in batch]
                )
            self._submit(device, batch, contexts)
            start = end

    def status(self) -> dict[str, Any]:
        return {
            "waiting_stations": sorted(self._waiting),
            "holding": self.holding,
            "held_total": self.held_total,
            "released_total": self.released_total,
            "released_untagged_total": self.released_untagged_total,
            "wait_s": self.limits.wait_s,
            "max_readings": self.limits.max_readings,
        }
