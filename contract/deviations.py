"""Deviations recorded on the line PC: the record type, its encoder and its reference decoder
(docs/messages.md, "Deviations"; JSON Schema ``schema/deviations-2.json``).

A deviation is what went differently from the process, written down by someone on the line:
what happened, how bad, where (station, operation, device), which units (serials, or every
unit at the station in a time window), the immediate action, who. The collector takes it on
``POST /deviations``, commits it to its outbox and publishes it on ``.../deviations`` like a
unit record: its own seq, delivered at least once, deduplicated by (collector, outbox, seq).

:func:`deviation_fields` is the one check of a deviation's fields: the collector runs it on
the HTTP body, the decoder on each message item, so a field refused at the line PC and one
refused at the store are named with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from contract.encode import ts_text
from contract.fields import (
    ContractError,
    _header,
    _list,
    _load,
    _obj,
    _schema,
    _seq,
    _TsCheck,
    _wanted,
)
from contract.text import MAX_SERIAL_CHARS, is_control, serial_problem

SEVERITIES = ("minor", "major", "critical")
#: Longest short field (station, operation, device, who) and prose field (description, action).
MAX_SHORT_CHARS = 200
MAX_PROSE_CHARS = 8000
MAX_SERIALS = 1000
#: Prose may hold line breaks and tabs; no other control or format character anywhere.
_PROSE_CONTROLS = frozenset("\n\r\t")
#: The fields a deviation may have (docs/messages.md): any other is refused.
FIELDS = ("description", "severity", "station", "operation", "device", "serials", "window",
          "action", "who")  # fmt: skip
_PROSE = frozenset({"description", "action"})


@dataclass(frozen=True, slots=True)
class Deviation:
    """One deviation as the line PC recorded it. ``ts``: when it was recorded (epoch s, UTC);
    ``window``: (start, end) epoch seconds, the units recorded at the station then."""

    ts: float
    description: str
    severity: str
    station: str
    action: str
    operation: str | None = None
    device: str | None = None
    serials: tuple[str, ...] = ()
    window: tuple[float, float] | None = None
    who: str | None = None


@dataclass(frozen=True, slots=True)
class FlatDeviation:
    """A decoded deviation with its dedupe key (collector, outbox, seq)."""

    collector: str
    outbox: str
    seq: int
    deviation: Deviation


def _text(obj: dict[str, Any], key: str, path: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if type(value) is not str:
        raise ContractError(f"{path}{key}", _wanted("a string", key in obj, value))
    if not value.strip():
        raise ContractError(f"{path}{key}", "must not be empty")
    limit = MAX_PROSE_CHARS if key in _PROSE else MAX_SHORT_CHARS
    if len(value) > limit:
        raise ContractError(f"{path}{key}", f"longer than {limit} characters ({len(value)})")
    allowed = _PROSE_CONTROLS if key in _PROSE else frozenset()
    for char in value:
        if is_control(char) and char not in allowed:
            raise ContractError(
                f"{path}{key}", f"contains the control or format character U+{ord(char):04X}"
            )
    return value


def _required(obj: dict[str, Any], key: str, path: str) -> str:
    value = _text(obj, key, path, required=True)
    if value is None:  # pragma: no cover - _text refuses a missing required field
        raise ContractError(f"{path}{key}", "missing")
    return value


def deviation_fields(obj: dict[str, Any], ts: float, path: str = "") -> Deviation:
    """A deviation from its JSON object (a message item without ``seq`` and ``ts``, or the
    collector's HTTP body), every field checked; ContractError names the first bad one."""
    unknown = sorted(set(obj) - {*FIELDS, "seq", "ts"})
    if unknown:
        raise ContractError(f"{path}{unknown[0]}", f"unknown field; the fields are "
                            f"{', '.join(FIELDS)}")  # fmt: skip
    description = _required(obj, "description", path)
    severity = obj.get("severity")
    if severity not in SEVERITIES:
        raise ContractError(
            f"{path}severity",
            _wanted("one of " + ", ".join(SEVERITIES), "severity" in obj, severity),
        )
    station = _required(obj, "station", path)
    operation = _text(obj, "operation", path, required=False)
    device = _text(obj, "device", path, required=False)
    action = _required(obj, "action", path)
    who = _text(obj, "who", path, required=False)
    raw = obj.get("serials") or []
    if type(raw) is not list or len(raw) > MAX_SERIALS:
        raise ContractError(f"{path}serials", _wanted(f"an array of at most {MAX_SERIALS} "
                            "serials", True, raw))  # fmt: skip
    serials: list[str] = []
    for i, serial in enumerate(raw):
        if type(serial) is not str or not serial:
            raise ContractError(f"{path}serials[{i}]", _wanted("a serial", True, serial))
        if problem := serial_problem(serial):
            raise ContractError(f"{path}serials[{i}]", problem)
        serials.append(serial)
    window = _window(obj.get("window"), f"{path}window")
    if not serials and window is None:
        raise ContractError(f"{path}serials", "name the units: serials, or a time window "
                            "{start, end}")  # fmt: skip
    return Deviation(ts, description, severity, station, action, operation, device,
                     tuple(dict.fromkeys(serials)), window, who)  # fmt: skip


def _window(raw: Any, path: str) -> tuple[float, float] | None:
    if raw is None:
        return None
    if type(raw) is not dict or set(raw) != {"start", "end"}:
        raise ContractError(path, _wanted("an object {start, end}", True, raw))
    check = _TsCheck()
    start = datetime.fromisoformat(check(raw, f"{path}.", "start")).timestamp()
    end = datetime.fromisoformat(check(raw, f"{path}.", "end")).timestamp()
    if start >= end:
        raise ContractError(path, "start must be before end")
    return start, end


def encode_deviation(deviation: Deviation) -> bytes:
    """The JSON object of one deviation, without ``seq`` (the outbox numbers it as it goes
    out, like a unit record). Members that are null or empty are left out."""
    obj: dict[str, Any] = {
        "ts": ts_text(deviation.ts),
        "description": deviation.description,
        "severity": deviation.severity,
        "station": deviation.station,
        "operation": deviation.operation,
        "device": deviation.device,
        "serials": list(deviation.serials) or None,
        "window": None
        if deviation.window is None
        else {"start": ts_text(deviation.window[0]), "end": ts_text(deviation.window[1])},
        "action": deviation.action,
        "who": deviation.who,
    }
    return orjson.dumps({k: v for k, v in obj.items() if v is not None})


def decode_deviations(payload: bytes) -> list[FlatDeviation]:
    """Every deviation of a deviations message. Raises ContractError naming the field."""
    doc = _load(payload)
    collector, outbox = _header(doc, _schema(doc))
    ts_check = _TsCheck()
    out = []
    for i, item in enumerate(_list(doc, "deviations")):
        path = f"deviations[{i}]."
        obj = _obj(item, path)
        seq = _seq(obj, path)
        ts = datetime.fromisoformat(ts_check(obj, path)).timestamp()
        out.append(FlatDeviation(collector, outbox, seq, deviation_fields(obj, ts, path)))
    return out


__all__ = [
    "MAX_SERIAL_CHARS",
    "SEVERITIES",
    "Deviation",
    "FlatDeviation",
    "decode_deviations",
    "deviation_fields",
    "encode_deviation",
]
