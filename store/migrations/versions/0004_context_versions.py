"""Unit-context versions (message schema 3, docs/messages.md): a readings poll names its unit
context by a version id published once on ``.../context/{station}``; the store keeps every
version it received. New table only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: store/schema.py's UtcDateTime: timestamptz on PostgreSQL, ISO text (DATETIME) on SQLite.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "context_versions",
        sa.Column("collector", sa.Text(), nullable=False),
        sa.Column("ctx", sa.Text(), nullable=False),
        sa.Column("members", sa.Text(), nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("collector", "ctx", name="context_versions_pkey"),
    )


def downgrade() -> None:
    op.drop_table("context_versions")
