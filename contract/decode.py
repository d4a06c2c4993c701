"""The reference decoder of the MQTT message contract (schema 1 and 2, docs/messages.md).

Pure and dependent on orjson only, so consumers (the central store in ``store/``, a plant's own
tools) import it without the collector's runtime. It checks every field's type and raises
:class:`ContractError` naming the field path (``polls[3].values.temp.quality: ...``).

Two levels:

- :func:`decode_polls` keeps a message's structure: one :class:`Poll` per run of readings that
  share a timestamp, device and context, with the readings as small tuples. A consumer that
  writes many readings a second (the store) resolves the context once per poll from this.
- :func:`decode_readings` flattens that into one :class:`FlatReading` per reading, whatever
  the schema: the simple API.

Schema 1 has no ``outbox``: its readings decode with ``outbox == ""``, ``slot``/``phase`` None
and ``golden`` False; consecutive schema-1 readings with the same ts, device and context and
consecutive seqs are joined into one :class:`Poll`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeGuard

import orjson

from contract.fields import (
    _HEX,
    PHASES,
    QUALITIES,
    SCHEMA_VERSIONS,
    VERDICTS,
    WRAPPED_QUALITIES,
    ContractError,
    Value,
    _bool,
    _context,
    _header,
    _list,
    _load,
    _nonempty,
    _obj,
    _opt_bool,
    _opt_int,
    _opt_num,
    _opt_str,
    _phase,
    _scalar,
    _schema,
    _seq,
    _show,
    _slot,
    _str,
    _TsCheck,
    _wanted,
)

__all__ = [
    "PHASES",
    "QUALITIES",
    "SCHEMA_VERSIONS",
    "VERDICTS",
    "WRAPPED_QUALITIES",
    "ContractError",
    "FlatReading",
    "FlatUnit",
    "MetaBook",
    "Poll",
    "PollValue",
    "ReadingsMessage",
    "Value",
    "decode_meta",
    "decode_polls",
    "decode_readings",
    "decode_units",
    "flatten",
]


@dataclass(frozen=True, slots=True)
class FlatReading:
    """One reading, whatever the schema."""

    collector: str
    outbox: str
    seq: int
    ts: str  # RFC 3339 text as sent
    device: str
    tag: str
    value: Value
    quality: str
    error: str | None
    station: str | None
    slot: int | str | None
    unit_serial: str | None
    operation: str | None
    attempt: int | None
    phase: str | None
    golden: bool
    unit: str | None  # engineering unit: only schema 1 carries it per reading


#: One reading inside a poll: (tag, value, quality, error, engineering unit or None).
PollValue = tuple[str, Value, str, str | None, str | None]


@dataclass(frozen=True, slots=True)
class Poll:
    """Readings that share ts, device and context; reading i has seq ``seq + i``."""

    seq: int
    ts: str
    device: str
    meta: str | None
    station: str | None
    slot: int | str | None
    unit_serial: str | None
    operation: str | None
    attempt: int | None
    phase: str | None
    golden: bool
    values: list[PollValue]


@dataclass(frozen=True, slots=True)
class ReadingsMessage:
    schema: int
    collector: str
    outbox: str
    polls: list[Poll]

    @property
    def count(self) -> int:
        return sum(len(p.values) for p in self.polls)


@dataclass(frozen=True, slots=True)
class FlatUnit:
    """One unit record (a unit's pass through one operation at one station)."""

    collector: str
    outbox: str
    seq: int
    serial: str
    station: str | None
    slot: int | str | None
    operation: str | None
    attempt: int | None
    start: str
    end: str
    cycle_time_s: float | None
    takt_s: float | None
    verdict: str
    failure_code: Value
    ended_by: str | None
    readings: int | None
    golden: bool
    work_order: str | None
    #: name -> {last, min, max, lsl, usl, target (float or None), critical (bool),
    #: in_spec (bool or None)}: every key present.
    characteristics: dict[str, dict[str, object]]
    #: resource kind (operator, fixture, cavity, program) -> its value; empty when not given.
    resources: dict[str, str] = field(default_factory=dict)


class MetaBook:
    """The tag metadata versions a consumer has seen (the messages on ``.../meta/{device}``,
    retained and not), for resolving positional polls: (collector, device, meta) -> order.

    Feed it every meta message as it arrives (:meth:`add`); keep it as long as readings of
    those versions may still come (a collector republishes the versions its buffer still
    needs, non-retained, on every connect, so a consumer that was away gets them again).
    """

    def __init__(self) -> None:
        self._orders: dict[tuple[str, str, str], tuple[str, ...]] = {}

    def add(self, meta: bytes | dict[str, Any]) -> tuple[str, str, str] | None:
        """Take a meta message (its payload, or the dict :func:`decode_meta` returned).
        Returns its key (collector, device, meta), or None for an empty payload (a device's
        retained metadata cleared) or a message without ``order`` (from before positional
        values: it resolves nothing). Raises ContractError for a bad message."""
        if isinstance(meta, bytes | bytearray | memoryview):
            if not meta:
                return None
            doc = decode_meta(bytes(meta))
        else:
            doc = decode_meta(orjson.dumps(meta))
        if doc["order"] is None:
            return None
        key = (doc["collector"], doc["device"], doc["meta"])
        self._orders[key] = tuple(doc["order"])
        return key

    def order(self, collector: str, device: str, meta: str) -> tuple[str, ...] | None:
        """The tags of that version in order; None if it was never added."""
        return self._orders.get((collector, device, meta))

    def copy(self) -> MetaBook:
        book = MetaBook()
        book._orders = dict(self._orders)
        return book

    def __contains__(self, key: object) -> bool:
        return key in self._orders

    def __len__(self) -> int:
        return len(self._orders)


# --- readings ------------------------------------------------------------------------------


def decode_polls(payload: bytes, metas: MetaBook | None = None) -> ReadingsMessage:
    """A readings message (schema 1 or 2), its polls in message order, with the tags of
    positional polls resolved through ``metas``. A positional poll whose meta version
    ``metas`` does not hold (or with no ``metas``) raises ContractError of kind
    ``unknown_meta``, once the whole message was found valid otherwise."""
    doc = _load(payload)
    schema = _schema(doc)
    collector, outbox = _header(doc, schema)
    ts_check = _TsCheck()
    if schema == 2:
        resolve = _Resolve(collector, metas)
        polls = [
            _poll2(item, f"polls[{i}].", ts_check, resolve)
            for i, item in enumerate(_list(doc, "polls"))
        ]
        if resolve.missing:
            missing = resolve.missing
            path, _, device, meta = missing[0]
            raise ContractError(
                path,
                f"unknown meta version {meta} of device {device} (collector {collector}): "
                "decode again once that version arrived on meta/" + device,
                "unknown_meta",
                tuple(dict.fromkeys(m[1:] for m in missing)),
            )
    else:
        polls = _polls1(_list(doc, "readings"), ts_check)
    return ReadingsMessage(schema, collector, outbox, polls)


@dataclass(slots=True)
class _Resolve:
    """What resolves a message's positional polls, and the versions it lacked:
    (path, collector, device, meta)."""

    collector: str
    metas: MetaBook | None
    missing: list[tuple[str, str, str, str]] = field(default_factory=list)


def _poll2(item: object, path: str, ts_check: _TsCheck, resolve: _Resolve) -> Poll:
    poll = _obj(item, path)
    _phase(poll, "phase", path)  # named before the rest: the first check a poll had
    meta = poll.get("meta")
    if meta is not None and type(meta) is not str:
        raise ContractError(f"{path}meta", _wanted("a string", True, meta))
    device = _nonempty(poll, "device", path)
    if "values" in poll or ("tag_index" not in poll and "value_list" not in poll):
        if "tag_index" in poll or "value_list" in poll:
            raise ContractError(
                f"{path}values", "a poll has either values or tag_index + value_list, not both"
            )
        values = _keyed(poll, path)
    else:
        values = _positional(poll, path, device, meta, resolve)
    return Poll(
        seq=_seq(poll, path),
        ts=ts_check(poll, path),
        device=device,
        meta=meta,
        **_context(poll, path),
        values=values,
    )


def _keyed(poll: dict[str, Any], path: str) -> list[PollValue]:
    raw = poll.get("values")
    if type(raw) is not dict:
        raise ContractError(f"{path}values", _wanted("an object", "values" in poll, raw))
    scalars = _SCALARS
    return [
        (tag, value, "good", None, None)
        if type(value) in scalars
        else _value(tag, value, f"{path}values.{tag}")
        for tag, value in raw.items()
    ]


def _positional(
    poll: dict[str, Any], path: str, device: str, meta: str | None, resolve: _Resolve
) -> list[PollValue]:
    """The values of a positional poll: value i is tag ``order[tag_index + i]``."""
    index = poll.get("tag_index")
    if type(index) is not int or index < 0:
        raise ContractError(
            f"{path}tag_index", _wanted("an integer >= 0", "tag_index" in poll, index)
        )
    raw = poll.get("value_list")
    if type(raw) is not list:
        raise ContractError(f"{path}value_list", _wanted("an array", "value_list" in poll, raw))
    if meta is None:
        raise ContractError(f"{path}meta", "missing (a poll with tag_index needs its meta)")
    metas, collector = resolve.metas, resolve.collector
    order = metas.order(collector, device, meta) if metas is not None else None
    if order is None:
        # Checked all the same, so that only a missing meta, never a bad value, parks it.
        for i, value in enumerate(raw):
            _value("", value, f"{path}value_list[{i}]")
        resolve.missing.append((f"{path}meta", collector, device, meta))
        return []
    if index + len(raw) > len(order):
        raise ContractError(
            f"{path}value_list",
            f"{len(raw)} values from tag_index {index} run past the {len(order)} tags of "
            f"meta {meta}",
        )
    scalars = _SCALARS
    return [
        (tag, value, "good", None, None)
        if type(value) in scalars
        else _value(tag, value, f"{path}value_list[{i}]")
        for i, (tag, value) in enumerate(zip(order[index:], raw, strict=False))
    ]


def _value(tag: str, value: Any, path: str) -> PollValue:
    """One element of ``values`` or ``value_list``: a bare good value or the wrapper."""
    if type(value) in _SCALARS:
        return (tag, value, "good", None, None)
    if type(value) is dict:
        return _wrapped(tag, value, f"{path}.")
    raise ContractError(path, _wanted("a number, boolean, string, null or object", True, value))


def _one_of(value: object, allowed: frozenset[str]) -> TypeGuard[str]:
    """A string among ``allowed``; anything else (a list or an object, which cannot even be
    looked up in a set) is not, rather than a TypeError that a consumer would not expect."""
    return type(value) is str and value in allowed


def _wrapped(tag: str, obj: dict[str, Any], path: str) -> PollValue:
    quality = obj.get("quality")
    if not _one_of(quality, WRAPPED_QUALITIES):
        raise ContractError(f"{path}quality", f'must be "bad" or "uncertain", got {_show(quality)}')
    if "value" not in obj:
        raise ContractError(f"{path}value", "missing")
    return (tag, _scalar(obj["value"], f"{path}value"), quality, _opt_str(obj, "error", path), None)


_SCALARS = frozenset({bool, int, float, str, type(None)})
_OPT_STR = frozenset({str, type(None)})
#: The twelve fields of a schema-1 reading in one C call (the collector writes all of them).
_FIELDS1 = itemgetter(
    "seq", "tag", "value", "quality", "error", "unit",
    "ts", "device", "station", "unit_serial", "operation", "attempt",
)  # fmt: skip


def _polls1(items: list[Any], ts_check: _TsCheck) -> list[Poll]:
    """Schema-1 readings joined into polls. The fields that repeat from reading to reading
    (ts, device and context) are checked when they change; the rest of each reading is
    checked inline, and the slow path that names the field runs only for a bad reading or
    one that leaves a field out."""
    polls: list[Poll] = []
    key: tuple[object, ...] | None = None
    checked: tuple[object, ...] | None = None
    next_seq = -1
    values: list[PollValue] = []
    scalars, qualities, opt_str, fields = _SCALARS, QUALITIES, _OPT_STR, _FIELDS1
    for i, reading in enumerate(items):
        try:
            (seq, tag, value, quality, error, unit,
             ts, device, station, serial, operation, attempt) = fields(reading)  # fmt: skip
        except (KeyError, TypeError):
            _reading1(reading, f"readings[{i}].", ts_check)  # raises, or a field was left out
            get = reading.get
            seq, tag, value, quality = get("seq"), get("tag"), get("value"), get("quality")
            error, unit, ts, device = get("error"), get("unit"), get("ts"), get("device")
            station, serial = get("station"), get("unit_serial")
            operation, attempt = get("operation"), get("attempt")
        if (
            type(seq) is not int
            or seq < 0
            or type(tag) is not str
            or type(value) not in scalars
            or type(quality) is not str
            or quality not in qualities
            or type(error) not in opt_str
            or type(unit) not in opt_str
        ):
            _reading1(reading, f"readings[{i}].", ts_check)  # raises, naming the field
        new_key = (ts, device, station, serial, operation, attempt)
        if new_key != key or seq != next_seq:
            if new_key != checked or type(attempt) is not int:
                _reading1(reading, f"readings[{i}].", ts_check)
                checked = new_key
            if key is not None:
                polls.append(_poll1(next_seq - len(values), key, values))
            key, values = new_key, []
        values.append((tag, value, quality, error, unit))
        next_seq = seq + 1
    if key is not None:
        polls.append(_poll1(next_seq - len(values), key, values))
    return polls


_MISSING = object()


def _reading1(reading: dict[str, Any], path: str, ts_check: _TsCheck) -> None:
    """Check one schema-1 reading field by field; raise ContractError naming the first bad."""
    _seq(reading, path)
    ts_check(reading, path)
    _nonempty(reading, "device", path)
    _str(reading, "tag", path)
    if "value" not in reading:
        raise ContractError(f"{path}value", "missing")
    _scalar(reading["value"], f"{path}value")
    quality = reading.get("quality")
    if not _one_of(quality, QUALITIES):
        raise ContractError(
            f"{path}quality", f'must be "good", "uncertain" or "bad", got {_show(quality)}'
        )
    for name in ("error", "unit", "station", "unit_serial", "operation"):
        _opt_str(reading, name, path)
    _opt_int(reading, "attempt", path)


def _poll1(seq: int, key: tuple[Any, ...], values: list[PollValue]) -> Poll:
    ts, device, station, unit_serial, operation, attempt = key
    return Poll(
        seq, ts, device, None, station, None, unit_serial, operation, attempt, None, False, values
    )


def flatten(message: ReadingsMessage) -> list[FlatReading]:
    out: list[FlatReading] = []
    collector, outbox = message.collector, message.outbox
    for p in message.polls:
        for i, (tag, value, quality, error, unit) in enumerate(p.values):
            out.append(
                FlatReading(
                    collector, outbox, p.seq + i, p.ts, p.device, tag, value, quality, error,
                    p.station, p.slot, p.unit_serial, p.operation, p.attempt, p.phase,
                    p.golden, unit,
                )
            )  # fmt: skip
    return out


def decode_readings(payload: bytes, metas: MetaBook | None = None) -> list[FlatReading]:
    """Every reading of a readings message, in message order, positional polls resolved
    through ``metas`` (see :func:`decode_polls`). Raises ContractError."""
    return flatten(decode_polls(payload, metas))


# --- unit records --------------------------------------------------------------------------

_CHAR_NUMBERS = ("last", "min", "max", "lsl", "usl", "target")


def decode_units(payload: bytes) -> list[FlatUnit]:
    """Every unit record of a units message. Raises ContractError."""
    doc = _load(payload)
    schema = _schema(doc)
    collector, outbox = _header(doc, schema)
    ts_check = _TsCheck()
    units = []
    for i, item in enumerate(_list(doc, "units")):
        path = f"units[{i}]."
        unit = _obj(item, path)
        verdict = unit.get("verdict")
        if not _one_of(verdict, VERDICTS):
            raise ContractError(
                f"{path}verdict",
                f"must be one of {', '.join(sorted(VERDICTS))}, got {_show(verdict)}",
            )
        start = ts_check(unit, path, "start")
        end = ts_check(unit, path, "end")
        units.append(
            FlatUnit(
                collector=collector,
                outbox=outbox,
                seq=_seq(unit, path),
                serial=_nonempty(unit, "serial", path),
                station=_opt_str(unit, "station", path),
                slot=_slot(unit, path),
                operation=_opt_str(unit, "operation", path),
                attempt=_opt_int(unit, "attempt", path),
                start=start,
                end=end,
                cycle_time_s=_opt_num(unit, "cycle_time_s", path),
                takt_s=_opt_num(unit, "takt_s", path),
                verdict=verdict,
                failure_code=_scalar(unit.get("failure_code"), f"{path}failure_code"),
                ended_by=_opt_str(unit, "ended_by", path),
                readings=_opt_int(unit, "readings", path),
                golden=_bool(unit, "golden", path),
                work_order=_opt_str(unit, "work_order", path),
                characteristics=_characteristics(unit, path),
                resources=_resources(unit, path),
            )
        )
    return units


#: A unit record names few resources, each with a short name and value (a badge, a nest).
MAX_RESOURCES = 16
MAX_RESOURCE_CHARS = 200


def _resources(unit: dict[str, Any], path: str) -> dict[str, str]:
    """The optional ``resources`` object: kind -> value, both non-empty strings (a null value
    is a kind the station declares but did not read: left out)."""
    raw = unit.get("resources")
    if raw is None:
        return {}
    rpath = f"{path}resources"
    if type(raw) is not dict:
        raise ContractError(rpath, _wanted("an object", True, raw))
    if len(raw) > MAX_RESOURCES:
        raise ContractError(rpath, f"at most {MAX_RESOURCES} resources, got {len(raw)}")
    out: dict[str, str] = {}
    for kind, value in raw.items():
        if not kind or len(kind) > 64:
            raise ContractError(rpath, f"a resource kind must have 1 to 64 characters: {kind!r}")
        if value is None:
            continue
        if type(value) is not str or not value or len(value) > MAX_RESOURCE_CHARS:
            raise ContractError(
                f"{rpath}.{kind}",
                _wanted(f"a string of 1 to {MAX_RESOURCE_CHARS} characters or null", True, value),
            )
        out[kind] = value
    return out


def _characteristics(unit: dict[str, Any], path: str) -> dict[str, dict[str, object]]:
    raw = unit.get("characteristics", {})
    if raw is None:
        return {}
    if type(raw) is not dict:
        raise ContractError(f"{path}characteristics", _wanted("an object", True, raw))
    out: dict[str, dict[str, object]] = {}
    for name, item in raw.items():
        cpath = f"{path}characteristics.{name}."
        obj = _obj(item, cpath)
        char: dict[str, object] = {key: _opt_num(obj, key, cpath) for key in _CHAR_NUMBERS}
        char["critical"] = _bool(obj, "critical", cpath)
        char["in_spec"] = _opt_bool(obj, "in_spec", cpath)
        out[name] = char
    return out


# --- tag metadata --------------------------------------------------------------------------


def decode_meta(payload: bytes) -> dict[str, Any]:
    """A tag-metadata message (schema 2, retained on ``.../meta/{device}``), checked.

    Returns ``{"schema", "collector", "device", "meta", "order", "tags"}`` with ``tags``
    mapping each tag to its object (``unit``, ``type``, ``scale``, ``offset``, ``station``...
    as sent) and ``order`` the device's tags in the order positional polls use (None in a
    message written before positional values: it resolves no positional poll).
    """
    doc = _load(payload)
    schema = _schema(doc)
    if schema != 2:
        raise ContractError("schema", "tag metadata exists from schema 2 on", "schema")
    collector = _nonempty(doc, "collector", "")
    device = _nonempty(doc, "device", "")
    meta = _str(doc, "meta", "")
    if len(meta) != 8 or not set(meta) <= _HEX:
        raise ContractError("meta", f"must be 8 lowercase hex characters, got {_show(meta)}")
    tags = doc.get("tags")
    if type(tags) is not dict:
        raise ContractError("tags", _wanted("an object", "tags" in doc, tags))
    for tag, item in tags.items():
        path = f"tags.{tag}."
        obj = _obj(item, path)
        _opt_str(obj, "unit", path)
        _opt_str(obj, "type", path)
        _opt_str(obj, "station", path)
        _opt_num(obj, "scale", path)
        _opt_num(obj, "offset", path)
    order = doc.get("order")
    if order is not None:
        if type(order) is not list:
            raise ContractError("order", _wanted("an array", True, order))
        for i, tag in enumerate(order):
            if type(tag) is not str or tag not in tags:
                raise ContractError(f"order[{i}]", f"must be a tag of tags, got {_show(tag)}")
        if len(set(order)) != len(order):
            raise ContractError("order", "names a tag twice")
    return {
        "schema": schema,
        "collector": collector,
        "device": device,
        "meta": meta,
        "order": order,
        "tags": tags,
    }
