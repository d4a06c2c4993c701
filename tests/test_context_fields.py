"""The unit context has one definition (contract.records.Context, CONTEXT_FIELDS): a field added
there must reach every place that spells the context out. Each test below names one such place;
a new field fails the first one that does not follow yet."""

from __future__ import annotations

import dataclasses

from contract import encode
from contract.decode import ContextBook, FlatReading, Poll, decode_context, decode_polls
from contract.encode import ContextVersion, PollEncoder, envelope
from contract.fields import CONTEXT_CHECKS
from contract.records import CONTEXT_FIELDS, Context, Reading
from store.decode import CTX_KEY_FIELDS, Decoder, ctx_parse, ctx_text
from store.rows import ctx_columns, ctx_key
from store.schema import contexts

#: A value for each context field that is not its default (None / False), so that a field the
#: encoder leaves out or a decoder does not read shows.
SET = {
    "station": "rack-a",
    "unit_serial": "GOLD-1",
    "operation": "burn-in",
    "attempt": 2,
    "slot": 7,
    "phase": "after",
    "golden": True,
    "work_order": "WO-1001",
}


def test_every_field_has_a_test_value() -> None:
    assert set(SET) == set(CONTEXT_FIELDS) == set(Context._fields)


def test_the_reference_decoders_records_carry_every_field() -> None:
    for record in (Poll, FlatReading):
        names = {f.name for f in dataclasses.fields(record)}
        assert set(CONTEXT_FIELDS) <= names, record.__name__


def test_the_reference_decoder_checks_every_field() -> None:
    assert set(CONTEXT_CHECKS) == set(CONTEXT_FIELDS)


def test_schema_1_writes_its_own_fields_first_and_the_later_ones_when_set() -> None:
    fixed = encode._SCHEMA1_CONTEXT
    assert CONTEXT_FIELDS[: len(fixed)] == fixed


def test_the_stores_context_key_and_table_name_every_field() -> None:
    assert sorted(CTX_KEY_FIELDS) == sorted(CONTEXT_FIELDS)
    assert set(CTX_KEY_FIELDS) <= set(contexts.c.keys())


def test_a_set_context_goes_through_encoder_reference_decoder_and_store() -> None:
    context = Context(**SET)  # type: ignore[arg-type]
    encoder = PollEncoder()
    body = encoder.encode(1, "rack", [Reading(1.0, "slot07.temp", 41)], [context])
    payload = envelope("pc1", "0123456789abcdef", body)
    # The context travels as a version (its own message), which names every field.
    version = encoder.version(context)
    assert version is not None
    book = ContextBook()
    book.add(version.message("pc1"))
    assert set(decode_context(version.message("pc1"))) >= set(CONTEXT_FIELDS)
    (poll,) = decode_polls(payload, None, book).polls
    assert {name: getattr(poll, name) for name in CONTEXT_FIELDS} == SET
    decoded = Decoder().decode(payload)
    members = decode_context(version.message("pc1"))
    decoded.resolved({version.ctx: tuple(members[name] for name in CTX_KEY_FIELDS)})  # type: ignore[dict-item]
    (run,) = decoded.runs
    assert run.context == ctx_key(poll)
    assert dict(zip(CTX_KEY_FIELDS, run.context, strict=True)) == SET
    columns = dict(zip(CTX_KEY_FIELDS, ctx_columns(run.context), strict=True))
    assert columns == {**SET, "slot": "7"}


def test_a_context_without_the_later_fields_keeps_its_version_id() -> None:
    """A version's id hashes the members that are set: a context without a work order has
    the id it had before work_order was a field (computed at f6f96b5, hard-coded here), so
    the retained versions and the polls naming them stay valid across the upgrade."""
    plain = Context("ft-1", "PILOT-0042", "functional-test", 1, None, "test", False)
    assert ContextVersion(plain).ctx == "c216dc334eb9"
    rack = Context("rack-a", "GOLD-1", "burn-in", 2, 7, "after", True)
    assert ContextVersion(rack).ctx == "a1150995d6a3"
    assert ContextVersion(rack._replace(work_order="WO-1001")).ctx != "a1150995d6a3"


def test_the_stores_key_of_a_context_without_the_later_fields_is_the_one_stored_before() -> None:
    """``contexts.key`` is the JSON of the CTX_KEY_FIELDS tuple; a context without a work
    order keeps the 7-field key rows stored before the field have (tests/
    test_store_migrations.py proves it on a migrated database), one with a work order names
    it last."""
    key = ("ft-1", None, "PILOT-0042", "functional-test", 1, "test", False, None)
    before = '["ft-1",null,"PILOT-0042","functional-test",1,"test",false]'
    assert ctx_text(key) == before
    assert ctx_parse(before) == key
    with_wo = (*key[:-1], "WO-1001")
    assert ctx_text(with_wo) == before[:-1] + ',"WO-1001"]'  # type: ignore[arg-type]
    assert ctx_parse(ctx_text(with_wo)) == with_wo  # type: ignore[arg-type]
