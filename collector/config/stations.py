"""The ``stations`` section: which unit, operation and verdict a station's readings belong to
(collector.context applies it)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from collector.devices import Model as _Model
from collector.devices import Name
from collector.devices import reject_duplicates as _reject_duplicates


class TagRef(_Model):
    device: Name = Field(description="Device name (a device of this station).")
    tag: Name = Field(description="Tag name on that device.")

    def __str__(self) -> str:
        return f"{self.device}.{self.tag}"


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    REWORK = "rework"
    SCRAP = "scrap"
    #: Never configured: what a unit gets when it ends without a verdict (timeout, next serial).
    INCOMPLETE = "incomplete"


class VerdictSource(TagRef):
    map: dict[str, Verdict] | None = Field(
        default=None,
        description="Tag value -> verdict, e.g. {1: pass, 2: fail, 3: rework}. Values not in "
        "the map mean 'no verdict yet'. Without a map: the strings pass/fail/rework/scrap "
        "(any case), and a bool (true: pass, false: fail).",
    )

    @field_validator("map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML gives {1: pass} an int key; tag values are compared by their text.
        if isinstance(value, dict):
            return {verdict_key(k): v for k, v in value.items()}
        return value

    @field_validator("map")
    @classmethod
    def _no_incomplete(cls, value: dict[str, Verdict] | None) -> dict[str, Verdict] | None:
        if value and Verdict.INCOMPLETE in value.values():
            raise ValueError(
                "'incomplete' is given by the collector; map to pass, fail, rework or scrap"
            )
        return value


def verdict_key(value: object) -> str:
    """How a tag value is looked up in ``verdict.map``: 1, 1.0 and "1" are the same key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class UnitEnd(StrEnum):
    VERDICT = "verdict"
    CYCLE_COMPLETE = "cycle_complete"
    NEXT_SERIAL = "next_serial"


class StationConfig(_Model):
    name: Name = Field(description="Station name, unique on this collector.")
    operation: Name = Field(description="The operation this station performs, e.g. flash.")
    operation_source: TagRef | None = Field(
        default=None,
        description="A device tag naming the operation, for a station that runs several; "
        "`operation` applies while it is empty or unread.",
    )
    serial_source: TagRef | Literal["http"] | None = Field(
        default=None,
        description="Where the unit serial comes from: a device tag (a scanner's `serial`, "
        "Modbus string registers), or `http` for POST /stations/{name}/unit.",
    )
    verdict: VerdictSource | None = Field(
        default=None, description="The tester tag that holds the verdict (result code)."
    )
    failure_code: TagRef | None = Field(
        default=None, description="The tester tag that holds the failure code."
    )
    cycle_complete: TagRef | None = Field(
        default=None, description="A bool tag that turns true when the operation is done."
    )
    unit_end: UnitEnd | None = Field(
        default=None,
        description="What ends a unit besides the next serial and the timeout: verdict (the "
        "verdict tag changes to a verdict), cycle_complete (that tag turns true) or "
        "next_serial. Default: verdict if a verdict tag is set, else next_serial.",
    )
    unit_timeout_s: float = Field(
        default=3600,
        gt=0,
        le=7 * 86400,
        description="A unit still open this long after it started ends with its verdict so "
        "far, or `incomplete`.",
    )
    key_characteristics: list[TagRef] = Field(
        default_factory=list,
        description="Tags whose last, minimum and maximum values go into each unit record.",
    )

    @property
    def end(self) -> UnitEnd:
        if self.unit_end is not None:
            return self.unit_end
        return UnitEnd.VERDICT if self.verdict is not None else UnitEnd.NEXT_SERIAL

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.unit_end is UnitEnd.VERDICT and self.verdict is None:
            raise ValueError("unit_end is 'verdict' but no verdict tag is set")
        if self.unit_end is UnitEnd.CYCLE_COMPLETE and self.cycle_complete is None:
            raise ValueError("unit_end is 'cycle_complete' but no cycle_complete tag is set")
        if self.failure_code is not None and self.verdict is None:
            raise ValueError("failure_code needs a verdict tag as well")
        _reject_duplicates((k.tag for k in self.key_characteristics), "key characteristic tag")
        return self

    def tag_refs(self) -> list[tuple[str, TagRef]]:
        """(field, reference) of every device tag this station reads signals from."""
        refs: list[tuple[str, TagRef | None]] = [
            (
                "serial_source",
                self.serial_source if isinstance(self.serial_source, TagRef) else None,
            ),
            ("operation_source", self.operation_source),
            ("verdict", self.verdict),
            ("failure_code", self.failure_code),
            ("cycle_complete", self.cycle_complete),
        ]
        refs += [(f"key_characteristics[{i}]", k) for i, k in enumerate(self.key_characteristics)]
        return [(f, r) for f, r in refs if r is not None]
