"""The record's request bodies: read bounded, parsed strictly, refused with words.

A body is read by hand (api.read_body, after the token was checked), at most MAX_BODY_BYTES.
Unknown fields, wrong types and
control or format characters (anywhere: a bidi override can make a record lie) are 422 with
the field's path; free-text fields may hold line breaks and tabs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contract.text import MAX_SERIAL_CHARS, is_control
from store.record.errors import RecordError

MAX_BODY_BYTES = 64 * 1024
#: Fields that are prose: a line break or a tab is text there, not noise.
PROSE = frozenset({"text", "reason", "description", "action", "cause"})
_PROSE_CONTROLS = frozenset("\n\r\t")

Short = Annotated[str, Field(min_length=1, max_length=200)]
Prose = Annotated[str, Field(min_length=1, max_length=8000)]
Serial = Annotated[str, Field(min_length=1, max_length=MAX_SERIAL_CHARS)]
DetailValue = Annotated[str, Field(max_length=500)] | bool | int | float | None
M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple[int | str, ...]) -> str:
    return "body" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def control_problem(value: Any, loc: tuple[int | str, ...] = ()) -> str | None:
    """The first string (value or key) holding a control or format character, as
    ``body.field: ...``; None when there is none."""
    if isinstance(value, str):
        allowed = _PROSE_CONTROLS if loc and loc[-1] in PROSE else frozenset()
        for char in value:
            if is_control(char) and char not in allowed:
                return f"{_where(loc)}: contains the control or format character U+{ord(char):04X}"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = control_problem(key, (*loc, "(key)")) or control_problem(item, (*loc, key))
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if found := control_problem(item, (*loc, index)):
                return found
    return None


def parse(model: type[M], raw: bytes) -> M:
    """``raw`` as a ``model``, or RecordError 422 naming every bad field."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(422, f"body: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(422, "body: must be a JSON object")
    if found := control_problem(data):
        raise RecordError(422, found)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            what = {"extra_forbidden": "unknown field", "missing": "required field is missing"}
            text = what.get(error["type"], str(error["msg"]).removeprefix("Value error, "))
            problems.append(f"{_where(tuple(error['loc']))}: {text}")
        raise RecordError(422, "; ".join(problems)) from None


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApprovalIn(Body):
    function: Short
    decision: Literal["approve", "reject"]
    reason: Prose | None = None
    version: int | None = Field(default=None, ge=1, description="Default: the latest.")


class SignoffIn(Body):
    function: Short
    decision: Literal["go", "no-go"]
    reason: Prose | None = None


class Window(Body):
    start: datetime
    end: datetime

    @field_validator("start", "end")
    @classmethod
    def _zoned(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone (Z or +01:00)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start >= self.end:
            raise ValueError("start must be before end")
        return self


class DeviationIn(Body):
    description: Prose
    severity: Literal["minor", "major", "critical"]
    operation: Short | None = None
    station: Short | None = None
    device: Short | None = None
    serials: list[Serial] = Field(default_factory=list, max_length=1000)
    window: Window | None = None
    action: Prose
    who: Short | None = Field(default=None, description="Who found it; default: the writer.")
    function: Short | None = None

    @model_validator(mode="after")
    def _units(self) -> DeviationIn:
        if not self.serials and self.window is None:
            raise ValueError("name the units: serials, or a time window {start, end}")
        return self


class CloseIn(Body):
    cause: Prose
    action: Prose
    function: Short | None = None


DISPOSITIONS = ("field_test", "certification", "golden", "scrap", "rework", "use_as_is",
                "retained", "shipped")  # fmt: skip


class DispositionIn(Body):
    disposition: Literal[
        "field_test", "certification", "golden", "scrap", "rework", "use_as_is", "retained",
        "shipped",
    ]  # fmt: skip
    detail: dict[Annotated[str, Field(max_length=64)], DetailValue] = Field(
        default_factory=dict, max_length=20
    )
    reason: Prose | None = None
    function: Short | None = None


class RemarkIn(Body):
    author: Short
    text: Prose
