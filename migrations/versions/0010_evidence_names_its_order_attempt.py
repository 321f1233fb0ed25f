"""Evidence refers to (order, attempt) with one foreign key

Evidence had two foreign keys, order_id → orders and attempt_id → payment_attempts: two checks per
row (a third of a statement import's time went to such checks), and nothing stopped a row from
pairing an order with another order's attempt. Now one composite key, (order_id, attempt_id) →
payment_attempts (order_id, id), proves both: the attempt exists, belongs to that order, and the
order exists through the attempt's own key. payment_attempts gets the unique (order_id, id) the
key needs, which also serves every "attempts of this order" lookup, so its plain index on
order_id goes.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from migrations import online

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        # The new key is in force (and checked) before the two it replaces go.
        online.build_index("uq_payment_attempts_order_id_id", "payment_attempts",
                           "(order_id, id)", unique=True)
        online.adopt_unique_index("payment_attempts", "uq_payment_attempts_order_id_id")
        online.add_foreign_key("fk_evidence_order_id_payment_attempts", "evidence",
                               "(order_id, attempt_id)", "payment_attempts (order_id, id)")
        online.drop_constraint("evidence", "fk_evidence_order_id_orders")
        online.drop_constraint("evidence", "fk_evidence_attempt_id_payment_attempts")
        online.drop_index("ix_payment_attempts_order_id")
        return
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_payment_attempts_order_id_id", ["order_id", "id"])
        batch_op.drop_index("ix_payment_attempts_order_id")
    with op.batch_alter_table("evidence", schema=None) as batch_op:
        batch_op.drop_constraint("fk_evidence_order_id_orders", type_="foreignkey")
        batch_op.drop_constraint("fk_evidence_attempt_id_payment_attempts", type_="foreignkey")
        batch_op.create_foreign_key("fk_evidence_order_id_payment_attempts", "payment_attempts",
                                    ["order_id", "attempt_id"], ["order_id", "id"])


def downgrade() -> None:
    with op.batch_alter_table("evidence", schema=None) as batch_op:
        batch_op.drop_constraint("fk_evidence_order_id_payment_attempts", type_="foreignkey")
        batch_op.create_foreign_key("fk_evidence_attempt_id_payment_attempts",
                                    "payment_attempts", ["attempt_id"], ["id"])
        batch_op.create_foreign_key("fk_evidence_order_id_orders", "orders", ["order_id"], ["id"])
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_payment_attempts_order_id", ["order_id"])
        batch_op.drop_constraint("uq_payment_attempts_order_id_id", type_="unique")
