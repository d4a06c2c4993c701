"""Baseline: the store's tables as they were before migrations (commit 1154734).

Revision ID: 0001
Revises:
Create Date: 2026-12-07

The tables are written out here, not imported from store/schema.py: a revision is frozen, the
schema module moves on. Tables are created only where missing (``checkfirst``): a database
made before migrations (``create_all`` at start, no ``alembic_version``) runs this revision
too, keeps its tables and rows, and gains the tables that ``create_all`` would have added
(``parked`` for one made before it existed); then it is at 0001 like a new one.

TimescaleDB (PostgreSQL, ``database.timescaledb`` true, the extension installed): readings
becomes a hypertable on ``ts`` with 1-day chunks; its keys hold ``ts`` for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: store/schema.py's UtcDateTime: timestamptz on PostgreSQL, ISO text (DATETIME) on SQLite.
UTC_TIME = sa.DateTime(timezone=True)
#: store/schema.py's Micros: timestamptz on PostgreSQL, integer microseconds on SQLite.
MICROS = sa.DateTime(timezone=True).with_variant(sa.BigInteger(), "sqlite")
FLOAT64 = sa.Float(precision=53)


def _tables() -> sa.MetaData:
    meta = sa.MetaData()
    sa.Table(
        "streams",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("outbox", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("low_seq", sa.BigInteger, nullable=True),
        sa.Column("high_seq", sa.BigInteger, nullable=True),
        sa.Column("received", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_at", UTC_TIME, nullable=True),
        sa.UniqueConstraint("collector", "outbox", "kind", name="streams_key"),
    )
    sa.Table(
        "gaps",
        meta,
        sa.Column("stream", sa.Integer, nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("opened_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("stream", "first_seq", name="gaps_pkey"),
    )
    sa.Table(
        "series",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("tag", sa.Text, nullable=False),
        sa.Column("unit", sa.Text, nullable=True),
        sa.UniqueConstraint("collector", "device", "tag", name="series_key"),
    )
    sa.Table(
        "contexts",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.Text, nullable=False, unique=True),
        sa.Column("station", sa.Text, nullable=True),
        sa.Column("slot", sa.Text, nullable=True),
        sa.Column("unit_serial", sa.Text, nullable=True, index=True),
        sa.Column("operation", sa.Text, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=True),
        sa.Column("phase", sa.Text, nullable=True),
        sa.Column("golden", sa.Boolean, nullable=False),
    )
    sa.Table(
        "readings",
        meta,
        sa.Column("stream", sa.Integer, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("ts", MICROS, nullable=False),
        sa.Column("series", sa.Integer, nullable=False),
        sa.Column("context", sa.Integer, nullable=False),
        sa.Column("flags", sa.SmallInteger, nullable=False),
        sa.Column("num", FLOAT64, nullable=True),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("stream", "seq", "ts", name="readings_pkey"),
        sqlite_with_rowid=False,
    )
    sa.Table(
        "context_spans",
        meta,
        sa.Column("context", sa.Integer, nullable=False),
        sa.Column("stream", sa.Integer, nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("context", "stream", name="context_spans_pkey"),
    )
    sa.Table(
        "units",
        meta,
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("outbox", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("serial", sa.Text, nullable=False),
        sa.Column("station", sa.Text, nullable=True),
        sa.Column("slot", sa.Text, nullable=True),
        sa.Column("operation", sa.Text, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=True),
        sa.Column("start_ts", UTC_TIME, nullable=False),
        sa.Column("end_ts", UTC_TIME, nullable=False),
        sa.Column("cycle_time_s", FLOAT64, nullable=True),
        sa.Column("takt_s", FLOAT64, nullable=True),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("failure_code", sa.Text, nullable=True),
        sa.Column("ended_by", sa.Text, nullable=True),
        sa.Column("readings", sa.Integer, nullable=True),
        sa.Column("golden", sa.Boolean, nullable=False),
        sa.Column("work_order", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("collector", "outbox", "seq", "end_ts", name="units_pkey"),
        sa.Index("units_serial", "serial", "operation"),
        sa.Index("units_end", "end_ts"),
    )
    sa.Table(
        "characteristics",
        meta,
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("outbox", sa.Text, nullable=False),
        sa.Column("unit_seq", sa.BigInteger, nullable=False),
        sa.Column("serial", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("last", FLOAT64, nullable=True),
        sa.Column("min", FLOAT64, nullable=True),
        sa.Column("max", FLOAT64, nullable=True),
        sa.Column("lsl", FLOAT64, nullable=True),
        sa.Column("usl", FLOAT64, nullable=True),
        sa.Column("target", FLOAT64, nullable=True),
        sa.Column("critical", sa.Boolean, nullable=False),
        sa.Column("in_spec", sa.Boolean, nullable=True),
        sa.Column("end_ts", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint(
            "collector", "outbox", "unit_seq", "name", "end_ts", name="characteristics_pkey"
        ),
        sa.Index("characteristics_serial", "serial", "operation"),
    )
    sa.Table(
        "quarantine",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("payload_bytes", sa.Integer, nullable=False),
    )
    sa.Table(
        "metas",
        meta,
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("tag_order", sa.Text, nullable=True),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("collector", "device", "meta", name="metas_pkey"),
    )
    sa.Table(
        "parked",
        meta,
        sa.Column("quarantine_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("collector", sa.Text, nullable=False),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Index("parked_meta", "collector", "device", "meta"),
    )
    return meta


def upgrade() -> None:
    bind = op.get_bind()
    _tables().create_all(bind, checkfirst=True)
    if bind.dialect.name != "postgresql" or not context.config.attributes.get("timescaledb"):
        return
    if bind.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").first():
        bind.exec_driver_sql(
            "SELECT create_hypertable('readings', 'ts', if_not_exists => TRUE, "
            "migrate_data => TRUE, chunk_time_interval => INTERVAL '1 day')"
        )


def downgrade() -> None:
    _tables().drop_all(op.get_bind())
