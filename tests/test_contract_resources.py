"""The unit record's optional ``resources`` (issue 27) in the reference decoder and in the
units JSON Schema consumers are given: valid objects pass (null values left out), broken
ones are refused with the field's path."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import orjson
import pytest

from contract.decode import ContractError, decode_units
from tests.helpers import SCHEMAS, assert_valid
from tests.test_contract import unit2


def message(**unit: Any) -> bytes:
    return orjson.dumps(unit2(**unit))  # a whole schema-2 units message


def test_resources_are_decoded_and_valid_against_the_schema() -> None:
    payload = message(resources={"operator": "OP-0042", "fixture": "nest-3", "cavity": None})
    (unit,) = decode_units(payload)
    assert unit.resources == {"operator": "OP-0042", "fixture": "nest-3"}
    assert_valid(payload, "units-2.json")
    (without,) = decode_units(message())
    assert without.resources == {}
    assert_valid(message(), "units-2.json")


@pytest.mark.parametrize(
    ("resources", "path", "problem"),
    [
        (["nest-3"], "units[0].resources", "must be an object"),
        ({"fixture": 3}, "units[0].resources.fixture", "must be a string of 1 to 200"),
        ({"fixture": ""}, "units[0].resources.fixture", "must be a string of 1 to 200"),
        ({"fixture": "x" * 201}, "units[0].resources.fixture", "must be a string of 1 to 200"),
        ({"": "nest-3"}, "units[0].resources", "a resource kind must have 1 to 64"),
        ({f"k{i}": "v" for i in range(17)}, "units[0].resources", "at most 16 resources"),
    ],
)
def test_broken_resources_are_refused_by_decoder_and_schema(
    resources: Any, path: str, problem: str
) -> None:
    payload = message(resources=resources)
    with pytest.raises(ContractError) as info:
        decode_units(payload)
    assert info.value.path == path
    assert problem in str(info.value)
    schema = json.loads((SCHEMAS / "units-2.json").read_text())
    assert not jsonschema.Draft202012Validator(schema).is_valid(json.loads(payload))
