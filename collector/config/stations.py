"""The ``stations`` section: which unit, operation and verdict a station's readings belong to
(collector.context.tagging applies it), and the slot expansion of racks (:func:`expand_slots`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from common.config import Model as _Model
from common.config import Name
from common.config import reject_duplicates as _reject_duplicates


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


class KeyCharacteristic(TagRef):
    """A key characteristic, optionally with its specification. The collector only reports
    whether a unit's values were within the limits; the tester's verdict is never changed."""

    lsl: float | None = Field(default=None, description="Lower specification limit.")
    usl: float | None = Field(default=None, description="Upper specification limit.")
    target: float | None = Field(default=None, description="Nominal value.")
    critical: bool = Field(default=False, description="A critical characteristic (CTQ).")

    @model_validator(mode="after")
    def _limits_in_order(self) -> Self:
        if self.lsl is not None and self.usl is not None and self.lsl > self.usl:
            raise ValueError(f"lsl {self.lsl} is above usl {self.usl}")
        return self

    def in_spec(self, low: float, high: float) -> bool | None:
        """Whether every value (their minimum and maximum) was within the limits; None
        without limits."""
        if self.lsl is None and self.usl is None:
            return None
        return (self.lsl is None or low >= self.lsl) and (self.usl is None or high <= self.usl)


class SlotRange(_Model):
    first: int = Field(ge=0, le=9999, description="First slot number.")
    last: int = Field(ge=0, le=9999, description="Last slot number (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.last < self.first:
            raise ValueError("last must be >= first")
        if self.last - self.first >= 1024:
            raise ValueError("at most 1024 slots")
        return self


class UnitEnd(StrEnum):
    VERDICT = "verdict"
    CYCLE_COMPLETE = "cycle_complete"
    NEXT_SERIAL = "next_serial"


#: The resource kinds a station reads from device tags (the operator has operator_source).
ResourceKind = Literal["fixture", "cavity", "program"]


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
    work_order_source: TagRef | None = Field(
        default=None,
        description="A device tag carrying the work order (a scanner route, a PLC string): "
        "each unit that arrives takes the last work order read, and a unit present without "
        "one takes it when it is read. A work order posted with the serial over HTTP wins.",
    )
    operator_source: TagRef | Literal["http"] | None = Field(
        default=None,
        description="Where the operator comes from: a device tag (a badge scanner's route, a "
        "PLC string), or `http` for the `operator` of POST /stations/{name}/unit. A unit "
        "takes the operator last read when it arrives (one present without one takes it "
        "when it is read); it goes into the unit record's resources.",
    )
    resources: dict[ResourceKind, TagRef] = Field(
        default_factory=dict,
        description="Resource kind (fixture, cavity, program) -> the device tag naming it, "
        "e.g. {fixture: {device: plc, tag: nest_id}}. Each unit record carries the values at "
        "the unit's start (a kind not read yet then: the first value read while it is there).",
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
    key_characteristics: list[KeyCharacteristic] = Field(
        default_factory=list,
        description="Tags whose last, minimum and maximum values go into each unit record, "
        "optionally with lsl, usl, target and critical.",
    )
    start: TagRef | None = Field(
        default=None,
        description="A tester tag that signals a test start: a bool turning true, or a test "
        "counter that changes. A start while the present unit's last attempt has ended "
        "starts the next attempt. Without it, a verdict going back to 'no verdict' does.",
    )
    takt_s: float | dict[Name, float] | None = Field(
        default=None,
        description="The planned cycle time in seconds; unit records carry it. For a station "
        "that runs several operations, a map operation -> seconds.",
    )

    @field_validator("takt_s")
    @classmethod
    def _positive_takt(cls, value: float | dict[str, float] | None) -> Any:
        values = value.values() if isinstance(value, dict) else [value]
        if any(v is not None and v <= 0 for v in values):
            raise ValueError("takt_s must be > 0")
        return value

    def takt_for(self, operation: str) -> float | None:
        """The takt time of ``operation`` at this station, if set."""
        if isinstance(self.takt_s, dict):
            return self.takt_s.get(operation)
        return self.takt_s

    golden_pattern: str | None = Field(
        default=None,
        description="Regular expression: serials that match it (whole) are golden samples.",
    )
    slots: SlotRange | None = Field(
        default=None,
        description="A rack or multi-nest fixture: one station per slot, named "
        "NAME.slotNN, with '{slot}' (e.g. '{slot:02d}') in tag names filled in.",
    )
    group: Name | None = Field(
        default=None, description="Set by the slot expansion: the rack's station name."
    )
    slot: int | None = Field(default=None, description="Set by the slot expansion.")

    @field_validator("golden_pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

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
        if self.operator_source == "http" and self.serial_source != "http":
            raise ValueError(
                "operator_source 'http' needs serial_source 'http' (the operator comes with "
                "the serial in POST /stations/{name}/unit)"
            )
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
            ("work_order_source", self.work_order_source),
            (
                "operator_source",
                self.operator_source if isinstance(self.operator_source, TagRef) else None,
            ),
            ("verdict", self.verdict),
            ("failure_code", self.failure_code),
            ("cycle_complete", self.cycle_complete),
            ("start", self.start),
        ]
        refs += [(f"key_characteristics[{i}]", k) for i, k in enumerate(self.key_characteristics)]
        refs += [(f"resources.{kind}", ref) for kind, ref in self.resources.items()]
        return [(f, r) for f, r in refs if r is not None]


# --------------------------------------------------------------------------- slot expansion


class _Unfilled(ValueError):
    pass


def _fill(value: Any, slot: int) -> Any:
    """``value`` with ``{slot}`` placeholders in its strings filled in (dicts and lists too)."""
    if isinstance(value, str):
        if "{slot" not in value:
            return value
        try:
            return value.format(slot=slot)
        except (ValueError, KeyError, IndexError) as exc:
            raise _Unfilled(str(exc)) from None
    if isinstance(value, dict):
        return {k: _fill(v, slot) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, slot) for v in value]
    return value


def _slot_numbers(raw: Any) -> range | None:
    try:
        slots = SlotRange.model_validate(raw)
    except ValueError:
        return None  # left unexpanded: validation then says what is wrong, at its line
    return range(slots.first, slots.last + 1)


def slot_station_name(group: str, slot: int, last: int) -> str:
    """The name of a slot's station: ``rack-a.slot07`` (at least two digits)."""
    return f"{group}.slot{slot:0{max(2, len(str(last)))}d}"


def _expand_list(
    items: list[Any],
    one: Callable[[dict[str, Any], int, int], dict[str, Any]],
    check: Callable[[dict[str, Any]], object] | None = None,
) -> list[Any]:
    """Each item with ``slots`` expanded by ``one(template, slot, last)``. The first slot
    takes the item's place and the others go to the end, so that every item written in the
    file keeps its index and a config error points at its line; an item that does not expand
    (a bad range or placeholder), or whose first slot is invalid, stays as it is and is
    reported once."""
    out: list[Any] = []
    extra: list[Any] = []
    for item in items:
        if not isinstance(item, dict) or item.get("slots") is None:
            out.append(item)
            continue
        numbers = _slot_numbers(item["slots"])
        if numbers is None:
            # A bad range: validate one slot with the range as written, so that the range
            # is the one error reported.
            first = item["slots"].get("first") if isinstance(item["slots"], dict) else None
            try:
                out.append(
                    {**one(item, first if isinstance(first, int) else 0, 0), "slots": item["slots"]}
                )
            except (_Unfilled, KeyError, TypeError):
                out.append(item)
            continue
        try:
            expanded = [one(item, slot, numbers[-1]) for slot in numbers]
        except _Unfilled:
            out.append({k: v for k, v in item.items() if k != "slots"})
            continue
        if check is not None:
            try:
                check(expanded[0])
            except ValueError:
                out.append(expanded[0])  # its errors once, not once per slot
                continue
        out.append(expanded[0])
        extra += expanded[1:]
    return out + extra


def _station(template: dict[str, Any], slot: int, last: int) -> dict[str, Any]:
    one: dict[str, Any] = _fill({k: v for k, v in template.items() if k != "slots"}, slot)
    group = str(template.get("name"))
    one["name"], one["group"], one["slot"] = slot_station_name(group, slot, last), group, slot
    return one


def _tag(template: dict[str, Any], slot: int, last: int) -> dict[str, Any]:
    del last
    one: dict[str, Any] = _fill(
        {k: v for k, v in template.items() if k not in ("slots", "stride")}, slot
    )
    one["slot"] = slot
    stride = template.get("stride", 0)
    first = template["slots"].get("first", slot) if isinstance(template["slots"], dict) else slot
    if isinstance(stride, int) and isinstance(one.get("address"), int):
        one["address"] += (slot - first) * stride
    elif "stride" in template:
        one["stride"] = stride  # not a whole number, or no address: reported as unknown key
    return one


def expand_slots(data: Any) -> Any:
    """The raw config with every slotted station and device tag expanded (before validation).

    A station with ``slots`` becomes one station per slot (``group`` and ``slot`` set, its
    ``{slot}`` placeholders filled in, named ``NAME.slotNN``); a device tag with ``slots``
    becomes one tag per slot (``slot`` set, placeholders filled in, ``address`` moved by
    ``stride`` per slot: the first slot's block at ``address``). Expansion happens here, once,
    so the context only ever sees plain stations and tags with a slot number.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    stations = data.get("stations")
    if isinstance(stations, list):
        out["stations"] = _expand_list(stations, _station, StationConfig.model_validate)
    devices = data.get("devices")
    if isinstance(devices, list):
        out["devices"] = [
            {**d, "tags": _expand_list(d["tags"], _tag)}
            if isinstance(d, dict) and isinstance(d.get("tags"), list)
            else d
            for d in devices
        ]
    return out
