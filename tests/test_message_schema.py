"""The JSON Schema files consumers are given (contract/schema/) against the collector's real
messages, in both forms of a poll (positional and keyed), and against messages that break
the contract. (tests/test_end_to_end.py validates what a real broker delivered, too.)"""

from __future__ import annotations

import json
import struct
from typing import Any

import jsonschema
import pytest

from contract.codes import ErrorCode
from contract.encode import DeviceMeta, PollEncoder, envelope
from contract.records import Context, Quality, Reading
from tests.helpers import SCHEMAS, assert_valid

META = DeviceMeta(
    "tester-1",
    {
        name: {"unit": unit, "type": kind, "scale": 1.0, "offset": 0.0, "station": "ft-1"}
        for name, unit, kind in [
            ("supply_voltage", "V", "float32"),
            ("current", "A", "float32"),
            ("serial", None, "string"),
        ]
    },
    ("supply_voltage", "current", "serial"),
)
UNIT = Context("ft-1", "PILOT-0042", "functional-test", 1, phase="test")


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def readings_message(positional: bool) -> bytes:
    readings = [
        Reading(1_764_000_000.25, "supply_voltage", f32(12.03)),
        Reading.bad(1_764_000_000.25, "current", ErrorCode.TIMEOUT),
        Reading(1_764_000_000.25, "serial", "PILOT-0042", quality=Quality.UNCERTAIN),
        Reading(1_764_000_000.5, "current", f32(0.51)),
    ]
    body = PollEncoder(positional).encode(1041, "tester-1", readings, [UNIT] * 4, META)
    return envelope("line1-pc1", "6f1d0c2a9b7e4e55", body)


def test_real_messages_of_both_forms_are_valid() -> None:
    positional = readings_message(True)
    keyed = readings_message(False)
    assert b'"tag_index":0,"value_list":[12.03,' in positional
    assert b'"tag_index":1,"value_list":[0.51]' in positional
    assert b'"values":{"supply_voltage":12.03,' in keyed
    assert b"tag_index" not in keyed
    assert_valid(positional, "readings-2.json")
    assert_valid(keyed, "readings-2.json")
    assert_valid(META.message("line1-pc1"), "meta-2.json")


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


@pytest.mark.parametrize(
    ("change", "remove"),
    [
        ({"values": {"supply_voltage": 1}}, ()),  # both forms at once
        ({}, ("meta",)),  # positional without its meta
        ({}, ("value_list",)),  # half of the positional form
        ({"tag_index": -1}, ()),
        ({"value_list": []}, ()),
        ({"value_list": [[1]]}, ()),
        ({"value_list": [{"value": 1, "quality": "good", "error": None}]}, ()),
    ],
)
def test_broken_positional_polls_are_invalid(
    change: dict[str, Any], remove: tuple[str, ...]
) -> None:
    doc = json.loads(readings_message(True))
    poll = doc["polls"][0]
    poll.update(change)
    for name in remove:
        del poll[name]
    assert not validator("readings-2.json").is_valid(doc)


def test_a_poll_with_neither_form_and_a_meta_without_order_are_invalid() -> None:
    doc = json.loads(readings_message(False))
    del doc["polls"][0]["values"]
    assert not validator("readings-2.json").is_valid(doc)
    meta = json.loads(META.message("line1-pc1"))
    assert validator("meta-2.json").is_valid(meta)
    del meta["order"]
    assert not validator("meta-2.json").is_valid(meta)
