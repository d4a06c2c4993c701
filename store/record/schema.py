"""The record's tables, on the store's one MetaData (so create_schema creates them).

Every table but ``audit`` and ``record_lock`` is append-only and keyed by ``audit_id``: the
audit entry that created the row. The entry's content holds the row's columns as written, so
``audit.verify`` checks the rows against the hash chain too, and an UPDATE or DELETE of a
record row behind the store's back is caught like one of the audit table itself. Times are
ISO text (``...Z``) and lists and objects canonical JSON text: a row reads back exactly as
it was hashed, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import sqlalchemy as sa

from store.schema import metadata


def _key() -> sa.Column[int]:
    return sa.Column("audit_id", sa.Integer, primary_key=True, autoincrement=False)


#: The chain. ``id`` counts 1, 2, 3 ... without holes; ``hash`` = SHA-256 over the previous
#: entry's hash and this entry's canonical text (audit.entry_text).
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Text, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("function", sa.Text, nullable=True),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
)

#: Never holds a row: SQLite's writers take its write lock first (a DELETE of nothing), so two
#: record writes queue instead of both reading the same last entry (PostgreSQL: advisory lock).
record_lock = sa.Table("record_lock", metadata, sa.Column("id", sa.Integer, primary_key=True))

runs = sa.Table(
    "record_runs",
    metadata,
    _key(),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)

versions = sa.Table(
    "record_versions",
    metadata,
    _key(),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),  # the protocol's `run` section, JSON
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.UniqueConstraint("run_id", "version", name="record_versions_key"),
)

approvals = sa.Table(
    "record_approvals",
    metadata,
    _key(),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("function", sa.Text, nullable=False),
    sa.Column("person", sa.Text, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("at", sa.Text, nullable=False),
)

#: Written at the office (POST /runs/{id}/deviations) or on the line PC (``.../deviations``,
#: store.record.line): those keep when the line PC recorded them and their dedupe key
#: (collector, outbox, seq), and may have no run (none selected them; run_id null).
deviations = sa.Table(
    "record_deviations",
    metadata,
    _key(),
    sa.Column("run_id", sa.Integer, nullable=True, index=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("operation", sa.Text, nullable=True),
    sa.Column("station", sa.Text, nullable=True),
    sa.Column("device", sa.Text, nullable=True),
    sa.Column("serials", sa.Text, nullable=False),  # JSON list
    sa.Column("window_start", sa.Text, nullable=True),
    sa.Column("window_end", sa.Text, nullable=True),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("who", sa.Text, nullable=False),
    sa.Column("person", sa.Text, nullable=False),
    sa.Column("at", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.Text, nullable=True),
    sa.Column("collector", sa.Text, nullable=True),
    sa.Column("outbox", sa.Text, nullable=True),
    sa.Column("seq", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("collector", "outbox", "seq", name="record_deviations_line_key"),
)

#: A deviation is closed by a row of its own (rows are never updated).
closures = sa.Table(
    "record_closures",
    metadata,
    _key(),
    sa.Column("deviation_id", sa.Integer, nullable=False, unique=True),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("person", sa.Text, nullable=False),
    sa.Column("at", sa.Text, nullable=False),
)

dispositions = sa.Table(
    "record_dispositions",
    metadata,
    _key(),
    sa.Column("serial", sa.Text, nullable=False, index=True),
    sa.Column("disposition", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON object
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("person", sa.Text, nullable=False),
    sa.Column("at", sa.Text, nullable=False),
)

remarks = sa.Table(
    "record_remarks",
    metadata,
    _key(),
    sa.Column("serial", sa.Text, nullable=False, index=True),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("person", sa.Text, nullable=False),
    sa.Column("at", sa.Text, nullable=False),
)

#: ``report`` is the report JSON as signed: not in the audit content (it can be large), but
#: its SHA-256 is, and audit.verify checks the one against the other.
signoffs = sa.Table(
    "record_signoffs",
    metadata,
    _key(),
    sa.Column("run_id", sa.Integer, nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("function", sa.Text, nullable=False),
    sa.Column("person", sa.Text, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("meaning", sa.Text, nullable=False),
    sa.Column("exceptions", sa.Text, nullable=False),  # JSON list: override, late protocol
    sa.Column("report_sha256", sa.Text, nullable=False),
    sa.Column("evidence_sha256", sa.Text, nullable=False),
    sa.Column("at", sa.Text, nullable=False),
    sa.Column("report", sa.Text, nullable=False),
)

#: The tables whose rows audit entries create, and the columns left out of the content.
RECORD_TABLES: dict[str, tuple[sa.Table, frozenset[str]]] = {
    t.name: (t, frozenset({"report"}) if t is signoffs else frozenset())
    for t in (runs, versions, approvals, deviations, closures, dispositions, remarks, signoffs)
}
