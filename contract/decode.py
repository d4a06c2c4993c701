"""The reference decoder of the MQTT message contract (schema 1, 2 and 3, docs/messages.md).

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

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Self, TypeGuard

import orjson

from contract.fields import (
    _HEX,
    CONTEXT_CHECKS,
    MAX_EPOCH_MS,
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
    ms_text,
)
from contract.metahash import meta_hash_problem

__all__ = [
    "PHASES",
    "QUALITIES",
    "SCHEMA_VERSIONS",
    "VERDICTS",
    "WRAPPED_QUALITIES",
    "ContextBook",
    "ContractError",
    "FlatReading",
    "FlatUnit",
    "MetaBook",
    "Poll",
    "PollValue",
    "ReadingsMessage",
    "Value",
    "decode_context",
    "decode_meta",
    "decode_polls",
    "decode_readings",
    "decode_units",
    "expand_polls",
    "flatten",
    "shifted",
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
    #: Last and defaulted (a context member added after the others): positional
    #: constructions of the earlier fields stay valid.
    work_order: str | None = None


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
    #: After ``values`` and defaulted (a context member added after the others): schema 1
    #: has none, and positional constructions of the earlier fields stay valid.
    work_order: str | None = None


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


class _Book:
    """What the two books share: a dict from a version's key to what it resolves to."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, ...], Any] = {}

    def copy(self) -> Self:
        book = type(self)()
        book._entries = dict(self._entries)
        return book

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class MetaBook(_Book):
    """The tag metadata versions a consumer has seen (the messages on ``.../meta/{device}``,
    retained and not), for resolving positional polls: (collector, device, meta) -> order,
    and (collector, meta) -> device for the versions of schema 3, whose id covers the device
    (a positional poll of schema 3 names its device by its ``meta`` alone).

    Feed it every meta message as it arrives (:meth:`add`); keep it as long as readings of
    those versions may still come (a collector republishes the versions its buffer still
    needs, non-retained, on every connect, so a consumer that was away gets them again).
    """

    def __init__(self) -> None:
        super().__init__()
        self._devices: dict[tuple[str, str], str] = {}

    def copy(self) -> Self:
        book = super().copy()
        book._devices = dict(self._devices)
        return book

    def add(self, meta: bytes | dict[str, Any]) -> tuple[str, str, str] | None:
        """Take a meta message (its payload, or the dict :func:`decode_meta` returned).
        Returns its key (collector, device, meta), or None for an empty payload (a device's
        retained metadata cleared) or a message without ``order`` (from before positional
        values: it resolves nothing). Raises ContractError for a bad message, kind
        ``meta_hash`` when its ``meta`` is not the hash of its content."""
        if isinstance(meta, bytes | bytearray | memoryview):
            if not meta:
                return None
            doc = decode_meta(bytes(meta))
        else:
            doc = decode_meta(orjson.dumps(meta))
        if doc["order"] is None:
            return None
        # The id must be the hash of the content (as the store checks): else two contents
        # could share an id and a poll would resolve through whichever came last.
        device = doc["device"] if doc["schema"] >= 3 else None
        problem = meta_hash_problem(doc["meta"], doc["order"], doc["tags"], device)
        if problem is not None:
            raise ContractError("meta", problem, "meta_hash")
        key = (doc["collector"], doc["device"], doc["meta"])
        self._entries[key] = tuple(doc["order"])
        if doc["schema"] >= 3:
            self._devices[(doc["collector"], doc["meta"])] = doc["device"]
        return key

    def order(self, collector: str, device: str, meta: str) -> tuple[str, ...] | None:
        """The tags of that version in order; None if it was never added."""
        order: tuple[str, ...] | None = self._entries.get((collector, device, meta))
        return order

    def device(self, collector: str, meta: str) -> str | None:
        """The device a schema-3 version names; None if no such version was added."""
        return self._devices.get((collector, meta))

    def stand_in(
        self, collector: str, device: str, meta: str, order: Sequence[str], names_device: bool
    ) -> None:
        """Resolve ``meta`` of ``device`` to ``order`` without its message (so without the
        hash check of :meth:`add`): for a tool that shows stored polls whose version is gone
        (collector ``buffer``). ``names_device``: polls without ``device`` are of ``device``
        (a schema-3 version)."""
        self._entries[(collector, device, meta)] = tuple(order)
        if names_device:
            self._devices[(collector, meta)] = device


class ContextBook(_Book):
    """The unit-context versions a consumer has seen (the messages on
    ``.../context/{station}``, retained and not), for resolving schema-3 polls' ``ctx``:
    (collector, ctx) -> the context members. Feed it every context message as it arrives
    (:meth:`add`); like the :class:`MetaBook`, keep it while readings of those versions may
    still come."""

    def add(self, payload: bytes) -> tuple[str, str] | None:
        """Take a context message; returns its key (collector, ctx), or None for an empty
        payload (a retained message cleared). Raises ContractError for a bad message."""
        if not payload:
            return None
        doc = decode_context(bytes(payload))
        key = (doc["collector"], doc["ctx"])
        self._entries[key] = {name: doc[name] for name in _CONTEXT_MEMBERS}
        return key

    def members(self, collector: str, ctx: str) -> dict[str, Any] | None:
        """The context's members (station, slot, unit_serial...); None if never added."""
        members: dict[str, Any] | None = self._entries.get((collector, ctx))
        return members

    def stand_in(self, collector: str, ctx: str, members: dict[str, Any]) -> None:
        """Resolve ``ctx`` to ``members`` (the others at their defaults) without its message:
        for a tool that shows stored polls whose version is gone (collector ``buffer``)."""
        self._entries[(collector, ctx)] = {**_context({}, ""), **members}


def decode_context(payload: bytes) -> dict[str, Any]:
    """A unit-context message (schema 3, retained on ``.../context/{station}``), checked:
    ``{"schema", "collector", "ctx", "station", "slot", "unit_serial", "operation",
    "attempt", "phase", "golden", "work_order"}`` (members absent from the message at their
    defaults). The ``ctx`` must be the hash of the members (docs/messages.md): a mismatch is
    refused, so a version id always means one content."""
    doc = _load(payload)
    schema = _schema(doc)
    if schema != 3:
        raise ContractError("schema", "context messages exist from schema 3 on", "schema")
    collector = _nonempty(doc, "collector", "")
    ctx = _ctx_id(doc.get("ctx"), "ctx", "")
    members = _context(doc, "")
    extra = sorted(set(doc) - {"schema", "collector", "ctx", *_CONTEXT_MEMBERS})
    if extra:
        raise ContractError(extra[0], "not a context member")
    canonical = orjson.dumps(
        {k: v for k, v in members.items() if v is not None and v is not False},
        option=orjson.OPT_SORT_KEYS,
    )
    if hashlib.sha256(canonical).hexdigest()[:12] != ctx:
        raise ContractError("ctx", f"{ctx} is not the hash of the context's members", "field")
    return {"schema": schema, "collector": collector, "ctx": ctx, **members}


# --- readings ------------------------------------------------------------------------------


def decode_polls(
    payload: bytes, metas: MetaBook | None = None, contexts: ContextBook | None = None
) -> ReadingsMessage:
    """A readings message (schema 1, 2 or 3), its polls in message order (a schema-3 poll as
    one Poll per run of values that share time and context), with the tags of positional
    polls resolved through ``metas`` and the context versions of schema 3 through
    ``contexts``. A poll whose meta version ``metas`` does not hold (or with no ``metas``)
    raises ContractError of kind ``unknown_meta``, one whose context version ``contexts``
    does not hold ``unknown_context``, once the whole message was found valid otherwise."""
    doc = _load(payload)
    schema = _schema(doc)
    collector, outbox = _header(doc, schema)
    ts_check = _TsCheck("an RFC 3339 string or epoch milliseconds") if schema == 3 else _TsCheck()
    if schema >= 2:
        resolve = _Resolve(collector, metas, contexts=contexts)
        read = _poll2 if schema == 2 else _poll3
        polls: list[Poll] = []
        next_seq = 0
        items = _list(doc, "polls")
        if schema == 3:
            devices = metas.device if metas is not None else None
            expand_polls(items, devices=devices, collector=collector)
        for i, item in enumerate(items):
            path = f"polls[{i}]."
            polls += read(item, path, ts_check, resolve)
            next_seq = _rising(item, path, next_seq)
        if resolve.missing:
            missing = resolve.missing
            path, _, device, meta = missing[0]
            of = f" of device {device}" if device else ""
            raise ContractError(
                path,
                f"unknown meta version {meta}{of} (collector {collector}): decode again once "
                f"that version arrived on meta/{device or '#'}",
                "unknown_meta",
                tuple(dict.fromkeys(m[1:] for m in missing)),
            )
        if resolve.missing_contexts:
            gone = resolve.missing_contexts
            path, _, ctx = gone[0]
            raise ContractError(
                path,
                f"unknown context version {ctx} (collector {collector}): decode again once "
                "that version arrived on context/#",
                "unknown_context",
                tuple(dict.fromkeys((c, "context", x) for _, c, x in gone)),
            )
    else:
        polls = _polls1(_list(doc, "readings"), ts_check)
    return ReadingsMessage(schema, collector, outbox, polls)


def expand_polls(
    polls: list[Any],
    made: dict[str, int] | None = None,
    *,
    devices: Callable[[str, str], str | None] | None = None,
    collector: str = "",
) -> int:
    """A schema-3 message's polls as a consumer that reads the JSON itself wants them, in
    place (docs/messages.md): the values under ``value_list`` whichever key the poll used
    (``v``, as the collector writes them, or ``value_list``, a poll buffered by schema 2; a
    poll with both is left so, and refused by the decoders), a ``ts`` in epoch milliseconds
    written as RFC 3339 text (as the decoders give it), and the ``seq`` and ``ts`` a poll
    after the first leaves out filled in: ``seq`` the previous poll's seq plus its number of
    values, ``ts`` the previous poll's ts; and, given ``devices`` (e.g.
    :meth:`MetaBook.device`) and the message's ``collector``, the ``device`` of a poll by
    position, which its meta version names (left out when not known yet). The decoders call
    it. What is not well formed is left as it is (a previous poll that is not implies
    nothing): the decoders then refuse the message for it. Returns how many members it
    filled in (seq, ts, device). ``made``: each text written from epoch milliseconds is
    added to it with its time in epoch microseconds (a consumer that needs the number, as
    the store does, need not parse the text back: it is RFC 3339 by construction)."""
    filled = 0
    prev: Any = None
    for poll in polls:
        if type(poll) is not dict:
            prev = None
            continue
        if "v" in poll and "value_list" not in poll:
            poll["value_list"] = poll.pop("v")
        if devices is not None and "device" not in poll and "tags" not in poll:
            meta = poll.get("meta")
            device = devices(collector, meta) if type(meta) is str else None
            if device is not None:
                poll["device"] = device
                filled += 1
        ts = poll.get("ts")
        if type(ts) is int and 0 <= ts <= MAX_EPOCH_MS:
            poll["ts"] = text = ms_text(ts)
            if made is not None:
                made[text] = ts * 1000
        if prev is not None:
            if "seq" not in poll:
                seq = prev.get("seq")
                values: Any = prev.get("value_list", prev.get("values"))
                if type(seq) is int and type(values) in (list, dict):
                    poll["seq"] = seq + len(values)
                    filled += 1
            if "ts" not in poll and type(prev.get("ts")) is str:
                poll["ts"] = prev["ts"]
                filled += 1
        prev = poll
    return filled


def _rising(poll: dict[str, Any], path: str, next_seq: int) -> int:
    """A poll's seqs come after the previous poll's (a seq is one reading, once: two values
    of one seq in a message would be two rows for one dedupe key); the next free seq."""
    seq: int = poll["seq"]
    if seq < next_seq:
        raise ContractError(
            f"{path}seq",
            f"{seq} repeats a seq of an earlier poll of this message (up to {next_seq - 1}): "
            "seqs rise within a message",
        )
    values = poll.get("values", poll.get("value_list"))
    return seq + (len(values) if isinstance(values, dict | list) else 0)


@dataclass(slots=True)
class _Resolve:
    """What resolves a message's positional polls, and the versions it lacked:
    (path, collector, device, meta)."""

    collector: str
    metas: MetaBook | None
    missing: list[tuple[str, str, str, str]] = field(default_factory=list)
    contexts: ContextBook | None = None
    #: (path, collector, ctx) of each context version the book lacked.
    missing_contexts: list[tuple[str, str, str]] = field(default_factory=list)


def _poll2(item: object, path: str, ts_check: _TsCheck, resolve: _Resolve) -> list[Poll]:
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
    return [
        Poll(
            seq=_seq(poll, path),
            ts=ts_check(poll, path),
            device=device,
            meta=meta,
            **_context(poll, path),
            values=values,
        )
    ]


#: A poll's unit context members (contract.records.CONTEXT_FIELDS).
_CONTEXT_MEMBERS = tuple(CONTEXT_CHECKS)


def _poll3(item: object, path: str, ts_check: _TsCheck, resolve: _Resolve) -> list[Poll]:
    """A schema-3 poll object: every value of one poll cycle, decoded into one Poll per run
    of values that share their time and context (value i has seq ``seq + i``)."""
    poll = _obj(item, path)
    meta = poll.get("meta")
    if meta is not None and type(meta) is not str:
        raise ContractError(f"{path}meta", _wanted("a string", True, meta))
    if "v" in poll:  # expand_polls renamed it unless value_list is there too
        raise ContractError(f"{path}v", "a poll has its values in v or value_list, not both")
    # A poll by position names its device by its meta version (expand_polls filled it in
    # when the book has it); one by name, or without meta, names it itself.
    device = (
        ""
        if "device" not in poll and meta is not None and "tags" not in poll
        and "values" not in poll
        else _nonempty(poll, "device", path)
    )  # fmt: skip
    seq = _seq(poll, path)
    ts = ts_check(poll, path)
    if "values" in poll:
        # A poll buffered by a schema-2 collector (docs/messages.md): keyed by tag.
        if any(key in poll for key in _NAMING):
            raise ContractError(f"{path}values", "a poll has either values or value_list")
        values = _keyed(poll, path)
    else:
        values = _listed(poll, path, device, meta, resolve)
    count = len(poll["values"] if "values" in poll else poll["value_list"])
    times = _points(poll, "dt", count, path, _offset)
    contexts = _contexts(poll, count, path, resolve)
    if not values:  # meta unknown (checked, parked by the caller) or no values
        return []
    if contexts is None:  # a context version not known (checked, parked by the caller)
        return []
    cuts = sorted({0, *(i for i, _ in times), *(i for i, _ in contexts)})
    out = []
    for a, b in zip(cuts, [*cuts[1:], count], strict=True):
        offset = _at(times, a, 0)
        out.append(
            Poll(
                seq=seq + a,
                ts=ts if not offset else shifted(ts, offset),
                device=device,
                meta=meta,
                **_at(contexts, a, _NO_CONTEXT),
                values=values[a:b],
            )
        )
    return out


_NAMING = ("value_list", "tags", "tag_list", "tag_index")


def _listed(
    poll: dict[str, Any], path: str, device: str, meta: str | None, resolve: _Resolve
) -> list[PollValue]:
    """The values of ``value_list`` with their tags: by name (``tags``), by index in the
    meta version's order (``tag_list``) or from ``tag_index`` on (0 when absent)."""
    raw = poll.get("value_list")
    if type(raw) is not list:
        raise ContractError(f"{path}value_list", _wanted("an array", "value_list" in poll, raw))
    given = [key for key in ("tags", "tag_list", "tag_index") if key in poll]
    if len(given) > 1:
        raise ContractError(f"{path}{given[1]}", "a poll has one of tags, tag_list, tag_index")
    if given == ["tags"]:
        tags = poll["tags"]
        if type(tags) is not list or len(tags) != len(raw):
            raise ContractError(f"{path}tags", f"must be an array of {len(raw)} tag names")
        for i, tag in enumerate(tags):
            if type(tag) is not str:
                raise ContractError(f"{path}tags[{i}]", _wanted("a string", True, tag))
        return _tagged(tags, raw, path)
    if given == ["tag_list"]:
        indexes = poll["tag_list"]
        if type(indexes) is not list or len(indexes) != len(raw):
            raise ContractError(f"{path}tag_list", f"must be an array of {len(raw)} integers")
        for i, index in enumerate(indexes):
            if type(index) is not int or index < 0:
                raise ContractError(f"{path}tag_list[{i}]", _wanted("an integer >= 0", True, index))
    else:
        index = poll.get("tag_index", 0)
        if type(index) is not int or index < 0:
            raise ContractError(f"{path}tag_index", _wanted("an integer >= 0", True, index))
        indexes = list(range(index, index + len(raw)))
    if meta is None:
        raise ContractError(f"{path}meta", "missing (a poll without tags needs its meta)")
    metas, collector = resolve.metas, resolve.collector
    order = metas.order(collector, device, meta) if metas is not None and device else None
    if order is None:
        # Checked all the same, so that only a missing meta, never a bad value, parks it.
        for i, value in enumerate(raw):
            _value("", value, f"{path}value_list[{i}]")
        resolve.missing.append((f"{path}meta", collector, device, meta))
        return []
    if raw and max(indexes) >= len(order):
        raise ContractError(
            f"{path}value_list",
            f"tag position {max(indexes)} is past the {len(order)} tags of meta {meta}",
        )
    return _tagged([order[i] for i in indexes], raw, path)


def _tagged(tags: list[str], raw: list[Any], path: str) -> list[PollValue]:
    scalars = _SCALARS
    return [
        (tag, value, "good", None, None)
        if type(value) in scalars
        else _value(tag, value, f"{path}value_list[{i}]")
        for i, (tag, value) in enumerate(zip(tags, raw, strict=True))
    ]


def _points(
    poll: dict[str, Any], key: str, count: int, path: str, check: Callable[[Any, str, str], Any]
) -> list[tuple[int, Any]]:
    """Change points ``[[from value index, x], ...]``: indexes increasing, below ``count``."""
    raw = poll.get(key, [])
    if type(raw) is not list:
        raise ContractError(f"{path}{key}", _wanted("an array", True, raw))
    out: list[tuple[int, Any]] = []
    for n, point in enumerate(raw):
        where = f"{path}{key}[{n}]"
        if type(point) is not list or len(point) != 2:
            raise ContractError(where, _wanted("a [value index, ...] pair", True, point))
        index = point[0]
        low = out[-1][0] + 1 if out else 0
        if type(index) is not int or not low <= index < count:
            raise ContractError(
                f"{where}[0]",
                f"must be a value index from {low} to {count - 1}, got {_show(index)}",
            )
        out.append((index, check(point[1], f"{where}[1]", f"{where}[1].")))
    return out


_NO_CONTEXT: dict[str, Any] = _context({}, "")


def _contexts(
    poll: dict[str, Any], count: int, path: str, resolve: _Resolve
) -> list[tuple[int, dict[str, Any]]] | None:
    """A schema-3 poll's context change points (value index, members): from ``ctx`` (one
    version id, or ``[[from value index, id or null], ...]``) through the context book, or
    the poll's own members (a poll buffered by a schema-2 collector). None when a version is
    not in the book (noted in ``resolve.missing_contexts``)."""
    if "ctx" not in poll:
        return [(0, _context(poll, path))]
    for name in _CONTEXT_MEMBERS:
        if name in poll:
            raise ContractError(f"{path}{name}", "a poll names its context by ctx or by members")
    raw = poll["ctx"]
    points = [(0, raw)] if type(raw) is str else _points(poll, "ctx", count, path, _ctx_id)
    if type(raw) is str:
        _ctx_id(raw, f"{path}ctx", "")
    out: list[tuple[int, dict[str, Any]]] = []
    missing = False
    for index, ctx in points:
        if ctx is None:
            out.append((index, _NO_CONTEXT))
            continue
        members = resolve.contexts.members(resolve.collector, ctx) if resolve.contexts else None
        if members is None:
            resolve.missing_contexts.append((f"{path}ctx", resolve.collector, ctx))
            missing = True
        else:
            out.append((index, members))
    return None if missing else out


def _ctx_id(value: Any, path: str, _prefix: str) -> str | None:
    if value is None and path.endswith("[1]"):
        return None
    if type(value) is not str or len(value) != 12 or not set(value) <= _HEX:
        raise ContractError(path, f"must be 12 lowercase hex digits, got {_show(value)}")
    return value


def _offset(value: Any, path: str, _prefix: str) -> float:
    if type(value) not in (int, float):
        raise ContractError(path, _wanted("a number of milliseconds", True, value))
    return float(value)


def _at(points: list[tuple[int, Any]], index: int, default: Any) -> Any:
    """What the change points say for value ``index``."""
    found = default
    for at, x in points:
        if at > index:
            break
        found = x
    return found


def shifted(ts: str, offset_ms: float) -> str:
    """``ts`` moved on by ``offset_ms`` milliseconds, as RFC 3339 text: 3 fraction digits
    (none when zero) as schema 3's times have, 6 where there are microseconds (a fraction
    of a millisecond, or a ts with microseconds from a poll buffered by schema 2)."""
    moved = datetime.fromisoformat(ts) + timedelta(microseconds=round(offset_ms * 1000))
    text = orjson.dumps(moved, option=orjson.OPT_UTC_Z)[1:-1].decode()
    return text[:-4] + "Z" if moved.microsecond and not moved.microsecond % 1000 else text


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
                    p.golden, unit, p.work_order,
                )
            )  # fmt: skip
    return out


def decode_readings(
    payload: bytes, metas: MetaBook | None = None, contexts: ContextBook | None = None
) -> list[FlatReading]:
    """Every reading of a readings message, in message order, positional polls resolved
    through ``metas`` and context versions through ``contexts`` (see
    :func:`decode_polls`). Raises ContractError."""
    return flatten(decode_polls(payload, metas, contexts))


# --- unit records --------------------------------------------------------------------------

_CHAR_NUMBERS = ("last", "min", "max", "lsl", "usl", "target")


def decode_units(payload: bytes) -> list[FlatUnit]:
    """Every unit record of a units message. Raises ContractError."""
    doc = _load(payload)
    schema = _schema(doc)
    collector, outbox = _header(doc, schema)
    ts_check = _TsCheck()
    units: list[FlatUnit] = []
    for i, item in enumerate(_list(doc, "units")):
        path = f"units[{i}]."
        unit = _obj(item, path)
        if units and type(unit.get("seq")) is int and unit["seq"] <= units[-1].seq:
            raise ContractError(
                f"{path}seq",
                f"{unit['seq']} is not above the previous unit record's {units[-1].seq}: seqs "
                "rise within a message",
            )
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
    """A tag-metadata message (schema 2 or 3, retained on ``.../meta/{device}``), checked.

    Returns ``{"schema", "collector", "device", "meta", "order", "tags"}`` with ``tags``
    mapping each tag to its object (``unit``, ``type``, ``scale``, ``offset``, ``station``...
    as sent) and ``order`` the device's tags in the order positional polls use (None in a
    message written before positional values: it resolves no positional poll). The ``meta``
    of schema 3 hashes the device too (contract.metahash): it names one device of the
    collector, and a positional poll names its device by it. This does not check the hash
    (contract.metahash.meta_hash_problem does: :class:`MetaBook` refuses a mismatch, the
    store quarantines it).
    """
    doc = _load(payload)
    schema = _schema(doc)
    if schema not in (2, 3):
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
    if order is None and schema == 3:
        raise ContractError("order", "missing (a tag-metadata message of schema 3 has one)")
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
