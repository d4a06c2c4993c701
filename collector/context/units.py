"""One station's units and live figures, as collector.context.tagging follows them.

A unit (one attempt of one serial at one operation) has two intervals on the readings' clock:
its **test** [start, end] and, for a serial source that shows presence (a polled serial tag,
the HTTP endpoint), the time **after** it (end, gone) while its serial is still present at
the station. A reading belongs to the latest unit that started at or before its ``ts`` if
one of those intervals holds that ``ts``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from collector.config import StationConfig, Verdict
from contract.records import Context, Quality, Reading, Spec, UnitRecord, Value
from quality.yields import FirstPassTally

# Units kept per station to tag late readings (their intervals); older ones are long settled.
HISTORY = 32
#: Cycle times kept for the "last N units" figures.
RECENT_UNITS = 20

TEST, AFTER = "test", "after"
#: The /status key of the mean cycle time over the last RECENT_UNITS units.
RECENT_KEY = f"mean_cycle_time_last_{RECENT_UNITS}_s"


@dataclass
class Unit:
    serial: str
    operation: str
    attempt: int
    start_ts: float
    end_ts: float | None = None
    ended_by: str | None = None
    verdict: Verdict | None = None
    failure_code: Value = None
    #: Readings of the test phase (those after the verdict are not counted: the record is
    #: out long before the unit leaves a burn-in rack).
    readings: int = 0
    #: key characteristic -> [last, min, max]
    characteristics: dict[str, list[float]] = field(default_factory=dict)
    emit_at: float | None = None
    emitted: bool = False
    #: When the serial left the station (None while it is still present).
    gone_ts: float | None = None
    golden: bool = False
    work_order: str | None = None
    #: Resource kind (operator, fixture, cavity, program) -> its value (see tagging._start).
    resources: dict[str, str] = field(default_factory=dict)
    #: The start and the record's release on the monotonic clock (this process's; not stored):
    #: the unit timeout and the settle time run on it, so a step of the wall clock (an NTP
    #: correction) moves neither. None after a restore until StationContext fills them in.
    start_mono: float | None = field(default=None, compare=False)
    emit_mono: float | None = field(default=None, compare=False)

    def phase_at(self, ts: float) -> str | None:
        """The unit's phase at ``ts`` (which must be >= start_ts), or None if it was gone."""
        if self.end_ts is None or ts <= self.end_ts:
            return TEST
        if self.gone_ts is None or ts < self.gone_ts:
            return AFTER
        return None

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


@dataclass
class Figures:
    """Live per-station figures since start (not stored: /status and /metrics only)."""

    units: int = 0
    #: First attempts and those that passed: quality.yields counts them, as the report does.
    first_pass: FirstPassTally = field(default_factory=FirstPassTally)
    passes: int = 0
    fails: int = 0
    rework: int = 0
    scrap: int = 0
    incomplete: int = 0
    retests: int = 0
    golden: int = 0
    cycle_time_sum_s: float = 0.0
    cycle_time_count: int = 0
    last_cycle_time_s: float | None = None
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_UNITS))

    def add(self, record: UnitRecord) -> None:
        if record.golden:
            self.golden += 1  # reference parts stay out of the production figures
            return
        self.units += 1
        if record.attempt > 1:
            self.retests += 1
        verdict = record.verdict
        self.first_pass.add(record.attempt, verdict)
        if verdict == Verdict.PASS:
            self.passes += 1
        elif verdict == Verdict.FAIL:
            self.fails += 1
        elif verdict == Verdict.REWORK:
            self.rework += 1
        elif verdict == Verdict.SCRAP:
            self.scrap += 1
        else:
            self.incomplete += 1
        if verdict != Verdict.INCOMPLETE:  # an incomplete unit has no cycle time
            cycle = record.end_ts - record.start_ts
            self.cycle_time_sum_s += cycle
            self.cycle_time_count += 1
            self.last_cycle_time_s = cycle
            self.recent.append(cycle)

    @property
    def first_pass_passes(self) -> int:
        """Units that passed on their first attempt (a /metrics counter)."""
        return self.first_pass.first_passes

    def as_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "first_pass_passes": self.first_pass_passes,
            "first_pass_yield": self.first_pass.value,
            "passes": self.passes,
            "fails": self.fails,
            "rework": self.rework,
            "scrap": self.scrap,
            "incomplete": self.incomplete,
            "retests": self.retests,
            "golden": self.golden,
            "last_cycle_time_s": self.last_cycle_time_s,
            "mean_cycle_time_s": self.cycle_time_sum_s / self.cycle_time_count
            if self.cycle_time_count
            else None,
            RECENT_KEY: sum(self.recent) / len(self.recent) if self.recent else None,
        }


class Station:
    def __init__(self, config: StationConfig, settle_s: float, presence: bool) -> None:
        self.config = config
        self.name = config.name
        #: What readings and records name: the rack for a slot station.
        self.out_name = config.group or config.name
        self.settle_s = settle_s
        #: Whether the serial source shows the unit while it is there (a polled tag, HTTP):
        #: then readings after the test stay the unit's until the serial changes or clears.
        self.presence = presence
        self.operation = config.operation
        self.units: deque[Unit] = deque(maxlen=HISTORY)
        #: The last good value of each signal tag, for change detection.
        self.last: dict[str, Value] = {}
        self.golden = re.compile(config.golden_pattern) if config.golden_pattern else None
        self.specs = {k.tag: k for k in config.key_characteristics}
        #: The resource kinds its unit records name: the operator (from a tag or HTTP), then
        #: the kinds read from device tags.
        self.resource_kinds: tuple[str, ...] = (
            ("operator",) if config.operator_source is not None else ()
        ) + tuple(config.resources)
        self.figures = Figures()
        self.no_unit = Context(self.out_name, None, self.operation, None, config.slot)
        self._context: tuple[Unit, str, Context] | None = None
        #: When the serial was first read this run (not stored: each run reads it anew).
        self.first_read_ts: float | None = None

    @property
    def current(self) -> Unit | None:
        if self.units and self.units[-1].end_ts is None:
            return self.units[-1]
        return None

    @property
    def present(self) -> Unit | None:
        """The unit whose serial is at the station (its test running or over)."""
        if self.units and self.units[-1].gone_ts is None:
            return self.units[-1]
        return None

    def set_operation(self, operation: str) -> None:
        self.operation = operation
        self.no_unit = Context(self.out_name, None, operation, None, self.config.slot)

    def unit_at(self, ts: float) -> tuple[Unit | None, str | None]:
        for unit in reversed(self.units):
            if unit.start_ts <= ts:
                phase = unit.phase_at(ts)
                return (unit, phase) if phase is not None else (None, None)
        return None, None

    def context(self, unit: Unit, phase: str) -> Context:
        """The unit's Context in that phase; the last one is kept, so that the polls of one
        unit share one object (a rack asks once per slot and poll)."""
        cached = self._context
        if cached is not None and cached[0] is unit and cached[1] is phase:
            context = cached[2]
            # Golden and the work order may be set during the unit (marked, scanned after
            # the serial): the readings tagged from then on carry them, the earlier ones not.
            if context.golden is unit.golden and context.work_order == unit.work_order:
                return context
        context = Context(
            self.out_name,
            unit.serial,
            unit.operation,
            unit.attempt,
            self.config.slot,
            phase,
            unit.golden,
            unit.work_order,
        )
        self._context = (unit, phase, context)
        return context

    def is_golden(self, serial: str) -> bool:
        return self.golden is not None and self.golden.fullmatch(serial) is not None

    def record(self, unit: Unit) -> UnitRecord:
        assert unit.end_ts is not None
        assert unit.ended_by is not None
        specs = {}
        for name, (_, low, high) in unit.characteristics.items():
            spec = self.specs.get(name)
            if spec is not None:
                specs[name] = Spec(
                    spec.lsl, spec.usl, spec.target, spec.critical, spec.in_spec(low, high)
                )
        return UnitRecord(
            serial=unit.serial,
            station=self.out_name,
            operation=unit.operation,
            attempt=unit.attempt,
            start_ts=unit.start_ts,
            end_ts=unit.end_ts,
            ended_by=unit.ended_by,
            verdict=(unit.verdict or Verdict.INCOMPLETE).value,
            failure_code=unit.failure_code,
            readings=unit.readings,
            characteristics={k: (v[0], v[1], v[2]) for k, v in unit.characteristics.items()},
            slot=self.config.slot,
            takt_s=self.config.takt_for(unit.operation),
            golden=unit.golden,
            work_order=unit.work_order,
            specs=specs,
            resources=dict(unit.resources),
        )

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "operation": self.operation,
                "last": self.last,
                # Emitted units stay while present: readings after the verdict need them.
                "units": [_stored(u) for u in self.units if not u.emitted or u.gone_ts is None],
            }
        )

    def restore(self, blob: bytes) -> None:
        state = orjson.loads(blob)
        self.set_operation(state["operation"])
        self.last = state["last"]
        for raw in state["units"]:
            unit = Unit(**raw)
            if "gone_ts" not in raw:
                # Stored before presence was followed: an ended unit had left with its end.
                unit.gone_ts = unit.end_ts
            if unit.verdict is not None:
                unit.verdict = Verdict(unit.verdict)
            self.units.append(unit)


def _stored(unit: Unit) -> dict[str, Any]:
    """A unit as the buffer stores it: without its monotonic marks (a reboot resets that clock)."""
    raw = asdict(unit)
    del raw["start_mono"], raw["emit_mono"]
    return raw
