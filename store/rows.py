"""The rows of a batch, from decoded messages and the ids the writer has cached.

This is the one loop of the store that runs per reading. A schema-2 poll of plain numbers
(store.decode: ``Run.plain``) becomes its rows with ``zip`` over ``itertools.repeat`` and the
values themselves: the tuples are made in C, with no Python statement per reading. Other
values (strings, booleans, null, bad or uncertain ones, schema 1) take the loop in
:func:`_value_rows`. A missing id raises KeyError: the writer resolves the batch's
dimension rows and builds again.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from itertools import repeat, starmap
from operator import attrgetter
from typing import Any, cast

import orjson

from contract.decode import FlatUnit, Poll
from store.decode import CTX_KEY_FIELDS, FLOAT_INT, FLOATS, NUMBERS, CtxKey, Decoded
from store.metabook import MetaKey
from store.schema import KIND_BOOL, KIND_FLOAT, KIND_INT, KIND_NULL, KIND_TEXT, QUALITY_CODES

READINGS, UNITS = "readings", "units"
#: ``flags`` of a bare number (quality good) by its type.
_NUMBER_FLAGS = {float: KIND_FLOAT * 4, int: KIND_INT * 4}
_FLOAT_FLAGS = KIND_FLOAT * 4

Row = tuple[Any, ...]


_CTX_OF = attrgetter(*CTX_KEY_FIELDS)
_SLOT = CTX_KEY_FIELDS.index("slot")


def ctx_key(p: Poll) -> CtxKey:
    """A reference-decoded poll's context key."""
    return cast(CtxKey, _CTX_OF(p))


def ctx_columns(key: CtxKey) -> tuple[Any, ...]:
    """The ``contexts`` row's CTX_KEY_FIELDS columns of a key: the slot as text (a rack's slot
    is a number or a name)."""
    slot = key[_SLOT]
    return (*key[:_SLOT], None if slot is None else str(slot), *key[_SLOT + 1 :])


@dataclass(slots=True)
class Ids:
    """The dimension ids the writer has cached (a KeyError when one is missing)."""

    streams: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: (collector, device) -> tag -> series id: one look-up per poll, one per tag.
    series: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    contexts: dict[CtxKey, int] = field(default_factory=dict)
    #: A meta version's series ids in its ``order``: a positional run's are a slice of it.
    orders: dict[MetaKey, list[int]] = field(default_factory=dict)

    def clear(self) -> None:
        self.streams.clear()
        self.series.clear()
        self.contexts.clear()
        self.orders.clear()


@dataclass(slots=True)
class BatchRows:
    #: stream id -> the seq ranges received (the gap audit).
    ranges: dict[int, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    #: (context, stream) -> the seq span of that context's readings in that stream.
    spans: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    #: (stream, seq, ts, series, context, flags, num): a number or boolean, no error.
    simple: list[Row] = field(default_factory=list)
    #: ... plus text and error.
    full: list[Row] = field(default_factory=list)
    units: list[Row] = field(default_factory=list)
    chars: list[Row] = field(default_factory=list)
    #: SQLite: whole runs of plain numbers whose series ids are consecutive, as
    #: (stream, first seq, ts, first series id, context, the values as a JSON array):
    #: SQLite expands each into its rows itself (store.sql), no row tuple made here.
    runs: list[Row] | None = None
    #: PostgreSQL: runs of plain numbers as (seq, (stream, ts, context), series ids,
    #: values), turned into binary COPY rows (:func:`copy_binary`) while the COPY runs, so
    #: that the store formats some runs while the server stores the previous ones.
    copy_runs: list[tuple[int, tuple[int, str, int], list[int], Sequence[Any]]] | None = None
    run_readings: int = 0

    @property
    def count(self) -> int:
        """Readings in the batch."""
        return len(self.simple) + len(self.full) + self.run_readings


def build(
    ids: Ids,
    messages: Iterable[Decoded],
    unit_lists: Iterable[list[FlatUnit]],
    ts_value: Callable[[str], Any],
    time_value: Callable[[datetime], Any],
    *,
    runs: str = "",
) -> BatchRows:
    """The batch's rows; ``runs``: how runs of plain numbers are written instead of as row
    tuples: ``json`` (SQLite's JSON expansion, :attr:`BatchRows.runs`), ``copy``
    (PostgreSQL's binary COPY, :attr:`BatchRows.copy_runs`)."""
    out = BatchRows(runs=[] if runs == "json" else None, copy_runs=[] if runs == "copy" else None)
    for msg in messages:
        _reading_rows(ids, msg, ts_value, out)
    for units in unit_lists:
        _unit_rows(ids, units, time_value, out)
    return out


def _reading_rows(ids: Ids, msg: Decoded, ts_value: Callable[[str], Any], out: BatchRows) -> None:
    collector = msg.collector
    stream = ids.streams[(collector, msg.outbox, READINGS)]
    ranges, spans, contexts = out.ranges[stream], out.spans, ids.contexts
    extend = out.simple.extend
    runs, copy_runs = out.runs, out.copy_runs
    for run in msg.runs:
        n = len(run.values)
        if not n:
            continue
        # Resolved by the writer before rows are built (store.decode.Decoded.resolved).
        seq, ts, ctx = run.seq, ts_value(run.ts), contexts[cast(CtxKey, run.context)]
        sids: Sequence[int] | Iterable[int]
        if run.tags is None:
            order = ids.orders[(collector, run.device, run.meta or "")]
            sids = order[run.tag_index : run.tag_index + n]
        else:
            sids = map(ids.series[(collector, run.device)].__getitem__, run.tags)
        if runs is not None and run.plain:
            sids = list(sids)
            first = sids[0]
            if sids[-1] - first == n - 1 and sids == list(range(first, first + n)):
                # As text: SQLite >= 3.45 reads a BLOB argument as its binary JSONB.
                runs.append((stream, seq, ts, first, ctx, orjson.dumps(run.values).decode()))
                out.run_readings += n
                _span(ranges, spans, (ctx, stream), seq, seq + n - 1)
                continue
        if copy_runs is not None and run.plain:
            copy_runs.append((seq, (stream, ts, ctx), list(sids), run.values))
            out.run_readings += n
            _span(ranges, spans, (ctx, stream), seq, seq + n - 1)
            continue
        if run.plain == FLOATS:
            floats = repeat(_FLOAT_FLAGS, n)
            extend(zip(repeat(stream, n), range(seq, seq + n), repeat(ts, n), sids,
                       repeat(ctx, n), floats, run.values, strict=True))  # fmt: skip
        elif run.plain == NUMBERS:
            flags = map(_NUMBER_FLAGS.__getitem__, map(type, run.values))
            extend(zip(repeat(stream, n), range(seq, seq + n), repeat(ts, n), sids,
                       repeat(ctx, n), flags, run.values, strict=True))  # fmt: skip
        else:
            _value_rows(
                out, seq, (stream, ts, ctx), zip(sids, map(_unwrap, run.values), strict=True)
            )
        _span(ranges, spans, (ctx, stream), seq, seq + n - 1)
    for p in msg.polls:  # schema 1
        n = len(p.values)
        if not n:
            continue
        ts, ctx = ts_value(p.ts), contexts[ctx_key(p)]
        tags = ids.series[(collector, p.device)]
        items = ((tags[tag], (value, quality, error)) for tag, value, quality, error, _ in p.values)
        _value_rows(out, p.seq, (stream, ts, ctx), items)
        _span(ranges, spans, (ctx, stream), p.seq, p.seq + n - 1)


#: One readings row in PostgreSQL's binary COPY format: 9 fields, each its byte length and
#: value (stream int4, seq int8, ts int8, series int4, context int4, flags int2,
#: num float8), then text and error NULL (length -1).
_BINARY_ROW = struct.Struct(">hiiiqiqiiiiihidii")
BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
BINARY_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=4096)
def _pg_micros(ts: str) -> int:
    """A checked RFC 3339 time as timestamptz's binary value: microseconds since 2000."""
    delta = datetime.fromisoformat(ts) - _PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def copy_binary(
    seq: int, head: tuple[int, str, int], sids: Iterable[int], values: Sequence[Any]
) -> bytes:
    """The binary COPY rows of a run of plain numbers (``head``: stream, ts, context):
    every per-row step is C (``struct.pack`` through ``starmap``); the server parses no
    text (a third less of its CPU a reading than text COPY, measured)."""
    stream, ts, ctx = head
    n = len(values)
    flags = map(_NUMBER_FLAGS.__getitem__, map(type, values))
    return b"".join(
        starmap(
            _BINARY_ROW.pack,
            zip(repeat(9, n), repeat(4, n), repeat(stream, n), repeat(8, n), range(seq, seq + n),
                repeat(8, n), repeat(_pg_micros(ts), n), repeat(4, n), sids, repeat(4, n),
                repeat(ctx, n), repeat(2, n), flags, repeat(8, n), map(float, values),
                repeat(-1, n), repeat(-1, n), strict=True),
        )
    )  # fmt: skip


def _unwrap(value: Any) -> tuple[Any, str, str | None]:
    """(value, quality, error) of a bare value or a checked wrapper object."""
    if type(value) is dict:
        return value["value"], value["quality"], value.get("error")
    return value, "good", None


def _value_rows(
    out: BatchRows,
    seq: int,
    head: tuple[int, Any, int],
    items: Iterable[tuple[int, tuple[Any, str, str | None]]],
) -> None:
    """Rows of values of any kind; ``head``: (stream, ts, context)."""
    stream, ts, ctx = head
    add_simple, add_full, quality_codes = out.simple.append, out.full.append, QUALITY_CODES
    text: Any
    for sid, (value, quality, error) in items:
        kind = type(value)
        if kind is float or (kind is int and -FLOAT_INT <= value <= FLOAT_INT):
            flags = (KIND_FLOAT if kind is float else KIND_INT) * 4
            num: Any = value
            text = None
        elif value is None:
            flags, num, text = KIND_NULL * 4, None, None
        elif kind is bool:
            flags, num, text = KIND_BOOL * 4, 1.0 if value else 0.0, None
        elif kind is int:  # beyond 2^53: a float64 would lose digits
            flags, num, text = KIND_INT * 4, None, str(value)
        else:
            flags, num, text = KIND_TEXT * 4, None, value
        flags += quality_codes[quality]
        if text is None and error is None:
            add_simple((stream, seq, ts, sid, ctx, flags, num))
        else:
            add_full((stream, seq, ts, sid, ctx, flags, num, text, error))
        seq += 1


def _span(
    ranges: list[tuple[int, int]],
    spans: dict[tuple[int, int], tuple[int, int]],
    key: tuple[int, int],
    first: int,
    last: int,
) -> None:
    """Note seqs first..last of a stream, and widen the (context, stream) ``key``'s span."""
    ranges.append((first, last))
    span = spans.get(key)
    spans[key] = (first, last) if span is None else (min(span[0], first), max(span[1], last))


def resources_text(resources: dict[str, str]) -> str | None:
    """A unit record's resources as the ``units.resources`` column keeps them: JSON, keys in
    order (one spelling for one content), null for none."""
    return orjson.dumps(resources, option=orjson.OPT_SORT_KEYS).decode() if resources else None


def _unit_rows(
    ids: Ids, units: list[FlatUnit], time_value: Callable[[datetime], Any], out: BatchRows
) -> None:
    for u in units:
        out.ranges[ids.streams[(u.collector, u.outbox, UNITS)]].append((u.seq, u.seq))
        end = time_value(datetime.fromisoformat(u.end))
        slot = None if u.slot is None else str(u.slot)
        code = None if u.failure_code is None else str(u.failure_code)
        out.units.append(
            (u.collector, u.outbox, u.seq, u.serial, u.station, slot, u.operation,
             u.attempt, time_value(datetime.fromisoformat(u.start)), end,
             u.cycle_time_s, u.takt_s, u.verdict, code, u.ended_by, u.readings,
             u.golden, u.work_order, resources_text(u.resources))
        )  # fmt: skip
        for name, c in u.characteristics.items():
            out.chars.append(
                (u.collector, u.outbox, u.seq, u.serial, u.operation, name, c["last"],
                 c["min"], c["max"], c["lsl"], c["usl"], c["target"], c["critical"],
                 c["in_spec"], end)
            )  # fmt: skip
