"""Station context: which unit, operation and attempt each reading belongs to.

Each station has an operation and, at any moment, a current unit or none. Signals come from
device tags named in the station's config (or, for the serial, from POST /stations/{name}/unit):

- **serial**: a new serial starts a unit (ending the one before, ``next_serial``); an empty one
  ends it (``serial_cleared``). The same serial again while its unit is open changes nothing;
  after that unit ended, it starts the next attempt (a retest).
- **verdict**: the tag *changing* to a value that maps to a verdict gives the unit at that
  moment its verdict, and ends it when ``unit_end`` is ``verdict``. The first value seen after
  start-up is a baseline, not a change: a tester still showing the last unit's result must not
  end the next one.
- **cycle_complete**: the tag turning true ends the unit (``unit_end: cycle_complete``), with
  the verdict tag's value at that moment.
- **operation**: for a station that runs several operations, the tag names the current one; a
  change ends the open unit and starts the same serial at the new operation.
- **timeout**: a unit open for ``unit_timeout_s`` ends with ``timeout``.

**Time decides, not arrival.** Pollers deliver concurrently, so a tester poll read just before
a scan can arrive just after it. Each unit therefore has an interval [start, end] on the
readings' own clock (``Reading.ts``), and a reading belongs to the unit whose interval holds its
``ts``; a reading read before the serial changed never gets the new serial. A unit's record is
published only once late readings can no longer arrive (``settle_s`` after it ended), so its
reading count and key characteristics include them.

Device tags that are polled (Modbus, a queried instrument) repeat their value every poll, so
for them a signal is a *change*; readings of event sources (a barcode scanner, an instrument in
listen mode) are each a signal: scanning the same label after its unit ended is a retest.

State that must survive a restart (the open and the ending units, the last signal values, the
attempt counters) is handed to the buffer with :meth:`take_changes` and stored in the same
SQLite transaction as the readings it tagged, so the two never disagree after a crash.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from collector.config import DeviceConfig, StationConfig, UnitEnd, Verdict, verdict_key
from collector.reading import Context, ContextChanges, Quality, Reading, UnitRecord, Value
from collector.serials import accepted

log = logging.getLogger(__name__)

# Units kept per station to tag late readings (their intervals); older ones are long settled.
HISTORY = 32
# Signals of one poll are applied in this order: the operation and the serial first (a unit
# must exist before its verdict), the failure code before the verdict that reads it.
_SIGNAL_ORDER = ("operation", "serial", "failure_code", "verdict", "cycle_complete")
_MISSING = object()


def _text(value: Value) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def map_verdict(station: StationConfig, value: Value) -> Verdict | None:
    """The verdict a tag value means, or None for "no verdict" (e.g. 0 while testing)."""
    if value is None or station.verdict is None:
        return None
    table = station.verdict.map
    if table is not None:
        return table.get(verdict_key(value))
    if isinstance(value, bool):
        return Verdict.PASS if value else Verdict.FAIL
    if isinstance(value, str):
        try:
            verdict = Verdict(value.strip().lower())
        except ValueError:
            return None
        return None if verdict is Verdict.INCOMPLETE else verdict
    return None


@dataclass
class _Unit:
    serial: str
    operation: str
    attempt: int
    start_ts: float
    end_ts: float | None = None
    ended_by: str | None = None
    verdict: Verdict | None = None
    failure_code: Value = None
    readings: int = 0
    #: key characteristic -> [last, min, max]
    characteristics: dict[str, list[float]] = field(default_factory=dict)
    emit_at: float | None = None
    emitted: bool = False

    def holds(self, ts: float) -> bool:
        return self.start_ts <= ts and (self.end_ts is None or ts <= self.end_ts)

    def context(self, station: str) -> Context:
        return Context(station, self.serial, self.operation, self.attempt)

    def characteristic(self, reading: Reading) -> None:
        """Take a key characteristic's value into its last/min/max (good numbers only)."""
        name, value = reading.tag, reading.value
        if reading.quality is not Quality.GOOD:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return
        stats = self.characteristics.get(name)
        if stats is None:
            self.characteristics[name] = [value, value, value]
        else:
            stats[0], stats[1], stats[2] = value, min(stats[1], value), max(stats[2], value)


class _Station:
    def __init__(self, config: StationConfig, settle_s: float) -> None:
        self.config = config
        self.settle_s = settle_s
        self.operation = config.operation
        self.units: deque[_Unit] = deque(maxlen=HISTORY)
        #: The last good value of each signal tag, for change detection.
        self.last: dict[str, Value] = {}

    @property
    def current(self) -> _Unit | None:
        if self.units and self.units[-1].end_ts is None:
            return self.units[-1]
        return None

    def context_without_unit(self) -> Context:
        return Context(self.config.name, None, self.operation)

    def unit_at(self, ts: float) -> _Unit | None:
        for unit in reversed(self.units):
            if unit.start_ts <= ts:
                return unit if unit.holds(ts) else None
        return None

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "operation": self.operation,
                "last": self.last,
                "units": [asdict(u) for u in self.units if not u.emitted],
            }
        )

    def restore(self, blob: bytes) -> None:
        state = orjson.loads(blob)
        self.operation = state["operation"]
        self.last = state["last"]
        for raw in state["units"]:
            unit = _Unit(**raw)
            if unit.verdict is not None:
                unit.verdict = Verdict(unit.verdict)
            self.units.append(unit)


class StationContext:
    """Tags readings with their unit and turns unit lifecycles into unit records."""

    def __init__(
        self,
        stations: Sequence[StationConfig],
        devices: Sequence[DeviceConfig],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._station_of = {d.name: d.station for d in devices}
        self._events = {d.name for d in devices if d.emits_events}
        self._stations: dict[str, _Station] = {}
        # device -> tag -> the signals it carries, and device -> its key characteristic tags
        # (most devices have neither: no search per reading).
        self._signal_tags: dict[str, dict[str, list[str]]] = {}
        self._characteristics: dict[str, set[str]] = {}
        self._no_station = Context(None, None, None)
        for station in stations:
            timeouts = [d.timeout_ms for d in devices if d.station == station.name]
            # A poll's readings reach us at most about a poll later than they were read.
            settle = 1.0 + 2 * max(timeouts, default=1000) / 1000
            self._stations[station.name] = _Station(station, settle)
            for kind in _SIGNAL_ORDER:
                ref = getattr(
                    station, f"{kind}_source" if kind in ("operation", "serial") else kind
                )
                if ref is not None and ref != "http":
                    tags = self._signal_tags.setdefault(ref.device, {})
                    tags.setdefault(ref.tag, []).append(kind)
            for ref in station.key_characteristics:
                self._characteristics.setdefault(ref.device, set()).add(ref.tag)
        self._attempts: dict[tuple[str, str], int] = {}
        self._changed_attempts: dict[tuple[str, str], int] = {}
        self._dirty: set[str] = set()
        self._finished: list[UnitRecord] = []

    # ------------------------------------------------------------------ restart

    def restore(self, stations: dict[str, bytes], attempts: dict[tuple[str, str], int]) -> None:
        """Take back the state stored by the last run (before any reading is tagged)."""
        self._attempts.update(attempts)
        for name, blob in stations.items():
            station = self._stations.get(name)
            if station is None:
                continue  # a station removed from the config; its stored state is moot
            try:
                station.restore(blob)
            except (ValueError, TypeError, KeyError) as exc:
                # A state this version cannot read: start the station empty rather than not
                # start at all; its readings flow, with no unit until the next serial.
                log.warning("station %s: stored state not usable (%r); starting empty", name, exc)
                station.units.clear()
                continue
            current = station.current
            if current is not None:
                log.info(
                    "station %s: unit %s still at the station from before the restart "
                    "(operation %s, attempt %d)",
                    name,
                    current.serial,
                    current.operation,
                    current.attempt,
                )

    # ------------------------------------------------------------------ tagging

    def tag(self, device: str, readings: Sequence[Reading]) -> list[Context]:
        """The context of each reading (``result[i]`` for ``readings[i]``), after applying the
        signals among them. Readings read at the same moment share one Context object: the
        work here is per distinct ``ts`` (one per request for a polled device), not per
        reading."""
        name = self._station_of.get(device)
        if name is None:
            return [self._no_station] * len(readings)
        station = self._stations[name]
        kinds = self._signal_tags.get(device)
        signals = (
            [
                (r.ts, _SIGNAL_ORDER.index(kind), kind, r)
                for r in readings
                if r.quality is Quality.GOOD
                for kind in kinds.get(r.tag, ())
            ]
            if kinds
            else None
        )
        if signals:
            event = device in self._events
            for ts, _, kind, reading in sorted(signals, key=lambda s: s[:2]):
                self._signal(station, kind, ts, reading.value, event)
        characteristics = self._characteristics.get(device)
        contexts: list[Context] = []
        counted = False
        start, count = 0, len(readings)
        while start < count:
            # A run of readings with one ts: one unit look-up, one Context for all of them.
            ts = readings[start].ts
            end = start + 1
            while end < count and readings[end].ts == ts:
                end += 1
            unit = station.unit_at(ts)
            if unit is None:
                contexts += [station.context_without_unit()] * (end - start)
            else:
                contexts += [unit.context(name)] * (end - start)
                if not unit.emitted:
                    unit.readings += end - start
                    if characteristics:
                        for reading in readings[start:end]:
                            if reading.tag in characteristics:
                                unit.characteristic(reading)
                    counted = True
            start = end
        if counted:
            self._dirty.add(name)
        return contexts

    def set_serial(self, station: str, serial: str | None, ts: float | None = None) -> None:
        """A serial from outside the devices (the HTTP endpoint): always an event."""
        self._signal(
            self._stations[station], "serial", self._clock() if ts is None else ts, serial, True
        )

    def _signal(self, station: _Station, kind: str, ts: float, value: Value, event: bool) -> None:
        previous = station.last.get(kind, _MISSING)
        station.last[kind] = value
        self._dirty.add(station.config.name)
        if not event and previous == value:
            return
        first = previous is _MISSING and not event
        if kind == "serial" and accepted(value, station.config.name):
            self._on_serial(station, ts, _text(value))
        elif kind == "operation":
            self._on_operation(station, ts, _text(value) or station.config.operation)
        elif kind == "verdict" and not first:
            self._on_verdict(station, ts, map_verdict(station.config, value))
        elif kind == "cycle_complete" and not first and value and not previous:
            self._on_cycle_complete(station, ts)
        elif kind == "failure_code":
            self._on_failure_code(station, ts, value)

    def _on_serial(self, station: _Station, ts: float, serial: str | None) -> None:
        current = station.current
        if current is not None and current.serial == serial:
            return
        if current is not None:
            self._end(station, current, ts, "next_serial" if serial else "serial_cleared")
        if serial is not None:
            self._start(station, serial, ts)

    def _on_operation(self, station: _Station, ts: float, operation: str) -> None:
        if operation == station.operation:
            return
        log.info(
            "station %s: operation %s -> %s", station.config.name, station.operation, operation
        )
        station.operation = operation
        current = station.current
        if current is not None:
            self._end(station, current, ts, "operation_changed")
            self._start(station, current.serial, ts)

    def _on_verdict(self, station: _Station, ts: float, verdict: Verdict | None) -> None:
        if verdict is None:
            return
        unit = station.unit_at(ts)
        if unit is None or unit.emitted:
            log.debug(
                "station %s: verdict %s with no unit at the station", station.config.name, verdict
            )
            return
        self._give_verdict(station, unit, verdict)
        if unit is station.current and station.config.end is UnitEnd.VERDICT:
            self._end(station, unit, ts, "verdict")

    def _on_cycle_complete(self, station: _Station, ts: float) -> None:
        current = station.current
        if current is None or station.config.end is not UnitEnd.CYCLE_COMPLETE:
            return
        # The verdict tag's value now decides, even if it did not change since the last unit.
        verdict = map_verdict(station.config, station.last.get("verdict"))
        if verdict is not None:
            self._give_verdict(station, current, verdict)
        self._end(station, current, ts, "cycle_complete")

    def _on_failure_code(self, station: _Station, ts: float, code: Value) -> None:
        # A tester may write the code a moment after the verdict: it still counts for the
        # unit that just failed, as long as its record is not out yet.
        for unit in reversed(station.units):
            if unit.start_ts > ts or unit.emitted:
                continue
            if unit.verdict not in (None, Verdict.PASS) and unit.failure_code in (None, 0, ""):
                unit.failure_code = code
            return

    def _give_verdict(self, station: _Station, unit: _Unit, verdict: Verdict) -> None:
        unit.verdict = verdict
        unit.failure_code = None if verdict is Verdict.PASS else station.last.get("failure_code")

    def _start(self, station: _Station, serial: str, ts: float) -> None:
        key = (station.operation, serial)
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = self._changed_attempts[key] = attempt
        station.units.append(_Unit(serial, station.operation, attempt, ts))
        log.info(
            "station %s: unit %s arrived (operation %s, attempt %d)",
            station.config.name,
            serial,
            station.operation,
            attempt,
        )

    def _end(self, station: _Station, unit: _Unit, ts: float, why: str) -> None:
        unit.end_ts, unit.ended_by = max(ts, unit.start_ts), why
        unit.emit_at = unit.end_ts + station.settle_s
        log.info(
            "station %s: unit %s ended by %s after %.1f s, verdict %s",
            station.config.name,
            unit.serial,
            why,
            unit.end_ts - unit.start_ts,
            unit.verdict or "none yet",
        )

    # ------------------------------------------------------------------ time

    def tick(self, now: float | None = None, final: bool = False) -> bool:
        """End units that timed out and finish units whose late readings are in (``final``:
        all ended units, as no reading can come any more once polling stopped). Returns
        whether anything changed (the caller then has the buffer store it)."""
        now = self._clock() if now is None else now
        changed = False
        for station in self._stations.values():
            current = station.current
            if current is not None and now - current.start_ts >= station.config.unit_timeout_s:
                self._end(station, current, now, "timeout")
                changed = True
            for unit in station.units:
                if unit.emit_at is not None and not unit.emitted and (final or unit.emit_at <= now):
                    unit.emitted = True
                    self._finished.append(self._record(station, unit))
                    changed = True
            if changed:
                self._dirty.add(station.config.name)
        return changed

    def _record(self, station: _Station, unit: _Unit) -> UnitRecord:
        assert unit.end_ts is not None
        assert unit.ended_by is not None
        return UnitRecord(
            serial=unit.serial,
            station=station.config.name,
            operation=unit.operation,
            attempt=unit.attempt,
            start_ts=unit.start_ts,
            end_ts=unit.end_ts,
            ended_by=unit.ended_by,
            verdict=(unit.verdict or Verdict.INCOMPLETE).value,
            failure_code=unit.failure_code,
            readings=unit.readings,
            characteristics={k: (v[0], v[1], v[2]) for k, v in unit.characteristics.items()},
        )

    # ------------------------------------------------------------------ persistence & status

    def snapshot(self) -> tuple[dict[str, bytes], dict[tuple[str, str], int]]:
        """Everything :meth:`restore` needs (for a new context after a config reload)."""
        return (
            {name: station.snapshot() for name, station in self._stations.items()},
            dict(self._attempts),
        )

    def take_changes(self) -> ContextChanges:
        """Unit records and state to store with the readings tagged so far (and forget)."""
        changes = ContextChanges(
            self._finished,
            self._changed_attempts,
            {name: self._stations[name].snapshot() for name in self._dirty},
        )
        self._finished, self._changed_attempts, self._dirty = [], {}, set()
        return changes

    def current_serial(self, station: str) -> str | None:
        current = self._stations[station].current
        return None if current is None else current.serial

    def status(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        now = self._clock() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for name, station in self._stations.items():
            current = station.current
            ended = [u for u in station.units if u.end_ts is not None]
            last = ended[-1] if ended else None
            out[name] = {
                "operation": station.operation,
                "unit_serial": None if current is None else current.serial,
                "attempt": None if current is None else current.attempt,
                "unit_start_ts": None if current is None else current.start_ts,
                "time_at_station_s": None if current is None else max(0.0, now - current.start_ts),
                "unit_readings": None if current is None else current.readings,
                "last_unit": None
                if last is None
                else {
                    "serial": last.serial,
                    "attempt": last.attempt,
                    "verdict": (last.verdict or Verdict.INCOMPLETE).value,
                    "ended_by": last.ended_by,
                    "end_ts": last.end_ts,
                },
            }
        return out
