"""Pilot-run statistics: yields, cycle time, capability and control charts.

Pure functions over plain values (no I/O, no clock), shared by the store's pilot-run report
(store/report/) and the collector's live per-station figures. docs/statistics.md gives every
formula and its source.
"""

from quality.capability import (
    Capability,
    GoldenCheck,
    Measurement,
    capability,
    golden_checks,
    indices,
    lower_bound_95,
    sd_overall,
    sd_within,
)
from quality.charts import RULES, ChartLimits, RuleViolation, chart_limits, western_electric
from quality.yields import (
    Attempt,
    CycleTime,
    OperationFigures,
    ParetoBar,
    cycle_time,
    operation_figures,
    pareto,
    percentile,
    rolled_throughput_yield,
)

__all__ = [
    "RULES",
    "Attempt",
    "Capability",
    "ChartLimits",
    "CycleTime",
    "GoldenCheck",
    "Measurement",
    "OperationFigures",
    "ParetoBar",
    "RuleViolation",
    "capability",
    "chart_limits",
    "cycle_time",
    "golden_checks",
    "indices",
    "lower_bound_95",
    "operation_figures",
    "pareto",
    "percentile",
    "rolled_throughput_yield",
    "sd_overall",
    "sd_within",
    "western_electric",
]
