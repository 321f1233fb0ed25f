"""When an order entered ``verifying``: its verification window runs from then

The window was counted from the order's deadline. A sweep that first saw an order long after its
deadline (a worker back from an outage longer than the window, or a clock that jumped) put it in
``verifying`` and, in the same pass, in ``needs_review`` before anything had read its provider:
a restart became a review case per order. ``orders.verifying_since`` is written when the sweep
puts an order there, and the window is timed from it. The index holds only the orders waiting
in ``verifying`` now.

Orders already in ``verifying`` are left NULL here: the sweep gives each the time it entered
(its ``updated_at``; nothing else writes an order while it waits there), as it does for an
order a worker older than this revision puts there while the new code starts.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VERIFYING = "state = 'verifying'"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        # Nullable, no default: a catalogue change, no rewrite. Every capture writes orders, so
        # its lock is taken for an instant or not at all.
        online.alter_table("orders", "ADD COLUMN IF NOT EXISTS verifying_since timestamptz")
        online.build_index("ix_orders_verifying_since", "orders",
                           f"(verifying_since) WHERE {_VERIFYING}")
        return
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verifying_since", sa.DateTime(timezone=True),
                                      nullable=True))
    op.create_index("ix_orders_verifying_since", "orders", ["verifying_since"],
                    sqlite_where=sa.text(_VERIFYING))


def downgrade() -> None:
    if online.on_postgresql():
        online.drop_index("ix_orders_verifying_since")
        online.alter_table("orders", "DROP COLUMN IF EXISTS verifying_since")
        return
    op.drop_index("ix_orders_verifying_since", table_name="orders")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("verifying_since")
