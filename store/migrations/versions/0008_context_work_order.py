"""The work order in the unit context (issue 24): a new nullable column ``work_order`` of
``contexts``. Rows stored before it have none (null), and keep their ``key``: the key's JSON
names work_order only when it is set (store.decode.ctx_text), so readings of a context
without a work order still go to the row they went to before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only where missing, like the baseline's tables: a database made by create_all of a
    # schema that has the column (the migration tests make one) already holds it.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("contexts")}
    if "work_order" in columns:
        return
    # A nullable column: ADD COLUMN in place on both (no copy of the table).
    with op.batch_alter_table("contexts") as batch:
        batch.add_column(sa.Column("work_order", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contexts") as batch:
        batch.drop_column("work_order")
