"""Pending outbox events by merchant and type: the relay's claim walks each merchant's queues.

A claim passes over the webhooks of a merchant whose lane is full. Through ``ix_outbox_pending``
(every pending event by ``available_at``) that meant reading the merchant's whole due backlog to
find nothing: half a second per claim with a million ``order.paid`` of one merchant, after a
statement import. Indexed by ``(merchant_id, event_type, available_at, id)`` over pending events,
the claim visits each (merchant, type) with pending events once (a skip scan) and reads only the
first few due events of the queues it may take from; a full lane costs one index probe.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = "status = 'pending'"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_outbox_merchant_queues", "outbox",
                           f"(merchant_id, event_type, available_at, id) WHERE {_PENDING}")
        return
    op.create_index("ix_outbox_merchant_queues", "outbox",
                    ["merchant_id", "event_type", "available_at", "id"],
                    sqlite_where=sa.text(_PENDING))


def downgrade() -> None:
    op.drop_index("ix_outbox_merchant_queues", table_name="outbox")
