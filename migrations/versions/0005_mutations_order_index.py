"""Index mutations by the order they were matched to

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_mutations_order_id", "mutations", ["order_id"],
                    postgresql_where=sa.text("order_id IS NOT NULL"),
                    sqlite_where=sa.text("order_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_mutations_order_id", table_name="mutations")
