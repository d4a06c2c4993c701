"""The JSON of the analyses beside the exit criteria (docs/report.md): results by resource
(``resources``, ``resource_findings``) and the gauge check from the golden samples
(``gauge``, ``measurement_notes``)."""

from __future__ import annotations

import math
from typing import Any

from store.report.evaluate import Report
from store.report.gauge_check import GaugeResult
from store.report.resources import ResourceSplit, Test


def _num(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _test(t: Test | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "test": t.name,
        "statistic": _num(t.statistic),
        "p_value": t.p_value,
        "p_adjusted": t.p_adjusted,
        "df": t.df,
        "df_denominator": _num(t.df_denominator),
    }


def _split(s: ResourceSplit) -> dict[str, Any]:
    return {
        "operation": s.operation,
        "kind": s.kind,
        "without": s.without,
        "values": [
            {
                "value": g.value,
                "units": g.units,
                "first_passes": g.first_passes,
                "first_pass_yield": None
                if g.first_pass_yield is None
                else g.first_pass_yield.estimate,
                "first_pass_yield_95": None
                if g.first_pass_yield is None
                else [g.first_pass_yield.lower, g.first_pass_yield.upper],
                "characteristics": [
                    {"name": c.name, "n": c.n, "mean": _num(c.mean), "cpk": _num(c.cpk)}
                    for c in g.characteristics
                ],
            }
            for g in s.groups
        ],
        "yield_test": _test(s.yield_test),
        "yield_note": s.yield_note or None,
        "mean_tests": [
            {"characteristic": m.characteristic, **(_test(m.test) or {}), "note": m.note or None}
            for m in s.means
        ],
        "differs": bool(s.findings),
        "findings": list(s.findings),
    }


def _gauge(g: GaugeResult) -> dict[str, Any]:
    st = g.study
    return {
        "operation": g.operation,
        "characteristic": g.characteristic,
        "serial": g.serial,
        "reference": g.reference,
        "lsl": g.lsl,
        "usl": g.usl,
        "n": None if st is None else st.n,
        "mean": None if st is None else st.mean,
        "sd": None if st is None else st.sd,
        "bias": None if st is None else st.bias,
        "t": None if st is None else _num(st.t),
        "p_value": None if st is None else st.p_value,
        "cg": None if st is None else _num(st.cg),
        "cgk": None if st is None else _num(st.cgk),
        "result": g.result,
        "min_cg": g.limit,
        "note": g.note or None,
    }


def analysis_dict(report: Report) -> dict[str, Any]:
    """The keys these analyses add at the top level of the report's JSON."""
    return {
        "resources": [_split(s) for s in report.resources],
        "resource_findings": [f for s in report.resources for f in s.findings],
        "gauge": [_gauge(g) for g in report.gauges],
        "measurement_notes": list(report.measurement_notes),
    }
