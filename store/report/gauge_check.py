"""The gauge check from the golden samples: a type-1 study (quality.gauge) per characteristic
the protocol gives a golden sample's reference value for, over that sample's repeated
measurements at the operation, judged against ``min_cg``; and, where a gauge fails at an
operation that lost first-pass yield, a sentence saying the loss may be measurement rather
than process.

Pure: works on loaded :class:`~store.report.load.RunData` and the run's characteristics.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from quality import OperationFigures
from quality.gauge import GaugeStudy, type1_study
from store.report.load import RunData
from store.report.protocol import GaugeCriterion

#: A bias is called significant at this level (two-sided t-test).
BIAS_ALPHA = 0.05
FAIL, INSUFFICIENT = "fail", "insufficient"


@dataclass(frozen=True, slots=True)
class GaugeResult:
    operation: str
    characteristic: str
    serial: str  # the golden sample
    reference: float
    lsl: float | None
    usl: float | None
    study: GaugeStudy | None  # None: too few measurements or no two-sided tolerance
    # The criterion (store.report.evaluate makes it a Criterion): its name, result (pass,
    # fail or insufficient), value min(Cg, Cgk), limit min_cg and note.
    name: str
    result: str
    value: float | None
    limit: float
    note: str


Judged = tuple[str, float | None, str]  # result, value, note


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _judge(study: GaugeStudy | None, wanted: GaugeCriterion, n: int, tolerance: bool) -> Judged:
    if not tolerance:
        return INSUFFICIENT, None, "no two-sided tolerance"
    if study is None or n < wanted.min_measurements:
        return (
            INSUFFICIENT,
            None,
            f"{n} measurements of the golden sample < {wanted.min_measurements}",
        )
    if study.cg is None or study.cgk is None or study.t is None or study.p_value is None:
        why = "no spread in the repeated measurements: the gauge's resolution is too coarse"
        return INSUFFICIENT, None, why
    value = min(study.cg, study.cgk)
    significant = "significant" if study.p_value < BIAS_ALPHA else "not significant"
    note = (
        f"Cg {study.cg:.2f}, Cgk {study.cgk:.2f} over {study.n} measurements; bias "
        f"{study.bias:+.4g} (t = {study.t:.2f}, p = {_p(study.p_value)}: {significant} at 5 %)"
    )
    return ("pass" if value >= wanted.min_cg else FAIL), value, note


GoldenValues = dict[tuple[str, str, str], list[float]]  # (serial, operation, name) -> values


def golden_values(data: RunData) -> GoldenValues:
    """Every golden sample's measurements, in time order, once for all the studies."""
    found: GoldenValues = defaultdict(list)
    for v in data.characteristics:
        if v.golden and v.value is not None and math.isfinite(v.value):
            found[(v.serial, v.operation, v.name)].append(v.value)
    return found


def gauge_results(
    golden: GoldenValues,
    operation: str,
    wanted: GaugeCriterion,
    limits: dict[str, tuple[float | None, float | None]],
) -> list[GaugeResult]:
    """One study per (golden sample, characteristic) the protocol references, in its order.
    ``limits``: characteristic -> (LSL, USL) as the run's latest record gives them."""
    found = []
    for serial, references in wanted.references.items():
        for name, reference in references.items():
            values = golden.get((serial, operation, name), [])
            lsl, usl = limits.get(name, (None, None))
            tolerance = lsl is not None and usl is not None and usl > lsl
            study = None
            if tolerance and len(values) >= 2:
                assert lsl is not None
                assert usl is not None
                study = type1_study(values, reference, usl - lsl)
            result, value, note = _judge(study, wanted, len(values), tolerance)
            found.append(
                GaugeResult(
                    operation,
                    name,
                    serial,
                    reference,
                    lsl,
                    usl,
                    study,
                    f"gauge_cg {name} {serial}",
                    result,
                    value,
                    wanted.min_cg,
                    note,
                )
            )
    return found


def measurement_notes(
    results: Sequence[GaugeResult], figures: Sequence[OperationFigures]
) -> tuple[str, ...]:
    """A sentence per operation that lost first-pass yield while a gauge study there failed
    (or showed a significant bias): the loss may be the measurement's, not the process's."""
    by_operation = {f.operation: f for f in figures}
    notes = []
    for operation in dict.fromkeys(r.operation for r in results):
        f = by_operation.get(operation)
        if f is None or f.first_pass_yield is None or f.first_pass_yield >= 1.0:
            continue
        weak = [
            r
            for r in results
            if r.operation == operation
            and r.study is not None
            and (r.result == FAIL or (r.study.p_value is not None and r.study.p_value < BIAS_ALPHA))
        ]
        if not weak:
            continue
        what = "; ".join(f"{r.characteristic} on golden sample {r.serial}: {r.note}" for r in weak)
        notes.append(
            f"The first-pass yield loss at {operation} ({100 * (1 - f.first_pass_yield):.1f} % "
            f"of first attempts failed) may be measurement rather than process: the gauge "
            f"study fails or shows a bias ({what}). Units near the limits may be judged wrongly; "
            "check the gauge before changing the process."
        )
    return tuple(notes)
