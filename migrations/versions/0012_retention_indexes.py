"""Indexes retention deletes by: idempotency keys and provider deliveries by age

Both tables are written in time order, so on PostgreSQL a BRIN index finds their old rows for a
few pages of index and next to no cost per insert (a B-tree entry per capture would cost more).
Once retention deletes rows and vacuum lets new ones fill the freed pages, page ranges mix old
and new times and the index narrows the scan less: at worst a prune reads the table's few days
of keys once an hour. SQLite has no BRIN: there they are B-trees, as the embedded default's
tables stay small.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from migrations import online

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_idempotency_keys_created_at", "idempotency_keys",
                           "USING brin (created_at)")
        online.build_index("ix_provider_deliveries_received_at", "provider_deliveries",
                           "USING brin (received_at)")
        return
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_index("ix_provider_deliveries_received_at", "provider_deliveries",
                    ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_provider_deliveries_received_at", table_name="provider_deliveries")
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
