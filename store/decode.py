"""The store's decoder of readings messages: checked poll objects, values not expanded.

The reference decoder (contract.decode) turns every value into a tuple; at 200,000
readings a second that is the store's largest cost. Here a schema-2 poll object is checked
field by field (once per poll: seq, ts, device, context) and its values are checked by type
in C (``set(map(type, values))``): a poll of plain numbers (the normal case) becomes one
:class:`Run` that the writer turns into rows with ``zip`` and ``itertools.repeat``, with no
Python loop per reading. Values of other kinds (strings, booleans, null, the
``{"value", "quality", "error"}`` wrapper) are checked one by one.

Both forms of a schema-2 poll are read (docs/messages.md): ``values`` (an object keyed by
tag) and the positional ``tag_index`` + ``value_list`` (value i is tag
``order[tag_index + i]`` of the meta version the poll names; the writer resolves it).
A schema-3 poll of the collector's usual shape (by position, one context version ``ctx``,
one time) is one :class:`Run` built at once (``Decoder._runs3``); any other shape, or one
whose check fails, goes the general way.

Errors keep the reference decoder's wording: when a check here fails, the message goes
through :func:`contract.decode.decode_polls`, whose :class:`ContractError` (naming the
field: ``polls[3].ts: ...``) is what is raised and quarantined. The members only the
positional form has are checked here, in the same style. Schema-1 messages are decoded by
the reference decoder (:attr:`Decoded.polls`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple, TypeGuard, cast

import orjson

from contract.decode import ContractError, Poll, decode_polls, expand_polls
from contract.decode import shifted as _shifted
from contract.fields import check_keys
from store.schema import to_micros

#: A reading's context as the store keys it: the unit context's fields
#: (contract.records.CONTEXT_FIELDS) in the order of the ``contexts`` table, whose ``key``
#: column holds this tuple as JSON (so the order stays: the keys stored would change).
#: tests/test_context_fields.py checks it names every field, and Decoder._run reads each.
CTX_KEY_FIELDS: Final[tuple[str, ...]] = (
    "station",
    "slot",
    "unit_serial",
    "operation",
    "attempt",
    "phase",
    "golden",
    "work_order",
)
#: A CTX_KEY_FIELDS tuple.
CtxKey = tuple[
    str | None, int | str | None, str | None, str | None, int | None, str | None, bool, str | None
]
#: How many CTX_KEY_FIELDS the ``contexts`` key had before the first was added after them
#: (work_order, issue 24): the JSON of a key leaves out the later fields at their default
#: (:func:`ctx_text`), so a context without them keeps the key, and the row, it had.
_CTX_KEY_FIXED = 7


def ctx_text(key: CtxKey) -> str:
    """The ``contexts.key`` (and ``context_versions.members``) text of a key: the JSON array
    of its fields, without the trailing ones after the first seven that are at their
    default (None), so that every row stored before they existed keeps its key."""
    end = len(key)
    while end > _CTX_KEY_FIXED and key[end - 1] is None:
        end -= 1
    return orjson.dumps(key[:end]).decode()


def ctx_parse(text: str | bytes) -> CtxKey:
    """A key from its :func:`ctx_text` (or from before the later fields): those left out
    at their default."""
    fields = tuple(orjson.loads(text))
    return cast(CtxKey, fields + (None,) * (len(CTX_KEY_FIELDS) - len(fields)))


#: Run.plain: every value a bare float / a bare float or integer that a float64 holds exactly.
FLOATS, NUMBERS = 1, 2
FLOAT_INT = 2**53
_HEX = frozenset("0123456789abcdef")
_OPT_STR = frozenset({str, type(None)})
_SLOT = frozenset({int, str, type(None)})
_PHASES = frozenset({None, "test", "after"})
_SCALARS = frozenset({bool, int, float, str, type(None)})
_WRAPPED_QUALITIES = frozenset({"bad", "uncertain"})
_POSITIONAL = ("tag_index", "value_list", "v")
_NAMING3 = ("value_list", "tags", "tag_list", "tag_index")
_PER_VALUE3 = (*_NAMING3, "dt", "ctx")
#: The members of the collector's usual schema-3 poll (Decoder._runs3's fast path).
_USUAL3 = frozenset({"seq", "ts", "device", "meta", "ctx", "tag_index", "value_list"})
_SCHEMA1_HEAD = b'{"schema":1'  # also 10, 1.5...: the reference decoder names those


class Run(NamedTuple):
    """One checked poll object of schema 2; value i has seq ``seq + i``."""

    seq: int
    ts: str
    #: "" for a schema-3 poll by position, whose meta version names its device (the writer
    #: resolves it: Decoded.named).
    device: str
    meta: str | None
    #: The context; a schema-3 run names its version (``ctx``) until the writer resolved it.
    context: CtxKey | str
    #: The tags of a keyed poll (its ``values`` object: iterating gives the keys); None for
    #: a positional poll, whose tags are ``order[tag_index:]`` of its meta version.
    tags: Collection[str] | None
    tag_index: int
    #: Bare values or wrapper objects, as sent.
    values: Sequence[Any]
    #: FLOATS, NUMBERS, or 0 (the writer looks at each value).
    plain: int


@dataclass(slots=True)
class Decoded:
    """A readings message: schema 2 as runs, schema 1 as the reference decoder's polls."""

    collector: str
    outbox: str
    runs: list[Run] = field(default_factory=list)
    polls: list[Poll] = field(default_factory=list)
    #: (device, meta) of every positional run: what the writer must know to resolve them
    #: (device "": the version names it, schema 3).
    needs: set[tuple[str, str]] = field(default_factory=set)
    #: The unit-context versions (``ctx``) its runs name: the writer resolves them
    #: (:meth:`resolved`) before it builds rows.
    contexts_needed: set[str] = field(default_factory=set)

    def resolved(self, contexts: dict[str, CtxKey]) -> None:
        """Each run's context version id replaced by the context it names."""
        # Built anew (half the time of Run._replace, a Python function with keywords).
        self.runs = [
            Run(seq, ts, device, meta, contexts[c] if type(c) is str else c, tags, i, values, p)
            for seq, ts, device, meta, c, tags, i, values, p in self.runs
        ]

    def named(self, devices: dict[str, str]) -> None:
        """Each run without a device given the one its meta version names (``devices``:
        meta -> device), and :attr:`needs` with them."""
        # Built anew, as in resolved().
        self.runs = [
            Run(seq, ts, device or devices[meta], meta, c, tags, i, values, p)  # type: ignore[index]
            for seq, ts, device, meta, c, tags, i, values, p in self.runs
        ]
        self.needs = {(d or devices[m], m) for d, m in self.needs}

    @property
    def count(self) -> int:
        return sum(len(r.values) for r in self.runs) + sum(len(p.values) for p in self.polls)


class _Refused(Exception):
    """A check failed: the reference decoder (or :func:`explain`) names the problem."""


class Decoder:
    """Decodes readings messages; remembers the times and outbox ids it has checked (the
    polls of a message share a handful of times, a collector has one outbox)."""

    def __init__(self) -> None:
        #: Every time checked lately (text as sent, or as made from schema 3's epoch
        #: milliseconds) -> its Unix microseconds: the writer's readings.ts on SQLite
        #: (:meth:`micros`), so that a time is parsed once, or not at all.
        self._times: dict[str, int] = {}
        self._outboxes: dict[str, None] = {}

    def micros(self, ts: str) -> int | None:
        """The Unix microseconds of a time this decoder checked lately; None when it has
        forgotten it (the caller parses the text)."""
        return self._times.get(ts)

    def decode(self, payload: bytes) -> Decoded:
        """A readings message, checked; raises :class:`ContractError` as the reference
        decoder would (kinds json, schema, field)."""
        try:
            return self._decode(payload)
        except ContractError:  # from the reference decoder (schema 1): already named
            raise
        except _Refused:
            pass
        except _CRASHES:  # a shape no check here expected
            pass
        problem = explain(payload)
        if problem is not None:
            raise problem
        # The reference decoder accepts what a check here refused (no known case: the
        # checks are the same): for a keyed message its result is the answer.
        if any(_is_positional(p) for p in orjson.loads(payload).get("polls", ())):
            raise ContractError("", "the store's decoder refused this message", "field")
        message = decode_polls(payload)
        return Decoded(message.collector, message.outbox, polls=message.polls)

    def _decode(self, payload: bytes) -> Decoded:
        if payload.startswith(_SCHEMA1_HEAD):
            # The collector's schema-1 envelope: the reference decoder, which parses it once
            # (a schema-1 message is ten times the bytes of schema 2: no second parse).
            message = decode_polls(payload)
            return Decoded(message.collector, message.outbox, polls=message.polls)
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise _Refused from None
        if type(doc) is not dict:
            raise _Refused
        schema = doc.get("schema")
        if schema == 1 and type(schema) is int:
            message = decode_polls(payload)  # raises ContractError itself
            return Decoded(message.collector, message.outbox, polls=message.polls)
        if schema not in (2, 3) or type(schema) is not int:
            raise _Refused
        collector, outbox, polls = doc.get("collector"), doc.get("outbox"), doc.get("polls")
        if type(collector) is not str or not collector or type(polls) is not list:
            raise _Refused
        if outbox not in self._outboxes:
            if type(outbox) is not str or len(outbox) != 16 or not _HEX.issuperset(outbox):
                raise _Refused
            if len(self._outboxes) > 1000:
                self._outboxes.clear()
            self._outboxes[outbox] = None
        decoded = Decoded(collector, outbox)
        add = decoded.runs.append
        keys = len(doc)  # the keys orjson kept: a repeated key is one less than written
        read = self._runs2 if schema == 2 else self._runs3
        if schema == 3:
            if len(self._times) > 10_000:
                self._times.clear()
            # A seq or ts taken from the previous poll; each time made from epoch
            # milliseconds is remembered as checked (RFC 3339 by construction), with its
            # microseconds: neither _time_ok nor the writer parses it again.
            keys -= expand_polls(polls, self._times)
        next_seq = 0
        need, need_context = decoded.needs.add, decoded.contexts_needed.add
        for poll in polls:
            for run in read(poll):
                seq, _, device, meta, context, tags, _, values, plain = run
                if seq < next_seq:
                    raise _Refused  # a seq twice: the reference decoder names it
                next_seq = seq + len(values)
                if tags is None:
                    need((device, meta))  # type: ignore[arg-type]
                if type(context) is str:
                    need_context(context)
                if not plain:
                    keys += sum(len(v) for v in values if type(v) is dict)
                add(run)
            keys += len(poll)
            if "values" in poll:
                keys += len(poll["values"])
        try:
            check_keys(payload, keys)
        except ContractError:
            raise _Refused from None
        return decoded

    def _run(self, poll: Any, by_meta: bool = False) -> Run:
        """``by_meta``: a schema-3 poll by position, which may leave out its device."""
        if type(poll) is not dict:
            raise _Refused
        get = poll.get
        seq, device, meta = get("seq"), get("device", "" if by_meta else None), get("meta")
        ts: Any = get("ts")
        station, slot, serial = get("station"), get("slot"), get("unit_serial")
        operation, attempt, phase = get("operation"), get("attempt"), get("phase")
        golden, work_order = get("golden", False), get("work_order")
        if (
            type(seq) is not int
            or seq < 0
            or type(device) is not str
            or not (device or (by_meta and type(meta) is str and "device" not in poll))
            or type(meta) not in _OPT_STR
            or type(station) not in _OPT_STR
            or type(slot) not in _SLOT
            or type(serial) not in _OPT_STR
            or type(operation) not in _OPT_STR
            or (attempt is not None and type(attempt) is not int)
            or type(phase) not in _OPT_STR
            or phase not in _PHASES
            or type(golden) is not bool
            or type(work_order) not in _OPT_STR
        ):
            raise _Refused
        if ts not in self._times:
            self._check_time(ts)
        context = (station, slot, serial, operation, attempt, phase, golden, work_order)
        if "values" in poll:
            raw = poll["values"]
            if type(raw) is not dict or "tag_index" in poll or "value_list" in poll:
                raise _Refused
            values: Sequence[Any] = list(raw.values())
            return Run(seq, ts, device, meta, context, raw, 0, values, _plain(values))
        index = get("tag_index")
        values = poll.get("value_list", ())
        if type(index) is not int or index < 0 or type(values) is not list or meta is None:
            raise _Refused
        return Run(seq, ts, device, meta, context, None, index, values, _plain(values))

    def _runs2(self, poll: Any) -> list[Run]:
        return [self._run(poll)]

    def _runs3(self, poll: Any) -> list[Run]:
        """A schema-3 poll object as runs of values that share their time, context and a
        contiguous slice of tags: one run in the usual case (one request, or several read
        at one time, by ``tag_index`` or ``tags``)."""
        if type(poll) is not dict:
            raise _Refused
        if poll.keys() <= _USUAL3:
            # The collector's usual poll (by position, one context version, one time): the
            # Run built at once. The checks are the slow path's for this shape (below, and
            # _run's); when one fails the slow path runs and refuses (or accepts) the poll,
            # so what is refused, and the reference decoder's words for it, stay the same.
            get = poll.get
            seq, device, meta, ctx = get("seq"), get("device", ""), get("meta"), get("ctx")
            ts, index, values = get("ts"), get("tag_index", 0), get("value_list")
            if (
                type(seq) is int
                and seq >= 0
                and type(device) is str
                and (device or "device" not in poll)
                and type(meta) is str
                and _is_ctx(ctx)
                and type(index) is int
                and index >= 0
                and type(values) is list
                and type(ts) is str
                and (ts in self._times or self._time_ok(ts))
            ):
                return [Run(seq, ts, device, meta, ctx, None, index, values, _plain(values))]
        if "v" in poll:  # left by expand_polls: value_list is there too
            raise _Refused
        if "values" in poll:  # buffered by a schema-2 collector
            if any(key in poll for key in _NAMING3) or "dt" in poll or "contexts" in poll:
                raise _Refused
            return [self._run(poll)]
        values = poll.get("value_list")
        if type(values) is not list:
            raise _Refused
        count = len(values)
        ctx = poll.get("ctx")
        if type(ctx) is list or "dt" in poll or "tag_list" in poll:
            return self._cut3(poll, values, count)
        head = self._run(
            {**{k: v for k, v in poll.items() if k not in _NAMING3}, "values": {}},
            by_meta="tags" not in poll,
        )
        if "ctx" in poll:
            if not _is_ctx(ctx) or any(k in poll for k in CTX_KEY_FIELDS):
                raise _Refused
            head = head._replace(context=str(ctx))
        tags = poll.get("tags")
        if "tags" in poll:
            if "tag_index" in poll or type(tags) is not list or len(tags) != count:
                raise _Refused
            if set(map(type, tags)) - {str}:
                raise _Refused
            return [head._replace(tags=tags, values=values, plain=_plain(values))]
        index = poll.get("tag_index", 0)
        if type(index) is not int or index < 0 or head.meta is None:
            raise _Refused
        return [head._replace(tags=None, tag_index=index, values=values, plain=_plain(values))]

    def _cut3(self, poll: dict[str, Any], values: list[Any], count: int) -> list[Run]:
        """A poll with change points (``dt``, ``contexts``) or a ``tag_list``: one run per
        stretch of values with one time, one context and consecutive tag positions."""
        ctx = poll.get("ctx")
        if "ctx" in poll and (
            any(k in poll for k in CTX_KEY_FIELDS) or (type(ctx) is not list and not _is_ctx(ctx))
        ):
            raise _Refused
        if "dt" in poll and type(poll["dt"]) is not list:
            raise _Refused
        base = {k: v for k, v in poll.items() if k not in _PER_VALUE3}
        head = self._run({**base, "values": {}}, by_meta="tags" not in poll)
        points: dict[int, dict[str, Any]] = {}
        for key in ("dt", "ctx"):
            listed = poll.get(key, ())
            if type(listed) is not list:
                continue  # a ctx of one version: the head's
            last = -1
            for point in listed:
                if type(point) is not list or len(point) != 2:
                    raise _Refused
                index, x = point
                if type(index) is not int or not last < index < count:
                    raise _Refused
                if key == "dt" and type(x) not in (int, float):
                    raise _Refused
                if key == "ctx" and x is not None and not _is_ctx(x):
                    raise _Refused
                points.setdefault(index, {})[key] = x
                last = index
        names = poll.get("tags")
        indexes = poll.get("tag_list")
        if (names is not None) + (indexes is not None) + ("tag_index" in poll) > 1:
            raise _Refused
        for listed in (names, indexes):
            if listed is not None and (type(listed) is not list or len(listed) != count):
                raise _Refused
        if names is not None and set(map(type, names)) - {str}:
            raise _Refused
        if indexes is not None and (
            set(map(type, indexes)) - {int} or (indexes and min(indexes) < 0)
        ):
            raise _Refused
        if names is None and head.meta is None:
            raise _Refused
        start = poll.get("tag_index", 0)
        if type(start) is not int or start < 0:
            raise _Refused
        runs: list[Run] = []
        context: CtxKey | str = head.context if type(ctx) is not str else ctx
        ts, run_start = head.ts, 0
        for i in range(count + 1):
            change = points.get(i)
            cut = i == count or change is not None
            if not cut and indexes is not None:
                cut = indexes[i] != indexes[i - 1] + 1
            if not cut:
                continue
            if i > run_start:
                part = values[run_start:i]
                runs.append(
                    head._replace(
                        seq=head.seq + run_start,
                        ts=ts,
                        context=context,
                        tags=None if names is None else names[run_start:i],
                        tag_index=start + run_start if indexes is None else indexes[run_start],
                        values=part,
                        plain=_plain(part),
                    )
                )
            run_start = i
            if change is not None:
                if "dt" in change:
                    ts = head.ts if not change["dt"] else _shifted(head.ts, change["dt"])
                    self._check_time(ts)
                if "ctx" in change:
                    context = change["ctx"] if change["ctx"] is not None else _NO_CONTEXT
        return runs

    def _check_time(self, ts: object) -> None:
        if not self._time_ok(ts):
            raise _Refused

    def _time_ok(self, ts: object) -> bool:
        """An RFC 3339 time with an offset (remembered: the next poll's is checked once)."""
        if type(ts) is not str or "T" not in ts:
            return False
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            return False
        if parsed.tzinfo is None:
            return False
        if len(self._times) > 10_000:
            self._times.clear()
        self._times[ts] = to_micros(parsed)
        return True


_NO_CONTEXT: CtxKey = (None, None, None, None, None, None, False, None)


def _is_ctx(value: object) -> TypeGuard[str]:
    """A unit-context version id: 12 lowercase hex digits."""
    return type(value) is str and len(value) == 12 and _HEX.issuperset(value)


def _plain(values: Sequence[Any]) -> int:
    """FLOATS or NUMBERS when the values are plain numbers (checked in C); else every value
    is checked here (a scalar, or a valid wrapper) and 0 returned."""
    types = set(map(type, values))
    if types <= {float}:
        return FLOATS
    if types <= {float, int} and min(values) >= -FLOAT_INT and max(values) <= FLOAT_INT:
        return NUMBERS
    for value in values:
        if type(value) is dict:
            quality = value.get("quality")
            if (
                type(quality) is not str
                or quality not in _WRAPPED_QUALITIES
                or "value" not in value
                or type(value["value"]) not in _SCALARS
                or type(value.get("error")) not in _OPT_STR
            ):
                raise _Refused
        elif type(value) not in _SCALARS:
            raise _Refused
    return 0


def _is_positional(poll: object) -> bool:
    return type(poll) is dict and any(k in poll for k in _POSITIONAL)


# --- naming the problem ---------------------------------------------------------------------


def explain(payload: bytes) -> ContractError | None:
    """What is wrong with a readings message, in the reference decoder's words; None when
    nothing is. A poll whose meta or context version is unknown is not wrong (the store
    parks it); the reference decoder checks its values all the same."""
    try:
        decode_polls(payload)
    except ContractError as exc:
        return None if exc.kind in ("unknown_meta", "unknown_context") else exc
    except _CRASHES as exc:
        return unexpected(exc)
    return None


#: What the reference decoder might raise on a shape it does not expect (it names the field
#: for every shape known to reach it; this is the defence for the next one).
_CRASHES = (TypeError, ValueError, KeyError, AttributeError)


def unexpected(exc: Exception) -> ContractError:
    """A message the reference decoder failed on without naming the field: still bad input
    (quarantined, never retried), kind ``field``."""
    return ContractError("", f"a field holds a value of a type no field takes ({exc})", "field")
