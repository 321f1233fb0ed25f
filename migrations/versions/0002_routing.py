"""Routing: merchant route preferences, attempt channels, route pauses and maintenance windows

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("merchants") as batch:
        batch.add_column(sa.Column("routing", _JSON, nullable=True))
        batch.add_column(
            sa.Column("allow_fallback", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("channel", sa.String(length=32), nullable=True))
    with op.batch_alter_table("payment_attempts") as batch:
        batch.add_column(sa.Column("channel", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("failure_reason", sa.String(length=500), nullable=True))
    op.create_table(
        "route_controls",
        sa.Column("route_key", sa.String(length=100), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route_key", name=op.f("pk_route_controls")),
    )
    op.create_table(
        "maintenance_windows",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("route_pattern", sa.String(length=100), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_maintenance_windows_window_order")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_windows")),
    )
    with op.batch_alter_table("maintenance_windows") as batch:
        batch.create_index("ix_maintenance_windows_ends_at", ["ends_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("maintenance_windows") as batch:
        batch.drop_index("ix_maintenance_windows_ends_at")
    op.drop_table("maintenance_windows")
    op.drop_table("route_controls")
    with op.batch_alter_table("payment_attempts") as batch:
        batch.drop_column("failure_reason")
        batch.drop_column("channel")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("channel")
    with op.batch_alter_table("merchants") as batch:
        batch.drop_column("allow_fallback")
        batch.drop_column("routing")
