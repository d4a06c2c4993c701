"""The field checks of the reference decoder (contract.decode): each raises
:class:`ContractError` naming the field path. Split from the decoder so that each file holds
one idea; consumers import everything from :mod:`contract.decode`."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

SCHEMA_VERSIONS = (1, 2, 3)

Value = bool | int | float | str | None

QUALITIES = frozenset({"good", "uncertain", "bad"})
#: Qualities allowed in a schema-2 value wrapper (good values are written bare).
WRAPPED_QUALITIES = frozenset({"bad", "uncertain"})
VERDICTS = frozenset({"pass", "fail", "rework", "scrap", "incomplete"})
PHASES = frozenset({None, "test", "after"})
_HEX = frozenset("0123456789abcdef")


class ContractError(ValueError):
    """A message that does not follow the contract. ``str()`` is ``"path: problem"``.

    ``kind`` sorts the failures into a small fixed set for counting: ``json`` (not JSON or
    not an object), ``schema`` (missing or unknown schema version), ``field`` (a missing field
    or a field of the wrong type or value), ``unknown_meta`` (a positional poll refers to a
    tag-metadata version the decoder was not given: the message is otherwise valid; park it
    and decode it again once that version arrived on ``meta/{device}``). With
    ``unknown_meta``, ``missing`` lists every (collector, device, meta) the message waits for.
    ``duplicate_key``: an object of the message names a key twice (every JSON parser keeps
    only one of the two values, so a reading would be lost silently).
    """

    def __init__(
        self,
        path: str,
        problem: str,
        kind: str = "field",
        missing: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem
        self.kind = kind
        self.missing = missing


def _load(payload: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError("", f"not JSON ({exc})", "json") from None
    if type(doc) is not dict:
        raise ContractError("", "not a JSON object", "json")
    check_keys(payload, count_keys(doc))
    return doc


#: A key's end in JSON text: a quote, blanks, a colon. Every key of a document ends so; text
#: inside a string can match too (``"a\":b"``, ``":x"``), so the count is never below the
#: number of keys written, and equals it in the collector's messages.
_KEY_END = re.compile(rb'"[ \t\r\n]*:')
_NESTED = (dict, list)


def count_keys(node: Any) -> int:
    """How many keys the parsed document holds (a repeated key counts once: the parser kept
    one of its values)."""
    if type(node) is dict:
        return len(node) + sum(count_keys(v) for v in node.values() if type(v) in _NESTED)
    return sum(count_keys(v) for v in node if type(v) in _NESTED)


def check_keys(payload: bytes, parsed_keys: int) -> None:
    """Raise ContractError (kind ``duplicate_key``) if the JSON text names a key twice in one
    object. orjson, like every parser, keeps the last value of a repeated key, so the check
    is explicit: the text's key count (one regular-expression scan in C) against the parsed
    document's; only when they differ (a repeat, or key-like text inside a string) does the
    slow exact check run (the standard library's parser, seeing each object's pairs).

    First the colons are counted (a byte count, a tenth of the scan's time on a schema-3
    message): each key written is followed by a colon of its own and a colon byte is never
    part of another character in UTF-8, so the text holds at least as many colons as
    ``_KEY_END`` matches, and those at least as many as the keys written. When the colons
    are exactly the parsed keys, so are the keys written: nothing was repeated. Schema 3
    writes its times as numbers, so its messages usually have no other colon; a colon in a
    string (an RFC 3339 time, a URL) sends the message on to the scan."""
    if payload.count(b":") == parsed_keys or len(_KEY_END.findall(payload)) == parsed_keys:
        return

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise ContractError(
                    "",
                    f"the key {_show(key)} appears twice in one object (a JSON parser keeps "
                    "only one of the two values)",
                    "duplicate_key",
                )
            seen[key] = value
        return seen

    json.loads(payload, object_pairs_hook=pairs)


def _schema(doc: dict[str, Any]) -> int:
    schema = doc.get("schema")
    if type(schema) is not int or schema not in SCHEMA_VERSIONS:
        what = "missing" if schema is None else f"unsupported version {_show(schema)}"
        raise ContractError("schema", f"{what} (known: 1, 2, 3)", "schema")
    return schema


def _show(value: object) -> str:
    text = orjson.dumps(value).decode() if _is_json(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_json(value: object) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _str(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if type(value) is not str:
        raise ContractError(f"{path}{key}", _wanted("a string", key in obj, value))
    return value


def _nonempty(obj: dict[str, Any], key: str, path: str) -> str:
    value = _str(obj, key, path)
    if not value:
        raise ContractError(f"{path}{key}", "must not be empty")
    return value


def _opt_str(obj: dict[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is not None and type(value) is not str:
        raise ContractError(f"{path}{key}", _wanted("a string or null", True, value))
    return value


def _opt_int(obj: dict[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is not None and type(value) is not int:
        raise ContractError(f"{path}{key}", _wanted("an integer or null", True, value))
    return value


def _opt_num(obj: dict[str, Any], key: str, path: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is int:
        return float(value)
    if type(value) is not float:
        raise ContractError(f"{path}{key}", _wanted("a number or null", True, value))
    return value


def _bool(obj: dict[str, Any], key: str, path: str) -> bool:
    value = obj.get(key, False)
    if type(value) is not bool:
        raise ContractError(f"{path}{key}", _wanted("true or false", True, value))
    return value


def _opt_bool(obj: dict[str, Any], key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is not None and type(value) is not bool:
        raise ContractError(f"{path}{key}", _wanted("true, false or null", True, value))
    return value


def _slot(obj: dict[str, Any], path: str) -> int | str | None:
    value = obj.get("slot")
    if value is not None and type(value) is not int and type(value) is not str:
        raise ContractError(f"{path}slot", _wanted("an integer, a string or null", True, value))
    return value


def _phase(obj: dict[str, Any], key: str, path: str) -> str | None:
    phase = _opt_str(obj, key, path)
    if phase not in PHASES:
        raise ContractError(f"{path}{key}", f'must be "test", "after" or null, got {_show(phase)}')
    return phase


#: How a schema-2 poll's unit context member is checked, by its name: one entry for each of
#: contract.records.CONTEXT_FIELDS, in the order the checks run (the first bad one is named).
CONTEXT_CHECKS: Final[dict[str, Callable[[dict[str, Any], str, str], Any]]] = {
    "station": _opt_str,
    "slot": lambda obj, _key, path: _slot(obj, path),
    "unit_serial": _opt_str,
    "operation": _opt_str,
    "attempt": _opt_int,
    "phase": _phase,
    "golden": _bool,
    "work_order": _opt_str,
}


def _context(obj: dict[str, Any], path: str) -> dict[str, Any]:
    """A poll's unit context members, checked: name -> value."""
    return {name: check(obj, name, path) for name, check in CONTEXT_CHECKS.items()}


def _seq(obj: dict[str, Any], path: str) -> int:
    value = obj.get("seq")
    if type(value) is not int or value < 0:
        raise ContractError(f"{path}seq", _wanted("an integer >= 0", "seq" in obj, value))
    return value


def _scalar(value: Any, path: str) -> Value:
    if value is None or type(value) in (bool, int, float, str):
        return value  # type: ignore[no-any-return]
    raise ContractError(path, _wanted("a number, boolean, string or null", True, value))


def _wanted(what: str, present: bool, value: object) -> str:
    return f"must be {what}, got {_show(value)}" if present else f"missing (must be {what})"


#: The latest epoch millisecond a schema-3 ``ts`` may give (the end of the year 9999).
MAX_EPOCH_MS: Final = 253_402_300_799_999


def ms_text(ms: int) -> str:
    """RFC 3339 text (UTC, ``Z``) of a time in epoch milliseconds (a schema-3 poll's ``ts``):
    ``2026-11-21T10:15:02.250Z``, the fraction left out when zero."""
    seconds, milli = divmod(ms, 1000)
    text = _second_text(seconds)
    return f"{text}Z" if not milli else f"{text}.{milli:03d}Z"


@functools.lru_cache(maxsize=1024)  # polls fall in few seconds; each has its own millisecond
def _second_text(seconds: int) -> str:
    """``2026-11-21T10:15:02`` of a Unix second."""
    text = orjson.dumps(datetime.fromtimestamp(seconds, UTC), option=orjson.OPT_UTC_Z)
    return text[1:-2].decode()


class _TsCheck:
    """RFC 3339 check with a one-entry memory: the readings of a poll share their ts."""

    __slots__ = ("last", "what")

    def __init__(self, what: str = "an RFC 3339 string") -> None:
        self.last: str | None = None  # not "": an empty ts must be parsed, and refused
        self.what = what

    def __call__(self, obj: dict[str, Any], path: str, key: str = "ts") -> str:
        value = obj.get(key)
        if value == self.last and type(value) is str:
            return value
        if type(value) is not str:
            raise ContractError(f"{path}{key}", _wanted(self.what, key in obj, value))
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None or "T" not in value:
            raise ContractError(
                f"{path}{key}", f"must be an RFC 3339 time with offset, got {_show(value)}"
            )
        self.last = value
        return value


def _header(doc: dict[str, Any], schema: int) -> tuple[str, str]:
    collector = _nonempty(doc, "collector", "")
    if schema == 1:
        return collector, ""
    outbox = _str(doc, "outbox", "")
    if len(outbox) != 16 or not set(outbox) <= _HEX:
        raise ContractError("outbox", f"must be 16 lowercase hex characters, got {_show(outbox)}")
    return collector, outbox


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    items = doc.get(key)
    if type(items) is not list:
        raise ContractError(key, _wanted("an array", key in doc, items))
    return items


def _obj(item: Any, path: str) -> dict[str, Any]:
    if type(item) is not dict:
        raise ContractError(path.rstrip("."), _wanted("an object", True, item))
    return item
