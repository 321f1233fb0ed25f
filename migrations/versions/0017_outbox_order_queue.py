"""Pending outbox events by aggregate: is an earlier webhook of this order still undelivered?

An order's merchant webhooks are delivered one at a time, in outbox order (outbox/queries.py):
the claim passes over a webhook while an earlier one of the same order is still pending. That is
one probe per candidate event into the pending events of its order; indexed by
``(aggregate_id, id)`` over pending events only, it reads an entry or two however long the
backlog (a statement import can leave a million ``order.paid`` events pending at once), and the
index holds no more entries than events are waiting.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = "status = 'pending'"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_outbox_order_queue", "outbox",
                           f"(aggregate_id, id) WHERE {_PENDING}")
        return
    op.create_index("ix_outbox_order_queue", "outbox", ["aggregate_id", "id"],
                    sqlite_where=sa.text(_PENDING))


def downgrade() -> None:
    op.drop_index("ix_outbox_order_queue", table_name="outbox")
