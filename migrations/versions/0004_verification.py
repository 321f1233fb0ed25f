"""Verification schedule: when each live attempt's status is next read, and what deferred it

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payment_attempts") as batch:
        batch.add_column(sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deferred_on", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("checks", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_check", sa.String(length=200), nullable=True))
    op.create_index("ix_payment_attempts_next_check_at", "payment_attempts", ["next_check_at"],
                    postgresql_where=sa.text("next_check_at IS NOT NULL"),
                    sqlite_where=sa.text("next_check_at IS NOT NULL"))
    op.create_index("ix_payment_attempts_deferred_on", "payment_attempts", ["deferred_on"],
                    postgresql_where=sa.text("deferred_on IS NOT NULL"),
                    sqlite_where=sa.text("deferred_on IS NOT NULL"))
    # Live gateway attempts from before this revision are checked soon after the upgrade.
    op.execute("UPDATE payment_attempts SET next_check_at = updated_at "
               "WHERE state IN ('active', 'superseded', 'unknown') AND rail <> 'manual_transfer'")


def downgrade() -> None:
    op.drop_index("ix_payment_attempts_deferred_on", table_name="payment_attempts")
    op.drop_index("ix_payment_attempts_next_check_at", table_name="payment_attempts")
    with op.batch_alter_table("payment_attempts") as batch:
        for name in ("last_check", "last_checked_at", "checks", "deferred_on", "next_check_at"):
            batch.drop_column(name)
