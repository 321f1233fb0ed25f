"""A review case for every order already in review because its verification window ran out

Before this revision an order sent to ``needs_review`` (``verification_window_exhausted``) got no
review case, so no person could decide it through the API or CLI, and a payment proven for it
later was recorded beside it with a refund case while it stayed in review. Such orders now get
the case the code opens for them since (``check_at_source``), so a person can honour, refund or
expire each; the expiry sweep leaves alone any of them that has payment evidence. Data only: no
order changes state here.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REASON = "verification_window_exhausted"
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, as orchestrator.domain.ids


def _case_id() -> str:
    """``rev_`` + a ULID (time-ordered), written here so the migration depends on no app code."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "rev_" + "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def upgrade() -> None:
    bind = op.get_bind()
    waiting = bind.execute(sa.text(
        "SELECT o.id, o.amount FROM orders o WHERE o.state = 'needs_review' "
        "AND o.review_reason = :reason AND NOT EXISTS (SELECT 1 FROM review_cases c "
        "WHERE c.order_id = o.id AND c.reason = :reason AND c.state = 'open')"),
        {"reason": _REASON}).all()
    now = datetime.now(UTC)
    if bind.dialect.name == "sqlite":  # UTCDateTime keeps naive UTC there (store/types.py)
        now = now.replace(tzinfo=None)
    insert = sa.text(
        "INSERT INTO review_cases (id, order_id, reason, recommended_action, amount, state, "
        "created_at) VALUES (:id, :order_id, :reason, 'check_at_source', :amount, 'open', :now)")
    for order_id, amount in waiting:
        bind.execute(insert, {"id": _case_id(), "order_id": order_id, "reason": _REASON,
                              "amount": amount, "now": now})


def downgrade() -> None:
    """Nothing to undo: the cases are records a person may already have acted on."""
