"""The store's batch writer against real databases (a SQLite file and a real PostgreSQL):
the collector's own stream, schema-2 messages, unit records, quarantine, dedupe and the gap
audit, read back through the genealogy and the gap report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from contract.encode import ReadingEncoder, build_message, encode_unit, ts_text, with_seq
from contract.metahash import meta_version
from contract.records import Context, Reading, UnitRecord
from store.db import connect, create_schema
from store.genealogy import UnitQuery, search_units, unit_genealogy, write_csv
from store.ingest import Incoming, Writer
from store.schema import quarantine, readings
from store.status import gap_report, old_gaps

OUTBOX = "6f1d0c2a9b7e4e55"
T0 = 1_795_000_000.25
R_TOPIC = "collector/site/line1/pc1/readings"
U_TOPIC = "collector/site/line1/pc1/units"


@pytest.fixture
def engine(db_url: str) -> sa.Engine:
    engine = connect(db_url)
    create_schema(engine)
    return engine


def schema1(first_seq: int, count: int, serial: str | None = "PILOT-1", attempt: int = 1) -> bytes:
    """A readings message made by the collector's own encoder: one poll of ``count`` tags."""
    ctx = Context("ft-1", serial, "functional-test", attempt if serial else None)
    polls = [Reading(T0 + first_seq, f"t{i}", float(i) + 0.25, "V") for i in range(count)]
    items = ReadingEncoder().encode(first_seq, "tester-1", polls, [ctx] * count)
    return build_message("pc1", items)


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_collector_stream_is_stored_once_and_read_back_by_unit(engine: sa.Engine) -> None:
    writer = Writer(engine)
    batch = [Incoming(R_TOPIC, schema1(1, 5)), Incoming(R_TOPIC, schema1(6, 5, "PILOT-2"))]
    result = writer.write(batch)
    assert (result.readings, result.readings_inserted, result.duplicates) == (10, 10, 0)
    again = writer.write(batch)  # a redelivery: nothing new
    assert (again.readings, again.readings_inserted, again.duplicates) == (10, 0, 10)
    assert count(engine, readings) == 10
    found = unit_genealogy(engine, "PILOT-1")
    assert found is not None
    assert [(r["seq"], r["tag"], r["value"], r["unit"]) for r in found["readings"]] == [
        (i + 1, f"t{i}", i + 0.25, "V") for i in range(5)
    ]
    first = found["readings"][0]
    assert first["ts"] == ts_text(T0 + 1)
    assert (first["collector"], first["outbox"], first["station"], first["attempt"]) == (
        "pc1", "", "ft-1", 1,
    )  # fmt: skip
    assert unit_genealogy(engine, "NOBODY") is None
    writer.close()


def test_schema2_values_of_every_kind_round_trip(engine: sa.Engine) -> None:
    values: dict[str, Any] = {
        "f": 354.315, "i": -7, "big": 2**64 - 1, "yes": True, "no": False, "s": "OK",
        "none": None, "bad": {"value": None, "quality": "bad", "error": "timeout"},
        "unc": {"value": 1.5, "quality": "uncertain", "error": None},
    }  # fmt: skip
    doc = {
        "schema": 2, "collector": "pc2", "outbox": OUTBOX,
        "polls": [{"seq": 100, "ts": "2026-11-21T10:15:02.250113Z", "device": "d",
                   "station": "ft-2", "slot": 3, "unit_serial": "S-9", "operation": "op",
                   "attempt": 2, "phase": "test", "golden": True, "values": values}],
    }  # fmt: skip
    Writer(engine).write([Incoming("collector/s/l/pc2/readings", orjson.dumps(doc))])
    found = unit_genealogy(engine, "S-9")
    assert found is not None
    got = {r["tag"]: (r["value"], r["quality"], r["error"]) for r in found["readings"]}
    assert got == {
        "f": (354.315, "good", None), "i": (-7, "good", None), "big": (2**64 - 1, "good", None),
        "yes": (True, "good", None), "no": (False, "good", None), "s": ("OK", "good", None),
        "none": (None, "good", None), "bad": (None, "bad", "timeout"),
        "unc": (1.5, "uncertain", None),
    }  # fmt: skip
    assert [r["seq"] for r in found["readings"]] == list(range(100, 109))
    r = found["readings"][0]
    assert (r["outbox"], r["slot"], r["phase"], r["golden"], r["attempt"]) == (
        OUTBOX, "3", "test", True, 2,
    )  # fmt: skip
    assert r["ts"] == "2026-11-21T10:15:02.250113Z"


def unit_message(seq: int, serial: str, verdict: str, attempt: int, start: float) -> bytes:
    record = UnitRecord(
        serial=serial, station="ft-1", operation="functional-test", attempt=attempt,
        start_ts=start, end_ts=start + 39.5, ended_by="verdict", verdict=verdict,
        failure_code=None if verdict == "pass" else 317, readings=5,
        characteristics={"leakage": (12.1, 11.7, 12.4)},
    )  # fmt: skip
    return build_message("pc1", with_seq([(seq, encode_unit(record))]), b"units")


def test_unit_records_and_characteristics_searchable(engine: sa.Engine, tmp_path: Any) -> None:
    writer = Writer(engine)
    writer.write(
        [
            Incoming(U_TOPIC, unit_message(1, "PILOT-1", "fail", 1, T0)),
            Incoming(U_TOPIC, unit_message(2, "PILOT-1", "pass", 2, T0 + 100)),
            Incoming(U_TOPIC, unit_message(3, "PILOT-2", "pass", 1, T0 + 200)),
            Incoming(R_TOPIC, schema1(1, 3)),
        ]
    )
    again = writer.write([Incoming(U_TOPIC, unit_message(1, "PILOT-1", "fail", 1, T0))])
    assert (again.units, again.units_inserted) == (1, 0)
    found = unit_genealogy(engine, "PILOT-1")
    assert found is not None
    ops = found["operations"]
    assert [(o["seq"], o["attempt"], o["verdict"], o["failure_code"]) for o in ops] == [
        (1, 1, "fail", "317"), (2, 2, "pass", None),
    ]  # fmt: skip
    assert ops[0]["cycle_time_s"] == 39.5
    assert ops[0]["start_ts"] == ts_text(T0)
    assert ops[0]["characteristics"] == [
        {"name": "leakage", "last": 12.1, "min": 11.7, "max": 12.4, "lsl": None, "usl": None,
         "target": None, "critical": False, "in_spec": None}
    ]  # fmt: skip
    assert len(found["readings"]) == 3
    assert [u["serial"] for u in search_units(engine, UnitQuery(serial="PILOT-*"))] == [
        "PILOT-2", "PILOT-1", "PILOT-1",
    ]  # fmt: skip
    assert [u["seq"] for u in search_units(engine, UnitQuery(verdict="pass"))] == [3, 2]
    since = datetime.fromtimestamp(T0 + 150, UTC)
    assert [u["seq"] for u in search_units(engine, UnitQuery(since=since))] == [3]
    assert [u["seq"] for u in search_units(engine, UnitQuery(serial="PILOT-1", until=since))] == [
        2, 1,
    ]  # fmt: skip
    assert search_units(engine, UnitQuery(serial="PILOT_1")) == []  # "_" is no wildcard
    paths = write_csv(found, tmp_path / "csv")
    assert [p.name for p in paths] == [
        "PILOT-1-operations.csv", "PILOT-1-characteristics.csv", "PILOT-1-readings.csv",
    ]  # fmt: skip
    lines = paths[2].read_text().splitlines()
    assert lines[0].startswith("ts,collector,outbox,seq,device,tag,value")
    assert len(lines) == 4


def test_bad_messages_are_quarantined_and_the_rest_written(engine: sa.Engine) -> None:
    too_big = b'{"schema": 7, "pad": "' + b"x" * 5000 + b'"}'
    bad = [
        (b"{not json", "json", "not JSON"),
        (too_big, "schema", "schema: unsupported version 7"),
        (orjson.dumps({"schema": 1, "collector": "pc1", "readings": [{"seq": "1"}]}), "field",
         "readings[0].seq: must be an integer"),
    ]  # fmt: skip
    writer = Writer(engine, quarantine_max_bytes=1000)
    result = writer.write(
        [Incoming(R_TOPIC, schema1(1, 4))] + [Incoming(R_TOPIC, payload) for payload, _, _ in bad]
    )
    assert result.readings_inserted == 4
    assert [kind for kind, _ in result.quarantined] == ["json", "schema", "field"]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine.c.topic, quarantine.c.kind, quarantine.c.reason,
                      quarantine.c.payload, quarantine.c.payload_bytes).order_by(quarantine.c.id)
        ).all()  # fmt: skip
    assert [(r.topic, r.kind) for r in rows] == [(R_TOPIC, k) for _, k, _ in bad]
    for row, (payload, _, reason) in zip(rows, bad, strict=True):
        assert row.reason.startswith(reason), row.reason
        assert bytes(row.payload) == payload[:1000]
        assert row.payload_bytes == len(payload)
    assert count(engine, readings) == 4


def test_gap_audit_opens_shrinks_and_closes(engine: sa.Engine) -> None:
    writer = Writer(engine)
    writer.write([Incoming(R_TOPIC, schema1(1, 10)), Incoming(R_TOPIC, schema1(31, 10))])
    (stream,) = gap_report(engine)
    assert (stream.low, stream.high, stream.high_water) == (1, 40, 10)
    assert [(a, b) for a, b, _ in stream.missing] == [(11, 30)]
    opened = stream.missing[0][2]
    writer.write([Incoming(R_TOPIC, schema1(15, 3))])  # late: splits the hole
    (stream,) = gap_report(engine)
    assert [(a, b) for a, b, _ in stream.missing] == [(11, 14), (18, 30)]
    assert {o for _, _, o in stream.missing} == {opened}  # the age is the hole's, not the split's
    assert stream.missing_count == 17
    later = opened + timedelta(seconds=601)
    assert old_gaps(gap_report(engine), 600, later) == [
        "pc1/-/readings: seq 11-14 missing for 601 s",
        "pc1/-/readings: seq 18-30 missing for 601 s",
    ]
    writer.write([Incoming(R_TOPIC, schema1(11, 4)), Incoming(R_TOPIC, schema1(18, 13))])
    (stream,) = gap_report(engine)
    assert (stream.missing, stream.high_water, stream.received) == ([], 40, 40)
    assert old_gaps(gap_report(engine), 600, later) == []


def test_retention_prunes_old_readings_and_keeps_unit_records(engine: sa.Engine) -> None:
    from store.retention import prune_readings

    writer = Writer(engine)
    writer.write(
        [Incoming(R_TOPIC, schema1(seq, 1)) for seq in range(1, 11)]  # ts = T0 + seq
        + [Incoming(U_TOPIC, unit_message(1, "PILOT-1", "pass", 1, T0))]
    )
    cutoff = datetime.fromtimestamp(T0 + 6, UTC)
    assert prune_readings(engine, cutoff, chunk=2) == 5
    found = unit_genealogy(engine, "PILOT-1")
    assert found is not None
    assert [r["seq"] for r in found["readings"]] == [6, 7, 8, 9, 10]
    assert [o["seq"] for o in found["operations"]] == [1]
    assert len(found["operations"][0]["characteristics"]) == 1
    assert prune_readings(engine, cutoff) == 0
    (stream, _units) = gap_report(engine)
    assert stream.missing == []  # pruning is not a gap


def test_tag_metadata_gives_schema2_readings_their_engineering_unit(engine: sa.Engine) -> None:
    tags: dict[str, Any] = {"v": {"unit": "V", "type": "float32", "scale": 1.0, "offset": 0.0}}
    meta = {
        "schema": 2, "collector": "pc2", "device": "d", "meta": meta_version(None, tags),
        "tags": tags,
    }  # fmt: skip
    doc = {
        "schema": 2, "collector": "pc2", "outbox": OUTBOX,
        "polls": [{"seq": 1, "ts": "2026-11-21T10:15:02Z", "device": "d", "meta": meta["meta"],
                   "unit_serial": "S-1", "values": {"v": 12.5, "w": 1}}],
    }  # fmt: skip
    writer = Writer(engine)
    result = writer.write(
        [
            Incoming("collector/s/l/pc2/meta/d", orjson.dumps(meta)),
            Incoming("collector/s/l/pc2/readings", orjson.dumps(doc)),
        ]
    )
    assert result.quarantined == []
    found = unit_genealogy(engine, "S-1")
    assert found is not None
    assert [(r["tag"], r["value"], r["unit"]) for r in found["readings"]] == [
        ("v", 12.5, "V"), ("w", 1, None),
    ]  # fmt: skip
    # A later metadata version (its own id: the hash of its content) changes the unit.
    meta["tags"] = {"v": {"unit": "mV"}}
    meta["meta"] = meta_version(None, meta["tags"])
    writer.write([Incoming("collector/s/l/pc2/meta/d", orjson.dumps(meta))])
    found = unit_genealogy(engine, "S-1")
    assert found is not None
    assert found["readings"][0]["unit"] == "mV"


def test_a_message_the_database_refuses_is_quarantined_alone(engine: sa.Engine) -> None:
    """PostgreSQL cannot store a NUL character in text: that message goes to quarantine and
    the rest of its batch is stored. SQLite stores it."""
    nul = {
        "schema": 2, "collector": "pc2", "outbox": OUTBOX,
        "polls": [{"seq": 1, "ts": "2026-11-21T10:15:02Z", "device": "d",
                   "unit_serial": "S-2", "values": {"label": "a\u0000b"}}],
    }  # fmt: skip
    batch = [
        Incoming(R_TOPIC, schema1(1, 3)),
        Incoming("collector/s/l/pc2/readings", orjson.dumps(nul)),
        Incoming(R_TOPIC, schema1(4, 3)),
    ]
    result = Writer(engine).write_isolating(batch)
    if engine.dialect.name == "postgresql":
        assert [kind for kind, _ in result.quarantined] == ["database"]
        assert result.quarantined[0][1].startswith("refused by the database: ")
        assert (result.messages, result.readings_inserted) == (3, 6)
        assert count(engine, readings) == 6
        assert count(engine, quarantine) == 1
    else:
        assert (result.quarantined, result.readings_inserted) == ([], 7)
        found = unit_genealogy(engine, "S-2")
        assert found is not None
        assert found["readings"][0]["value"] == "a\u0000b"


def test_the_report_reads_what_the_store_wrote(db_url: str, tmp_path: Any) -> None:
    """`collector store report` (store/report/) over unit records the store ingested from
    the collector's own encoder."""
    import json
    import subprocess
    import sys

    engine = connect(db_url)
    create_schema(engine)
    start = 1_795_255_200.0  # 2026-11-21T10:00:00Z
    Writer(engine).write(
        [
            Incoming(U_TOPIC, unit_message(i, f"PILOT-{i:04d}", "pass" if i % 5 else "fail", 1,
                                           start + 60 * i))
            for i in range(1, 11)
        ]
    )  # fmt: skip
    protocol = tmp_path / "pilot.yaml"
    protocol.write_text(
        "run:\n  name: P\n  product: board\n  serial_pattern: 'PILOT-\\d{4}'\n"
        "  start: 2026-11-21T00:00:00Z\n  end: 2026-11-22T00:00:00Z\n"
        "operations:\n  - name: functional-test\n    min_first_pass_yield: 0.5\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "collector", "store", "report", "--protocol", str(protocol),
         "--db", db_url, "--format", "json"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    (operation,) = json.loads(done.stdout)["operations"]
    assert (operation["operation"], operation["units"]) == ("functional-test", 10)
    assert operation["first_pass_yield"] == 0.8


def test_a_seq_beyond_64_bits_is_quarantined_not_retried(engine: sa.Engine) -> None:
    """JSON integers reach 2^64 - 1; the readings' seq is a signed 64-bit column. The
    driver refuses such a value before the database sees it (sqlite3: OverflowError; the
    binary COPY: struct.error): that message is quarantined alone, the rest is stored."""
    huge = {
        "schema": 2, "collector": "pc2", "outbox": OUTBOX,
        "polls": [{"seq": 2**63, "ts": "2026-11-21T10:15:02Z", "device": "d",
                   "unit_serial": "S-3", "values": {"v": 1.5, "w": 2.5}}],
    }  # fmt: skip
    batch = [
        Incoming(R_TOPIC, schema1(1, 3)),
        Incoming("collector/s/l/pc2/readings", orjson.dumps(huge)),
        Incoming(R_TOPIC, schema1(4, 3)),
    ]
    result = Writer(engine).write_isolating(batch)
    assert [kind for kind, _ in result.quarantined] == ["database"]
    assert (result.messages, result.readings_inserted) == (3, 6)
    assert count(engine, readings) == 6
