"""Provider deliveries: every inbound gateway webhook, verified or not, as received

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "provider_deliveries",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw_body", sa.Text(), nullable=False),
        sa.Column("headers", _JSON, nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("event_key", sa.String(length=200), nullable=True),
        sa.Column("attempt_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_deliveries")),
        sa.UniqueConstraint("event_key", name=op.f("uq_provider_deliveries_event_key")),
    )


def downgrade() -> None:
    op.drop_table("provider_deliveries")
