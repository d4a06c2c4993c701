"""Deviations recorded on the line PC (``.../deviations``, store/record/line.py): the record's
deviations table keeps when the line PC recorded one and its dedupe key (collector, outbox,
seq), unique; and a deviation no run selects is kept without one (run_id may be null).
Existing rows keep their values (the new columns are null for them, as for every deviation
written at the office).

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


#: The columns as 0002 made them, in order: copied as they are on SQLite.
OLD_COLUMNS = ("audit_id", "run_id", "description", "severity", "operation", "station",
               "device", "serials", "window_start", "window_end", "action", "who", "person",
               "at")  # fmt: skip


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _upgrade_sqlite()
        return
    op.alter_column("record_deviations", "run_id", existing_type=sa.Integer(), nullable=True)
    for column in _new_columns():
        op.add_column("record_deviations", column)
    op.create_unique_constraint(
        "record_deviations_line_key", "record_deviations", ["collector", "outbox", "seq"]
    )


def _new_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("recorded_at", sa.Text(), nullable=True),
        sa.Column("collector", sa.Text(), nullable=True),
        sa.Column("outbox", sa.Text(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
    ]


def _upgrade_sqlite() -> None:
    """SQLite cannot make a column nullable: the table is made again as store/schema.py
    declares it (by hand, not batch_alter_table, whose rename leaves the table's CREATE
    statement quoted, unlike a new database's) and the rows copied over."""
    op.drop_index("ix_record_deviations_run_id", table_name="record_deviations")
    op.rename_table("record_deviations", "record_deviations_0005")
    op.create_table(
        "record_deviations",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=True),
        sa.Column("station", sa.Text(), nullable=True),
        sa.Column("device", sa.Text(), nullable=True),
        sa.Column("serials", sa.Text(), nullable=False),
        sa.Column("window_start", sa.Text(), nullable=True),
        sa.Column("window_end", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("who", sa.Text(), nullable=False),
        sa.Column("person", sa.Text(), nullable=False),
        sa.Column("at", sa.Text(), nullable=False),
        *_new_columns(),
        sa.PrimaryKeyConstraint("audit_id"),
        sa.UniqueConstraint("collector", "outbox", "seq", name="record_deviations_line_key"),
    )
    columns = ", ".join(OLD_COLUMNS)
    op.execute(
        f"INSERT INTO record_deviations ({columns}) SELECT {columns} FROM record_deviations_0005"  # noqa: S608
    )
    op.drop_table("record_deviations_0005")
    op.create_index("ix_record_deviations_run_id", "record_deviations", ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("record_deviations", schema=None) as batch_op:
        batch_op.drop_constraint("record_deviations_line_key", type_="unique")
        batch_op.drop_column("seq")
        batch_op.drop_column("outbox")
        batch_op.drop_column("collector")
        batch_op.drop_column("recorded_at")
        batch_op.alter_column("run_id", existing_type=sa.Integer(), nullable=False)
