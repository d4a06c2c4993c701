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

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import orjson

from collector import __version__
from collector.reading import Context, Reading, UnitRecord

SCHEMA_VERSION = 1

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
    return orjson.dumps(value)


K = TypeVar("K")


def _put(cache: dict[K, bytes], key: K, value: bytes) -> bytes:
    """Remember an encoded piece; a cache that grew past its limit starts over."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


class ReadingEncoder:
    """Encodes the readings of one poll into the JSON objects of docs/messages.md.

    The field order is the documented one: seq, ts, station, device, tag, value, unit,
    quality, error, unit_serial, operation, attempt, then slot, phase and golden only when set
    (added within schema 1 for issue 15).
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


def _extra_context(context: Context) -> bytes:
    """slot, phase and golden (issue 15), only when set: a reading without a unit or rack
    costs no extra bytes, and a consumer takes a missing field as null/false."""
    out = b""
    if context.slot is not None:
        out += b',"slot":%b' % _json(context.slot)
    if context.phase is not None:
        out += b',"phase":%b' % _json(context.phase)
    if context.golden:
        out += b',"golden":true'
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
    """A readings (or units) message around comma-separated JSON objects."""
    head = orjson.dumps({"schema": SCHEMA_VERSION, "collector": collector_id})
    return head[:-1] + b',"' + key + b'":[' + items + b"]}"


def status_message(collector_id: str, state: str) -> bytes:
    return orjson.dumps(
        {
            "schema": SCHEMA_VERSION,
            "collector": collector_id,
            "state": state,
            "ts": datetime.now(UTC),
            "version": __version__,
        },
        option=orjson.OPT_UTC_Z,
    )
