"""Benchmarks of the central store (docs/performance.md, "The central store"):

    .venv/bin/python -m bench.store                        # everything, default sizes
    .venv/bin/python -m bench.store --only ingest --readings 500000 --repeat 3
    .venv/bin/python -m bench.store --only ingest,tester,tester1,rack,rack1 --repeat 3
    .venv/bin/python -m bench.store --only genealogy --stored 10000000
    .venv/bin/python -m bench.store --only backlog --backlog 1000000
    .venv/bin/python -m bench.store --quick                # tiny sizes (a smoke test)

- ingest: the store's batch writer (store.ingest.Writer, what one store process runs per
  batch) fed with the collector's own stream: messages made by its own encoder
  (contract.encode.PollEncoder with the device's tag metadata, in its envelope: schema 3,
  values by position, the default ``mqtt.value_keys``), ``--per-message`` readings a message
  and the default 100 messages a transaction, into a fresh SQLite file and a fresh PostgreSQL
  database, after the device's retained meta message and the unit contexts the readings name.
  Readings per second = readings committed / wall time of the writes (decode included).
  ``--repeat N``: N runs, the median reported; ``--profile DIR``: a cProfile of each run.
- ingest1: the same readings in schema 1 (one object per reading), as a collector older
  than issue 16 sends them.
- ingestk: the same readings keyed by tag name (schema 3 with ``mqtt.value_keys: name``).
- tester, rack: schema 3's other lines (issue 28): a functional tester (a coil and two
  blocks of 8 registers, three request times a cycle, a new unit every 3 s) and a 32-slot
  OPC-UA rack (5 nodes a slot, subscription batches by ``tag_list`` with a ``dt`` point a
  value and a ``ctx`` point a slot), through the same encoder, each context version
  published just before the first message naming it (measured with the readings); cycles
  joined into messages of ``--per-message`` readings. tester1, rack1: one cycle a message,
  as a live line sends them.
- genealogy: ``--stored`` readings written straight into the tables with bulk inserts
  (4 collectors, 50 tags a poll, two stations per collector whose polls interleave, a unit
  every 40 polls), then the genealogy of one unit (store.genealogy.unit_genealogy, what
  GET /units/{serial} runs): median and maximum of 20 look-ups of different units.
- backlog: ``collector store run`` (a subprocess) away while the meta message (retained) and
  ``--backlog`` readings are published to a private mosquitto (the store's persistent
  session queues them), then started: drain rate and the store's RSS sampled every 0.5 s
  from /proc; a drain that stops moving for 60 s ends the run (its count says so).

PostgreSQL is a private cluster started from Debian's binaries (tests/postgres.py).
Figures are printed (and written as JSON with --json FILE), never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from contract.encode import (
    ContextVersion,
    DeviceMeta,
    PollEncoder,
    ReadingEncoder,
    build_message,
    by_context,
    envelope,
)
from contract.records import Context, Reading
from store.db import connect, create_schema
from store.genealogy import unit_genealogy
from store.ingest import BatchResult, Incoming, Writer
from store.schema import KIND_FLOAT, units
from tests.helpers import Mosquitto, free_port, port_open, wait_until
from tests.postgres import PostgresServer

T0 = 1_795_000_000.0
TAGS = 50


OUTBOX = "6f1d0c2a9b7e4e55"
DEVICE = "tester-1"
READINGS_TOPIC = "collector/plant/line/pc1/readings"
META_TOPIC = f"collector/plant/line/pc1/meta/{DEVICE}"
CONTEXT_TOPIC = "collector/plant/line/pc1/context/ft-1"


def _tag_meta() -> dict[str, dict[str, object]]:
    return {
        f"tag{i:02d}": {"unit": "V", "type": "float64", "scale": 1.0, "offset": 0.0,
                        "station": None}
        for i in range(TAGS)
    }  # fmt: skip


def device_meta() -> DeviceMeta:
    """The bench device's tag metadata, as the collector builds it."""
    return DeviceMeta(DEVICE, _tag_meta())


def _polls(total: int, per_message: int) -> Iterator[list[tuple[int, int, float]]]:
    """(seq, poll number, ts) of each poll of ``total`` readings, 50 tags a poll, grouped
    into messages of ``per_message`` readings."""
    seq, poll, in_message = 1, 0, 0
    polls: list[tuple[int, int, float]] = []
    while seq <= total:
        polls.append((seq, poll, T0 + poll * 0.1))
        n = min(TAGS, total - seq + 1)
        seq += n
        in_message += n
        poll += 1
        if in_message >= per_message or seq > total:
            yield polls
            polls, in_message = [], 0


def _context(poll: int) -> Context:
    return Context("ft-1", f"UNIT-{poll // 40:07d}", "functional-test", 1, phase="test")


def _readings(seq: int, poll: int, ts: float, total: int) -> list[Reading]:
    n = min(TAGS, total - seq + 1)
    return [Reading(ts, f"tag{i:02d}", 12.0 + i * 0.01 + (poll % 7) * 0.001, "V")
            for i in range(n)]  # fmt: skip


def _encoded_polls(
    total: int, per_message: int, schema1: bool, positional: bool = True
) -> Iterator[bytes]:
    """Each message's comma-separated items, from the collector's own encoders."""
    encoder, old, meta = PollEncoder(positional), ReadingEncoder(), device_meta()
    for polls in _polls(total, per_message):
        items = []
        for seq, poll, ts in polls:
            readings = _readings(seq, poll, ts, total)
            contexts = [_context(poll)] * len(readings)
            items.append(
                old.encode(seq, DEVICE, readings, contexts)
                if schema1
                else encoder.encode(seq, DEVICE, readings, contexts, meta)
            )
        yield b",".join(items)


def context_messages(total: int, per_message: int, collector: str = "pc1") -> list[bytes]:
    """The unit-context versions the readings name (schema 3), in the order of their first
    poll, as the collector publishes them before those readings (docs/messages.md)."""
    versions: dict[str, bytes] = {}
    for polls in _polls(total, per_message):
        for _seq, poll, _ts in polls:
            version = ContextVersion(_context(poll))
            versions.setdefault(version.ctx, version.message(collector))
    return list(versions.values())


def collector_messages(
    total: int, per_message: int, collector: str = "pc1", positional: bool = True
) -> list[bytes]:
    """``total`` readings as the collector publishes them: polls of 50 tags through its own
    encoder (contract.encode.PollEncoder, with the device's tag metadata, as the buffer
    writer calls it) in its own envelope, ``per_message`` readings a message: values by
    position (the default), or keyed by tag (``mqtt.value_keys: name``)."""
    return [
        envelope(collector, OUTBOX, items)
        for items in _encoded_polls(total, per_message, False, positional)
    ]


def keyed_messages(total: int, per_message: int, collector: str = "pc1") -> list[bytes]:
    """The collector's stream with ``mqtt.value_keys: name``: values keyed by tag."""
    return collector_messages(total, per_message, collector, positional=False)


def schema1_messages(total: int, per_message: int, collector: str = "pc1") -> list[bytes]:
    """The same readings in schema 1 (one object per reading), as a collector older than
    issue 16 publishes them (contract.encode.ReadingEncoder)."""
    return [build_message(collector, items) for items in _encoded_polls(total, per_message, True)]


# --------------------------------------------------------------------------- schema-3 lines

#: A functional tester (bench/wire.py's ``tester`` shape): a coil and two blocks of 8 holding
#: registers, read as three requests a 200 ms cycle, at a station with a unit; a new unit
#: every TESTER_POLLS_PER_UNIT cycles (3 s), so a new context version every 3 s.
TESTER = "ft-tester"
TESTER_STATION = "ft-2"
TESTER_TAGS = ("running", *(f"v{i}" for i in range(1, 9)), *(f"t{i}" for i in range(1, 9)))
TESTER_POLLS_PER_UNIT = 15
#: A 32-slot OPC-UA burn-in rack (bench/wire.py's ``rack`` shape, with a fifth node): each
#: slot a station with its own unit; Temp, Voltage, Current and Power change every
#: subscription batch (each value with the time the server stamped it), Serial only when the
#: slot's unit changes (every RACK_BATCHES_PER_UNIT batches, the slots staggered).
RACK = "rack-a"
RACK_SLOTS = 32
RACK_NODES = ("temp", "voltage", "current", "power", "serial")
RACK_BATCHES_PER_UNIT = 50


def _meta_of(device: str, types: dict[str, str]) -> DeviceMeta:
    return DeviceMeta(device, {
        tag: {"unit": None, "type": kind, "scale": 1.0, "offset": 0.0, "station": None}
        for tag, kind in types.items()
    })  # fmt: skip


def tester_meta() -> DeviceMeta:
    return _meta_of(TESTER, {t: "bool" if t == "running" else "uint16" for t in TESTER_TAGS})


def rack_meta() -> DeviceMeta:
    kinds = {"serial": "string", "temp": "float64", "voltage": "float64",
             "current": "float64", "power": "float64"}  # fmt: skip
    # The order the collector gives a slot-expanded tag list: each template over the slots.
    return _meta_of(
        RACK,
        {f"slot{s:02d}.{n}": kinds[n] for n in RACK_NODES for s in range(1, RACK_SLOTS + 1)},
    )


def _tester_polls(total: int) -> Iterator[tuple[list[Reading], list[Context]]]:
    """The tester's cycles: the coil, then each block, each request with its own time."""
    cycle = 0
    while total > 0:
        ts = T0 + cycle * 0.2
        context = Context(TESTER_STATION, f"FT-{cycle // TESTER_POLLS_PER_UNIT:07d}",
                          "functional-test", 1, phase="test")  # fmt: skip
        readings = [Reading(ts, "running", cycle % 50 != 49)]
        for block, when in (("v", ts + 0.0042), ("t", ts + 0.0087)):
            readings += [Reading(when, f"{block}{i}", (cycle * 7 + i * 13) % 1000)
                         for i in range(1, 9)]  # fmt: skip
        readings = readings[:total]
        total -= len(readings)
        cycle += 1
        yield readings, [context] * len(readings)


def _rack_polls(total: int) -> Iterator[tuple[list[Reading], list[Context]]]:
    """The rack's subscription batches, as the collector hands them to its buffer: values in
    the order the server sent them, each at its own source time, grouped by slot
    (contract.encode.by_context, as collector.buffer.writer does)."""
    batch = 0
    while total > 0:
        ts = T0 + batch * 0.2
        readings, contexts = [], []
        slot_context = {}
        for s in range(1, RACK_SLOTS + 1):
            unit, age = divmod(batch + s * 7, RACK_BATCHES_PER_UNIT)
            slot_context[s] = (
                Context(RACK, f"PV-{s:02d}-{unit:06d}", "burn-in", 1, slot=s, phase="test"),
                age,
            )
        k = 0
        for node in RACK_NODES:
            for s in range(1, RACK_SLOTS + 1):
                context, age = slot_context[s]
                if node == "serial":
                    if age:
                        continue
                    value: float | str | None = context.unit_serial
                else:
                    value = round(80 + (batch + s) % 10 / 10 + RACK_NODES.index(node), 2)
                k += 1
                # Sampled every 100 ms, reported every 200 ms: each its own stamp (µs).
                readings.append(Reading(ts + (k * 1237 % 200_000) / 1e6, f"slot{s:02d}.{node}",
                                        value))  # fmt: skip
                contexts.append(context)
        readings, contexts = readings[:total], contexts[:total]
        total -= len(readings)
        batch += 1
        yield _grouped(readings, contexts)


def _grouped(
    readings: list[Reading], contexts: list[Context]
) -> tuple[list[Reading], list[Context]]:
    grouped = by_context(readings, contexts)
    return list(grouped[0]), list(grouped[1])


@dataclass
class Stream:
    """What one ingest run writes: ``setup`` (the retained meta, the contexts and the first
    readings message: the dimension rows, not measured), then ``measured`` in batches."""

    setup: list[Incoming]
    measured: list[Incoming]
    #: Readings messages (the rest are context messages) among ``measured``.
    readings_messages: int
    message_bytes: int


def line_stream(
    device: DeviceMeta,
    polls: Iterator[tuple[list[Reading], list[Context]]],
    per_message: int,
    collector: str = "pc1",
) -> Stream:
    """A line's stream as its collector publishes it: each poll through the collector's
    encoder (contract.encode.PollEncoder, positional, with the device's metadata), polls
    joined whole into messages of at most ``per_message`` readings (0: one poll a message,
    as a live line sends each cycle as soon as it is stored) in its envelope, and each
    unit-context version published on ``context/{station}[/{slot}]`` before the first
    message that names it (docs/messages.md)."""
    base = f"collector/plant/line/{collector}"
    encoder = PollEncoder()
    published: set[str] = set()
    out: list[Incoming] = []
    items: list[bytes] = []
    contexts: list[Incoming] = []
    count = seq = 0
    sizes = []

    def flush() -> None:
        nonlocal count
        payload = envelope(collector, OUTBOX, b",".join(items))
        sizes.append(len(payload))
        out.extend(contexts)
        out.append(Incoming(f"{base}/readings", payload))
        items.clear()
        contexts.clear()
        count = 0

    for readings, poll_contexts in polls:
        if items and count + len(readings) > per_message:
            flush()
        items.append(encoder.encode(seq + 1, device.device, readings, poll_contexts, device))
        seq += len(readings)
        count += len(readings)
        for version, _seq in encoder.used:
            if version.ctx not in published:
                published.add(version.ctx)
                contexts.append(
                    Incoming(f"{base}/context/{version.station_key}", version.message(collector))
                )
        encoder.used.clear()
    if items:
        flush()
    first = next(i for i, m in enumerate(out) if m.topic.endswith("/readings")) + 1
    meta = Incoming(f"{base}/meta/{device.device}", device.message(collector))
    return Stream([meta, *out[:first]], out[first:], len(sizes) - 1,
                  round(sum(sizes) / len(sizes)))  # fmt: skip


# --------------------------------------------------------------------------- ingest


def server_cpu_seconds(pg: PostgresServer | None) -> float:
    """CPU time of the PostgreSQL server so far: the postmaster and its live children."""
    if pg is None:
        return 0.0
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _flat_stream(form: str, total: int, per_message: int) -> Stream:
    """The 50-tag stream in one of its forms, its meta and every unit context first."""
    messages = FORMS[form](total, per_message)
    incoming = [Incoming(READINGS_TOPIC, m) for m in messages]
    contexts = [Incoming(CONTEXT_TOPIC, m) for m in context_messages(total, per_message)]
    meta = Incoming(META_TOPIC, device_meta().message("pc1"))
    return Stream([meta, *contexts, incoming[0]], incoming[1:], len(incoming) - 1,
                  round(sum(map(len, messages)) / len(messages)))  # fmt: skip


#: The ingest variants: the form of the 50-tag messages (all carry the same readings).
FORMS = {
    "ingest": collector_messages,  # the collector's own stream (schema 3, values by position)
    "ingestk": keyed_messages,  # schema 3, values keyed by tag (mqtt.value_keys: name)
    "ingest1": schema1_messages,  # schema 1, one object per reading
}
#: Every ingest workload: (total readings, readings a message) -> its stream.
WORKLOADS: dict[str, Callable[[int, int], Stream]] = {
    **{form: partial(_flat_stream, form) for form in FORMS},
    # A tester's cycles joined into messages (a backlog draining), and one a message (live).
    "tester": lambda total, per: line_stream(tester_meta(), _tester_polls(total), per),
    "tester1": lambda total, _per: line_stream(tester_meta(), _tester_polls(total), 0),
    "rack": lambda total, per: line_stream(rack_meta(), _rack_polls(total), per),
    "rack1": lambda total, _per: line_stream(rack_meta(), _rack_polls(total), 0),
}


def bench_ingest(
    url: str,
    total: int,
    per_message: int,
    batch: int,
    *,
    form: str = "ingest",
    pg: PostgresServer | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    stream = WORKLOADS[form](total, per_message)
    engine = connect(url)
    create_schema(engine)
    writer = Writer(engine)
    # The retained meta, the unit contexts and the first message come first: the dimension
    # rows and the connection, not what is measured.
    setup = writer.write(stream.setup)
    rest = stream.measured
    started = time.perf_counter()
    cpu = time.process_time()
    server = server_cpu_seconds(pg)
    result = BatchResult()
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    for i in range(0, len(rest), batch):
        result.add(writer.write(rest[i : i + batch]))
    wall = time.perf_counter() - started
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    cpu = time.process_time() - cpu
    server = server_cpu_seconds(pg) - server
    writer.close()
    size = readings_bytes(engine)
    engine.dispose()
    inserted = result.readings_inserted
    return {
        "readings_table_mb_per_million": round(
            size / (inserted + setup.readings_inserted) * 1e6 / 2**20, 1
        ),
        "readings": inserted,
        # The first message's, written before the clock starts.
        "warm_up_readings": setup.readings_inserted,
        "messages": stream.readings_messages,
        # The context versions published among the readings (schema 3's lines).
        "context_messages": len(rest) - stream.readings_messages,
        # Anything but 0 makes the figure meaningless: every message must go in.
        "parked": len(setup.parked) + len(result.parked),
        "quarantined": len(setup.quarantined) + len(result.quarantined),
        "seconds": round(wall, 2),
        "readings_per_s": round(inserted / wall),
        "messages_per_s": round(stream.readings_messages / wall),
        "store_cpu_share": round(cpu / wall, 2),
        # What one core would do if this process had it to itself (the machine is shared).
        "readings_per_cpu_s": round(inserted / cpu),
        # PostgreSQL's own work (its processes' CPU); 0 for SQLite, which runs in the store.
        "db_server_cpu_s": round(server, 1),
        "message_bytes": stream.message_bytes,
    }


def readings_bytes(engine: sa.Engine) -> int:
    """Disk used by the readings table and its indexes (SQLite: dbstat; PostgreSQL:
    pg_total_relation_size)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return int(
                conn.exec_driver_sql("SELECT pg_total_relation_size('readings')").scalar_one()
            )
        try:
            return int(
                conn.exec_driver_sql(
                    "SELECT sum(pgsize) FROM dbstat WHERE name = 'readings'"
                ).scalar_one()
            )
        except sa.exc.OperationalError:  # SQLite built without dbstat: the whole file
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            return int(pages) * int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())


# --------------------------------------------------------------------------- genealogy

COLLECTORS = 4
POLLS_PER_UNIT = 40


def _bulk_rows(collector: int, polls: int) -> Iterator[tuple[Any, ...]]:
    """(stream, seq, ts, series, context, flags, num) rows of one collector: two stations
    whose polls alternate; each station has a new unit every POLLS_PER_UNIT of its polls."""
    seq = 1
    stream = collector + 1
    for poll in range(polls):
        station = poll % 2
        unit = (poll // 2) // POLLS_PER_UNIT
        context = (collector * 2 + station) * 1_000_000 + unit + 1
        ts = to_micros_fast(T0 + poll * 0.1)
        series = collector * TAGS + 1
        for tag in range(TAGS):
            yield (stream, seq, ts, series + tag, context, KIND_FLOAT * 4, 12.0 + tag * 0.01)
            seq += 1


def to_micros_fast(ts: float) -> int:
    return round(ts * 1_000_000)


def fill(engine: sa.Engine, stored: int) -> list[str]:
    """Write ``stored`` readings (and their streams, series, contexts, spans and unit
    records) with bulk inserts; returns some serials to look up."""
    create_schema(engine)
    polls = stored // (TAGS * COLLECTORS)
    serials: list[str] = []
    pg = engine.dialect.name == "postgresql"
    from datetime import UTC, datetime  # noqa: PLC0415

    def ts_value(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    with engine.begin() as conn:
        for c in range(COLLECTORS):
            conn.execute(sa.text(
                "INSERT INTO streams (id, collector, outbox, kind, low_seq, high_seq, received) "
                "VALUES (:id, :c, '', 'readings', 1, :h, :h)"
            ), {"id": c + 1, "c": f"pc{c + 1}", "h": polls * TAGS})  # fmt: skip
            conn.execute(
                sa.text("INSERT INTO series (id, collector, device, tag, unit) VALUES "
                        "(:id, :c, 'tester', :t, 'V')"),
                [{"id": c * TAGS + t + 1, "c": f"pc{c + 1}", "t": f"tag{t:02d}"}
                 for t in range(TAGS)],
            )  # fmt: skip
            units_per_station = (polls // 2) // POLLS_PER_UNIT + 1
            ctx_rows, span_rows, unit_rows = [], [], []
            for station in range(2):
                for u in range(units_per_station):
                    cid = (c * 2 + station) * 1_000_000 + u + 1
                    serial = f"U{c}{station}-{u:07d}"
                    ctx_rows.append({"id": cid, "key": serial, "station": f"st-{c}-{station}",
                                     "serial": serial})  # fmt: skip
                    first_poll = u * POLLS_PER_UNIT * 2 + station
                    last_poll = min(first_poll + (POLLS_PER_UNIT - 1) * 2, polls - 1)
                    if first_poll >= polls:
                        continue
                    span_rows.append({"ctx": cid, "stream": c + 1, "a": first_poll * TAGS + 1,
                                      "b": (last_poll + 1) * TAGS})  # fmt: skip
                    unit_rows.append({"collector": f"pc{c + 1}", "outbox": "",
                                      "seq": len(unit_rows) + 1, "serial": serial,
                                      "station": f"st-{c}-{station}",
                                      "operation": "functional-test", "attempt": 1,
                                      "start_ts": ts_value(T0 + first_poll * 0.1),
                                      "end_ts": ts_value(T0 + last_poll * 0.1),
                                      "verdict": "pass", "golden": False})  # fmt: skip
                    if u % 97 == 3 and len(serials) < 20 * COLLECTORS:
                        serials.append(serial)
            conn.execute(sa.text(
                "INSERT INTO contexts (id, key, station, unit_serial, operation, attempt, golden) "
                "VALUES (:id, :key, :station, :serial, 'functional-test', 1, false)"
            ), ctx_rows)  # fmt: skip
            conn.execute(sa.text(
                "INSERT INTO context_spans (context, stream, first_seq, last_seq) "
                "VALUES (:ctx, :stream, :a, :b)"
            ), span_rows)  # fmt: skip
            conn.execute(sa.insert(units), unit_rows)
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        for c in range(COLLECTORS):
            if pg:
                with (
                    driver.cursor() as cur,
                    cur.copy(
                        "COPY readings (stream, seq, ts, series, context, flags, num) FROM STDIN"
                    ) as copy,
                ):
                    for row in _bulk_rows(c, polls):
                        copy.write_row((*row[:2], _pg_ts(row[2]), *row[3:]))
                driver.commit()
            else:
                driver.execute("BEGIN")
                driver.executemany(
                    "INSERT INTO readings (stream, seq, ts, series, context, flags, num) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    _bulk_rows(c, polls),
                )
                driver.execute("COMMIT")
    finally:
        raw.close()
    if pg:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    return serials


def _pg_ts(micros: int) -> str:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat()


def bench_genealogy(url: str, stored: int, pg: PostgresServer | None = None) -> dict[str, Any]:
    engine = connect(url)
    started = time.perf_counter()
    serials = fill(engine, stored)
    filled = time.perf_counter() - started
    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM readings").scalar_one()
    times = []
    readings = 0
    unit_genealogy(engine, serials[0])  # warm the connection pool
    cpu, server = time.process_time(), server_cpu_seconds(pg)
    for serial in serials[:20]:
        t = time.perf_counter()
        found = unit_genealogy(engine, serial)
        times.append((time.perf_counter() - t) * 1000)
        assert found is not None
        readings = len(found["readings"])
    cpu, server = time.process_time() - cpu, server_cpu_seconds(pg) - server
    engine.dispose()
    return {
        "stored_readings": count,
        "fill_seconds": round(filled, 1),
        "unit_readings": readings,
        "genealogy_ms_median": round(statistics.median(times), 1),
        "genealogy_ms_max": round(max(times), 1),
        # CPU per look-up: the store's process, and PostgreSQL's (0 for SQLite): what the
        # look-up costs on a machine that is not shared.
        "cpu_ms_per_lookup": round(cpu / len(times) * 1000, 1),
        "db_server_cpu_ms_per_lookup": round(server / len(times) * 1000, 1),
    }


# --------------------------------------------------------------------------- backlog


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_backlog(url: str, total: int, per_message: int, workdir: Path) -> dict[str, Any]:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    http = free_port()
    config = workdir / "store.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": url, "sqlite_synchronous": "full"},
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "bench-store"},
        "http": {"port": http},
    }))  # fmt: skip
    command = [sys.executable, "-m", "collector", "store", "run", "--config", str(config)]
    log = (workdir / "store.log").open("ab")
    store: subprocess.Popen[bytes] | None = None
    try:
        store = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: port_open(http), 30, "store")
        time.sleep(1)  # subscribed: the session exists on the broker
        store.terminate()
        store.wait(30)
        messages = collector_messages(total, per_message)
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub",
                                protocol=mqtt.MQTTv5)  # fmt: skip
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        # The tag metadata first, retained, as the collector publishes it on connect: without
        # it the store would park every positional message (docs/store.md).
        publisher.publish(META_TOPIC, device_meta().message("pc1"), qos=1, retain=True)
        # The unit contexts the readings name (schema 3), queued for the store's session
        # like the readings, as the collector sends the versions its buffer still needs.
        for context in context_messages(total, per_message):
            publisher.publish(CONTEXT_TOPIC, context, qos=1).wait_for_publish(30)
        for payload in messages:
            publisher.publish("collector/plant/line/pc1/readings", payload, qos=1).wait_for_publish(
                30
            )
        publisher.loop_stop()
        publisher.disconnect()
        # The store's acknowledgements to the collector (store.acks): their bytes per reading.
        ack_bytes = [0, 0]  # bytes (topic + payload), messages
        watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-acks",
                              protocol=mqtt.MQTTv5)  # fmt: skip

        def on_ack(_c: Any, _u: Any, msg: Any) -> None:
            ack_bytes[0] += len(msg.topic) + len(msg.payload)
            ack_bytes[1] += 1

        watcher.on_message = on_ack
        watcher.connect(broker.host, broker.port)
        watcher.subscribe("collector/plant/line/pc1/ack", qos=1)
        watcher.loop_start()
        engine = connect(url)
        started = time.perf_counter()
        store = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        rss = []
        done = 0
        progress = time.perf_counter()  # when the count last moved: a stalled drain ends
        while time.perf_counter() - progress < 60:
            rss.append(_rss_mb(store.pid))
            with engine.connect() as conn:
                count = conn.exec_driver_sql("SELECT count(*) FROM readings").scalar_one()
            if count > done:
                done, progress = count, time.perf_counter()
            if done >= total:
                break
            time.sleep(0.5)
        wall = time.perf_counter() - started
        store.terminate()
        store.wait(30)
        watcher.loop_stop()
        watcher.disconnect()
        engine.dispose()
    finally:
        if store is not None and store.poll() is None:  # a failed run leaves no store behind
            store.kill()
            store.wait(30)
        log.close()
        broker.stop()
    return {
        "readings": done,
        "drain_seconds": round(wall, 1),
        "readings_per_s": round(done / wall),
        "rss_mb_first": round(rss[1] if len(rss) > 1 else rss[0], 1),
        "rss_mb_max": round(max(rss), 1),
        "rss_mb_last": round(rss[-1], 1),
        "rss_samples": len(rss),
        "acks": ack_bytes[1],
        # Target <= 0.1 (issue 23): at most one ack per stream per 200 ms, whatever the rate.
        "ack_bytes_per_reading": round(ack_bytes[0] / max(done, 1), 4),
    }


# --------------------------------------------------------------------------- main


def ingest_runs(
    url: Callable[[str], str],
    db: str,
    form: str,
    args: argparse.Namespace,
    pg: PostgresServer | None,
) -> dict[str, Any]:
    """``--repeat`` runs of one ingest variant, each into a fresh database: the median run's
    figures, and every run's wall rate (the machine is shared: one run can be unlucky)."""
    runs = []
    for n in range(args.repeat):
        profile = None if args.profile is None else args.profile / f"{form}-{db}-{n}.prof"
        if profile is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
        runs.append(
            bench_ingest(url(db), args.readings, args.per_message, args.batch, form=form,
                         pg=pg, profile=profile)
        )  # fmt: skip
    runs.sort(key=lambda r: r["readings_per_s"])
    median = dict(runs[len(runs) // 2])
    if len(runs) > 1:
        median["runs_readings_per_s"] = [r["readings_per_s"] for r in runs]
        median["runs_readings_per_cpu_s"] = sorted(r["readings_per_cpu_s"] for r in runs)
        median["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return median


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="ingest,ingestk,ingest1,tester,tester1,rack,rack1,genealogy,backlog"
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--readings", type=int, default=1_000_000, help="ingest size")
    parser.add_argument("--per-message", type=int, default=500, help="readings per message")
    parser.add_argument("--batch", type=int, default=100, help="messages per transaction")
    parser.add_argument("--stored", type=int, default=10_000_000, help="genealogy table size")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="backlog size")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each ingest (median)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="cProfile the ingest runs into DIR"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.readings, args.stored, args.backlog = 20_000, 200_000, 20_000
    only = args.only.split(",")
    databases = args.databases.split(",")
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": os.getloadavg(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
    pg = None
    try:
        if "postgresql" in databases:
            pg = PostgresServer()
            pg.init()
            pg.start()
        names = iter(range(1, 1000))

        def url(db: str) -> str:
            n = next(names)
            if db == "sqlite":
                return f"sqlite:///{workdir / f'store{n}.db'}"
            assert pg is not None
            return pg.create_database(f"bench{n}")

        for db in databases:
            for form in (f for f in WORKLOADS if f in only):
                r = ingest_runs(url, db, form, args, pg if db == "postgresql" else None)
                results[f"{form}_{db}"] = r
                print(f"{form} {db}: {r}", flush=True)
            if "genealogy" in only:
                r = bench_genealogy(url(db), args.stored, pg if db == "postgresql" else None)
                results[f"genealogy_{db}"] = r
                print(f"genealogy {db}: {r}", flush=True)
            if "backlog" in only:
                r = bench_backlog(url(db), args.backlog, args.per_message, workdir / f"b-{db}")
                results[f"backlog_{db}"] = r
                print(f"backlog {db}: {r}", flush=True)
    finally:
        if pg is not None:
            pg.cleanup()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
