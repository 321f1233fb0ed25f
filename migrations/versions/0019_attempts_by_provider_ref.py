"""Payment attempts by the provider's own id of their charge.

A Xendit ``refund.succeeded`` callback names the payment it refunded by Xendit's id
(``payment_id`` / ``payment_request_id``), never by Lunas's reference: the attempt is found by
``provider_ref``. Unindexed, every verified refund callback scanned all attempts on the intake
path, which must answer the provider quickly. Partial: attempts whose create never answered have
no ``provider_ref``.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations import online

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KNOWN = "provider_ref IS NOT NULL"


def upgrade() -> None:
    if online.on_postgresql():  # without blocking writers: see migrations/online.py
        online.build_index("ix_payment_attempts_provider_ref", "payment_attempts",
                           f"(provider, provider_ref) WHERE {_KNOWN}")
        return
    op.create_index("ix_payment_attempts_provider_ref", "payment_attempts",
                    ["provider", "provider_ref"], sqlite_where=sa.text(_KNOWN))


def downgrade() -> None:
    op.drop_index("ix_payment_attempts_provider_ref", table_name="payment_attempts")
