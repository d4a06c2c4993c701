"""The pilot protocol file: which units form the run, the exit criteria per operation and the
minimum sample sizes, fixed before the run (docs/report.md documents every option).

``load_protocol(path)`` validates the whole file and returns a frozen :class:`Protocol` or
raises :class:`~common.errors.ConfigError` whose problems read ``FILE:LINE: path: problem``,
like the collector's config (through the same hardened loader, common.yamlmodel).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.config import Name, compile_pattern
from common.yamlmodel import parse_yaml_model, read_text
from quality.charts import RULES
from quality.sampling import AQLS, Level

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubgroupBy(StrEnum):
    """What makes a rational subgroup of a characteristic's values, for the minimum count."""

    HOUR = "hour"  # the clock hour (UTC) the unit's record ended in
    DAY = "day"  # the day (UTC)
    WORK_ORDER = "work_order"


class RunSelection(_Model):
    """Which unit records form the run. Every given condition must hold; none given: all."""

    name: str = Field(default="Pilot run", max_length=200, description="Title of the report.")
    product: str | None = Field(default=None, max_length=200, description="Product and revision.")
    work_orders: tuple[str, ...] = Field(
        default=(), description="Work orders of the run; empty: any (also records without one)."
    )
    serial_pattern: str | None = Field(
        default=None, description="Regular expression a serial must match in full."
    )
    start: datetime | None = Field(
        default=None, description="Records that ended at or after this time (with a zone)."
    )
    end: datetime | None = Field(
        default=None, description="Records that ended before this time (with a zone)."
    )

    @field_validator("serial_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_pattern(value)
        return value

    @field_validator("start", "end")
    @classmethod
    def _zoned(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{value.isoformat()} has no time zone: add Z or +01:00")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("start must be before end")
        return self


class SampleSizes(_Model):
    """Below these, a criterion is `insufficient` (too few data to decide), never a guess."""

    min_units: int = Field(default=30, ge=1, description="Units per operation for yields.")
    min_pieces: int = Field(default=50, ge=2, description="Values per characteristic for Cpk.")
    min_subgroups: int = Field(
        default=5, ge=1, description="Distinct subgroups per characteristic for Cpk."
    )
    subgroup_by: SubgroupBy = Field(
        default=SubgroupBy.HOUR, description="What makes a subgroup: hour, day or work_order."
    )


def _known_rules(value: tuple[int, ...]) -> tuple[int, ...]:
    unknown = [rule for rule in value if rule not in RULES]
    if unknown:
        raise ValueError(f"unknown Western Electric rule {unknown[0]}; rules are 1 to 4")
    if not value:
        raise ValueError("name at least one rule (1: beyond 3 sigma, 2: 2 of 3 beyond 2 sigma)")
    return tuple(sorted(set(value)))


class CharacteristicCriterion(_Model):
    min_cpk: float = Field(gt=0.0, description="Minimum Cpk, judged on its lower 95 % bound.")
    require_control: bool | None = Field(
        default=None,
        description="Fail the Cpk criterion while the I-MR chart signals control_rules; "
        "default: on for characteristics the records flag critical.",
    )
    control_rules: tuple[int, ...] = Field(
        default=(1, 2), description="Western Electric rules (1-4) that mean out of control."
    )

    _rules = field_validator("control_rules")(_known_rules)


class AqlCriterion(_Model):
    """A MIL-STD-105E single sampling plan, normal inspection, judged on the run's units."""

    level: Level = Field(
        default=Level.II, description="Inspection level: S-1, S-2, S-3, S-4, I, II or III."
    )
    aql: float = Field(description="AQL in percent nonconforming, a Table II-A column.")
    lot_size: int | None = Field(
        default=None, ge=2, description="Lot size; default: the run's units at the operation."
    )

    @field_validator("aql")
    @classmethod
    def _column(cls, value: float) -> float:
        for column in AQLS:
            if abs(value - column) <= 1e-9 * column:
                return column
        raise ValueError(
            f"AQL {value} is not a column of MIL-STD-105E Table II-A; one of "
            + ", ".join(f"{a:g}" for a in AQLS)
        )


class GaugeCriterion(_Model):
    """A type-1 gauge study from the golden samples' repeated measurements at this operation:
    Cg and Cgk against ``min_cg`` (docs/statistics.md)."""

    min_cg: float = Field(
        default=1.33, gt=0.0, description="Minimum Cg and Cgk of each referenced characteristic."
    )
    min_measurements: int = Field(
        default=25, ge=2, description="Repeated measurements a study needs (usually 25 to 50)."
    )
    references: dict[str, dict[str, float]] = Field(
        description="Golden sample serial -> characteristic -> its reference value."
    )

    @field_validator("references")
    @classmethod
    def _some(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        if not any(value.values()):
            raise ValueError("name a golden sample and a characteristic's reference value")
        return value


class OperationCriteria(_Model):
    """The exit criteria of one operation. A criterion left out is not judged."""

    name: Name = Field(description="The operation, as in the unit records.")
    takt_s: float | None = Field(
        default=None, gt=0.0, description="Takt; default: the takt the unit records carry."
    )
    min_first_pass_yield: Rate | None = Field(default=None, description="Minimum FPY, 0..1.")
    max_scrap_rate: Rate | None = Field(default=None, description="Maximum scrap rate, 0..1.")
    max_rework_rate: Rate | None = Field(default=None, description="Maximum rework rate, 0..1.")
    cycle_time_p95_within_takt: bool = Field(
        default=False, description="Require the 95th percentile of cycle time <= takt."
    )
    min_cpk_critical: float | None = Field(
        default=None,
        gt=0.0,
        description="Minimum Cpk (lower 95 % bound) of every characteristic the unit records "
        "flag critical.",
    )
    characteristics: dict[str, CharacteristicCriterion] = Field(
        default_factory=dict,
        description="Per characteristic name: its own minimum Cpk (critical or not).",
    )
    require_control: bool | None = Field(
        default=None,
        description="For the operation's characteristics without their own setting: fail the "
        "Cpk criterion while the I-MR chart signals control_rules; default: on for critical "
        "characteristics.",
    )
    control_rules: tuple[int, ...] = Field(
        default=(1, 2), description="Western Electric rules (1-4) that mean out of control."
    )
    aql: AqlCriterion | None = Field(
        default=None, description="An AQL sampling plan judged on the units' first attempts."
    )
    gauge: GaugeCriterion | None = Field(
        default=None, description="A type-1 gauge study of the golden samples' measurements."
    )

    _rules = field_validator("control_rules")(_known_rules)


class AllocationRequirement(_Model):
    min_units: int = Field(default=0, ge=0, description="Units whose current disposition it is.")
    min_users: int | None = Field(
        default=None, ge=1, description="field_test: distinct users (a disposition's detail.user)."
    )


class SuccessRunPlan(_Model):
    reliability: float = Field(gt=0.0, lt=1.0, description="Reliability to demonstrate, R.")
    confidence: float = Field(gt=0.0, lt=1.0, description="Confidence of the claim, C.")


class CertificationTest(_Model):
    """A destructive (or long) certification test judged on the units allocated to it: the
    dispositions ``certification`` whose ``detail.test`` names it (docs/pilot-record.md)."""

    success_run: SuccessRunPlan = Field(
        description="Zero-failure plan: n = ceil(ln(1 - C) / ln(R)) units, none may fail."
    )


Severity = Literal["minor", "major", "critical"]
Allocation = Literal["field_test", "certification", "golden", "retained", "shipped"]


class Protocol(_Model):
    run: RunSelection = Field(default_factory=RunSelection)
    sample_sizes: SampleSizes = Field(default_factory=SampleSizes)
    operations: tuple[OperationCriteria, ...] = Field(
        default=(), description="Exit criteria per operation, in line order."
    )
    min_throughput_per_hour: float | None = Field(
        default=None,
        gt=0.0,
        description="Minimum units per hour the constraining operation allows (the line view).",
    )
    signoff: tuple[str, ...] = Field(
        default=("Quality", "Production", "Engineering"),
        description="The functions that sign the gate (signature lines in the HTML report).",
    )
    # Judged on the run's record (store/record): docs/pilot-record.md.
    max_open_deviations: dict[Severity, int] = Field(
        default_factory=dict, description="Most open deviations per severity, e.g. critical: 0."
    )
    allocation: dict[Allocation, AllocationRequirement] = Field(
        default_factory=dict, description="Units each disposition needs, e.g. golden: 3."
    )
    certification_tests: dict[
        Annotated[str, Field(min_length=1, max_length=200)], CertificationTest
    ] = Field(
        default_factory=dict,
        description="Per certification test (a certification disposition's detail.test): "
        "its success-run plan.",
    )

    @field_validator("operations")
    @classmethod
    def _unique(cls, value: tuple[OperationCriteria, ...]) -> tuple[OperationCriteria, ...]:
        seen: set[str] = set()
        for operation in value:
            if operation.name in seen:
                raise ValueError(f"duplicate operation {operation.name!r}")
            seen.add(operation.name)
        return value

    def criteria_for(self, operation: str) -> OperationCriteria | None:
        return next((o for o in self.operations if o.name == operation), None)


def parse_protocol(text: str, filename: str = "<protocol>") -> Protocol:
    """Validate a protocol document; raise ConfigError listing every problem."""
    return parse_yaml_model(text, Protocol, filename, docs="docs/report.md")


def load_protocol(path: Path | str) -> Protocol:
    path = Path(path)
    return parse_protocol(read_text(path, "protocol file"), str(path))
