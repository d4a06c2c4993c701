"""Station context: which unit, operation and attempt each reading belongs to.

Each station has an operation and, at any moment, a current unit or none. Signals come from
device tags named in the station's config (or, for the serial, from POST /stations/{name}/unit):

- **serial**: a new serial starts a unit (ending the one before, ``next_serial``); an empty one
  ends it (``serial_cleared``). The same serial again while its unit is open changes nothing;
  after that unit ended, a scan or POST of it starts the next attempt (a retest).
- **start** (or, without a start tag, the verdict going back to "no verdict"): while the
  serial is still present and its last attempt has ended, the next attempt starts (a retest
  on a tester that keeps the serial in its register).
- **verdict**: the tag *changing* to a value that maps to a verdict gives the unit at that
  moment its verdict, and ends it when ``unit_end`` is ``verdict``. The first value seen after
  start-up is a baseline, not a change: a tester still showing the last unit's result must not
  end the next one.
- **cycle_complete**: the tag turning true ends the unit (``unit_end: cycle_complete``), with
  the verdict tag's value at that moment.
- **operation**: for a station that runs several operations, the tag names the current one; a
  change ends the open unit and starts the same serial at the new operation.
- **timeout**: a unit open for ``unit_timeout_s`` ends with ``timeout``.

**Presence.** A polled serial tag and the HTTP endpoint show the unit for as long as it is at
the station. Readings after its test ended (verdict, timeout) and before the serial changes or
clears keep its serial and attempt with ``phase: "after"``; during the test ``phase: "test"``.
A scanned serial (an event) says nothing about presence: its unit's readings end at the end.

**Slots.** A rack's tags carry a slot number (config expansion, collector.config.stations);
their readings go to that slot's station through a (device, tag) -> station map built here,
once; readings of the rack's other tags get the rack's name and no unit.

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
import time
from collections.abc import Callable, Sequence
from typing import Any

from collector.config import DeviceConfig, StationConfig, TagRef, UnitEnd, Verdict, verdict_key
from collector.context.serials import accepted
from collector.context.units import TEST, Figures, Station, Unit
from contract.records import Context, ContextChanges, Quality, Reading, UnitRecord, Value

log = logging.getLogger(__name__)

# Signals of one poll are applied in this order: the operation and the serial first (a unit
# must exist before its verdict), the start before the verdict it clears, the failure code
# before the verdict that reads it.
# A work order or resource read in the same poll as a serial applies to that unit: they come
# first.
_RESOURCES = ("operator", "fixture", "cavity", "program")  # operator: operator_source
_SIGNAL_ORDER = (
    "operation", "work_order", *_RESOURCES, "serial", "start", "failure_code", "verdict",
    "cycle_complete",
)  # fmt: skip
_SOURCES = ("operation", "serial", "work_order", "operator")  # config fields "{kind}_source"
_ORDER = {kind: i for i, kind in enumerate(_SIGNAL_ORDER)}
_MISSING = object()
_ENDS_PRESENCE = ("next_serial", "serial_cleared", "operation_changed")


def _text(value: Value) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def resource_text(value: Value) -> str | None:
    """A resource tag's value as a unit record names it: text, a whole number without ``.0``
    (a nest register read as 3.0 is nest "3", as one read as 3)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _text(value)


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


class StationContext:
    """Tags readings with their unit and turns unit lifecycles into unit records."""

    def __init__(
        self,
        stations: Sequence[StationConfig],
        devices: Sequence[DeviceConfig],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        # Timeouts and settle times run on the monotonic clock; timestamps stay the wall
        # clock's. A test that gives a clock of its own (which never steps) gets it for both.
        self._monotonic = monotonic or (time.monotonic if clock is time.time else clock)
        self._events = {d.name for d in devices if d.emits_events}
        self._stations: dict[str, Station] = {}
        # device -> tag -> the (signal, station) pairs it carries, and device -> its key
        # characteristic tags (most devices have neither: no search per reading).
        self._signal_tags: dict[str, dict[str, list[tuple[str, Station]]]] = {}
        self._characteristics: dict[str, set[str]] = {}
        self._no_station = Context(None, None, None)
        by_name: dict[str, StationConfig] = {s.name: s for s in stations}
        slots: dict[tuple[str, int], Station] = {}
        for station in stations:
            group = station.group or station.name
            timeouts = [d.timeout_ms for d in devices if d.station == group]
            # A poll's readings reach us at most about a poll later than they were read.
            settle = 1.0 + 2 * max(timeouts, default=1000) / 1000
            source = station.serial_source
            presence = source == "http" or (
                source is not None
                and not isinstance(source, str)
                and source.device not in self._events
            )
            state = self._stations[station.name] = Station(station, settle, presence)
            if station.slot is not None:
                slots[(group, station.slot)] = state
            resources: dict[str, TagRef] = {str(k): v for k, v in station.resources.items()}
            for kind in _SIGNAL_ORDER:
                ref: TagRef | str | None
                if kind in _RESOURCES and kind != "operator":
                    ref = resources.get(kind)
                else:
                    ref = getattr(station, f"{kind}_source" if kind in _SOURCES else kind)
                if isinstance(ref, TagRef):
                    tags = self._signal_tags.setdefault(ref.device, {})
                    tags.setdefault(ref.tag, []).append((kind, state))
            for ref in station.key_characteristics:
                self._characteristics.setdefault(ref.device, set()).add(ref.tag)
        # device -> its station (plain devices), or device -> tag -> slot station (racks):
        # the precomputed map that tags each reading with one dictionary look-up.
        self._station_of: dict[str, Station] = {}
        self._route: dict[str, dict[str, Station]] = {}
        self._rack_context: dict[str, Context] = {}
        for device in devices:
            if device.station is None:
                continue
            plain = self._stations.get(device.station)
            if plain is not None and plain.config.slot is None:
                self._station_of[device.name] = plain
                continue
            route = {
                tag: slots[(device.station, slot)]
                for tag, slot in device.tag_slots().items()
                if (device.station, slot) in slots
            }
            self._route[device.name] = route
            operation = next(
                (s.operation for s in by_name.values() if s.group == device.station), None
            )
            self._rack_context[device.name] = Context(device.station, None, operation)
        self._attempts: dict[tuple[str, str], int] = {}
        self._changed_attempts: dict[tuple[str, str], int] = {}
        self._dirty: set[str] = set()
        self._finished: list[UnitRecord] = []

    # ------------------------------------------------------------------ first serial read

    def first_read_stations(self) -> set[str]:
        """Stations whose serial is a polled device tag (it shows the unit while present):
        what they show at their first read this run is what was there before it, so their
        readings wait for it (collector.context.firstread). A scanner, an instrument in
        listen mode and the HTTP endpoint say nothing until a unit comes: theirs do not."""
        return {
            name
            for name, station in self._stations.items()
            if station.presence and station.config.serial_source != "http"
        }

    def first_read_ts(self, station: str) -> float | None:
        """When the station's serial was first read this run (its reading's ``ts``)."""
        return self._stations[station].first_read_ts

    def stations_by_device(self) -> dict[str, set[str]]:
        """Each device with a station: the stations its readings are tagged for."""
        out = {device: {station.name} for device, station in self._station_of.items()}
        for device, route in self._route.items():
            out[device] = {station.name for station in route.values()}
        return out

    def stations_of(self, device: str, readings: Sequence[Reading]) -> list[str | None]:
        """The station each reading is tagged for (None: no station's unit, e.g. a rack's
        own tags)."""
        station = self._station_of.get(device)
        if station is not None:
            return [station.name] * len(readings)
        route = self._route.get(device)
        if route is None:
            return [None] * len(readings)
        names: list[str | None] = []
        for reading in readings:
            slot = route.get(reading.tag)
            names.append(None if slot is None else slot.name)
        return names

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
        self.apply_signals(device, readings)
        return self.contexts(device, readings)

    def apply_signals(self, device: str, readings: Sequence[Reading]) -> None:
        """Apply the signals (serial, verdict, ...) among a device's readings."""
        kinds = self._signal_tags.get(device)
        if kinds:
            signals = []
            get, good = kinds.get, Quality.GOOD
            for r in readings:
                carried = get(r.tag)  # one look-up per reading; most carry no signal
                if carried is not None and r.quality is good:
                    signals += [(r.ts, _ORDER[kind], kind, target, r) for kind, target in carried]
            if signals:
                event = device in self._events
                signals.sort(key=lambda s: s[:2])
                for ts, _, kind, target, reading in signals:
                    self._signal(target, kind, ts, reading.value, event)

    def contexts(self, device: str, readings: Sequence[Reading]) -> list[Context]:
        """The context of each reading, by its ``ts`` (signals applied already)."""
        station = self._station_of.get(device)
        route = None if station is not None else self._route.get(device)
        if station is None and route is None:
            return [self._no_station] * len(readings)
        characteristics = self._characteristics.get(device)
        if station is None:
            assert route is not None
            return self._tag_rack(device, route, readings, characteristics)
        contexts: list[Context] = []
        counted = False
        start, count = 0, len(readings)
        while start < count:
            # A run of readings with one ts: one unit look-up, one Context for all of them.
            ts = readings[start].ts
            end = start + 1
            while end < count and readings[end].ts == ts:
                end += 1
            unit, phase = station.unit_at(ts)
            if unit is None or phase is None:
                contexts += [station.no_unit] * (end - start)
            else:
                contexts += [station.context(unit, phase)] * (end - start)
                if phase == TEST and not unit.emitted:
                    unit.readings += end - start
                    if characteristics:
                        for reading in readings[start:end]:
                            if reading.tag in characteristics:
                                unit.characteristic(reading)
                    counted = True
            start = end
        if counted:
            self._dirty.add(station.name)
        return contexts

    def _tag_rack(
        self,
        device: str,
        route: dict[str, Station],
        readings: Sequence[Reading],
        characteristics: set[str] | None,
    ) -> list[Context]:
        """Readings of a rack: each goes to its tag's slot station (one look-up), and the
        unit look-up is made once per slot and ``ts``."""
        rack = self._rack_context[device]
        contexts: list[Context] = []
        append = contexts.append
        # slot station -> (ts, its unit if the reading counts for it, the Context)
        seen: dict[Station, tuple[float, Unit | None, Context]] = {}
        dirty = self._dirty
        chars = characteristics or ()
        for reading in readings:
            station = route.get(reading.tag)
            if station is None:
                append(rack)
                continue
            known = seen.get(station)
            if known is None or known[0] != reading.ts:
                unit, phase = station.unit_at(reading.ts)
                if unit is None or phase is None:
                    known = (reading.ts, None, station.no_unit)
                else:
                    counts = phase == TEST and not unit.emitted
                    known = (reading.ts, unit if counts else None, station.context(unit, phase))
                    if counts:
                        dirty.add(station.name)
                seen[station] = known
            append(known[2])
            unit = known[1]
            if unit is not None:
                unit.readings += 1
                if reading.tag in chars:
                    unit.characteristic(reading)
        return contexts

    def set_serial(
        self,
        station: str,
        serial: str | None,
        ts: float | None = None,
        *,
        golden: bool = False,
        work_order: str | None = None,
        operator: str | None = None,
    ) -> None:
        """A serial from outside the devices (the HTTP endpoint): always an event.
        ``golden``: the unit is a golden sample (whatever the pattern says); ``operator``: who
        works at the station from now on (``operator_source: http``)."""
        target = self._stations[station]
        if operator and target.config.operator_source == "http":
            target.last["operator"] = operator
        self._signal(target, "serial", self._clock() if ts is None else ts, serial, True)
        unit = target.current
        if serial and unit is not None and unit.serial == serial.strip():
            unit.golden = unit.golden or golden
            unit.work_order = work_order or unit.work_order
            if operator and target.config.operator_source == "http":
                unit.resources["operator"] = operator

    def mark_golden(self, station: str, serial: str) -> bool:
        """Mark the unit present at the station as a golden sample (its readings from now on
        and its record); False if ``serial`` is not the unit there."""
        target = self._stations[station]
        present = target.present
        if present is None or present.serial != serial.strip():
            return False
        present.golden = True
        self._dirty.add(station)
        return True

    def _signal(self, station: Station, kind: str, ts: float, value: Value, event: bool) -> None:
        if kind == "serial" and station.first_read_ts is None:
            # Before the repeat check: a serial read after a restart that is the one stored
            # is a first read all the same (collector.context.firstread waits for it).
            station.first_read_ts = ts
        previous = station.last.get(kind, _MISSING)
        if not event and previous == value:
            return  # a polled value repeating: nothing new to store either
        station.last[kind] = value
        self._dirty.add(station.name)
        first = previous is _MISSING and not event
        if kind == "serial" and accepted(value, station.config.name):
            self._on_serial(station, ts, _text(value))
        elif kind == "operation":
            self._on_operation(station, ts, _text(value) or station.config.operation)
        elif kind == "verdict" and not first:
            verdict = map_verdict(station.config, value)
            if verdict is None:
                if station.config.start is None:
                    self._next_attempt(station, ts, "verdict cleared")
            else:
                self._on_verdict(station, ts, verdict)
        elif kind == "start" and not first:
            # A flag starts on its rising edge; a counter on any change.
            if not isinstance(value, bool) or (value and not previous):
                self._next_attempt(station, ts, "start signal")
        elif kind == "cycle_complete" and not first and value and not previous:
            self._on_cycle_complete(station, ts)
        elif kind == "failure_code":
            self._on_failure_code(station, ts, value)
        elif kind == "work_order" and accepted(value, f"{station.config.name} work order"):
            # The same check as a serial's (length, control characters): it goes into records.
            self._on_work_order(station, _text(value))
        elif kind in _RESOURCES and accepted(value, f"{station.config.name} {kind}"):
            self._on_resource(station, kind, resource_text(value))

    def _on_serial(self, station: Station, ts: float, serial: str | None) -> None:
        current = station.current
        if current is not None and current.serial == serial:
            return
        if current is not None:
            self._end(station, current, ts, "next_serial" if serial else "serial_cleared")
        self._leave(station, ts)
        if serial is not None:
            self._start(station, serial, ts)

    def _on_work_order(self, station: Station, work_order: str | None) -> None:
        """Units that arrive from now on take it (``_start``); the unit present takes it if it
        has none yet (the work order was scanned after the serial)."""
        current = station.current
        if work_order and current is not None and current.work_order is None:
            current.work_order = work_order

    def _on_resource(self, station: Station, kind: str, value: str | None) -> None:
        """Units that arrive from now on take it (``_start``); the unit under test takes it
        if it has none of that kind yet (a badge scanned after the serial)."""
        current = station.current
        if value and current is not None and kind not in current.resources:
            current.resources[kind] = value

    def _leave(self, station: Station, ts: float) -> None:
        """The present unit's serial left the station (its after phase ends at ``ts``)."""
        present = station.present
        if present is not None and present.end_ts is not None:
            present.gone_ts = max(ts, present.end_ts)

    def _next_attempt(self, station: Station, ts: float, why: str) -> None:
        """A test starts: the present serial's next attempt, if its last one has ended."""
        present = station.present
        if present is None or present.end_ts is None:
            return  # no unit, or its test is the one starting: nothing new
        log.info("station %s: %s: %s is tested again", station.name, why, present.serial)
        self._leave(station, ts)
        self._start(station, present.serial, ts, present.golden, present.work_order)

    def _on_operation(self, station: Station, ts: float, operation: str) -> None:
        if operation == station.operation:
            return
        log.info("station %s: operation %s -> %s", station.name, station.operation, operation)
        station.set_operation(operation)
        current = station.current
        if current is not None:
            self._end(station, current, ts, "operation_changed")
            self._start(station, current.serial, ts, current.golden, current.work_order)

    def _on_verdict(self, station: Station, ts: float, verdict: Verdict) -> None:
        unit, phase = station.unit_at(ts)
        if unit is None or phase != TEST or unit.emitted:
            log.debug("station %s: verdict %s with no unit under test", station.name, verdict)
            return
        self._give_verdict(station, unit, verdict)
        if unit is station.current and station.config.end is UnitEnd.VERDICT:
            self._end(station, unit, ts, "verdict")

    def _on_cycle_complete(self, station: Station, ts: float) -> None:
        current = station.current
        if current is None or station.config.end is not UnitEnd.CYCLE_COMPLETE:
            return
        # The verdict tag's value now decides, even if it did not change since the last unit.
        verdict = map_verdict(station.config, station.last.get("verdict"))
        if verdict is not None:
            self._give_verdict(station, current, verdict)
        self._end(station, current, ts, "cycle_complete")

    def _on_failure_code(self, station: Station, ts: float, code: Value) -> None:
        # A tester may write the code a moment after the verdict: it still counts for the
        # unit that just failed, as long as its record is not out yet.
        for unit in reversed(station.units):
            if unit.start_ts > ts or unit.emitted:
                continue
            if unit.verdict not in (None, Verdict.PASS) and unit.failure_code in (None, 0, ""):
                unit.failure_code = code
            return

    def _give_verdict(self, station: Station, unit: Unit, verdict: Verdict) -> None:
        unit.verdict = verdict
        unit.failure_code = None if verdict is Verdict.PASS else station.last.get("failure_code")

    def _start(
        self,
        station: Station,
        serial: str,
        ts: float,
        golden: bool = False,
        work_order: str | None = None,
    ) -> None:
        key = (station.operation, serial)
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = self._changed_attempts[key] = attempt
        golden = golden or station.is_golden(serial)
        if work_order is None and station.config.work_order_source is not None:
            work_order = _text(station.last.get("work_order"))
        unit = Unit(serial, station.operation, attempt, ts, golden=golden, work_order=work_order)
        for kind in station.resource_kinds:
            value = resource_text(station.last.get(kind))
            if value is not None:
                unit.resources[kind] = value
        unit.start_mono = self._to_mono(ts)
        station.units.append(unit)
        log.info(
            "station %s: unit %s arrived (operation %s, attempt %d%s)",
            station.name,
            serial,
            station.operation,
            attempt,
            ", golden sample" if golden else "",
        )

    def _end(self, station: Station, unit: Unit, ts: float, why: str) -> None:
        unit.end_ts, unit.ended_by = max(ts, unit.start_ts), why
        unit.emit_at = unit.end_ts + station.settle_s
        # From the ending itself (not end_ts, which a step back clamps to the start).
        unit.emit_mono = self._to_mono(ts) + station.settle_s
        if not station.presence or why in _ENDS_PRESENCE:
            unit.gone_ts = unit.end_ts
        log.info(
            "station %s: unit %s ended by %s after %.1f s, verdict %s",
            station.name,
            unit.serial,
            why,
            unit.end_ts - unit.start_ts,
            unit.verdict or "none yet",
        )

    # ------------------------------------------------------------------ time

    def tick(self, now: float | None = None, final: bool = False) -> bool:
        """End units that timed out and finish units whose late readings are in (``final``:
        all ended units, as no reading can come any more once polling stopped). Returns
        whether anything changed (the caller then has the buffer store it).

        A timeout ends the unit's test, not its presence: a serial still shown keeps tagging
        its readings (phase "after") until it changes or clears."""
        mono = self._monotonic() if now is None else self._to_mono(now)
        now = self._clock() if now is None else now
        changed = False
        for station in self._stations.values():
            current = station.current
            if (
                current is not None
                and mono - self._start_mono(current) >= station.config.unit_timeout_s
            ):
                self._end(station, current, now, "timeout")
                changed = True
            for unit in station.units:
                if unit.emit_at is not None and unit.emit_mono is None:  # restored
                    unit.emit_mono = self._to_mono(unit.emit_at)
                if (
                    unit.emit_mono is not None
                    and not unit.emitted
                    and (final or unit.emit_mono <= mono)
                ):
                    unit.emitted = True
                    record = station.record(unit)
                    station.figures.add(record)
                    self._finished.append(record)
                    changed = True
            if changed:
                self._dirty.add(station.name)
        return changed

    def _to_mono(self, ts: float) -> float:
        """A wall-clock time (a reading's ts) on the monotonic clock, at today's offset."""
        return ts - self._clock() + self._monotonic()

    def _start_mono(self, unit: Unit) -> float:
        if unit.start_mono is None:  # restored: its start, at today's offset
            unit.start_mono = self._to_mono(unit.start_ts)
        return unit.start_mono

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
        """The serial of the unit under test at the station (None once its test ended)."""
        current = self._stations[station].current
        return None if current is None else current.serial

    def figures(self) -> dict[str, Figures]:
        """Each station's live figures (this run)."""
        return {name: station.figures for name, station in self._stations.items()}

    def present_serial(self, station: str) -> str | None:
        """The serial at the station, its test running or over."""
        present = self._stations[station].present
        return None if present is None else present.serial

    def status(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        mono = self._monotonic() if now is None else self._to_mono(now)
        out: dict[str, dict[str, Any]] = {}
        for name, station in self._stations.items():
            current = station.current
            present = station.present
            ended = [u for u in station.units if u.end_ts is not None]
            last = ended[-1] if ended else None
            out[name] = {
                "station": station.out_name,
                "slot": station.config.slot,
                "operation": station.operation,
                "unit_serial": None if current is None else current.serial,
                "attempt": None if current is None else current.attempt,
                "unit_start_ts": None if current is None else current.start_ts,
                "time_at_station_s": None
                if current is None
                else max(0.0, mono - self._start_mono(current)),
                "unit_readings": None if current is None else current.readings,
                "present_serial": None if present is None else present.serial,
                "phase": None if present is None else ("test" if current else "after"),
                "golden": None if present is None else present.golden,
                # What the unit at the station is made with (docs/traceability.md).
                "work_order": None if present is None else present.work_order,
                "resources": {} if present is None else dict(sorted(present.resources.items())),
                "last_unit": None
                if last is None
                else {
                    "serial": last.serial,
                    "attempt": last.attempt,
                    "verdict": (last.verdict or Verdict.INCOMPLETE).value,
                    "ended_by": last.ended_by,
                    "end_ts": last.end_ts,
                    "cycle_time_s": None if last.end_ts is None else last.end_ts - last.start_ts,
                },
                "takt_s": station.config.takt_for(station.operation)
                if station.operation is not None
                else None,
                # The verdicts of the last units (oldest first), for the live page.
                "last_verdicts": [(u.verdict or Verdict.INCOMPLETE).value for u in ended[-10:]],
                "figures": station.figures.as_dict(),
            }
        return out
