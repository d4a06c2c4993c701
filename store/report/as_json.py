"""The report as JSON: the shape documented in docs/report.md, ``null`` where a figure is
undefined (one-sided limits, n < 2, zero spread, nothing to divide by)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson

from quality import Capability, OperationFigures
from quality.line import Line, per_hour
from store.report.as_json_analysis import analysis_dict
from store.report.evaluate import (
    NOT_A_PREDICTION,
    AqlResult,
    CharacteristicReport,
    Criterion,
    Report,
)

REPORT_VERSION = 1


def _num(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _criterion(c: Criterion) -> dict[str, Any]:
    return {
        "name": c.name,
        "result": c.result.value,
        "value": _num(c.value),
        "limit": _num(c.limit),
        "note": c.note or None,
    }


def _aql(a: AqlResult | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "level": a.level,
        "aql": a.aql,
        "lot_size": a.lot_size,
        "code_letter": a.code_letter,
        "sample_size": a.sample_size,
        "accept": a.accept,
        "reject": a.reject,
        "full_inspection": a.full_inspection,
        "p50": a.p50,
        "inspected": a.inspected,
        "defects": a.defects,
        "verdict": a.verdict,
    }


def _operation(
    f: OperationFigures, criteria: tuple[Criterion, ...], aql: AqlResult | None
) -> dict[str, Any]:
    return {
        "operation": f.operation,
        "units": f.units,
        "attempts": f.attempts,
        "first_pass_yield": _num(f.first_pass_yield),
        "final_yield": _num(f.final_yield),
        "scrap_rate": _num(f.scrap_rate),
        "rework_rate": _num(f.rework_rate),
        "retests": f.retests,
        "retest_pass_rate": _num(f.retest_pass_rate),
        "cycle_time_s": {
            "n": f.cycle_time.n,
            "mean": _num(f.cycle_time.mean),
            "p50": _num(f.cycle_time.p50),
            "p95": _num(f.cycle_time.p95),
            "within_takt": _num(f.cycle_time.within_takt),
        },
        "takt_s": _num(f.takt_s),
        "pareto": [
            {"code": b.code, "count": b.count, "share": b.share, "cumulative": b.cumulative}
            for b in f.pareto
        ],
        "golden_units": f.golden_units,
        "aql": _aql(aql),
        "criteria": [_criterion(c) for c in criteria],
    }


def _chart(cap: Capability) -> dict[str, Any] | None:
    if cap.chart is None:
        return None
    return {
        "center": _num(cap.chart.center),
        "ucl": _num(cap.chart.ucl) if cap.chart.sigma > 0 else None,
        "lcl": _num(cap.chart.lcl) if cap.chart.sigma > 0 else None,
        "mr_center": _num(cap.chart.mr_center),
        "mr_ucl": _num(cap.chart.mr_ucl),
        "serials": list(cap.serials),
        "values": list(cap.values),
    }


def _characteristic(c: CharacteristicReport) -> dict[str, Any]:
    cap = c.capability
    return {
        "operation": c.operation,
        "name": c.name,
        "critical": c.critical,
        "n": cap.n,
        "missing": cap.missing,
        "subgroups": cap.subgroups,
        "mean": _num(cap.mean),
        "sd_within": _num(cap.sd_within),
        "sd_overall": _num(cap.sd_overall),
        "cp": _num(cap.cp),
        "cpk": _num(cap.cpk),
        "pp": _num(cap.pp),
        "ppk": _num(cap.ppk),
        "cpk_lower_95": _num(cap.cpk_lower_95),
        "ppk_lower_95": _num(cap.ppk_lower_95),
        "lsl": _num(cap.lsl),
        "usl": _num(cap.usl),
        "target": _num(c.target),
        "out_of_spec": _num(cap.out_of_spec),
        "out_of_spec_count": cap.out_of_spec_count,
        "rule_violations": [
            {"rule": v.rule, "serial": v.serial, "index": v.index, "value": v.value}
            for v in cap.violations
        ],
        "criterion": _criterion(c.criterion) if c.criterion is not None else None,
        "control": (
            {
                "rules": list(c.control.rules),
                "signals": c.control.signals,
                "in_control": c.control.in_control,
                "note": None if c.control.in_control else NOT_A_PREDICTION,
            }
            if c.control is not None
            else None
        ),
        "chart": _chart(cap),
        "golden": [
            {
                "serial": g.serial,
                "n": g.n,
                "first": g.first,
                "last": g.last,
                "min": g.minimum,
                "max": g.maximum,
                "drift": g.drift,
                "out_of_spec": g.out_of_spec,
            }
            for g in c.golden
        ],
    }


def _line(line: Line | None, criteria: tuple[Criterion, ...]) -> dict[str, Any] | None:
    if line is None:
        return None
    return {
        "operations": [
            {
                "operation": f.operation,
                "stations": f.stations,
                "n": f.n,
                "p50_s": _num(f.p50_s),
                "p95_s": _num(f.p95_s),
                "effective_p50_s": _num(f.effective_p50_s),
                "effective_p95_s": _num(f.effective_p95_s),
                "takt_s": _num(f.takt_s),
                "over_takt_p50": f.over_takt_p50,
                "over_takt_p95": f.over_takt_p95,
            }
            for f in line.operations
        ],
        "constraint": line.constraint,
        "throughput_per_hour": _num(line.throughput_per_hour),
        "takt_s": _num(line.takt_s),
        "takt_per_hour": _num(per_hour(line.takt_s)),
        "reason": line.reason,
        "wip": [
            {
                "between": list(w.between),
                "units": w.units,
                "skipped": w.skipped,
                "mean": _num(w.mean),
                "max": w.max,
                "mean_wait_s": _num(w.mean_wait_s),
                "reason": w.reason,
            }
            for w in line.wip
        ],
        "criteria": [_criterion(c) for c in criteria],
    }


def report_dict(report: Report, generated_at: datetime) -> dict[str, Any]:
    run = report.protocol.run
    results = [c.result.value for op in report.operations for c in op.criteria]
    results += [c.result.value for c in report.run_criteria]
    results += [c.result.value for c in report.line_criteria]
    return {
        "report_version": REPORT_VERSION,
        "title": run.name,
        "product": run.product,
        "generated_at": _time(generated_at),
        "decision": report.decision.value,
        "criteria_count": {r: results.count(r) for r in ("pass", "fail", "insufficient")},
        "units": report.units,
        "golden_units": list(report.golden_serials),
        "rolled_throughput_yield": _num(report.rolled_throughput_yield),
        "run": {
            "work_orders": list(run.work_orders),
            "serial_pattern": run.serial_pattern,
            "start": _time(run.start),
            "end": _time(run.end),
            "first_record": _time(report.first_record),
            "last_record": _time(report.last_record),
        },
        "sample_sizes": report.protocol.sample_sizes.model_dump(mode="json"),
        "operations": [_operation(op.figures, op.criteria, op.aql) for op in report.operations],
        "characteristics": [_characteristic(c) for c in report.characteristics],
        "run_criteria": [_criterion(c) for c in report.run_criteria],
        "line": _line(report.line, report.line_criteria),
        **analysis_dict(report),
    }


def render_json(report: Report, generated_at: datetime) -> bytes:
    return orjson.dumps(report_dict(report, generated_at), option=orjson.OPT_INDENT_2)
