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
from typing import Any, Final, NamedTuple

import orjson

from contract.decode import ContractError, Poll, decode_polls

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
)
#: A CTX_KEY_FIELDS tuple.
CtxKey = tuple[str | None, int | str | None, str | None, str | None, int | None, str | None, bool]

#: Run.plain: every value a bare float / a bare float or integer that a float64 holds exactly.
FLOATS, NUMBERS = 1, 2
FLOAT_INT = 2**53
_HEX = frozenset("0123456789abcdef")
_OPT_STR = frozenset({str, type(None)})
_SLOT = frozenset({int, str, type(None)})
_PHASES = frozenset({None, "test", "after"})
_SCALARS = frozenset({bool, int, float, str, type(None)})
_WRAPPED_QUALITIES = frozenset({"bad", "uncertain"})
_POSITIONAL = ("tag_index", "value_list")
_SCHEMA1_HEAD = b'{"schema":1'  # also 10, 1.5...: the reference decoder names those


class Run(NamedTuple):
    """One checked poll object of schema 2; value i has seq ``seq + i``."""

    seq: int
    ts: str
    device: str
    meta: str | None
    context: CtxKey
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
    #: (device, meta) of every positional run: what the writer must know to resolve them.
    needs: set[tuple[str, str]] = field(default_factory=set)

    @property
    def count(self) -> int:
        return sum(len(r.values) for r in self.runs) + sum(len(p.values) for p in self.polls)


class _Refused(Exception):
    """A check failed: the reference decoder (or :func:`explain`) names the problem."""


class Decoder:
    """Decodes readings messages; remembers the times and outbox ids it has checked (the
    polls of a message share a handful of times, a collector has one outbox)."""

    def __init__(self) -> None:
        self._times: dict[str, None] = {}
        self._outboxes: dict[str, None] = {}

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
        if schema != 2 or type(schema) is not int:
            raise _Refused
        collector, outbox, polls = doc.get("collector"), doc.get("outbox"), doc.get("polls")
        if type(collector) is not str or not collector or type(polls) is not list:
            raise _Refused
        if outbox not in self._outboxes:
            if type(outbox) is not str or len(outbox) != 16 or not set(outbox) <= _HEX:
                raise _Refused
            if len(self._outboxes) > 1000:
                self._outboxes.clear()
            self._outboxes[outbox] = None
        decoded = Decoded(collector, outbox)
        add = decoded.runs.append
        for poll in polls:
            run = self._run(poll)
            if run.tags is None:
                decoded.needs.add((run.device, run.meta))  # type: ignore[arg-type]
            add(run)
        return decoded

    def _run(self, poll: Any) -> Run:
        if type(poll) is not dict:
            raise _Refused
        get = poll.get
        seq, device, meta = get("seq"), get("device"), get("meta")
        ts: Any = get("ts")
        station, slot, serial = get("station"), get("slot"), get("unit_serial")
        operation, attempt, phase = get("operation"), get("attempt"), get("phase")
        golden = get("golden", False)
        if (
            type(seq) is not int
            or seq < 0
            or type(device) is not str
            or not device
            or type(meta) not in _OPT_STR
            or type(station) not in _OPT_STR
            or type(slot) not in _SLOT
            or type(serial) not in _OPT_STR
            or type(operation) not in _OPT_STR
            or (attempt is not None and type(attempt) is not int)
            or type(phase) not in _OPT_STR
            or phase not in _PHASES
            or type(golden) is not bool
        ):
            raise _Refused
        if ts not in self._times:
            self._check_time(ts)
        context = (station, slot, serial, operation, attempt, phase, golden)
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

    def _check_time(self, ts: object) -> None:
        if type(ts) is not str or "T" not in ts:
            raise _Refused
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            raise _Refused from None
        if parsed.tzinfo is None:
            raise _Refused
        if len(self._times) > 10_000:
            self._times.clear()
        self._times[ts] = None


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
    nothing is. A poll whose meta version is unknown is not wrong (the store parks it); the
    reference decoder checks its values all the same."""
    try:
        decode_polls(payload)
    except ContractError as exc:
        return None if exc.kind == "unknown_meta" else exc
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
