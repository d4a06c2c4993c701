"""The contract package as a consumer takes it: the example in its docstring (and in
docs/messages.md) runs on the collector's real messages, and the JSON Schemas ship inside it."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import jsonschema

import contract
from contract.encode import DeviceMeta, PollEncoder, encode_unit, envelope, with_seq
from contract.records import Context, Reading, UnitRecord
from tests.helpers import REPO

OUTBOX = "0123456789abcdef"
CONTEXT = Context(station="ft-1", unit_serial="PV-000106", operation="functional-test", attempt=1)


def _example() -> str:
    """The example's code, from the package docstring (indented by four in a ``::`` block)."""
    doc = contract.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\n\nA payload", 1)[0]
    return "\n".join(line[4:] for line in block.splitlines())


def _messages() -> list[tuple[str, bytes]]:
    tag = {"type": "float64", "scale": 1.0, "offset": 0.0, "station": "ft-1"}
    tags = {"current": {**tag, "unit": "A"}, "voltage": {**tag, "unit": "V"}}
    meta = DeviceMeta("tester-1", tags)
    encoder = PollEncoder()
    polls = encoder.encode(
        41, "tester-1", [Reading(1.0, "current", 0.52), Reading(1.0, "voltage", 12.1)],
        [CONTEXT, CONTEXT], meta,
    )  # fmt: skip
    # By position (it needs the meta to resolve) and naming its context version.
    assert b'"v":' in polls
    assert b'"device"' not in polls  # its meta version names it
    assert b'"tags"' not in polls
    assert b'"ctx"' in polls
    version = encoder.version(CONTEXT)
    assert version is not None
    unit = UnitRecord(
        serial="PV-000106", station="ft-1", operation="functional-test", attempt=1,
        start_ts=0.5, end_ts=1.5, ended_by="verdict", verdict="pass", failure_code=None,
        readings=2, characteristics={},
    )  # fmt: skip
    base = "collector/site/line/line1-pc1"
    units = with_seq([(7, encode_unit(unit))])
    return [
        (f"{base}/meta/tester-1", meta.message("line1-pc1")),
        (f"{base}/context/ft-1", version.message("line1-pc1")),
        (f"{base}/readings", envelope("line1-pc1", OUTBOX, polls)),
        (f"{base}/units", envelope("line1-pc1", OUTBOX, units, b"units")),
    ]  # fmt: skip


def test_the_documented_example_runs_on_real_messages() -> None:
    namespace: dict[str, object] = {}
    exec(compile(_example(), "contract-example", "exec"), namespace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for topic, payload in _messages():
            namespace["on_message"](topic, payload)  # type: ignore[operator]
    key = "('line1-pc1', '0123456789abcdef', "
    assert out.getvalue().splitlines() == [
        key + "41) tester-1 current 0.52 good PV-000106 functional-test",
        key + "42) tester-1 voltage 12.1 good PV-000106 functional-test",
        "PV-000106 functional-test 1 pass",
    ]


def test_docs_show_the_same_example() -> None:
    docs = (REPO / "docs" / "messages.md").read_text()
    assert _example() in docs


def test_the_json_schemas_ship_in_the_package_and_validate_real_messages() -> None:
    for topic, payload in _messages():
        kind = re.sub(r".*/(readings|units|meta|context)(/.*)?$", r"\1", topic)
        schema = contract.json_schema(kind)
        jsonschema.Draft202012Validator(schema).validate(json.loads(payload))
    # deviations: tests/test_line_deviations.py validates a real one.
    assert set(contract.SCHEMA_FILES) == {"readings", "context", "units", "meta", "deviations"}


def test_importing_the_contract_loads_no_protocol_or_web_library() -> None:
    # A consumer installs orjson and takes the contract; nothing of the collector comes along.
    code = (
        "import sys, contract; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'pymodbus', 'asyncua', 'paho', 'fastapi', 'sqlalchemy', 'pydantic', 'yaml', "
        "'collector', 'store', 'drivers', 'common', 'quality'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
