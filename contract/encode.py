"""The MQTT message contract (docs/messages.md): how readings, unit records and the collector's
state become JSON. Versioned by :data:`SCHEMA_VERSION`.

Readings are encoded once, when they enter the buffer, one poll at a time: the buffer stores a
poll's readings as the comma-separated JSON objects that go into a message as they are, ``seq``
included, so publishing joins stored bytes and never decodes or re-encodes. The encoder builds
each object from pieces that repeat (the poll's timestamp, the device, the tag, the unit
context), each encoded once and cached, plus the value: on a busy line this is the one loop
that runs per reading, and it is kept to a dictionary look-up or two and one format.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import operator
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

import orjson

from contract.metahash import meta_body
from contract.records import CONTEXT_FIELDS, Context, Quality, Reading, UnitRecord

#: The units and status messages the collector emits (docs/messages.md).
SCHEMA_VERSION = 2
#: The readings message the collector emits (one poll object per device and poll cycle), its
#: context and tag-metadata messages (a tag-metadata version id covers its device).
READINGS_SCHEMA = 3
#: The previous contract: one object per reading. Still encoded here for converting a buffer of
#: that format and for consumers' tests; the collector no longer publishes it.
SCHEMA_1 = 1

# Caches are cleared when they reach this many entries: tags and contexts are few; timestamps
# are many, but the readings of one poll share theirs.
_CACHE_LIMIT = 4096

_ts_text: dict[float, str] = {}


def ts_text(ts: float) -> str:
    """RFC 3339 text of an epoch time, UTC with ``Z``; the fraction is left out when zero."""
    text = _ts_text.get(ts)
    if text is None:
        if len(_ts_text) >= _CACHE_LIMIT:
            _ts_text.clear()
        text = _ts_text[ts] = orjson.dumps(utc(ts), option=orjson.OPT_UTC_Z)[1:-1].decode()
    return text


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _json(value: object) -> bytes:
    """A value's JSON, of its own size: orjson's output keeps the buffer it was written in
    (4 KB at least), and the pieces made here are cached (issue 28: 4,096 cached tag names
    held 16 MB)."""
    return memoryview(orjson.dumps(value)).tobytes()


K = TypeVar("K")


def _put(cache: dict[K, bytes], key: K, value: bytes) -> bytes:
    """Remember an encoded piece; a cache that grew past its limit starts over."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


class ReadingEncoder:
    """Schema 1: encodes the readings of one poll into one JSON object per reading.

    The field order is the documented one: seq, ts, station, device, tag, value, unit,
    quality, error, unit_serial, operation, attempt, then slot, phase and golden only when set
    (added within schema 1 for issue 15), and work_order only when set (issue 24).
    """

    def __init__(self) -> None:
        self._device: dict[tuple[str | None, str], bytes] = {}
        self._tag: dict[str, bytes] = {}
        self._meta: dict[tuple[object, ...], bytes] = {}
        self._context: dict[Context, bytes] = {}

    def encode(
        self, first_seq: int, device: str, readings: Sequence[Reading], contexts: Sequence[Context]
    ) -> bytes:
        """The readings as comma-separated JSON objects, numbered from ``first_seq``;
        ``contexts[i]`` is the context of ``readings[i]``."""
        tags, metas = self._tag, self._meta
        out = []
        seq = first_seq
        last_ts: float | None = None
        last_context: Context | None = None
        ts = head = tail = b""
        for reading, context in zip(readings, contexts, strict=True):
            if reading.ts != last_ts:  # once per request, not per reading
                last_ts = reading.ts
                ts = ts_text(reading.ts).encode()
            if context is not last_context:
                last_context = context
                head = self._device_bytes(context.station, device)
                tail = self._context_bytes(context)
            tag = tags.get(reading.tag)
            if tag is None:
                tag = _put(tags, reading.tag, _json(reading.tag))
            key = (reading.unit, reading.quality, reading.error)
            meta = metas.get(key)
            if meta is None:
                meta = _put(metas, key, self._meta_bytes(reading))
            value = reading.value
            out.append(
                b'{"seq":%d,"ts":"%b",%b%b,"value":%b,%b%b'
                % (
                    seq,
                    ts,
                    head,
                    tag,
                    # ints are most values: formatting them needs no call into orjson.
                    b"%d" % value if type(value) is int else orjson.dumps(value),
                    meta,
                    tail,
                )
            )
            seq += 1
        return b",".join(out)

    def _device_bytes(self, station: str | None, device: str) -> bytes:
        key = (station, device)
        head = self._device.get(key)
        if head is None:
            head = _put(
                self._device,
                key,
                b'"station":%b,"device":%b,"tag":' % (_json(station), _json(device)),
            )
        return head

    @staticmethod
    def _meta_bytes(reading: Reading) -> bytes:
        error = None if reading.error is None else reading.error.value
        return b'"unit":%b,"quality":"%b","error":%b,' % (
            _json(reading.unit),
            reading.quality.value.encode(),
            _json(error),
        )

    def _context_bytes(self, context: Context) -> bytes:
        tail = self._context.get(context)
        if tail is None:
            tail = _put(
                self._context,
                context,
                b'"unit_serial":%b,"operation":%b,"attempt":%b%b}'
                % (
                    _json(context.unit_serial),
                    _json(context.operation),
                    _json(context.attempt),
                    _extra_context(context),
                ),
            )
        return tail


_F32 = struct.Struct("<f")


def float32_text(value: float) -> bytes:
    """The shortest decimal text that reads back as the same float32 (354.315, not
    354.3149719238281): a float32 carries about 7 significant digits, and the float64 it was
    widened to would print 17. Not finite: null (JSON has no NaN)."""
    if not math.isfinite(value):
        return b"null"
    target = _F32.pack(value)
    for digits in range(6, 10):  # 9 significant digits always read back (IEEE 754)
        text = b"%.*g" % (digits, value)
        if _F32.pack(float(text)) == target:
            return text
    return b"%r" % value  # pragma: no cover - 9 digits always suffice


@dataclass(frozen=True, slots=True)
class DeviceMeta:
    """A device's tag metadata (the retained ``meta/{device}`` message) and what the encoder
    takes from it: the version id a poll refers to, each tag's position in ``order`` (the
    positional form's ``tag_index``), and which tags are float32.

    The version id is of schema 3 (contract.metahash): it hashes the device with the tags, so
    that it names one device of the collector and a positional poll need not name its device.
    ``schema`` 2: a version kept in the buffer by a collector before that (its ``body`` has no
    device), republished as it was with its old id, which its buffered polls name."""

    device: str
    #: tag -> {"unit", "type", "scale", "offset", "station"} (docs/messages.md).
    tags: Mapping[str, Mapping[str, Any]]
    #: Every tag of the device in config order, the order the poller emits them; empty: the
    #: order of ``tags``.
    order: tuple[str, ...] = ()
    #: The meta message's schema, which says what its id hashes (contract.metahash).
    schema: int = READINGS_SCHEMA
    meta: str = field(init=False)
    float32: frozenset[str] = field(init=False)
    #: tag -> its index in ``order``.
    position: Mapping[str, int] = field(init=False)

    def __post_init__(self) -> None:
        order = self.order or tuple(self.tags)
        object.__setattr__(self, "order", order)
        # The order is hashed too: the same tags in another order are another version.
        object.__setattr__(self, "meta", hashlib.sha256(self.body).hexdigest()[:8])
        object.__setattr__(
            self,
            "float32",
            frozenset(t for t, m in self.tags.items() if m.get("type") == "float32"),
        )
        object.__setattr__(self, "position", {tag: i for i, tag in enumerate(order)})

    @property
    def body(self) -> bytes:
        """The canonical JSON (keys sorted, no spaces) of ``{"device", "order", "tags"}``
        (schema 2: ``{"order", "tags"}``): what ``meta`` hashes, and what the buffer keeps of
        each version (its ``metas`` table)."""
        device = self.device if self.schema >= READINGS_SCHEMA else None
        return memoryview(meta_body(self.order, self.tags, device)).tobytes()

    @classmethod
    def from_body(cls, device: str, body: bytes) -> DeviceMeta:
        """A version kept in the buffer (:attr:`body`), as it was: one kept before schema 3
        (no ``device`` in its body) keeps its schema-2 id."""
        doc = orjson.loads(body)
        schema = READINGS_SCHEMA if "device" in doc else SCHEMA_VERSION
        return cls(device, doc["tags"], tuple(doc["order"]), schema)

    def message(self, collector_id: str) -> bytes:
        """The retained message (kept by the forwarder while the config runs: of its own
        size, see :func:`_json`)."""
        message = {
            "schema": self.schema,
            "collector": collector_id,
            "device": self.device,
            "meta": self.meta,
            "order": list(self.order),
            "tags": self.tags,
        }
        return memoryview(orjson.dumps(message)).tobytes()


@dataclass(frozen=True, slots=True)
class ContextVersion:
    """A unit context as a version (docs/messages.md, schema 3): the retained message on
    ``context/{station}`` (``context/{station}/{slot}`` for a rack's slot) that polls name by
    ``ctx``, the first 12 hex digits of the SHA-256 of :attr:`body`. The same context is the
    same id, on every collector run: nothing to number, nothing to keep in step."""

    context: Context
    #: The topic's last levels: the station, or station/slot.
    station_key: str = field(init=False)
    #: The canonical JSON (keys sorted, no spaces) of the context's members that are set.
    body: bytes = field(init=False)
    ctx: str = field(init=False)

    def __post_init__(self) -> None:
        members = {k: v for k, v in zip(CONTEXT_FIELDS, self.context, strict=True) if _set(v)}
        body = orjson.dumps(members, option=orjson.OPT_SORT_KEYS)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "ctx", hashlib.sha256(body).hexdigest()[:12])
        station, slot = self.context.station, self.context.slot
        key = f"{station}" if slot is None else f"{station}/{slot}"
        object.__setattr__(self, "station_key", key)

    def message(self, collector_id: str) -> bytes:
        return context_message(collector_id, self.ctx, self.body)


def context_message(collector_id: str, ctx: str, body: bytes) -> bytes:
    """The context message of a version kept as (ctx, :attr:`ContextVersion.body`)."""
    head = orjson.dumps({"schema": READINGS_SCHEMA, "collector": collector_id, "ctx": ctx})
    return head[:-1] + b"," + body[1:] if body != b"{}" else head


class _Described(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tag_names(self) -> set[str]: ...

    def tag_meta(self) -> dict[str, dict[str, object]]: ...


def tag_order(device: _Described) -> tuple[str, ...]:
    """A device's tags in config order, which is the order its poller emits them: its
    ``tags`` list, or its line pattern's named groups (a serial instrument); tags declared
    otherwise (a scanner's routes, read one per event) follow, sorted."""
    names: list[str] = [t.name for t in getattr(device, "tags", None) or ()]
    pattern = getattr(device, "pattern", None)
    if not names and isinstance(pattern, str):
        groups = re.compile(pattern).groupindex
        names = sorted(groups, key=groups.__getitem__)
    known = set(names)
    return (*names, *sorted(set(device.tag_names) - known))


def device_metas(devices: Iterable[_Described]) -> dict[str, DeviceMeta]:
    """Each configured device's tag metadata (drivers.base.DeviceBase.tag_meta)."""
    return {d.name: DeviceMeta(d.name, d.tag_meta(), tag_order(d)) for d in devices}


class PollEncoder:
    """Schema 3: encodes the readings of one poll cycle into one poll object
    (docs/messages.md).

    Every value of the cycle is in ``v``, whatever the number of read requests; value i has
    seq ``seq + i``. Which tag value i is: by position in the device's metadata (``order``)
    when ``positional`` is on and the metadata is known: ``tag_index`` (left out when 0) when
    the tags are a contiguous slice of the order, else ``tag_list`` (each value's index in the
    order; a tag read twice in the cycle, e.g. a scanner's two lines in one write, is two
    samples with the same index), and no ``device`` (the meta version names it); otherwise by
    name, ``tags`` (one name per value, repeats allowed), with ``device``. Never an object
    keyed by tag: a key cannot repeat, a sample can. Each value's own time, where it differs
    from the poll's ``ts`` (a later request of the cycle), is given by ``dt`` change points
    ``[from value index, offset ms]``; its unit context by the poll's context members, or,
    when the cycle's readings have several (a rack's slots, a unit that changed within the
    cycle), by ``contexts`` change points ``[from value index, {members}]``. A good value is
    written bare; a bad or uncertain one as ``{"value", "quality", "error"}``. Members whose
    value is the default are left out. The pieces that repeat (device head, context, tag
    names) are encoded once and cached; per reading it is a look-up or two and one format.
    """

    def __init__(self, positional: bool = True) -> None:
        #: mqtt.value_keys: ``position`` (True) or ``name``.
        self.positional = positional
        self._device: dict[tuple[str, str | None, bool], bytes] = {}
        self._tag: dict[str, bytes] = {}
        self._versions: dict[Context, ContextVersion | None] = {}
        self._wrap: dict[tuple[object, ...], bytes] = {}
        #: The context versions named by the polls encoded since the caller last took them,
        #: with the seq of the first value read under each (collector.buffer.writer keeps
        #: them for the forwarder to publish).
        self.used: list[tuple[ContextVersion, int]] = []

    def version(self, context: Context) -> ContextVersion | None:
        """The context's version; None for no context at all (no station): no ``ctx``."""
        try:
            return self._versions[context]
        except KeyError:
            pass
        if len(self._versions) >= _CACHE_LIMIT:
            self._versions.clear()
        version = None if not any(map(_set, context)) else ContextVersion(context)
        self._versions[context] = version
        return version

    def known_versions(self) -> list[ContextVersion]:
        """The context versions encoded lately (those still cached)."""
        return [v for v in self._versions.values() if v is not None]

    def encode(
        self,
        first_seq: int,
        device: str,
        readings: Sequence[Reading],
        contexts: Sequence[Context],
        meta: DeviceMeta | None = None,
        *,
        positional: bool = True,
    ) -> bytes:
        """The readings (one poll cycle, or a part of one) as one poll object numbered from
        ``first_seq``; ``contexts[i]`` is the context of ``readings[i]``. ``positional``
        False: by name whatever the config says (a device whose metadata the broker
        refused)."""
        float32 = meta.float32 if meta is not None else frozenset()
        # No positions: tags by name.
        position: Mapping[str, int] = (
            meta.position if meta is not None and positional and self.positional else {}
        )
        # Times to the millisecond (docs/messages.md): the poll's ts in epoch milliseconds,
        # and each value's offset from it in whole milliseconds, so the values of one request,
        # and of a subscription batch reported within a millisecond, share one time.
        ms0 = round(readings[0].ts * 1000)
        texts: list[bytes] = []
        indexes: list[int] = []
        times: list[bytes] = []  # dt change points
        runs: list[tuple[int, Context]] = []  # context change points
        last_ts = readings[0].ts
        last_ms = ms0
        last_context: Context | None = None
        known = bool(position)
        pairs: Iterable[tuple[Reading, Context]] = zip(readings, contexts, strict=True)
        plain = _plain(readings, contexts, position, float32)
        if plain is not None:  # the common poll, without a Python step per value
            texts, indexes, known = plain
            runs.append((0, contexts[0]))
            pairs = ()
        for i, (reading, context) in enumerate(pairs):
            if reading.ts != last_ts:  # once per request, not per reading
                last_ts = reading.ts
                ms = round(reading.ts * 1000)
                if ms != last_ms:
                    last_ms = ms
                    times.append(b"[%d,%d]" % (i, ms - ms0))
            if context is not last_context and context != last_context:
                runs.append((i, context))
            last_context = context
            if known:
                at = position.get(reading.tag)
                if at is None:
                    known = False
                else:
                    indexes.append(at)
            value = reading.value
            if type(value) is int:  # most values: no call into orjson
                text = b"%d" % value
            elif type(value) is float and reading.tag in float32:
                text = float32_text(value)
            else:
                text = orjson.dumps(value)
            if reading.quality is not Quality.GOOD:
                text = self._wrapped(reading, text)
            texts.append(text)
        # By position the meta version names the device (its id covers it): no device.
        head = self._device_bytes(device, meta.meta if meta else None, named=not known)
        out = [b'{"seq":%d,"ts":%d,%b' % (first_seq, ms0, head)]
        versions = [(i, self.version(c)) for i, c in runs]
        self.used += [(v, first_seq + i) for i, v in versions if v is not None]
        if len(versions) == 1:
            if versions[0][1] is not None:
                out.append(b'"ctx":"%b",' % versions[0][1].ctx.encode())
        else:
            out.append(
                b'"ctx":[%b],'
                % b",".join(
                    b'[%d,"%b"]' % (i, v.ctx.encode()) if v else b"[%d,null]" % i
                    for i, v in versions
                )
            )
        if known:
            first = indexes[0]
            if indexes == list(range(first, first + len(indexes))):
                if first:
                    out.append(b'"tag_index":%d,' % first)
            else:
                out.append(b'"tag_list":[%b],' % b",".join(b"%d" % i for i in indexes))
        else:
            names = self._tag
            tags = []
            for reading in readings:
                name = names.get(reading.tag)
                if name is None:
                    name = _put(names, reading.tag, _json(reading.tag))
                tags.append(name)
            out.append(b'"tags":[%b],' % b",".join(tags))
        if times:
            out.append(b'"dt":[%b],' % b",".join(times))
        out.append(b'"v":[%b]}' % b",".join(texts))
        return b"".join(out)

    def _device_bytes(self, device: str, meta: str | None, *, named: bool) -> bytes:
        """``"device":...,"meta":...,``; a poll by position (``named`` False) leaves out the
        device, which its meta version names."""
        key = (device, meta, named)
        head = self._device.get(key)
        if head is None:
            head = b'"device":%b,' % _json(device) if named or meta is None else b""
            if meta is not None:
                head += b'"meta":"%b",' % meta.encode()
            head = _put(self._device, key, head)
        return head

    def _wrapped(self, reading: Reading, value: bytes) -> bytes:
        key = (reading.quality, reading.error)
        tail = self._wrap.get(key)
        if tail is None:
            error = None if reading.error is None else reading.error.value
            tail = _put(
                self._wrap,
                key,
                b',"quality":"%b","error":%b}' % (reading.quality.value.encode(), _json(error)),
            )
        return b'{"value":' + value + tail


_ts_of = operator.attrgetter("ts")
_tag_of = operator.attrgetter("tag")
_value_of = operator.attrgetter("value")
_quality_of = operator.attrgetter("quality")


def _plain(
    readings: Sequence[Reading],
    contexts: Sequence[Context],
    position: Mapping[str, int],
    float32: frozenset[str],
) -> tuple[list[bytes], list[int], bool] | None:
    """For :meth:`PollEncoder.encode`: a poll read at one time, under one context, every value
    good and none of them a float (when the device has float32 tags), encoded without a Python
    step per value (issue 28): its value texts as one piece (orjson writes a list's items as it
    writes each alone, and an int as ``%d`` does), its positions (one look-up each, in C) and
    whether every tag has one. None for any other poll: the loop encodes it."""
    count = len(readings)
    if contexts.count(contexts[0]) != count:
        return None
    if list(map(_ts_of, readings)).count(readings[0].ts) != count:
        return None
    if not all(map(operator.is_, map(_quality_of, readings), itertools.repeat(Quality.GOOD))):
        return None
    values = list(map(_value_of, readings))
    if float32 and float in set(map(type, values)):
        return None
    try:
        text = orjson.dumps(values)[1:-1]
    except orjson.JSONEncodeError:  # an int beyond 64 bits: the loop writes it as %d
        return None
    if not position:
        return [text], [], False
    indexes: list[int | None] = list(map(position.get, map(_tag_of, readings)))
    if None in indexes:
        return [text], [], False
    return [text], cast("list[int]", indexes), True


def by_context(
    readings: Sequence[Reading], contexts: Sequence[Context]
) -> tuple[Sequence[Reading], Sequence[Context]]:
    """A poll cycle's readings grouped by context, in the order each context first appears
    (stable: a tag's samples keep their order): a rack's subscription changes arrive
    interleaved across its slots, and a poll object names a context per change point
    (``ctx``), so grouped they cost one point per slot, not one per value. A cycle with one
    context (nearly every poll; its readings share one Context object) is returned as is."""
    if contexts.count(contexts[0]) == len(contexts):
        return readings, contexts
    rank: dict[Context, int] = {}
    keys = [rank.setdefault(c, len(rank)) for c in contexts]
    if all(a <= b for a, b in itertools.pairwise(keys)):
        return readings, contexts
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return [readings[i] for i in order], [contexts[i] for i in order]


#: The members of a poll object that hold or describe its values one by one.
_PER_VALUE = ("seq", "values", "value_list", "v", "tag_index", "tag_list", "tags", "dt", "ctx")


def _values_key(poll: dict[str, Any]) -> str:
    """Where a stored poll has its list of values: ``v`` (schema 3), ``value_list`` (a
    positional poll buffered by schema 2)."""
    return "v" if "v" in poll else "value_list"


def _values_of(poll: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """A stored poll's values and how their tags are named: ``{"tags": [...]}``,
    ``{"tag_list": [...]}`` or ``{"tag_index": i}`` (a poll buffered by schema 2 with
    ``values`` keyed by tag reads as ``tags``)."""
    if "values" in poll:
        return list(poll["values"].values()), {"tags": list(poll["values"])}
    values = poll[_values_key(poll)]
    for key in ("tags", "tag_list"):
        if key in poll:
            return values, {key: poll[key]}
    return values, {"tag_index": poll.get("tag_index", 0)}


def _rebase(points: list[list[Any]], start: int, end: int, before: Any) -> list[list[Any]]:
    """Change points ``[from index, x]`` for the values ``start..end-1`` of a poll, counted
    from ``start``; ``before`` is what applies ahead of the first point."""
    at_start = before
    for index, x in points:
        if index <= start:
            at_start = x
    out = [] if at_start is None else [[0, at_start]]
    return out + [[i - start, x] for i, x in points if start < i < end]


def cut_poll(poll: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """Values ``start..end-1`` of a stored poll as a poll of their own: same values, seqs,
    tags, times and contexts (its ``seq``, ``tag_index``, ``tag_list``, ``tags``, ``dt``
    and ``contexts`` moved on)."""
    values, naming = _values_of(poll)
    out = {k: v for k, v in poll.items() if k not in _PER_VALUE}
    out["seq"] = poll["seq"] + start
    if type(poll.get("ctx")) is list:
        ctx = [p for p in _rebase(poll["ctx"], start, end, None) if p != [0, None]]
        if len(ctx) == 1 and ctx[0][0] == 0:
            out["ctx"] = ctx[0][1]
        elif ctx:
            out["ctx"] = ctx
    elif "ctx" in poll:
        out["ctx"] = poll["ctx"]
    if "tag_index" in naming:
        if naming["tag_index"] + start:
            out["tag_index"] = naming["tag_index"] + start
    else:
        ((key, names),) = naming.items()
        out[key] = names[start:end]
    if "dt" in poll:
        dt = [p for p in _rebase(poll["dt"], start, end, 0) if p != [0, 0]]
        if dt:
            out["dt"] = dt
    # The poll's own key (a keyed schema-2 poll cut becomes a schema-3 one, by tags).
    out["value_list" if "value_list" in poll else "v"] = values[start:end]
    return out


def split_polls(body: bytes, per_part: int) -> list[tuple[int, int, float, bytes]]:
    """A stored body of poll objects cut into parts of at most ``per_part`` values each:
    (first seq, last seq, oldest ts, body). Same values, same seqs, same members, same form
    (:func:`cut_poll`); for the rare message the broker will not take whole, so it may
    decode."""
    polls: list[dict[str, Any]] = orjson.loads(b"[" + body + b"]")
    # (poll, position in it) for every value, in seq order
    entries: list[tuple[int, int]] = []
    for p, poll in enumerate(polls):
        entries += [(p, i) for i in range(len(_values_of(poll)[0]))]
    parts = []
    for start in range(0, len(entries), per_part):
        group = entries[start : start + per_part]
        objects = []
        times = []
        for p, run in itertools.groupby(group, key=lambda e: e[0]):
            offsets = [i for _, i in run]
            cut = cut_poll(polls[p], offsets[0], offsets[-1] + 1)
            objects.append(orjson.dumps(cut))
            dt = cut.get("dt", [])
            ms = [x for _, x in dt] + ([0] if not dt or dt[0][0] else [])
            ts = cut["ts"]  # epoch ms, or RFC 3339 text (a poll stored before schema 3)
            read = ts / 1000 if type(ts) is int else datetime.fromisoformat(ts).timestamp()
            times.append(read + min(ms) / 1000)
        first = polls[group[0][0]]["seq"] + group[0][1]
        parts.append((first, first + len(group) - 1, min(times), b",".join(objects)))
    return parts


def keyed_polls(body: bytes, device: str, meta: str, order: Sequence[str]) -> bytes | None:
    """A stored body with the positional polls of that device and meta version rewritten
    with their tags by name (``tags``; same values, same seqs, the other members as they
    were, ``device`` added: a poll by name names its device); None if it has none. For a
    version whose metadata the broker refused: consumers could never resolve them. Rare, so
    it may decode. A positional poll of schema 3 has no ``device`` (its meta version names
    it); one buffered by schema 2 has."""
    polls: list[dict[str, Any]] = orjson.loads(b"[" + body + b"]")
    changed = False
    for i, poll in enumerate(polls):
        if poll.get("device", device) != device or poll.get("meta") != meta:
            continue
        if "tags" in poll or "values" in poll:
            continue
        key = _values_key(poll)
        values = poll[key]
        if "tag_list" in poll:
            names = [order[j] for j in poll.pop("tag_list")]
        else:
            start = poll.pop("tag_index", 0)
            names = list(order[start : start + len(values)])
        # seq and ts first, as the encoder writes them (join_polls looks for them there).
        head: dict[str, Any] = {k: poll[k] for k in ("seq", "ts") if k in poll}
        rest = {k: v for k, v in poll.items() if k not in (key, "device", "seq", "ts")}
        polls[i] = {**head, "device": device, **rest, "tags": names, key: values}
        changed = True
    return b",".join(orjson.dumps(p) for p in polls) if changed else None


#: The context members a schema-1 reading always has (null when unset); the later ones (slot,
#: phase and golden since issue 15, and any added to Context) follow only when set.
_SCHEMA1_CONTEXT = ("station", "unit_serial", "operation", "attempt")
#: (They lead CONTEXT_FIELDS: tests/test_context_fields.py checks.)
_LATER_CONTEXT = CONTEXT_FIELDS[len(_SCHEMA1_CONTEXT) :]


def _set(value: object) -> bool:
    """A context member worth writing: null and false are the defaults a consumer assumes
    for a missing member (a 0 is written)."""
    return value is not None and value is not False


def _extra_context(context: Context) -> bytes:
    """The later context members, only when set: a reading without a unit or rack costs no
    extra bytes, and a consumer takes a missing field as null/false."""
    out = b""
    for name, value in zip(_LATER_CONTEXT, context[len(_SCHEMA1_CONTEXT) :], strict=True):
        if _set(value):
            out += b',"%b":%b' % (name.encode(), _json(value))
    return out


def encode_unit(unit: UnitRecord) -> bytes:
    """The JSON object of one unit record, without ``seq`` (see docs/traceability.md)."""
    return orjson.dumps(
        {
            "serial": unit.serial,
            "station": unit.station,
            "operation": unit.operation,
            "attempt": unit.attempt,
            "start": utc(unit.start_ts),
            "end": utc(unit.end_ts),
            "cycle_time_s": round(unit.end_ts - unit.start_ts, 3),
            "verdict": unit.verdict,
            "failure_code": unit.failure_code,
            "ended_by": unit.ended_by,
            "readings": unit.readings,
            "characteristics": {
                name: {"last": last, "min": low, "max": high, **_spec(unit, name)}
                for name, (last, low, high) in unit.characteristics.items()
            },
            "slot": unit.slot,
            "takt_s": unit.takt_s,
            "golden": unit.golden,
            "work_order": unit.work_order,
            # Only when the station declares resources: other records keep their bytes.
            **({"resources": unit.resources} if unit.resources else {}),
        },
        option=orjson.OPT_UTC_Z,
    )


def _spec(unit: UnitRecord, name: str) -> dict[str, object]:
    spec = unit.specs.get(name)
    if spec is None:
        return {}
    return {
        "lsl": spec.lsl,
        "usl": spec.usl,
        "target": spec.target,
        "critical": spec.critical,
        "in_spec": spec.in_spec,
    }


def with_seq(rows: Iterable[tuple[int, bytes]]) -> bytes:
    """Stored objects without ``seq`` (unit records), numbered: comma-separated objects."""
    return b",".join(b'{"seq":%d,%b' % (seq, body[1:]) for seq, body in rows)


def build_message(collector_id: str, items: bytes, key: bytes = b"readings") -> bytes:
    """A schema-1 readings (or units) message around comma-separated JSON objects."""
    head = orjson.dumps({"schema": SCHEMA_1, "collector": collector_id})
    return head[:-1] + b',"' + key + b'":[' + items + b"]}"


def envelope(collector_id: str, outbox: str, items: bytes, key: bytes = b"polls") -> bytes:
    """A message around comma-separated JSON objects: ``polls`` (stored poll objects, joined
    as stored: schema 3) or ``units`` (schema 2)."""
    schema = READINGS_SCHEMA if key == b"polls" else SCHEMA_VERSION
    head = orjson.dumps({"schema": schema, "collector": collector_id, "outbox": outbox})
    return head[:-1] + b',"' + key + b'":[' + items + b"]}"


def join_polls(parts: Iterable[tuple[int, int, bytes]]) -> bytes:
    """Stored poll objects, (first seq, number of values, body) each, joined for one readings
    message: a poll whose ``seq`` follows on from the previous poll's (its seq + its number
    of values) goes without ``seq``, and one with the previous poll's ``ts`` without ``ts``
    (docs/messages.md: a decoder takes them from the previous poll). The devices of a line
    polled in the same millisecond share one ts: each poll then costs no seq or ts. Only a
    body that is one poll object as the encoder writes it (``{"seq":first,"ts":...,``) is
    touched; any other (several polls, a part of a split) is joined as stored and breaks the
    chain, which the next poll starts again with both members."""
    out = []
    next_seq, last_ts = -1, b""
    for first, count, body in parts:
        head = b'{"seq":%d,"ts":' % first
        # One poll: JSON text names "seq": once per poll object (inside a string the quote
        # would be escaped); a schema-2 poll keyed by a tag named seq counts twice: as stored.
        if not body.startswith(head) or body.count(b'"seq":') != 1:
            out.append(body)
            next_seq, last_ts = -1, b""
            continue
        # The ts: epoch milliseconds up to the comma (the encoder's), or a quoted text.
        at = len(head)
        end = body.index(b'"', at + 1) + 1 if body[at : at + 1] == b'"' else body.index(b",", at)
        ts = body[at:end]
        rest = body[end + 1 :]  # after the ts's comma
        kept = b"{"
        if first != next_seq:
            kept += b'"seq":%d,' % first
        if ts != last_ts:
            kept += b'"ts":%b,' % ts
        out.append(kept + rest)
        next_seq, last_ts = first + count, ts
    return b",".join(out)


def status_message(collector_id: str, state: str, version: str) -> bytes:
    """The retained status message: online or offline, and the producer's version."""
    return orjson.dumps(
        {
            "schema": SCHEMA_VERSION,
            "collector": collector_id,
            "state": state,
            "ts": datetime.now(UTC),
            "version": version,
        },
        option=orjson.OPT_UTC_Z,
    )
