"""Judge a run against its protocol: compute the figures with quality/ and evaluate each exit
criterion to pass, fail or insufficient, and the run to go, no-go or insufficient.

Pure: works on loaded :class:`~store.report.load.RunData`, no database, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from quality import (
    Capability,
    GoldenCheck,
    Measurement,
    OperationFigures,
    capability,
    golden_checks,
    operation_figures,
    rolled_throughput_yield,
)
from quality.line import Line, Visit, line_figures
from quality.sampling import single_plan
from quality.yields import INCOMPLETE, PASS
from store.report.gauge_check import (
    GaugeResult,
    GoldenValues,
    gauge_results,
    golden_values,
    measurement_notes,
)
from store.report.load import NO_OPERATION, CharacteristicValue, RunData
from store.report.protocol import (
    AqlCriterion,
    OperationCriteria,
    Protocol,
    SampleSizes,
    SubgroupBy,
)
from store.report.resources import ResourceSplit, resource_splits


class Result(StrEnum):
    PASS = "pass"  # noqa: S105 (a result, not a secret)
    FAIL = "fail"
    INSUFFICIENT = "insufficient"


class Decision(StrEnum):
    GO = "go"
    NO_GO = "no-go"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True, slots=True)
class Criterion:
    name: str
    result: Result
    value: float | None
    limit: float | None
    note: str = ""  # why insufficient, or what was compared


@dataclass(frozen=True, slots=True)
class Control:
    """Whether the characteristic's I-MR chart shows the process in control, by the rules the
    protocol names; only judged where the protocol requires control."""

    rules: tuple[int, ...]
    signals: int  # points flagged by those rules
    in_control: bool


@dataclass(frozen=True, slots=True)
class CharacteristicReport:
    operation: str
    name: str
    critical: bool
    target: float | None
    capability: Capability
    golden: tuple[GoldenCheck, ...]
    criterion: Criterion | None
    control: Control | None = None  # None: control not required by the protocol


@dataclass(frozen=True, slots=True)
class AqlResult:
    level: str
    aql: float
    lot_size: int
    code_letter: str
    sample_size: int
    accept: int
    reject: int
    full_inspection: bool
    p50: float  # the defect rate accepted with probability 0.5
    inspected: int  # units with a verdict at the operation (first attempt)
    defects: int  # failed first attempts among the first sample_size of them
    verdict: str  # accept, reject or insufficient


@dataclass(frozen=True, slots=True)
class OperationReport:
    figures: OperationFigures
    criteria: tuple[Criterion, ...]  # the operation's own, then its characteristics'
    aql: AqlResult | None = None


@dataclass(frozen=True, slots=True)
class Report:
    protocol: Protocol
    decision: Decision
    units: int  # distinct serials of the run, golden samples left out
    golden_serials: tuple[str, ...]
    rolled_throughput_yield: float | None
    operations: tuple[OperationReport, ...]
    characteristics: tuple[CharacteristicReport, ...]
    first_record: datetime | None
    last_record: datetime | None
    unit_rows: tuple[tuple[str, str | None, dict[str, tuple[str, int]]], ...]
    """Per serial (time order of first record): work order, {operation: (final verdict,
    attempts)}; the HTML's appendix of units with their genealogy links."""
    run_criteria: tuple[Criterion, ...] = ()  # judged outside the figures (store/record)
    line: Line | None = None  # the line view: constraint, throughput, WIP (quality.line)
    line_criteria: tuple[Criterion, ...] = ()  # min_throughput_per_hour, when the protocol sets it
    resources: tuple[ResourceSplit, ...] = ()  # results by operator, fixture, cavity, program
    gauges: tuple[GaugeResult, ...] = ()  # type-1 studies of the golden samples
    measurement_notes: tuple[str, ...] = ()  # FPY loss that may be the gauge's, in words


def _decide(results: Sequence[Result]) -> Decision:
    if Result.FAIL in results:
        return Decision.NO_GO
    if not results or Result.INSUFFICIENT in results:
        return Decision.INSUFFICIENT
    return Decision.GO


def _min_criterion(
    name: str, value: float | None, limit: float, enough: bool, why: str
) -> Criterion:
    if not enough or value is None:
        return Criterion(name, Result.INSUFFICIENT, value, limit, why)
    return Criterion(name, Result.PASS if value >= limit else Result.FAIL, value, limit)


def _max_criterion(
    name: str, value: float | None, limit: float, enough: bool, why: str
) -> Criterion:
    if not enough or value is None:
        return Criterion(name, Result.INSUFFICIENT, value, limit, why)
    return Criterion(name, Result.PASS if value <= limit else Result.FAIL, value, limit)


def _operation_criteria(
    figures: OperationFigures, wanted: OperationCriteria, sizes: SampleSizes
) -> list[Criterion]:
    enough = figures.units >= sizes.min_units
    why = f"{figures.units} units < {sizes.min_units}"
    found: list[Criterion] = []
    if wanted.min_first_pass_yield is not None:
        found.append(
            _min_criterion(
                "first_pass_yield",
                figures.first_pass_yield,
                wanted.min_first_pass_yield,
                enough,
                why,
            )
        )
    if wanted.max_scrap_rate is not None:
        found.append(
            _max_criterion("scrap_rate", figures.scrap_rate, wanted.max_scrap_rate, enough, why)
        )
    if wanted.max_rework_rate is not None:
        found.append(
            _max_criterion("rework_rate", figures.rework_rate, wanted.max_rework_rate, enough, why)
        )
    if wanted.cycle_time_p95_within_takt:
        p95 = figures.cycle_time.p95
        if figures.takt_s is None:
            found.append(
                Criterion("cycle_time_p95", Result.INSUFFICIENT, p95, None, "no takt known")
            )
        else:
            found.append(_max_criterion("cycle_time_p95", p95, figures.takt_s, enough, why))
    return found


def _aql(data: RunData, operation: str, units: int, wanted: AqlCriterion) -> AqlResult | None:
    """The sampling plan judged on the run: the sample is the first n units, in the order their
    first attempt ended, whose first attempt has a verdict (an incomplete attempt has none);
    a defect is a first attempt that did not pass. No choosing afterwards: the order decides."""
    lot = wanted.lot_size if wanted.lot_size is not None else units
    if lot < 2:
        return None  # Table I starts at a lot of 2: the criterion is insufficient
    plan = single_plan(lot, wanted.level, wanted.aql)
    judged = [
        r.attempt.verdict != PASS
        for r in data.units
        if r.attempt.operation == operation
        and r.attempt.attempt == 1
        and not r.attempt.golden
        and r.attempt.verdict != INCOMPLETE
    ]
    sample = judged[: plan.sample_size]
    defects = sum(sample)
    if len(judged) < plan.sample_size:
        verdict = "insufficient"
    else:
        verdict = "accept" if defects <= plan.accept else "reject"
    return AqlResult(
        level=wanted.level.value,
        aql=wanted.aql,
        lot_size=lot,
        code_letter=plan.code_letter,
        sample_size=plan.sample_size,
        accept=plan.accept,
        reject=plan.reject,
        full_inspection=plan.full_inspection,
        p50=plan.p50,
        inspected=len(judged),
        defects=defects,
        verdict=verdict,
    )


def _aql_criterion(result: AqlResult | None, wanted: AqlCriterion) -> Criterion:
    if result is None:
        return Criterion("aql", Result.INSUFFICIENT, None, None, "lot of fewer than 2 units")
    if result.verdict == "insufficient":
        why = f"{result.inspected} units inspected < sample size {result.sample_size}"
        return Criterion("aql", Result.INSUFFICIENT, result.defects, result.accept, why)
    note = (
        f"AQL {wanted.aql:g}, level {result.level}, lot {result.lot_size}: code letter "
        f"{result.code_letter}, n {result.sample_size}, Ac {result.accept}, Re {result.reject}"
        + (" (100 % inspection)" if result.full_inspection else "")
    )
    result_value = Result.PASS if result.verdict == "accept" else Result.FAIL
    return Criterion("aql", result_value, result.defects, result.accept, note)


def _subgroup(value: CharacteristicValue, by: SubgroupBy) -> str:
    if by is SubgroupBy.WORK_ORDER:
        return value.work_order or ""
    if by is SubgroupBy.DAY:
        return value.end.strftime("%Y-%m-%d")
    return value.end.strftime("%Y-%m-%dT%H")


NOT_IN_CONTROL = "not in control"
NOT_A_PREDICTION = (
    "The process is not in control (its I-MR chart signals the Western Electric rules the "
    "protocol names): this Cpk describes the pieces made; it is not a prediction of what the "
    "line will make."
)


def _cpk_criterion(
    name: str, cap: Capability, min_cpk: float, sizes: SampleSizes, control: Control | None
) -> Criterion:
    label = f"cpk_lower_95 {name}"
    bound = cap.cpk_lower_95
    if cap.lsl is None and cap.usl is None:
        return Criterion(label, Result.INSUFFICIENT, bound, min_cpk, "no spec limit")
    if cap.n < sizes.min_pieces:
        return Criterion(
            label, Result.INSUFFICIENT, bound, min_cpk, f"{cap.n} pieces < {sizes.min_pieces}"
        )
    if cap.subgroups < sizes.min_subgroups:
        why = f"{cap.subgroups} subgroups ({sizes.subgroup_by.value}) < {sizes.min_subgroups}"
        return Criterion(label, Result.INSUFFICIENT, bound, min_cpk, why)
    if bound is None:
        return Criterion(label, Result.INSUFFICIENT, bound, min_cpk, "no spread: Cpk undefined")
    if control is not None and not control.in_control:
        # A Cpk predicts the output of a stable process only; with the chart signalling, the
        # figure describes the past pieces, not what the line will make: the criterion fails.
        rules = ", ".join(map(str, control.rules))
        why = (
            f"{NOT_IN_CONTROL}: {control.signals} signal(s) of Western Electric rule(s) {rules};"
            " Cpk is not a prediction while the process is not in control"
        )
        return Criterion(label, Result.FAIL, bound, min_cpk, why)
    return Criterion(label, Result.PASS if bound >= min_cpk else Result.FAIL, bound, min_cpk)


def _characteristics(data: RunData, protocol: Protocol) -> list[CharacteristicReport]:
    by_characteristic: dict[tuple[str, str], list[CharacteristicValue]] = defaultdict(list)
    for value in data.characteristics:
        by_characteristic[(value.operation, value.name)].append(value)
    reports = []
    sizes = protocol.sample_sizes
    subgroups: dict[tuple[datetime, str | None], str] = {}  # many values share a unit's end
    for (operation, name), values in by_characteristic.items():
        latest = values[-1]  # limits as the latest record gives them
        # One value per unit: its first attempt at the operation (the process before rework);
        # golden samples with every re-measurement, for their drift check.
        measurements = []
        for v in values:
            if v.attempt == 1 or v.golden:
                group = subgroups.get((v.end, v.work_order))
                if group is None:
                    group = subgroups[(v.end, v.work_order)] = _subgroup(v, sizes.subgroup_by)
                measurements.append(Measurement(v.serial, v.value, group, v.golden))
        cap = capability(measurements, latest.lsl, latest.usl)
        critical = any(v.critical for v in values)
        wanted = protocol.criteria_for(operation)
        min_cpk = None
        control = None
        if wanted is not None:
            own = wanted.characteristics.get(name)
            if own is not None:
                min_cpk = own.min_cpk
            elif critical:
                min_cpk = wanted.min_cpk_critical
            # The characteristic's own setting, else the operation's, else on when critical.
            required = own.require_control if own is not None else None
            if required is None:
                required = wanted.require_control
            if required is None:
                required = critical
            rules = wanted.control_rules
            if own is not None and "control_rules" in own.model_fields_set:
                rules = own.control_rules
            if required and min_cpk:
                signals = len({v.index for v in cap.violations if v.rule in rules})
                control = Control(rules, signals, signals == 0)
        reports.append(
            CharacteristicReport(
                operation=operation,
                name=name,
                critical=critical,
                target=latest.target,
                capability=cap,
                golden=golden_checks(measurements, latest.lsl, latest.usl),
                criterion=(_cpk_criterion(name, cap, min_cpk, sizes, control) if min_cpk else None),
                control=control,
            )
        )
    return reports


def _line(data: RunData, operations: Sequence[OperationReport]) -> Line:
    """The line view over the operations in line order; records without an operation are no
    step of the line. Golden samples are left out; an incomplete attempt lasted its timeout, so
    it gives no cycle time (as in the per-operation figures), but its times still place the
    unit on the line."""
    visits = [
        Visit(
            serial=r.attempt.serial,
            operation=r.attempt.operation,
            start_s=None if r.start is None else r.start.timestamp(),
            end_s=r.end.timestamp(),
            cycle_time_s=None if r.attempt.verdict == INCOMPLETE else r.attempt.cycle_time_s,
            station=r.station,
            slot=r.slot,
        )
        for r in data.units
        if not r.attempt.golden
    ]
    order = [op.figures.operation for op in operations if op.figures.operation != NO_OPERATION]
    takts = {op.figures.operation: op.figures.takt_s for op in operations}
    return line_figures(visits, order, takts)


def _throughput_criterion(line: Line, limit: float, sizes: SampleSizes) -> Criterion:
    name = "throughput_per_hour"
    if line.throughput_per_hour is None:
        return Criterion(name, Result.INSUFFICIENT, None, limit, line.reason or "no throughput")
    # A thin operation could be the real constraint: judge only when every one has enough.
    thin = [f for f in line.operations if f.n < sizes.min_units]
    if thin:
        why = "; ".join(f"{f.operation}: {f.n} cycle times < {sizes.min_units}" for f in thin)
        return Criterion(name, Result.INSUFFICIENT, line.throughput_per_hour, limit, why)
    value = line.throughput_per_hour
    note = f"constraint {line.constraint}"
    return Criterion(name, Result.PASS if value >= limit else Result.FAIL, value, limit, note)


def evaluate(data: RunData, protocol: Protocol, extra: Sequence[Criterion] = ()) -> Report:
    """The whole report of the run: figures, criteria and the decision; ``extra``: criteria
    of the whole run judged elsewhere (deviations, allocation), counted in the decision."""
    attempts = [u.attempt for u in data.units]
    seen_operations = list(dict.fromkeys(a.operation for a in attempts))
    ordered = [o.name for o in protocol.operations]
    ordered += [o for o in seen_operations if o not in ordered]
    characteristics = _characteristics(data, protocol)
    # Protocol characteristics with no value at all still get a criterion: insufficient.
    present = {(c.operation, c.name) for c in characteristics}
    missing_criteria: dict[str, list[Criterion]] = defaultdict(list)
    for listed in protocol.operations:
        for name, crit in listed.characteristics.items():
            if (listed.name, name) not in present:
                missing_criteria[listed.name].append(
                    Criterion(
                        f"cpk_lower_95 {name}", Result.INSUFFICIENT, None, crit.min_cpk, "no values"
                    )
                )
    limits: dict[str, dict[str, tuple[float | None, float | None]]] = defaultdict(dict)
    for c in characteristics:
        limits[c.operation][c.name] = (c.capability.lsl, c.capability.usl)
    operations = []
    gauges: list[GaugeResult] = []
    golden_by_key: GoldenValues | None = None  # gathered once, if a gauge check asks
    for operation in ordered:
        wanted = protocol.criteria_for(operation)
        figures = operation_figures(operation, attempts, wanted.takt_s if wanted else None)
        criteria = _operation_criteria(figures, wanted, protocol.sample_sizes) if wanted else []
        aql = None
        if wanted is not None and wanted.aql is not None:
            aql = _aql(data, operation, figures.units, wanted.aql)
            criteria.append(_aql_criterion(aql, wanted.aql))
        if wanted is not None and wanted.gauge is not None:
            if golden_by_key is None:
                golden_by_key = golden_values(data)
            studies = gauge_results(golden_by_key, operation, wanted.gauge, limits[operation])
            gauges += studies
            criteria += [
                Criterion(g.name, Result(g.result), g.value, g.limit, g.note) for g in studies
            ]
        criteria += [
            c.criterion
            for c in characteristics
            if c.operation == operation and c.criterion is not None
        ]
        criteria += missing_criteria.get(operation, [])
        operations.append(OperationReport(figures, tuple(criteria), aql))
    order = {name: index for index, name in enumerate(ordered)}
    characteristics.sort(key=lambda c: (order.get(c.operation, len(order)), c.operation, c.name))

    golden = tuple(dict.fromkeys(a.serial for a in attempts if a.golden))
    units: dict[str, tuple[str | None, dict[str, tuple[str, int]]]] = {}
    for record in data.units:
        a = record.attempt
        if a.golden:
            continue
        _, verdicts = units.setdefault(a.serial, (record.work_order, {}))
        verdicts[a.operation] = (a.verdict, a.attempt)  # time order: the last one stays
    line = _line(data, operations)
    line_criteria: tuple[Criterion, ...] = ()
    if protocol.min_throughput_per_hour is not None:
        line_criteria = (
            _throughput_criterion(line, protocol.min_throughput_per_hour, protocol.sample_sizes),
        )
    results = [c.result for op in operations for c in op.criteria] + [c.result for c in extra]
    results += [c.result for c in line_criteria]
    return Report(
        protocol=protocol,
        decision=_decide(results),
        units=len(units),
        golden_serials=golden,
        rolled_throughput_yield=rolled_throughput_yield(
            op.figures.first_pass_yield for op in operations
        ),
        operations=tuple(operations),
        characteristics=tuple(characteristics),
        first_record=data.units[0].end if data.units else None,
        last_record=data.units[-1].end if data.units else None,
        unit_rows=tuple((serial, wo, verdicts) for serial, (wo, verdicts) in units.items()),
        run_criteria=tuple(extra),
        line=line,
        line_criteria=line_criteria,
        resources=resource_splits(data, [o for o in ordered if o != NO_OPERATION]),
        gauges=tuple(gauges),
        measurement_notes=measurement_notes(gauges, [op.figures for op in operations]),
    )
