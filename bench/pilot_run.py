"""A synthetic pilot run in the store's two report tables, for the report's tests and benchmark.

The tables are the store's own (``store.schema``: ``units`` and ``characteristics``, what
the report reads). ``fill_pilot_run`` writes a deterministic run: retests, rework, scrap,
failure codes, cycle times around takt, two-sided and one-sided characteristics (one drifting
mid-run) and golden samples. With ``resources`` each record names its operator (by shift),
fixture nest, mould cavity and program revision; ``worse_fixture`` makes one nest fail more
and shift the critical characteristics at the first operation; ``golden_drift`` moves the
golden samples' readings by that many sigma over the run (a drifting gauge).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from store.schema import characteristics, metadata, units

OPERATIONS = ("press-fit", "flash", "functional-test", "burn-in", "final-inspection")
T0 = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
COLLECTOR = "line1-pc1"
OUTBOX = "6f1d0c2a9b7e4e55"
FAILURE_CODES = ("317", "317", "317", "120", "120", "88", "41", "9")


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    lsl: float | None
    usl: float | None
    target: float
    sigma: float
    critical: bool
    drift_after: float | None = None  # share of the run after which the mean shifts by 2 sigma


def specs(count: int) -> list[Spec]:
    """``count`` characteristics: two-sided capable ones, one upper-only, one lower-only, one
    drifting mid-run, one not capable; the first three critical."""
    kinds = [
        Spec("supply_voltage", 11.4, 12.6, 12.0, 0.09, True),
        Spec("leakage_current", None, 15.0, 10.0, 0.9, True),
        Spec("press_force", 180.0, 220.0, 200.0, 3.2, True, drift_after=0.6),
        Spec("insulation_mohm", 50.0, None, 80.0, 5.0, False),
        Spec("flatness_um", 0.0, 40.0, 20.0, 5.5, False),
    ]
    out = []
    for i in range(count):
        base = kinds[i % len(kinds)]
        suffix = "" if i < len(kinds) else f"_{i // len(kinds)}"
        out.append(
            Spec(
                base.name + suffix,
                base.lsl,
                base.usl,
                base.target,
                base.sigma,
                base.critical and i < 3,
                base.drift_after,
            )
        )
    return out


FIXTURES = ("nest-1", "nest-2", "nest-3", "nest-4")


def resources_of(index: int, n_units: int) -> dict[str, str]:
    """The resources of the run's unit ``index``: three operators in shifts, four fixture nests
    in turn, two cavities in blocks of four (not in step with the nests), a program revision
    changed two thirds into the run."""
    return {
        "operator": ("op-anna", "op-ben", "op-chen")[min(2, 3 * index // max(1, n_units))],
        "fixture": FIXTURES[index % len(FIXTURES)],
        "cavity": f"cavity-{(index // 4) % 2 + 1}",
        "program": "fw-1.4" if index < 2 * n_units // 3 else "fw-1.5",
    }


def golden_reference(spec: Spec, serial: str) -> float:
    """A golden sample's true value of a characteristic (its reference in a protocol)."""
    return spec.target + (0.5 if serial.endswith("1") else -0.5) * spec.sigma


def fill_pilot_run(
    engine: sa.Engine,
    *,
    n_units: int = 60,
    n_operations: int = 3,
    n_characteristics: int = 3,
    n_golden: int = 2,
    seed: int = 1,
    golden_times: int = 3,
    resources: bool = False,
    worse_fixture: str | None = None,
    golden_drift: float = 0.0,
) -> None:
    """Create the tables if needed and write one pilot run (deterministic for a seed).
    The golden samples are measured ``golden_times`` times over the run, at every operation."""
    rng = random.Random(seed)
    metadata.create_all(engine)
    operations = OPERATIONS[:n_operations]
    takts = {op: 30.0 + 15.0 * i for i, op in enumerate(operations)}
    chars = specs(n_characteristics)
    unit_rows: list[dict[str, Any]] = []
    char_rows: list[dict[str, Any]] = []
    seq = 0

    def record(
        serial: str, index: int, op_index: int, *, attempt: int, verdict: str, golden: bool
    ) -> None:
        nonlocal seq
        seq += 1
        operation = operations[op_index]
        takt = takts[operation]
        end = T0 + timedelta(seconds=150 * index + 30 * op_index + 7 * (attempt - 1) + 0.25)
        cycle = max(1.0, rng.gauss(0.8 * takt, 0.07 * takt))
        work_order = "WO-1001" if index < n_units // 2 else "WO-1002"
        made_by = resources_of(index, n_units) if resources else None
        unit_rows.append(
            {
                "collector": COLLECTOR,
                "outbox": OUTBOX,
                "seq": seq,
                "serial": serial,
                "station": f"{operation}-1",
                "slot": None,
                "operation": operation,
                "attempt": attempt,
                "start_ts": end - timedelta(seconds=cycle),
                "end_ts": end,
                "cycle_time_s": round(cycle, 3),
                "takt_s": takt,
                "verdict": verdict,
                "failure_code": rng.choice(FAILURE_CODES) if verdict in ("fail", "scrap") else None,
                "ended_by": "verdict",
                "readings": 40,
                "golden": golden,
                "work_order": None if golden else work_order,
                "resources": None if made_by is None else json.dumps(made_by, sort_keys=True),
            }
        )
        worse = made_by is not None and made_by["fixture"] == worse_fixture and op_index == 0
        for spec in chars:
            shift = 0.0
            if spec.drift_after is not None and index > spec.drift_after * n_units:
                shift = 2.0 * spec.sigma
            if golden:  # a reference part: its own true value, the gauge's small noise
                true = golden_reference(spec, serial) + golden_drift * spec.sigma * index / n_units
                value = round(rng.gauss(true, spec.sigma / 10), 4)
            else:
                if worse and spec.critical:
                    shift += 1.5 * spec.sigma
                value = round(rng.gauss(spec.target + shift, spec.sigma), 4)
            in_spec = (spec.lsl is None or value >= spec.lsl) and (
                spec.usl is None or value <= spec.usl
            )
            char_rows.append(
                {
                    "collector": COLLECTOR,
                    "outbox": OUTBOX,
                    "unit_seq": seq,
                    "serial": serial,
                    "operation": operation,
                    "name": spec.name,
                    "last": value,
                    "min": value - abs(rng.gauss(0, spec.sigma / 4)),
                    "max": value + abs(rng.gauss(0, spec.sigma / 4)),
                    "lsl": spec.lsl,
                    "usl": spec.usl,
                    "target": spec.target,
                    "critical": spec.critical,
                    "in_spec": in_spec,
                    "end_ts": end,
                }
            )

    every = max(1, n_units // golden_times)
    for index in range(n_units):
        serial = f"PILOT-{index + 1:04d}"
        for op_index in range(len(operations)):
            roll = rng.random()
            fails = 0.04
            if worse_fixture is not None and op_index == 0 and resources:
                fails = 0.35 if resources_of(index, n_units)["fixture"] == worse_fixture else 0.02
            if roll < fails:  # fails, then passes its retest (or is scrapped)
                record(serial, index, op_index, attempt=1, verdict="fail", golden=False)
                retest = "pass" if rng.random() < 0.8 else "scrap"
                record(serial, index, op_index, attempt=2, verdict=retest, golden=False)
            elif roll < fails + 0.01:
                record(serial, index, op_index, attempt=1, verdict="rework", golden=False)
                record(serial, index, op_index, attempt=2, verdict="pass", golden=False)
            else:
                record(serial, index, op_index, attempt=1, verdict="pass", golden=False)
            if unit_rows[-1]["verdict"] == "scrap":
                break
        if n_golden and index % every == 0:
            for g in range(n_golden):
                for op_index in range(len(operations)):
                    attempt = 1 + index // every
                    record(
                        f"GOLD-{g + 1}",
                        index,
                        op_index,
                        attempt=attempt,
                        verdict="pass",
                        golden=True,
                    )
    with engine.begin() as conn:
        conn.execute(units.insert(), unit_rows)
        conn.execute(characteristics.insert(), char_rows)
