"""The pilot run as a record (store/record/, docs/pilot-record.md): the audit chain, its lock
table, and the append-only record tables keyed by the audit entry that wrote each row (runs,
protocol versions, approvals, deviations and their closures, dispositions, remarks,
sign-offs). New tables only: nothing existing changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite cannot ALTER most things: change a table inside op.batch_alter_table("name").
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("function", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "record_approvals",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("function", sa.Text(), nullable=False),
        sa.Column("person", sa.Text(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
    )
    with op.batch_alter_table("record_approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_record_approvals_run_id"), ["run_id"], unique=False)

    op.create_table(
        "record_closures",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("deviation_id", sa.Integer(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("person", sa.Text(), nullable=False),
        sa.Column("at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
        sa.UniqueConstraint("deviation_id"),
    )
    op.create_table(
        "record_deviations",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
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
        sa.PrimaryKeyConstraint("audit_id"),
    )
    with op.batch_alter_table("record_deviations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_record_deviations_run_id"), ["run_id"], unique=False)

    op.create_table(
        "record_dispositions",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("serial", sa.Text(), nullable=False),
        sa.Column("disposition", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("person", sa.Text(), nullable=False),
        sa.Column("at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
    )
    with op.batch_alter_table("record_dispositions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_record_dispositions_serial"), ["serial"], unique=False)

    op.create_table(
        "record_lock", sa.Column("id", sa.Integer(), nullable=False), sa.PrimaryKeyConstraint("id")
    )
    op.create_table(
        "record_remarks",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("serial", sa.Text(), nullable=False),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("person", sa.Text(), nullable=False),
        sa.Column("at", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
    )
    with op.batch_alter_table("record_remarks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_record_remarks_serial"), ["serial"], unique=False)

    op.create_table(
        "record_runs",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "record_signoffs",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("function", sa.Text(), nullable=False),
        sa.Column("person", sa.Text(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("meaning", sa.Text(), nullable=False),
        sa.Column("exceptions", sa.Text(), nullable=False),
        sa.Column("report_sha256", sa.Text(), nullable=False),
        sa.Column("evidence_sha256", sa.Text(), nullable=False),
        sa.Column("at", sa.Text(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
    )
    with op.batch_alter_table("record_signoffs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_record_signoffs_run_id"), ["run_id"], unique=False)

    op.create_table(
        "record_versions",
        sa.Column("audit_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id"),
        sa.UniqueConstraint("run_id", "version", name="record_versions_key"),
    )


def downgrade() -> None:
    op.drop_table("record_versions")
    with op.batch_alter_table("record_signoffs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_record_signoffs_run_id"))

    op.drop_table("record_signoffs")
    op.drop_table("record_runs")
    with op.batch_alter_table("record_remarks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_record_remarks_serial"))

    op.drop_table("record_remarks")
    op.drop_table("record_lock")
    with op.batch_alter_table("record_dispositions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_record_dispositions_serial"))

    op.drop_table("record_dispositions")
    with op.batch_alter_table("record_deviations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_record_deviations_run_id"))

    op.drop_table("record_deviations")
    op.drop_table("record_closures")
    with op.batch_alter_table("record_approvals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_record_approvals_run_id"))

    op.drop_table("record_approvals")
    op.drop_table("audit")
