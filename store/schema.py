"""The store's tables: one SQLAlchemy Core declaration for SQLite and PostgreSQL (docs/store.md).

Readings are the bulk (millions a day), so their rows are small: the repeating text of a
reading (collector and outbox, device and tag, station/unit/operation context) lives once in
the dimension tables ``streams``, ``series`` and ``contexts``, and a reading row holds integer
ids, its seq, its time and its value. ``units`` and ``characteristics`` are the tables the
pilot-run report reads (store/report/): their names and columns are its contract.

TimescaleDB: every unique key holds the row's time column (``ts``, ``end_ts``), which a
hypertable requires; :func:`store.db.create_schema` makes ``readings`` a hypertable when the
extension is installed in the database. A redelivered message carries the same time, so the
time in the key does not weaken the dedupe.

Time columns: ``readings.ts`` is :class:`Micros`, a ``timestamptz`` on PostgreSQL and integer
microseconds since the epoch on SQLite (8 bytes instead of 26 characters of text); the report's
columns are :class:`UtcDateTime`, a ``timestamptz`` on PostgreSQL and ISO text on SQLite, read
back as aware UTC datetimes on both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC timestamp: ``timestamptz`` on PostgreSQL, ISO text on SQLite; aware on return."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Micros(TypeDecorator[datetime]):
    """The readings' time: ``timestamptz`` on PostgreSQL, integer microseconds on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name == "sqlite":
            return to_micros(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return from_micros(int(value))
        assert isinstance(value, datetime)
        return value.astimezone(UTC)


def to_micros(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


metadata = sa.MetaData()

#: One row per (collector, outbox, topic kind): what the dedupe key and the gap audit count
#: in. ``low_seq``/``high_seq``: the lowest and highest seq received; the holes between them
#: are the rows of ``gaps``.
streams = sa.Table(
    "streams",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("outbox", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # "readings" or "units"
    sa.Column("low_seq", sa.BigInteger, nullable=True),
    sa.Column("high_seq", sa.BigInteger, nullable=True),
    sa.Column("received", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("collector", "outbox", "kind", name="streams_key"),
)

#: Missing seq ranges [first_seq, last_seq] of a stream; a late message shrinks or splits them.
gaps = sa.Table(
    "gaps",
    metadata,
    sa.Column("stream", sa.Integer, nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("opened_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("stream", "first_seq", name="gaps_pkey"),
)

#: (collector, device, tag) -> an integer id; ``unit`` is the engineering unit first seen.
series = sa.Table(
    "series",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("tag", sa.Text, nullable=False),
    sa.Column("unit", sa.Text, nullable=True),
    sa.UniqueConstraint("collector", "device", "tag", name="series_key"),
)

#: A reading's context -> an integer id. ``key`` is the canonical text of all the columns
#: (NULLs included), so two store processes cannot both insert one context.
contexts = sa.Table(
    "contexts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),
    sa.Column("station", sa.Text, nullable=True),
    sa.Column("slot", sa.Text, nullable=True),
    sa.Column("unit_serial", sa.Text, nullable=True, index=True),
    sa.Column("operation", sa.Text, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=True),
    sa.Column("phase", sa.Text, nullable=True),
    sa.Column("golden", sa.Boolean, nullable=False),
    # The work order the readings were taken under (issue 24; migration 0008): null without
    # one and in rows stored before it.
    sa.Column("work_order", sa.Text, nullable=True),
)

#: ``readings.flags`` = kind * 4 + quality: how to turn ``num``/``text`` back into the JSON
#: value, and the quality, in one small integer.
KIND_NULL, KIND_INT, KIND_FLOAT, KIND_BOOL, KIND_TEXT = 0, 1, 2, 3, 4
QUALITY_CODES = {"good": 0, "uncertain": 1, "bad": 2}
QUALITY_NAMES = {code: name for name, code in QUALITY_CODES.items()}

#: One row per reading: key (stream, seq, ts), and no other index: an index per reading
#: doubles the cost of an insert (docs/store.md). ``num`` holds numbers and booleans,
#: ``text`` strings and integers too large for a float64.
readings = sa.Table(
    "readings",
    metadata,
    sa.Column("stream", sa.Integer, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("ts", Micros, nullable=False),
    sa.Column("series", sa.Integer, nullable=False),
    sa.Column("context", sa.Integer, nullable=False),
    sa.Column("flags", sa.SmallInteger, nullable=False),
    sa.Column("num", sa.Float(precision=53), nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("stream", "seq", "ts", name="readings_pkey"),
    # The primary key is the table on SQLite: no rowid, no second copy of the key.
    sqlite_with_rowid=False,
)

#: Where a context's readings are: the seq range of each stream that holds them. The unit
#: genealogy reads these ranges of the readings' primary key (a unit's readings are a few
#: short runs of seqs), which is what makes a second index on readings unnecessary.
context_spans = sa.Table(
    "context_spans",
    metadata,
    sa.Column("context", sa.Integer, nullable=False),
    sa.Column("stream", sa.Integer, nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("context", "stream", name="context_spans_pkey"),
)

units = sa.Table(
    "units",
    metadata,
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("outbox", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("serial", sa.Text, nullable=False),
    sa.Column("station", sa.Text, nullable=True),
    sa.Column("slot", sa.Text, nullable=True),
    sa.Column("operation", sa.Text, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=True),
    sa.Column("start_ts", UtcDateTime, nullable=False),
    sa.Column("end_ts", UtcDateTime, nullable=False),
    sa.Column("cycle_time_s", sa.Float(precision=53), nullable=True),
    sa.Column("takt_s", sa.Float(precision=53), nullable=True),
    sa.Column("verdict", sa.Text, nullable=False),
    sa.Column("failure_code", sa.Text, nullable=True),
    sa.Column("ended_by", sa.Text, nullable=True),
    sa.Column("readings", sa.Integer, nullable=True),
    sa.Column("golden", sa.Boolean, nullable=False),
    sa.Column("work_order", sa.Text, nullable=True),
    # Which resources made the unit (operator, fixture, cavity, program): a JSON object of
    # text, null when the record names none (migration 0007; docs/traceability.md).
    sa.Column("resources", sa.Text, nullable=True),
    sa.PrimaryKeyConstraint("collector", "outbox", "seq", "end_ts", name="units_pkey"),
    sa.Index("units_serial", "serial", "operation"),
    sa.Index("units_end", "end_ts"),
)

characteristics = sa.Table(
    "characteristics",
    metadata,
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("outbox", sa.Text, nullable=False),
    sa.Column("unit_seq", sa.BigInteger, nullable=False),
    sa.Column("serial", sa.Text, nullable=False),
    sa.Column("operation", sa.Text, nullable=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("last", sa.Float(precision=53), nullable=True),
    sa.Column("min", sa.Float(precision=53), nullable=True),
    sa.Column("max", sa.Float(precision=53), nullable=True),
    sa.Column("lsl", sa.Float(precision=53), nullable=True),
    sa.Column("usl", sa.Float(precision=53), nullable=True),
    sa.Column("target", sa.Float(precision=53), nullable=True),
    sa.Column("critical", sa.Boolean, nullable=False),
    sa.Column("in_spec", sa.Boolean, nullable=True),
    sa.Column("end_ts", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint(
        "collector", "outbox", "unit_seq", "name", "end_ts", name="characteristics_pkey"
    ),
    sa.Index("characteristics_serial", "serial", "operation"),
)

#: Messages that broke the contract: kept (payload cut to ``quarantine.max_payload_bytes``)
#: and acknowledged, so one bad message never blocks the stream.
quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    # json / schema / field / topic / database / duplicate_key / identity / unknown_meta or
    # unknown_context (parked: see ``parked``)
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("payload_bytes", sa.Integer, nullable=False),
)

#: Every tag-metadata version a collector published (``.../meta/{device}``): ``order`` (JSON
#: list of the device's tags, what a positional poll's ``tag_index`` counts in; NULL for a
#: meta message without it) and ``tags`` (JSON object), as received. A positional poll is
#: resolved through the version its ``meta`` names, whenever it arrives.
metas = sa.Table(
    "metas",
    metadata,
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
    sa.Column("tag_order", sa.Text, nullable=True),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("collector", "device", "meta", name="metas_pkey"),
)

#: Every unit-context version a collector published (``.../context/{station}``, schema 3):
#: ``members`` is the CTX_KEY_FIELDS tuple (store.decode) as JSON, the key of its
#: ``contexts`` row. A schema-3 poll names its context by ``ctx``, resolved through this
#: whenever the poll arrives; one that names a version not received yet is parked like an
#: unknown meta version (``parked`` with ``device`` empty and ``meta`` the ctx).
context_versions = sa.Table(
    "context_versions",
    metadata,
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("ctx", sa.Text, nullable=False),
    sa.Column("members", sa.Text, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("collector", "ctx", name="context_versions_pkey"),
)

#: Readings messages parked in ``quarantine`` (kind ``unknown_meta``, payload kept whole)
#: until the meta version they wait for arrives: then they are ingested and both rows go.
#: A table of its own (not columns of ``quarantine``), so a database made before it gains it
#: through the baseline migration (store/migrations/versions/0001_baseline.py).
parked = sa.Table(
    "parked",
    metadata,
    sa.Column("quarantine_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("collector", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
    sa.Index("parked_meta", "collector", "device", "meta"),
)

#: What a collector said about seqs it will never send (its ``{base}/gaps`` messages,
#: store.announce): ``never_assigned`` (a seq reservation skipped after a power cut or a reset
#: buffer) or ``unavailable`` (asked for again, and it no longer holds them: dropped at its
#: buffer cap, quarantined, or deleted on a broker's PUBACK). The gap report splits a stream's
#: holes by these: never assigned is no error; unavailable is missing for good.
seq_notes = sa.Table(
    "seq_notes",
    metadata,
    sa.Column("stream", sa.Integer, nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # never_assigned / unavailable / dropped
    sa.Column("noted_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("stream", "first_seq", "kind", name="seq_notes_pkey"),
)
