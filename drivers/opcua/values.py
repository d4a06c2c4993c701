"""OPC-UA values as readings: a DataValue (its Variant and StatusCode) into the tag's readings.

Booleans, integers, floats (``scale``/``offset`` apply to numbers), strings, DateTime (an
RFC 3339 string), other scalars as text. An array becomes one reading per element, tag
``name[i]``. The StatusCode becomes the quality: Good -> good, Uncertain -> uncertain (value
kept), Bad -> bad (``error: bad_status``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from contract.codes import ErrorCode
from contract.records import Quality, Reading, Value
from drivers.opcua.config import OpcUaTag


def convert(value: Any, tag: OpcUaTag) -> Value:
    """One scalar as a reading value; raises ValueError for a non-finite float."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        if tag.scale == 1.0 and tag.offset == 0.0:
            return value
        return value * tag.scale + tag.offset
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return stamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.NodeId | ua.QualifiedName):
        return value.to_string()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def to_readings(tag: OpcUaTag, data: ua.DataValue, ts: float) -> list[Reading]:
    """A DataValue as readings: one, or one per element of an array."""
    status = data.StatusCode if data.StatusCode is not None else ua.StatusCode()
    if status.is_bad():
        return [Reading.bad(ts, tag.name, ErrorCode.BAD_STATUS, tag.unit)]
    quality = Quality.GOOD if status.is_good() else Quality.UNCERTAIN
    raw = data.Value.Value if data.Value is not None else None
    items = list(enumerate(raw)) if isinstance(raw, list) else [(None, raw)]
    out = []
    for index, item in items:
        name = tag.name if index is None else f"{tag.name}[{index}]"
        try:
            out.append(Reading(ts, name, convert(item, tag), tag.unit, quality))
        except ValueError:
            out.append(Reading.bad(ts, name, ErrorCode.DECODE, tag.unit))
    return out


def source_ts(data: ua.DataValue, fallback: float) -> float:
    """The value's time at its source (else at the server, else ``fallback``), UTC epoch s."""
    stamp = data.SourceTimestamp or data.ServerTimestamp
    if stamp is None:
        return fallback
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return stamp.timestamp()
