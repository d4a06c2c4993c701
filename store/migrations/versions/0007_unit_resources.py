"""Which resources made a unit (issue 27): the unit record's optional ``resources`` (operator,
fixture, cavity, program) in a new nullable column of ``units``, JSON text. Records stored
before it have none (null).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only where missing, like the baseline's tables: a database made by create_all of a
    # schema that has the column (the migration tests make one) already holds it.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("units")}
    if "resources" in columns:
        return
    # A nullable column: ADD COLUMN in place on both (no copy of a large table).
    with op.batch_alter_table("units") as batch:
        batch.add_column(sa.Column("resources", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("units") as batch:
        batch.drop_column("resources")
