"""Trace context on orders: evidence arriving on its own rejoins the order's trace

``outbox.trace_context`` has existed since 0001 (the relay now fills and reads it); this adds the
same nullable JSON column to ``orders``: the capture's W3C trace context, so a provider webhook, a
verifier's status read or a bank mutation settles the order inside the order's own trace.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Nullable, no default: on PostgreSQL a metadata-only change, no table rewrite.
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trace_context", _JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("trace_context")
