"""What collectors said of seqs the store misses (docs/store.md, "Gaps in three kinds"): ranges
never assigned (a reservation jump after a power cut, a reset buffer), unavailable (asked for
again, no longer held) or dropped. New table only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: store/schema.py's UtcDateTime: timestamptz on PostgreSQL, ISO text (DATETIME) on SQLite.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # SQLite cannot ALTER most things: change a table inside op.batch_alter_table("name").
    op.create_table(
        "seq_notes",
        sa.Column("stream", sa.Integer(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("noted_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("stream", "first_seq", "kind", name="seq_notes_pkey"),
    )


def downgrade() -> None:
    op.drop_table("seq_notes")
