"""The message contract between a line PC and whoever reads its stream: record types, the
encoder the collector writes with, the reference decoder every consumer (the central store
included) reads with, the field checks both share, and the JSON Schemas (``schema/*.json``,
package data). docs/messages.md describes the messages; this package is their code.

It depends on orjson only: a consumer takes it without the collector's protocol stacks::

    import contract

    metas, contexts = contract.MetaBook(), contract.ContextBook()

    def on_message(topic: str, payload: bytes) -> None:
        if "/meta/" in topic:
            metas.add(payload)  # positional polls name their tags here
        elif "/context/" in topic:
            contexts.add(payload)  # polls name their unit context here
        elif topic.endswith("/readings"):
            for r in contract.decode_readings(payload, metas, contexts):
                key = (r.collector, r.outbox, r.seq)  # the dedupe key: never reused
                print(key, r.device, r.tag, r.value, r.quality, r.unit_serial, r.operation)
        elif topic.endswith("/units"):
            for unit in contract.decode_units(payload):
                print(unit.serial, unit.operation, unit.attempt, unit.verdict)

A payload that breaks the contract raises :class:`ContractError` naming the field path.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from contract.codes import ErrorCode
from contract.decode import (
    ContextBook,
    FlatReading,
    FlatUnit,
    MetaBook,
    Poll,
    ReadingsMessage,
    decode_context,
    decode_meta,
    decode_polls,
    decode_readings,
    decode_units,
    flatten,
)
from contract.deviations import Deviation, FlatDeviation, decode_deviations, encode_deviation
from contract.encode import READINGS_SCHEMA, SCHEMA_VERSION
from contract.fields import SCHEMA_VERSIONS, ContractError
from contract.records import Context, Quality, Reading, UnitRecord, Value

#: The JSON Schema files shipped with the package, by message kind.
SCHEMA_FILES = {
    "readings": "readings-3.json",
    "context": "context-3.json",
    "units": "units-2.json",
    "meta": "meta-3.json",
    "deviations": "deviations-2.json",
}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one message kind: ``readings``, ``context``,
    ``units``, ``meta`` or ``deviations``."""
    text = files("contract").joinpath("schema", SCHEMA_FILES[kind]).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


__all__ = [
    "READINGS_SCHEMA",
    "SCHEMA_FILES",
    "SCHEMA_VERSION",
    "SCHEMA_VERSIONS",
    "Context",
    "ContextBook",
    "ContractError",
    "Deviation",
    "ErrorCode",
    "FlatDeviation",
    "FlatReading",
    "FlatUnit",
    "MetaBook",
    "Poll",
    "Quality",
    "Reading",
    "ReadingsMessage",
    "UnitRecord",
    "Value",
    "decode_context",
    "decode_deviations",
    "decode_meta",
    "decode_polls",
    "decode_readings",
    "decode_units",
    "encode_deviation",
    "flatten",
    "json_schema",
]
